"""The PostgreSQL store's statements, shared by the parts of
:class:`~broadcaster.store.postgres.PostgresStore` that run them: appends and
their notification, delivery state changes and the counters they keep, the
reads of resume, lanes and reconciliation, receipts and the consumer registry.

Batches travel as arrays (``unnest``), one statement and one round trip each;
each statement's comment says why it has its shape.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADD_DELIVERED_COUNTS",
    "ADD_META",
    "APPEND_CHANNEL",
    "APPEND_LOCK",
    "CONFIG_CHANNEL",
    "EVENT_COUNT",
    "CONSUMERS",
    "FACTS",
    "FIRST_SEQUENCE_ID",
    "INDEX_ORDER",
    "ACK_PLAIN",
    "INSERT_APPEND",
    "NOTIFY_APPENDED",
    "NOTIFY_IN_TRANSACTION",
    "MARK_DELIVERED",
    "MARK_SETTINGS",
    "MARK_UNDELIVERED",
    "MERGE_CONSUMERS",
    "NOW_MS",
    "PAGE_LAST",
    "PAGE_RECEIPTS",
    "PAGE_REPAIRED",
    "PAGE_ROUTED",
    "READ_EVENTS",
    "READ_ROUTED",
    "SCAN_DELIVERED",
    "SETTLE_MARK",
    "STILL_HOLDING",
    "STILL_MISSING",
    "TAKE_IDS",
    "SCAN_EVENTS",
    "SCAN_OUTBOX",
    "SCAN_RECEIPTS",
    "STATES_OF",
    "UNDELIVERED",
    "UPSERT_RECEIPTS",
]


# Advisory lock key (an arbitrary constant, "bcst" + purpose): every append
# holds it *shared* from before its nextval to the end of its transaction.
# Shared holders never wait for each other; the lock only lets a reader name
# the transactions that may still commit an id it has not seen (reads.py,
# ``committed_through``), without waiting for unrelated ones.
APPEND_LOCK: Final = 0x62637374_0002


#: Now on the database's clock, in epoch milliseconds.
NOW_MS: Final = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# An append's rows in one statement and one round trip: the events and their
# outbox rows from arrays, and the event counter (see EVENT_COUNT).
# %b: binary parameters; text-format bytea arrays cost a regex escape per item.
INSERT_APPEND: Final = (
    "WITH appended AS (INSERT INTO events (sequence_id, event_id, category, event_type,"
    " created_at_ms, routed_to, wire, checksum, payload_keys) SELECT * FROM unnest(%b::bigint[],"
    " %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::bytea[],"
    " %b::text[], %b::text[])),"
    " queued AS (INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT a, i, 'queued', %b FROM unnest(%b::text[], %b::bigint[]) AS pairs (a, i))"
    " INSERT INTO meta (key, value) VALUES ('event_count:' || pg_backend_pid() %% 64, %b)"
    " ON CONFLICT (key) DO UPDATE SET value = meta.value + excluded.value"
)


_MARKED: Final = "adapter = %(adapter)s AND sequence_id = ANY(%(ids)b::bigint[])"
# Pairs of these ids acknowledged implicitly: routed to the adapter (events'
# routed_to), no row in the outbox and none in deliveries (schema 9).
_IMPLIED: Final = (
    " SELECT e.sequence_id, %(adapter)s, %(state)s, %(error)s, %(now)s FROM events AS e"
    " WHERE e.sequence_id = ANY(%(ids)b::bigint[]) AND e.routed_to::jsonb ? %(adapter)s"
    " AND NOT EXISTS (SELECT 1 FROM outbox AS o"
    "  WHERE o.adapter = %(adapter)s AND o.sequence_id = e.sequence_id)"
    " AND NOT EXISTS (SELECT 1 FROM deliveries AS d"
    "  WHERE d.sequence_id = e.sequence_id AND d.adapter = %(adapter)s)"
    # The event may not be pruned meanwhile (prune locks it FOR UPDATE first).
    " FOR KEY SHARE OF e ON CONFLICT DO NOTHING"
)


def _mark_statement(source: str, target: str) -> str:
    """A state change as one statement: move the ``source`` rows to ``target``,
    update the rows already there, and give pairs acknowledged implicitly a
    row in ``target``. (All parts see one snapshot, so the UPDATE touches
    only pre-existing ``target`` rows, and the implied pairs are those with
    no row before the statement.) COALESCE keeps the last error when a state
    carries none.

    For the counters it returns the states the pairs left: of the matched
    ``deliveries`` rows as they were, and ``acked`` for the implied pairs
    (``state, n``); and the number of rows moved (``NULL, n``)."""
    return (
        f"WITH before AS (SELECT state, count(*) AS n FROM deliveries WHERE {_MARKED}"
        f" GROUP BY state),"
        f" moved AS (DELETE FROM {source} WHERE {_MARKED} RETURNING sequence_id, error),"
        f" inserted AS (INSERT INTO {target} (sequence_id, adapter, state, error, updated_at_ms)"
        f" SELECT sequence_id, %(adapter)s, %(state)s, COALESCE(%(error)s, error), %(now)s"
        f" FROM moved RETURNING 1),"
        f" updated AS (UPDATE {target} SET state = %(state)s, error = COALESCE(%(error)s, error),"
        f" updated_at_ms = %(now)s WHERE {_MARKED} RETURNING 1),"
        f" implied AS (INSERT INTO {target} (sequence_id, adapter, state, error, updated_at_ms)"
        f"{_IMPLIED} RETURNING 1)"
        f" SELECT state, n FROM before UNION ALL SELECT NULL, count(*) FROM inserted"
        f" UNION ALL SELECT 'acked', count(*) FROM implied"
    )


MARK_DELIVERED: Final = _mark_statement("outbox", "deliveries")
MARK_UNDELIVERED: Final = _mark_statement("deliveries", "outbox")
# The acknowledgement (ACKED, no error given): the outbox rows go, and the pair
# is acknowledged implicitly (schema 9), no deliveries row written; a row that
# carries an error keeps it, as an explicit ACKED row. Rows already in
# deliveries are updated; implied pairs are acknowledged already.
ACK_PLAIN: Final = (
    f"WITH moved AS (DELETE FROM outbox WHERE {_MARKED} RETURNING sequence_id, error),"
    " kept AS (INSERT INTO deliveries (sequence_id, adapter, state, error, updated_at_ms)"
    " SELECT sequence_id, %(adapter)s, %(state)s, error, %(now)s FROM moved"
    " WHERE error IS NOT NULL RETURNING 1),"
    # A pair has one row at most: only ids with no outbox row can have one in
    # deliveries (usually none: every id was in the outbox).
    " rest AS MATERIALIZED (SELECT unnest(%(ids)b::bigint[]) AS sequence_id"
    " EXCEPT SELECT sequence_id FROM moved),"
    " before AS (SELECT state, count(*) AS n FROM deliveries WHERE adapter = %(adapter)s"
    " AND sequence_id IN (SELECT sequence_id FROM rest) GROUP BY state),"
    " updated AS (UPDATE deliveries SET state = %(state)s, updated_at_ms = %(now)s"
    " WHERE adapter = %(adapter)s AND sequence_id IN (SELECT sequence_id FROM rest) RETURNING 1)"
    " SELECT state, n FROM before UNION ALL SELECT NULL, count(*) FROM moved"
)


UNDELIVERED: Final = (
    "SELECT e.wire FROM outbox AS o JOIN events AS e ON e.sequence_id = o.sequence_id"
    " WHERE o.adapter = %s AND o.sequence_id > %s ORDER BY o.sequence_id LIMIT %s"
)
ADD_DELIVERED_COUNTS: Final = (
    "INSERT INTO delivered_counts (adapter, state, n)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) ORDER BY 1, 2"
    " ON CONFLICT (adapter, state) DO UPDATE SET n = delivered_counts.n + excluded.n"
)
ADD_META: Final = "UPDATE meta SET value = value + %s WHERE key = %s"
# For a state change's transaction: see ``_flush_marks`` (writes.py).
MARK_SETTINGS: Final = (
    "SELECT set_config('synchronous_commit', 'off', true),"
    " set_config('enable_seqscan', 'off', true)"
)
# The append lock (shared), then the batch's ids, in one round trip
# (MATERIALIZED: the lock is held before any nextval).
TAKE_IDS: Final = (
    "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock_shared(%s))"
    " SELECT nextval('event_sequence_id') FROM locked, generate_series(1, %s)"
)
_HOLDERS_WHERE: Final = (
    "locktype = 'advisory' AND granted AND objsubid = 1"
    f" AND classid = {APPEND_LOCK >> 32} AND objid = {APPEND_LOCK & 0xFFFFFFFF}"
)
# The newest visible id and the transactions appending at that moment (the
# lock table is read live, after the statement's snapshot): every id up to it
# is stored, pruned or never will be once those transactions have ended.
SETTLE_MARK: Final = (
    "SELECT (SELECT coalesce(max(sequence_id), 0) FROM events),"
    f" ARRAY(SELECT virtualtransaction FROM pg_locks WHERE {_HOLDERS_WHERE})"
)
#: Which of these transactions still append.
STILL_HOLDING: Final = (
    f"SELECT ARRAY(SELECT virtualtransaction FROM pg_locks WHERE {_HOLDERS_WHERE}"
    " AND virtualtransaction = ANY(%s::text[]))"
)
#: For a follower stopped at a missing id: whether it is there now, and which
#: of the transactions it waits for still append (one cheap look instead of
#: a page read per wake).
STILL_MISSING: Final = (
    "SELECT EXISTS (SELECT 1 FROM events WHERE sequence_id = %s),"
    f" ARRAY(SELECT virtualtransaction FROM pg_locks WHERE {_HOLDERS_WHERE}"
    " AND virtualtransaction = ANY(%s::text[]))"
)
#: Where appends notify the services following the store.
APPEND_CHANNEL: Final = "broadcaster_events"
#: Where runtime configuration changes notify every instance.
CONFIG_CHANNEL: Final = "broadcaster_config"
# After an append's COMMIT, in a transaction of its own. A notifying
# transaction holds a database-wide lock through its commit, so a NOTIFY
# inside the appends would line their commits (and WAL flushes) up one
# behind the other again; this one writes nothing worth a flush.
NOTIFY_APPENDED: Final = (
    f"SELECT set_config('synchronous_commit', 'off', true), pg_notify('{APPEND_CHANNEL}', '')"
)
# Inside a caller's own transaction (the outbox): only its COMMIT may tell.
NOTIFY_IN_TRANSACTION: Final = f"SELECT pg_notify('{APPEND_CHANNEL}', '')"
# The event counter is kept in rows per connection (key 'event_count:<shard>',
# INSERT_APPEND): a single row would be locked by each append until its
# COMMIT and serialise them. Pruning subtracts from 'event_count'; the count
# is the sum.
EVENT_COUNT: Final = (
    "SELECT coalesce(sum(value), 0) FROM meta"
    " WHERE key = 'event_count' OR key LIKE 'event_count:%%'"
)
# Range reads that walk the key from the cursor: the upper bound is applied
# outside the LIMITed walk (callers pass a limit no larger than the range).
# With it inside, a table that grew faster than its statistics got a plan
# that fetched every row above the cursor and sorted them, per page.
READ_ROUTED: Final = (
    "SELECT * FROM (SELECT sequence_id, wire, routed_to, payload_keys FROM events"
    " WHERE sequence_id > %s ORDER BY sequence_id LIMIT %s) AS page WHERE sequence_id <= %s"
)
# read_events(): a range read of the events key. The filters are parameters
# that may be NULL, so one statement serves every call; jsonb's ? tests
# whether the routing array holds the adapter's name. The planner cannot
# estimate that test (nor NULL-able parameters in a generic plan), and a low
# guess makes it scan the whole table and sort; INDEX_ORDER, set for the
# read's transaction only, leaves it the walk of the key from the cursor,
# which stops at the limit.
INDEX_ORDER: Final = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true)"
)
READ_EVENTS: Final = (
    "SELECT wire FROM events WHERE sequence_id > %(after)s AND sequence_id <= %(through)s"
    " AND (%(categories)s::text[] IS NULL OR category = ANY(%(categories)s::text[]))"
    " AND (%(adapter)s::text IS NULL OR routed_to::jsonb ? %(adapter)s::text)"
    " ORDER BY sequence_id LIMIT %(limit)s"
)
FIRST_SEQUENCE_ID: Final = "SELECT coalesce(min(sequence_id), 0) FROM events"
# scan(): one page is four range reads. CASE: the wire only for rows whose
# checksum/payload_keys are NULL (written by an older version).
SCAN_EVENTS: Final = (
    "SELECT * FROM (SELECT sequence_id, category, event_type, created_at_ms, checksum,"
    " payload_keys, routed_to, CASE WHEN checksum IS NULL OR payload_keys IS NULL THEN wire END"
    " FROM events WHERE sequence_id > %s ORDER BY sequence_id LIMIT %s) AS page"
    " WHERE sequence_id <= %s"
)
SCAN_DELIVERED: Final = (
    "SELECT sequence_id, adapter, state FROM deliveries WHERE sequence_id BETWEEN %s AND %s"
)
# The outbox key is (adapter, sequence_id): name the adapters, so each is a range read.
SCAN_OUTBOX: Final = (
    "SELECT sequence_id, adapter, state FROM outbox"
    " WHERE adapter = ANY(%s::text[]) AND sequence_id BETWEEN %s AND %s"
)
SCAN_RECEIPTS: Final = (
    "SELECT sequence_id, adapter, event_type, received_at_ms, checksum, checksum_ok,"
    " consumer, payload_keys, deliveries FROM receipts WHERE sequence_id BETWEEN %s AND %s"
    " ORDER BY sequence_id, id"
)
# One statement for a batch: rows whose key exists are left alone, except that
# a later delivery raises the kept row's count. The counter needs how many
# rows are new: xmax = 0 tells an inserted row from an updated one.
UPSERT_RECEIPTS: Final = (
    "WITH upserted AS (INSERT INTO receipts (sequence_id, adapter, event_type,"
    " received_at_ms, checksum, checksum_ok, consumer, payload_keys, deliveries)"
    " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::text[],"
    " %b::bool[], %b::text[], %b::text[], %b::int[])"
    " ON CONFLICT (sequence_id, adapter, consumer) DO UPDATE"
    " SET deliveries = excluded.deliveries WHERE receipts.deliveries < excluded.deliveries"
    " RETURNING xmax = 0 AS inserted)"
    " SELECT count(*) FILTER (WHERE inserted) FROM upserted"
)
MERGE_CONSUMERS: Final = (
    "INSERT INTO consumers (adapter, consumer, from_sequence_id, through_sequence_id,"
    " first_seen_ms, last_seen_ms, receipts) SELECT * FROM unnest(%b::text[], %b::text[],"
    " %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[])"
    " ON CONFLICT (adapter, consumer) DO UPDATE SET"
    " from_sequence_id = least(consumers.from_sequence_id, excluded.from_sequence_id),"
    " through_sequence_id = greatest(consumers.through_sequence_id,"
    " excluded.through_sequence_id),"
    " first_seen_ms = least(consumers.first_seen_ms, excluded.first_seen_ms),"
    " last_seen_ms = greatest(consumers.last_seen_ms, excluded.last_seen_ms),"
    " receipts = consumers.receipts + excluded.receipts"
)
CONSUMERS: Final = (
    "SELECT adapter, consumer, from_sequence_id, through_sequence_id, first_seen_ms,"
    " last_seen_ms, receipts FROM consumers"
)


# plain_page(): the page's bounds, then three set-based checks, cheapest first.
PAGE_LAST: Final = (
    "SELECT max(sequence_id) FROM"
    " (SELECT sequence_id FROM events WHERE sequence_id > %s ORDER BY sequence_id LIMIT %s)"
    " AS page WHERE sequence_id <= %s"
)
PAGE_REPAIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE sequence_id BETWEEN %s AND %s"
    " AND state = 'repaired')"
)
PAGE_ROUTED: Final = (
    "SELECT category, routed_to, count(*), max(created_at_ms),"
    " count(*) - least(count(checksum), count(payload_keys))"
    " FROM events WHERE sequence_id BETWEEN %s AND %s GROUP BY category, routed_to"
)
# Receipts of the page's events: how many, how many plainly match their event
# (and name an adapter it was routed to), how many distinct (event, adapter),
# and deliveries beyond the first (duplicates).
PAGE_RECEIPTS: Final = (
    "SELECT count(*), count(*) FILTER (WHERE r.event_type = e.event_type AND r.checksum_ok"
    " AND r.checksum = e.checksum"
    " AND (r.payload_keys IS NULL OR r.payload_keys = e.payload_keys)"
    " AND r.received_at_ms - e.created_at_ms <= %(window)s"
    " AND r.adapter IN (SELECT json_array_elements_text(e.routed_to::json))),"
    " count(DISTINCT (r.sequence_id, r.adapter)), coalesce(sum(r.deliveries - 1), 0)"
    " FROM receipts AS r JOIN events AS e ON e.sequence_id = r.sequence_id"
    " WHERE r.sequence_id BETWEEN %(low)s AND %(high)s"
)
STATES_OF: Final = (
    "SELECT adapter, state, error FROM outbox"
    " WHERE adapter = ANY(%(adapters)s::text[]) AND sequence_id = %(seq)s"
    " UNION ALL SELECT adapter, state, error FROM deliveries"
    " WHERE sequence_id = %(seq)s AND adapter = ANY(%(adapters)s::text[])"
)


FACTS: Final = (
    "SELECT sequence_id, event_type, checksum, CASE WHEN checksum IS NULL THEN wire END"
    " FROM events WHERE sequence_id = ANY(%b::bigint[])"
)
