"""The shared event store: PostgreSQL (``STORE_URL=postgresql://...``).

For several broadcaster processes sharing one store. What a caller must know:

* **Sequence ids** come from the PostgreSQL sequence ``event_sequence_id``:
  strictly increasing, never reused, unique across processes. An ``append``
  holds a transaction-scoped advisory lock from ``nextval`` to ``COMMIT``, so
  batches commit in id order: a reader paging with ``undelivered(after=...)``
  can never see id N+1 committed while N is still in flight. A failed append
  may leave a gap (sequence values are not rolled back); gaps are harmless.
* **Durability** is PostgreSQL's: ``append`` returns after ``COMMIT``.
* **Connection.** One connection, used by one call at a time (an asyncio
  lock); concurrent ``mark`` calls are coalesced into one transaction. If the
  server is unreachable or the connection breaks, the call raises
  :class:`~broadcaster.exceptions.StoreUnavailable` and the next call
  reconnects. Other database errors raise :class:`~broadcaster.exceptions.StoreError`.
* **Health.** :meth:`~broadcaster.store.base.Store.health` goes down when a
  write fails or any call finds the database unreachable, and up again on
  the next successful ``append`` or :meth:`PostgresStore.probe` (a write
  transaction that changes nothing): a server that died and came back is
  seen up without waiting for traffic.
* **Runtime config.** ``save_runtime_config`` replaces the ``runtime_config``
  row and inserts the ``audit`` row in one transaction, under an advisory
  lock held until ``COMMIT``: saves from several processes are serialised, so
  audit ids become visible in increasing order and paging with
  ``audit_log(after=...)`` never skips an entry.
* **Schema.** Created and migrated by :meth:`PostgresStore.open` (version in
  ``meta``; migrations serialised across processes by an advisory lock). Table
  names are unqualified: give the broadcaster its own database, or its own
  schema via ``?options=-csearch_path%3Dbroadcaster``.

Schema (version ``SCHEMA_VERSION``)::

    meta(key text PRIMARY KEY, value bigint)  -- schema_version, event_count, receipt_count
    SEQUENCE event_sequence_id (bigint, CACHE 1)
    events(sequence_id bigint PRIMARY KEY, event_id, category, event_type,
           created_at_ms bigint, routed_to text  -- JSON array
           , wire bytea
           , checksum, payload_keys text)        -- copied out of the wire for scan()
    -- per (sequence_id, adapter) routed pair, exactly one row in one of:
    outbox(adapter, sequence_id, state, error, updated_at_ms,     -- queued, failed,
           PRIMARY KEY (adapter, sequence_id))                    -- pending: to deliver
    deliveries(sequence_id, adapter, state, error, updated_at_ms, -- acked, repaired
               PRIMARY KEY (sequence_id, adapter))
    VIEW delivery_state  -- outbox UNION ALL deliveries, for people and reports
    receipts(id bigserial PRIMARY KEY, sequence_id, adapter, event_type,
             received_at_ms, checksum, checksum_ok boolean, consumer, payload_keys)
    delivered_counts(adapter, state, n bigint)  -- rows of deliveries per (adapter, state)
    watermarks(name text PRIMARY KEY, value bigint)  -- e.g. reconciled_through
    audit(id bigserial PRIMARY KEY, at_ms bigint, actor, path,
          before_json, after_json text)           -- JSON text
    runtime_config(id smallint PRIMARY KEY CHECK (id = 1),  -- one row
                   doc_json text, updated_at_ms bigint)

The counters (``meta.event_count``, ``meta.receipt_count``, ``delivered_counts``)
change in the transactions that change what they count, as each transaction's
last statement and in key order (no lock-order deadlock between processes), so
:meth:`PostgresStore.stats` reads a few rows instead of counting millions.
Pruning deletes from ``events``; the sequence never goes back.

Why one module of this size: as for the SQLite store, the class and the
statements whose shapes it relies on (the append lock, the marks, the
outbox) are read together; each method is one transaction.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar

import orjson
import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from ..events import Category, EventDraft, EventRecord, record_from_wire, seal
from ..exceptions import InvalidEvent, StoreError, StoreUnavailable
from . import postgres_rollouts as rollout_sql
from ._batching import (
    GroupCommit,
    MarkRequest,
    assemble_scan,
    coalesce_marks,
    parse_routed,
    routed_pairs,
)
from .base import (
    SETTLED_STATES,
    AuditEntry,
    ConfigChange,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    InstanceInfo,
    LeaseState,
    PlainPage,
    Report,
    ReportOutcome,
    RolloutRow,
    RolloutWrite,
    ScanRow,
    Store,
    StoredEvent,
    StoreHealth,
    StoreStats,
    audit_entry,
    config_json_of,
    consumer_infos,
    judge_reports,
    rollout_json_of,
)
from .postgres_schema import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "APPEND_CHANNEL",
    "MIGRATIONS",
    "PRUNE_CHUNK",
    "SCHEMA_VERSION",
    "PostgresStore",
    "postgres_store_exists",
]

_T = TypeVar("_T")

# Loggers stay lazy proxies (no .bind()): a bound logger captures the output
# stream of the moment it is built, which may be closed later.
_LOGGER_NAME: Final = "broadcaster.store.postgres"

# Advisory lock keys (arbitrary constants, "bcst" + purpose).
_MIGRATE_LOCK: Final = 0x62637374_0001
_APPEND_LOCK: Final = 0x62637374_0002

#: Events deleted per ``prune`` transaction (row locks are held until commit).
PRUNE_CHUNK: Final = 5000

#: Calls that write: their failure sets the store down (see ``_run``).
_WRITES: Final = frozenset(
    {
        "append",
        "mark",
        "record_receipts",
        "register_consumer",
        "prune",
        "set_watermark",
        "save_runtime_config",
        "create_rollout",
        "save_rollout",
        "probe",
    }
)
#: Writes whose success sets it up again: what publishing needs (an ack can
#: succeed where an append cannot, e.g. on a full disk).
_UP_ACTIONS: Final = frozenset({"append", "probe"})


#: Now on the database's clock, in epoch milliseconds.
_NOW_MS: Final = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# Multi-row inserts from arrays: one statement and one round trip per batch.
# %b: binary parameters; text-format bytea arrays cost a regex escape per item.
_INSERT_EVENTS: Final = (
    "INSERT INTO events (sequence_id, event_id, category, event_type, created_at_ms,"
    " routed_to, wire, checksum, payload_keys) SELECT * FROM unnest(%b::bigint[],"
    " %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::bytea[],"
    " %b::text[], %b::text[])"
)
_INSERT_OUTBOX: Final = (
    "INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT a, i, 'queued', %b FROM unnest(%b::text[]) AS a CROSS JOIN unnest(%b::bigint[]) AS i"
)


def _mark_statement(source: str, target: str) -> str:
    """A state change as one statement: move the ``source`` rows to ``target``
    and update the rows already there. (All parts see one snapshot, so the
    UPDATE touches only pre-existing ``target`` rows.) COALESCE keeps the last
    error when a state carries none.

    For the counters it returns the states of the matched ``deliveries`` rows
    as they were (``state, n``) and the number of rows moved (``NULL, n``)."""
    where = "adapter = %(adapter)s AND sequence_id = ANY(%(ids)b::bigint[])"
    return (
        f"WITH before AS (SELECT state, count(*) AS n FROM deliveries WHERE {where}"
        f" GROUP BY state),"
        f" moved AS (DELETE FROM {source} WHERE {where} RETURNING sequence_id, error),"
        f" inserted AS (INSERT INTO {target} (sequence_id, adapter, state, error, updated_at_ms)"
        f" SELECT sequence_id, %(adapter)s, %(state)s, COALESCE(%(error)s, error), %(now)s"
        f" FROM moved RETURNING 1),"
        f" updated AS (UPDATE {target} SET state = %(state)s, error = COALESCE(%(error)s, error),"
        f" updated_at_ms = %(now)s WHERE {where} RETURNING 1)"
        f" SELECT state, n FROM before UNION ALL SELECT NULL, count(*) FROM inserted"
    )


_MARK_DELIVERED: Final = _mark_statement("outbox", "deliveries")
_MARK_UNDELIVERED: Final = _mark_statement("deliveries", "outbox")
_UNDELIVERED: Final = (
    "SELECT e.wire FROM outbox AS o JOIN events AS e ON e.sequence_id = o.sequence_id"
    " WHERE o.adapter = %s AND o.sequence_id > %s ORDER BY o.sequence_id LIMIT %s"
)
_ADD_DELIVERED_COUNTS: Final = (
    "INSERT INTO delivered_counts (adapter, state, n)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[]) ORDER BY 1, 2"
    " ON CONFLICT (adapter, state) DO UPDATE SET n = delivered_counts.n + excluded.n"
)
_ADD_META: Final = "UPDATE meta SET value = value + %s WHERE key = %s"
# For a state change's transaction: see _flush_marks.
_MARK_SETTINGS: Final = (
    "SELECT set_config('synchronous_commit', 'off', true),"
    " set_config('enable_seqscan', 'off', true)"
)
# The append lock, then the batch's ids, in one round trip (MATERIALIZED: the
# lock is taken before any nextval).
_LOCK_AND_TAKE_IDS: Final = (
    "WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s))"
    " SELECT nextval('event_sequence_id') FROM locked, generate_series(1, %s)"
)
#: Where appends notify the services following the store (one round trip).
APPEND_CHANNEL: Final = "broadcaster_events"
_ADD_META_AND_NOTIFY: Final = (
    "UPDATE meta SET value = value + %s"
    f" FROM (SELECT pg_notify('{APPEND_CHANNEL}', '')) AS notified WHERE key = %s"
)
_READ_ROUTED: Final = (
    "SELECT wire, routed_to, payload_keys FROM events"
    " WHERE sequence_id > %s AND sequence_id <= %s ORDER BY sequence_id LIMIT %s"
)
# read_events(): a range read of the events key. The filters are parameters
# that may be NULL, so one statement serves every call; jsonb's ? tests
# whether the routing array holds the adapter's name. The planner cannot
# estimate that test (nor NULL-able parameters in a generic plan), and a low
# guess makes it scan the whole table and sort; _INDEX_ORDER, set for the
# read's transaction only, leaves it the walk of the key from the cursor,
# which stops at the limit.
_INDEX_ORDER: Final = (
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_sort', 'off', true)"
)
_READ_EVENTS: Final = (
    "SELECT wire FROM events WHERE sequence_id > %(after)s"
    " AND (%(categories)s::text[] IS NULL OR category = ANY(%(categories)s::text[]))"
    " AND (%(adapter)s::text IS NULL OR routed_to::jsonb ? %(adapter)s::text)"
    " ORDER BY sequence_id LIMIT %(limit)s"
)
_FIRST_SEQUENCE_ID: Final = "SELECT coalesce(min(sequence_id), 0) FROM events"
# scan(): one page is four range reads. CASE: the wire only for rows whose
# checksum/payload_keys are NULL (written by an older version).
_SCAN_EVENTS: Final = (
    "SELECT sequence_id, category, event_type, created_at_ms, checksum, payload_keys,"
    " routed_to, CASE WHEN checksum IS NULL OR payload_keys IS NULL THEN wire END"
    " FROM events WHERE sequence_id > %s ORDER BY sequence_id LIMIT %s"
)
_SCAN_DELIVERED: Final = (
    "SELECT sequence_id, adapter, state FROM deliveries WHERE sequence_id BETWEEN %s AND %s"
)
# The outbox key is (adapter, sequence_id): name the adapters, so each is a range read.
_SCAN_OUTBOX: Final = (
    "SELECT sequence_id, adapter, state FROM outbox"
    " WHERE adapter = ANY(%s::text[]) AND sequence_id BETWEEN %s AND %s"
)
_SCAN_RECEIPTS: Final = (
    "SELECT sequence_id, adapter, event_type, received_at_ms, checksum, checksum_ok,"
    " consumer, payload_keys, deliveries FROM receipts WHERE sequence_id BETWEEN %s AND %s"
    " ORDER BY sequence_id, id"
)
# One statement for a batch: rows whose key exists are left alone, except that
# a later delivery raises the kept row's count. The counter needs how many
# rows are new: xmax = 0 tells an inserted row from an updated one.
_UPSERT_RECEIPTS: Final = (
    "WITH upserted AS (INSERT INTO receipts (sequence_id, adapter, event_type,"
    " received_at_ms, checksum, checksum_ok, consumer, payload_keys, deliveries)"
    " SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::text[],"
    " %b::bool[], %b::text[], %b::text[], %b::int[])"
    " ON CONFLICT (sequence_id, adapter, consumer) DO UPDATE"
    " SET deliveries = excluded.deliveries WHERE receipts.deliveries < excluded.deliveries"
    " RETURNING xmax = 0 AS inserted)"
    " SELECT count(*) FILTER (WHERE inserted) FROM upserted"
)
_MERGE_CONSUMERS: Final = (
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
_CONSUMERS: Final = (
    "SELECT adapter, consumer, from_sequence_id, through_sequence_id, first_seen_ms,"
    " last_seen_ms, receipts FROM consumers"
)


def _registry(infos: Sequence[ConsumerInfo]) -> tuple[list[Any], ...]:
    """``_MERGE_CONSUMERS``' arrays for ``infos``."""
    return (
        [c.adapter for c in infos],
        [c.consumer for c in infos],
        [c.from_sequence_id for c in infos],
        [c.through_sequence_id for c in infos],
        [c.first_seen_ms for c in infos],
        [c.last_seen_ms for c in infos],
        [c.receipts for c in infos],
    )


def _consumer_info(row: Sequence[Any]) -> ConsumerInfo:
    adapter, consumer, start, through, first, last, n = row
    return ConsumerInfo(consumer, adapter, int(start), int(through), int(first), int(last), int(n))


# plain_page(): the page's bounds, then three set-based checks, cheapest first.
_PAGE_LAST: Final = (
    "SELECT max(sequence_id) FROM"
    " (SELECT sequence_id FROM events WHERE sequence_id > %s ORDER BY sequence_id LIMIT %s) AS p"
)
_PAGE_REPAIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE sequence_id BETWEEN %s AND %s"
    " AND state = 'repaired')"
)
_PAGE_ROUTED: Final = (
    "SELECT category, routed_to, count(*), max(created_at_ms),"
    " count(*) - least(count(checksum), count(payload_keys))"
    " FROM events WHERE sequence_id BETWEEN %s AND %s GROUP BY category, routed_to"
)
# Receipts of the page's events: how many, how many plainly match their event
# (and name an adapter it was routed to), how many distinct (event, adapter),
# and deliveries beyond the first (duplicates).
_PAGE_RECEIPTS: Final = (
    "SELECT count(*), count(*) FILTER (WHERE r.event_type = e.event_type AND r.checksum_ok"
    " AND r.checksum = e.checksum"
    " AND (r.payload_keys IS NULL OR r.payload_keys = e.payload_keys)"
    " AND r.received_at_ms - e.created_at_ms <= %(window)s"
    " AND r.adapter IN (SELECT json_array_elements_text(e.routed_to::json))),"
    " count(DISTINCT (r.sequence_id, r.adapter)), coalesce(sum(r.deliveries - 1), 0)"
    " FROM receipts AS r JOIN events AS e ON e.sequence_id = r.sequence_id"
    " WHERE r.sequence_id BETWEEN %(low)s AND %(high)s"
)
_STATES_OF: Final = (
    "SELECT adapter, state, error FROM outbox"
    " WHERE adapter = ANY(%(adapters)s::text[]) AND sequence_id = %(seq)s"
    " UNION ALL SELECT adapter, state, error FROM deliveries"
    " WHERE sequence_id = %(seq)s AND adapter = ANY(%(adapters)s::text[])"
)


async def _add_counts(cur: psycopg.AsyncCursor[Any], counts: dict[tuple[str, str], int]) -> None:
    """Apply per (adapter, state) changes to ``delivered_counts`` in the caller's
    transaction; in key order, so concurrent transactions lock the counter rows
    in the same order and cannot deadlock on them."""
    rows = [(adapter, state, n) for (adapter, state), n in sorted(counts.items()) if n]
    if rows:
        adapters, states, ns = (list(column) for column in zip(*rows, strict=True))
        await cur.execute(_ADD_DELIVERED_COUNTS, (adapters, states, ns))


async def _append_rows(
    cur: psycopg.AsyncCursor[Any],
    batch: Sequence[tuple[EventDraft, tuple[str, ...]]],
    now_ms: int,
) -> list[EventRecord]:
    """In the caller's open transaction: give ``batch`` the next ids, seal and
    insert it, and tell listeners (:meth:`PostgresStore.wait_for_appends`)
    at commit. Holds the append lock until the transaction ends."""
    # Serialise appends across processes until COMMIT so that ids become
    # visible in increasing order (see module docstring).
    await cur.execute(_LOCK_AND_TAKE_IDS, (_APPEND_LOCK, len(batch)))
    ids = sorted(int(row[0]) for row in await cur.fetchall())
    records = [seal(draft, seq) for (draft, _), seq in zip(batch, ids, strict=True)]
    by_routing: dict[tuple[str, ...], list[int]] = {}
    for (_, routed), seq in zip(batch, ids, strict=True):
        by_routing.setdefault(routed, []).append(seq)
    await cur.execute(
        _INSERT_EVENTS,
        (
            ids,
            [r.event_id for r in records],
            [r.category.value for r in records],
            [r.event_type for r in records],
            [now_ms] * len(records),
            [orjson.dumps(routed).decode() for _, routed in batch],
            [r.wire for r in records],
            [r.checksum for r in records],
            [r.payload_keys for r in records],
        ),
    )
    for routed, seqs in by_routing.items():
        adapters = list(dict.fromkeys(routed))
        if adapters:
            await cur.execute(_INSERT_OUTBOX, (now_ms, adapters, seqs))
    # Serialised by the append lock already; last, so held briefly. The
    # notification is sent at COMMIT, and not at all on rollback.
    await cur.execute(_ADD_META_AND_NOTIFY, (len(records), "event_count"))
    return records


_FACTS: Final = (
    "SELECT sequence_id, event_type, checksum, CASE WHEN checksum IS NULL THEN wire END"
    " FROM events WHERE sequence_id = ANY(%b::bigint[])"
)


def _receipt_arrays(
    receipts: Sequence[ConsumerReceipt],
) -> tuple[tuple[list[Any], ...], tuple[list[Any], ...]]:
    """``_UPSERT_RECEIPTS``' and ``_MERGE_CONSUMERS``' arrays for ``receipts``."""
    # One row per key (ON CONFLICT cannot touch a row twice in a statement):
    # the first receipt as written, with the most deliveries any reported.
    unique: dict[tuple[int, str, str], ConsumerReceipt] = {}
    for r in receipts:
        key = (r.sequence_id, r.adapter, r.consumer)
        first = unique.get(key)
        if first is None:
            unique[key] = r
        elif r.deliveries > first.deliveries:
            unique[key] = replace(first, deliveries=r.deliveries)
    rows = list(unique.values())
    columns = (
        [r.sequence_id for r in rows],
        [r.adapter for r in rows],
        [r.event_type for r in rows],
        [r.received_at_ms for r in rows],
        [r.checksum for r in rows],
        [r.checksum_ok for r in rows],
        [r.consumer for r in rows],
        [r.payload_keys for r in rows],
        [max(r.deliveries, 1) for r in rows],
    )
    return columns, _registry(consumer_infos(receipts))


async def _write_receipts(
    cur: psycopg.AsyncCursor[Any],
    columns: tuple[list[Any], ...],
    registry: tuple[list[Any], ...],
) -> None:
    await cur.execute(_UPSERT_RECEIPTS, columns)
    row = await cur.fetchone()
    added = int(row[0]) if row is not None else 0
    await cur.execute(_MERGE_CONSUMERS, registry)
    # Last statement: the shared counter row is locked only until COMMIT.
    await cur.execute(_ADD_META, (added, "receipt_count"))


class PostgresStore(Store):
    """Event store in PostgreSQL, safe for several broadcaster processes.

    ``url``: a libpq URL (``postgresql://user:pw@host:5432/db``; ``postgres://``
    works too). ``connect_timeout``: seconds to wait for a connection (used if
    the URL sets none). ``op_timeout``: an operation taking longer is abandoned,
    its connection dropped, and :class:`StoreUnavailable` raised (a call that
    timed out may or may not have committed). ``clock``: wall time in seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        op_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            params = conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"invalid PostgreSQL URL: {exc}") from None
        self._url = url
        self._connect_kwargs: dict[str, Any] = {}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = max(1, round(connect_timeout))
        self._op_timeout = op_timeout
        self._clock = clock
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # wait_for_appends()'s own connection (LISTEN).
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._opened = False
        self._marks = GroupCommit(self._flush_marks)
        # Never log the URL: it may hold a password.
        self._log = structlog.get_logger(
            _LOGGER_NAME, store="postgres", host=params.get("host"), dbname=params.get("dbname")
        )

    # -- plumbing ---------------------------------------------------------

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        await self._discard()
        # autocommit: every unit of work is an explicit conn.transaction(), so no
        # transaction is left open (holding locks) between calls.
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **self._connect_kwargs
        )
        self._log.info("store connected")
        return self._conn

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:
                pass

    async def _run(
        self, action: str, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]
    ) -> _T:
        """Run ``body`` with the connection, one call at a time, translating
        errors, and keep :meth:`health` (see the module doc)."""
        if not self._opened:
            raise StoreError("postgres store is not open")
        try:
            result = await self._run_once(action, body)
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable) or action in _WRITES:
                self._write_failed(str(exc))
            raise
        if action in _UP_ACTIONS:
            self._write_succeeded()
        return result

    async def _run_once(
        self, action: str, body: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]
    ) -> _T:
        async with self._lock:
            try:
                async with asyncio.timeout(self._op_timeout):
                    conn = await self._connect()
                    return await body(conn)
            except psycopg.OperationalError as exc:
                # Connection refused, server gone, admin shutdown, disk full: the
                # connection cannot be trusted; the next call reconnects.
                await self._discard()
                self._log.warning("store unavailable", action=action, error=str(exc))
                raise StoreUnavailable(f"postgres: {action}: {exc}".strip()) from exc
            except TimeoutError as exc:
                # Cancelled mid-protocol: the connection is in an unknown state.
                await self._discard()
                raise StoreUnavailable(
                    f"postgres: {action}: no answer within {self._op_timeout}s"
                ) from exc
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    await self._discard()
                    raise StoreUnavailable(f"postgres: {action}: {exc}") from exc
                raise StoreError(f"postgres: {action}: {exc}") from exc

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent.

        Raises :class:`StoreUnavailable` if the server cannot be reached, and
        :class:`StoreError` if the database's schema is newer than this code.
        """
        if self._opened:
            return
        self._opened = True
        try:
            found = await self._run("open", self._migrate)
        except BaseException:
            self._opened = False
            await self._discard()
            raise
        self._log.info("store opened", schema_version=SCHEMA_VERSION, migrated_from=found)

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> int:
        async with conn.transaction(), conn.cursor() as cur:
            # Two processes starting together: one migrates, the other waits and
            # then finds the schema current.
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value bigint NOT NULL)"
            )
            await cur.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', 0)"
                " ON CONFLICT (key) DO NOTHING"
            )
            await cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = await cur.fetchone()
            assert row is not None
            found = int(row[0])
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema version {found} is newer than this code's "
                    f"{SCHEMA_VERSION}; upgrade the broadcaster"
                )
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await cur.execute(statement)
                await cur.execute(
                    "UPDATE meta SET value = %s WHERE key = 'schema_version'", (version,)
                )
        return found

    async def probe(self) -> StoreHealth:
        """A write transaction that changes nothing (reconnecting if need be);
        :meth:`health` after it."""
        if not self._opened:
            return self.health()

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")

        try:
            await self._run("probe", body)
        except StoreError:
            pass
        return self.health()

    async def close(self) -> None:
        """Flush queued marks and close the connection. Idempotent."""
        if not self._opened:
            return
        try:
            await self._marks.wait_idle()
        finally:
            self._opened = False
            listener, self._listener = self._listener, None
            if listener is not None:
                await listener.close()
            async with self._lock:
                await self._discard()
            self._log.info("store closed")

    # -- writes -----------------------------------------------------------

    async def append(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord]:
        """Seal and store ``items`` in one transaction; see :meth:`Store.append`.

        Raises :class:`StoreUnavailable` if the database is unreachable; nothing
        of the batch is stored then.
        """
        if not items:
            return []
        batch = list(items)
        now_ms = int(self._clock() * 1000)

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[EventRecord]:
            async with conn.transaction(), conn.cursor() as cur:
                return await _append_rows(cur, batch, now_ms)

        return await self._run("append", body)

    async def append_in(
        self,
        conn: psycopg.AsyncConnection[Any],
        items: Sequence[tuple[EventDraft, tuple[str, ...]]],
    ) -> list[EventRecord]:
        """:meth:`append` inside the caller's open transaction on ``conn`` (a
        connection to this store's database): the events exist, and are
        delivered, if and only if the caller commits. The transactional
        outbox (docs/deploying.md).

        Ordering: the append lock is taken in that transaction and held until
        it ends, so no other append commits meanwhile and ids still become
        visible in increasing order — at the price that every other producer
        waits for the caller's ``COMMIT``: keep such transactions short.
        Raises :class:`~broadcaster.exceptions.InvalidEvent` (field
        ``connection``) when ``conn`` has no transaction to write in, and
        :class:`StoreUnavailable` / :class:`StoreError` as :meth:`append`
        (the caller's transaction is then failed: roll it back)."""
        if not items:
            return []
        status = conn.info.transaction_status
        if status == TransactionStatus.INERROR:
            raise InvalidEvent("connection", "its transaction has failed: roll it back first")
        if status not in (TransactionStatus.INTRANS, TransactionStatus.IDLE) or (
            status == TransactionStatus.IDLE and conn.autocommit
        ):
            raise InvalidEvent(
                "connection",
                "must be in an open transaction (async with conn.transaction(): ...)",
            )
        try:
            async with conn.cursor() as cur:
                return await _append_rows(cur, list(items), int(self._clock() * 1000))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"postgres: append_in: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"postgres: append_in: {exc}") from exc

    async def mark(
        self,
        adapter: str,
        sequence_ids: Sequence[int],
        state: DeliveryState,
        error: str | None = None,
    ) -> None:
        """Set ``adapter``'s state on ``sequence_ids`` (unknown ids/adapters are
        ignored). ``error=None`` keeps the last recorded error. Concurrent calls
        share one transaction; returns once it committed."""
        if not sequence_ids:
            return
        if not self._opened:
            raise StoreError("postgres store is not open")
        await self._marks.submit(MarkRequest(adapter, sequence_ids, DeliveryState(state), error))

    async def _flush_marks(self, requests: list[MarkRequest]) -> None:
        now_ms = int(self._clock() * 1000)
        # Consecutive requests of the same kind share one executemany, which
        # pipelines them (one round trip); the order of requests is kept.
        groups: list[tuple[str, list[dict[str, Any]]]] = []
        coalesced = coalesce_marks(requests)
        for r in coalesced:
            statement = _MARK_DELIVERED if r.state in SETTLED_STATES else _MARK_UNDELIVERED
            params = {
                "state": r.state.value,
                "error": r.error,
                "now": now_ms,
                "adapter": r.adapter,
                "ids": r.sequence_ids,
            }
            if groups and groups[-1][0] == statement:
                groups[-1][1].append(params)
            else:
                groups.append((statement, [params]))

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                # A state change lost in a server crash only makes recovery
                # re-send an event (at-least-once, the duplicate counted):
                # no need to wait for the WAL flush, which the appends, whose
                # durability is the promise, then have to themselves. And the
                # key, always: on a table that grew faster than its
                # statistics, the planner scanned all of it for every id of
                # a batch (docs/benchmarks.md, "Producers in other processes").
                await cur.execute(_MARK_SETTINGS)
                results: list[list[tuple[str | None, int]]] = []
                for statement, params_seq in groups:
                    await cur.executemany(statement, params_seq, returning=True)
                    results += [await result.fetchall() async for result in cur.results()]
                counts: dict[tuple[str, str], int] = {}
                for request, rows in zip(coalesced, results, strict=True):
                    adapter, state = request.adapter, request.state.value
                    delivered = request.state in SETTLED_STATES
                    for old, n in rows:
                        if old is None:  # rows moved from the outbox
                            if delivered:
                                counts[adapter, state] = counts.get((adapter, state), 0) + n
                            continue
                        # deliveries rows that left ``old``: for ``state`` or the outbox
                        counts[adapter, old] = counts.get((adapter, old), 0) - n
                        if delivered:
                            counts[adapter, state] = counts.get((adapter, state), 0) + n
                await _add_counts(cur, counts)

        await self._run("mark", body)

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        """Store consumer receipts in one transaction, idempotently per
        (event, adapter, consumer); see :meth:`Store.record_receipts`."""
        if not receipts:
            return
        columns, registry = _receipt_arrays(receipts)

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await _write_receipts(cur, columns, registry)

        await self._run("record_receipts", body)

    async def record_reports(self, reports: Sequence[Report]) -> ReportOutcome:
        """See :meth:`Store.record_reports`: the stored events are read and the
        receipts written in one transaction, one round trip less than a read
        and a write apart."""
        if not reports:
            return ReportOutcome(0, 0, [])
        wanted = list({r[0] for r in reports})

        async def body(conn: psycopg.AsyncConnection[Any]) -> ReportOutcome:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(_FACTS, (wanted,))
                facts: dict[int, tuple[str, str]] = {}
                for seq, event_type, checksum, wire in await cur.fetchall():
                    if checksum is None:  # a row of a version before the column
                        checksum = record_from_wire(bytes(wire)).checksum
                    facts[int(seq)] = (event_type, checksum)
                receipts, outcome = judge_reports(reports, facts)
                if receipts:
                    await _write_receipts(cur, *_receipt_arrays(receipts))
                return outcome

        return await self._run("record_reports", body)

    async def register_consumer(self, consumer: str, adapter: str, at_ms: int) -> ConsumerInfo:
        """See :meth:`Store.register_consumer`: from the id after the last one
        the sequence handed out."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> ConsumerInfo:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SELECT last_value, is_called FROM event_sequence_id")
                seq = await cur.fetchone()
                assert seq is not None
                start = int(seq[0]) + 1 if seq[1] else int(seq[0])
                row = ConsumerInfo(consumer, adapter, start, 0, at_ms, at_ms, 0)
                await cur.execute(_MERGE_CONSUMERS, _registry([row]))
                await cur.execute(
                    _CONSUMERS + " WHERE adapter = %s AND consumer = %s", (adapter, consumer)
                )
                found = await cur.fetchone()
            assert found is not None
            return _consumer_info(found)

        return await self._run("register_consumer", body)

    async def consumers(self) -> list[ConsumerInfo]:
        """See :meth:`Store.consumers`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[ConsumerInfo]:
            async with conn.cursor() as cur:
                await cur.execute(_CONSUMERS + " ORDER BY adapter, consumer")
                return [_consumer_info(row) for row in await cur.fetchall()]

        return await self._run("consumers", body)

    async def event_facts(self, sequence_ids: Sequence[int]) -> dict[int, EventFacts]:
        """See :meth:`Store.event_facts`: one indexed read for the batch."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> dict[int, EventFacts]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT sequence_id, event_type, checksum, routed_to,"
                    " CASE WHEN checksum IS NULL THEN wire END FROM events"
                    " WHERE sequence_id = ANY(%b::bigint[])",
                    (list(sequence_ids),),
                )
                rows = await cur.fetchall()
            facts: dict[int, EventFacts] = {}
            routings: dict[str, tuple[str, ...]] = {}
            for seq, event_type, checksum, routed_json, wire in rows:
                routed = routings.get(routed_json)
                if routed is None:
                    routed = routings[routed_json] = tuple(orjson.loads(routed_json))
                if checksum is None:  # a row of a version before the column
                    checksum = record_from_wire(bytes(wire)).checksum
                facts[int(seq)] = EventFacts(event_type, checksum, routed)
            return facts

        return await self._run("event_facts", body)

    # -- reads ------------------------------------------------------------

    async def undelivered(
        self, adapter: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Events still to deliver to ``adapter`` (queued, failed, pending) with
        sequence id > ``after``, in order, at most ``limit`` (partial index)."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[bytes]:
            async with conn.cursor() as cur:
                await cur.execute(_UNDELIVERED, (adapter, after, limit))
                return [bytes(row[0]) for row in await cur.fetchall()]

        wires = await self._run("undelivered", body)
        return [record_from_wire(wire) for wire in wires]

    async def get(self, sequence_id: int) -> StoredEvent | None:
        """One event with routing, per-adapter states, errors and receipts."""

        async def body(
            conn: psycopg.AsyncConnection[Any],
        ) -> tuple[Any, list[Any], list[Any]] | None:
            # One snapshot for the three reads.
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute(
                    "SELECT wire, routed_to, created_at_ms FROM events WHERE sequence_id = %s",
                    (sequence_id,),
                )
                row = await cur.fetchone()
                if row is None:
                    return None
                await cur.execute(
                    _STATES_OF, {"seq": sequence_id, "adapters": orjson.loads(row[1])}
                )
                deliveries = await cur.fetchall()
                await cur.execute(
                    "SELECT sequence_id, adapter, event_type, received_at_ms, checksum,"
                    " checksum_ok, consumer, payload_keys, deliveries FROM receipts"
                    " WHERE sequence_id = %s ORDER BY id",
                    (sequence_id,),
                )
                return row, deliveries, await cur.fetchall()

        found = await self._run("get", body)
        if found is None:
            return None
        (wire, routed_json, created_ms), deliveries, receipt_rows = found
        routed = tuple(orjson.loads(routed_json))
        by_adapter = {adapter: (state, error) for adapter, state, error in deliveries}
        return StoredEvent(
            record=record_from_wire(bytes(wire)),
            routed_to=routed,
            created_at_ms=int(created_ms),
            states={a: DeliveryState(by_adapter[a][0]) for a in routed if a in by_adapter},
            errors={a: e for a, (_, e) in by_adapter.items() if e is not None},
            receipts=tuple(
                ConsumerReceipt(
                    sequence_id=int(seq),
                    adapter=adapter,
                    event_type=event_type,
                    received_at_ms=int(received),
                    checksum=checksum,
                    checksum_ok=bool(ok),
                    consumer=consumer,
                    payload_keys=keys,
                    deliveries=int(n),
                )
                for seq, adapter, event_type, received, checksum, ok, consumer, keys, n in (
                    receipt_rows
                )
            ),
        )

    async def last_sequence_id(self) -> int:
        """The highest sequence id ever handed out by the database's sequence
        (including ids of failed appends, which stay unused)."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.cursor() as cur:
                await cur.execute("SELECT last_value, is_called FROM event_sequence_id")
                row = await cur.fetchone()
                assert row is not None
                return int(row[0]) if row[1] else 0

        return await self._run("last_sequence_id", body)

    async def committed_through(self) -> int:
        """See :meth:`Store.committed_through`: appends commit in id order
        (the append lock), so the newest visible id has every lower one
        committed or abandoned."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.cursor() as cur:
                await cur.execute("SELECT coalesce(max(sequence_id), 0) FROM events")
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])

        return await self._run("committed_through", body)

    async def read_routed(
        self, *, after: int, limit: int, through: int | None = None
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        """See :meth:`Store.read_routed`: one range read of the primary key
        (appends commit in id order: the append lock)."""
        if limit <= 0:
            return []
        high = 2**63 - 1 if through is None else through

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[tuple[bytes, str, str | None]]:
            async with conn.cursor() as cur:
                await cur.execute(_READ_ROUTED, (after, high, limit))
                return [(bytes(w), routed, keys) for w, routed, keys in await cur.fetchall()]

        rows = await self._run("read_routed", body)
        cache: dict[str, tuple[str, ...]] = {}
        return [
            (record_from_wire(wire, keys), parse_routed(routed, cache))
            for wire, routed, keys in rows
        ]

    async def wait_for_appends(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """See :meth:`Store.wait_for_appends`: ``LISTEN`` on a connection of
        its own; every append notifies at its commit. A broken or refused
        listening connection returns at once (the next call reconnects), so
        a caller that reads after each return still sees every event."""
        if not self._opened:
            raise StoreError("postgres store is not open")
        try:
            listener = self._listener
            if listener is None or listener.closed or listener.broken:
                listener = self._listener = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, **self._connect_kwargs
                )
                await listener.execute(f"LISTEN {APPEND_CHANNEL}")
                return  # appends before LISTEN were not heard: read once now
            async for _ in listener.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            listener, self._listener = self._listener, None
            if listener is not None:
                await listener.close()
            self._log.warning("store listen failed", error=str(exc))
            await asyncio.sleep(min(timeout, 1.0))

    async def read_events(
        self,
        *,
        after: int,
        limit: int,
        categories: Collection[Category] | None = None,
        adapter: str | None = None,
    ) -> list[EventRecord]:
        """See :meth:`Store.read_events`: one range read of the primary key;
        rows the filters refuse are skipped by the server. Appends commit in
        id order (see the module doc), so a page never skips an id that
        commits later."""
        if limit <= 0:
            return []
        params = {
            "after": after,
            "categories": None if categories is None else sorted(c.value for c in categories),
            "adapter": adapter,
            "limit": limit,
        }

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[bytes]:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(_INDEX_ORDER)
                await cur.execute(_READ_EVENTS, params)
                return [bytes(row[0]) for row in await cur.fetchall()]

        wires = await self._run("read_events", body)
        return [record_from_wire(wire) for wire in wires]

    async def first_sequence_id(self) -> int:
        """The lowest stored sequence id (0: none), from the primary key's first entry."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.cursor() as cur:
                await cur.execute(_FIRST_SEQUENCE_ID)
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])

        return await self._run("first_sequence_id", body)

    async def scan(self, *, after: int = 0, limit: int = 1000) -> list[ScanRow]:
        """Events with sequence id > ``after``, in order, at most ``limit``, with
        states and receipts; see :meth:`Store.scan`. One page is four range
        reads in one REPEATABLE READ transaction (one snapshot)."""
        if limit <= 0:
            return []

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[ScanRow]:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute(_SCAN_EVENTS, (after, limit))
                events = await cur.fetchall()
                if not events:
                    return []
                low, high = events[0][0], events[-1][0]
                routed_cache: dict[str, tuple[str, ...]] = {}
                adapters: dict[str, None] = {}
                for routed_json in {row[6] for row in events}:
                    adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
                await cur.execute(_SCAN_DELIVERED, (low, high))
                states = await cur.fetchall()
                if adapters:
                    await cur.execute(_SCAN_OUTBOX, (list(adapters), low, high))
                    states += await cur.fetchall()
                await cur.execute(_SCAN_RECEIPTS, (low, high))
                receipts = await cur.fetchall()
            return assemble_scan(events, states, receipts, routed_cache)

        return await self._run("scan", body)

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        """See :meth:`Store.plain_page`: a few aggregate queries in one
        REPEATABLE READ transaction; no row of the page is sent to Python.
        Pairs are proven covered by receipts from totals: every receipt plainly
        matches a pair routed to its adapter and is a first delivery, and the
        distinct (event, adapter) among them are as many as the routed pairs."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> PlainPage:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute(_PAGE_LAST, (after, limit))
                row = await cur.fetchone()
                if row is None or row[0] is None:
                    return PlainPage(0, {})
                low, high = after + 1, int(row[0])
                await cur.execute(_PAGE_REPAIRED, (low, high))
                repaired = await cur.fetchone()
                if repaired is not None and repaired[0]:
                    return PlainPage(high, None)
                await cur.execute(_PAGE_ROUTED, (low, high))
                expected = routed_pairs(await cur.fetchall(), judged_before_ms, {})
                if expected is None:
                    return PlainPage(high, None)
                counts, pairs = expected
                await cur.execute(_PAGE_RECEIPTS, {"low": low, "high": high, "window": window_ms})
                totals = await cur.fetchone()
            assert totals is not None  # an aggregate without GROUP BY returns one row
            received, plain, distinct, duplicates = totals
            if duplicates or distinct != pairs or plain != received:
                return PlainPage(high, None)
            return PlainPage(high, counts)

        return await self._run("plain_page", body)

    async def stats(self) -> StoreStats:
        """Counts per adapter and state, oldest undelivered event per adapter;
        see :meth:`Store.stats`. Reads counters kept by the writes plus the
        (small) outbox, in one snapshot."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> StoreStats:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute(
                    "SELECT key, value FROM meta WHERE key IN ('event_count', 'receipt_count')"
                )
                meta = {key: int(value) for key, value in await cur.fetchall()}
                await cur.execute(
                    "SELECT adapter, state, n FROM delivered_counts WHERE n <> 0"
                    " UNION ALL SELECT adapter, state, count(*) FROM outbox GROUP BY 1, 2"
                )
                states: dict[str, dict[str, int]] = {}
                for adapter, state, n in await cur.fetchall():
                    states.setdefault(adapter, {})[state] = int(n)
                oldest: dict[str, int | None] = dict.fromkeys(states)
                await cur.execute(
                    "SELECT o.adapter, e.created_at_ms FROM (SELECT adapter, min(sequence_id)"
                    " AS sequence_id FROM outbox GROUP BY adapter) AS o"
                    " JOIN events AS e ON e.sequence_id = o.sequence_id"
                )
                for adapter, created in await cur.fetchall():
                    oldest[adapter] = int(created)
                await cur.execute("SELECT last_value, is_called FROM event_sequence_id")
                row = await cur.fetchone()
                assert row is not None
            return StoreStats(
                last_sequence_id=int(row[0]) if row[1] else 0,
                events=meta["event_count"],
                receipts=meta["receipt_count"],
                states=states,
                oldest_undelivered_ms=oldest,
            )

        return await self._run("stats", body)

    async def prune(self, *, through: int, older_than_ms: int) -> int:
        """Delete fully delivered events with sequence id <= ``through`` created
        before ``older_than_ms``, with their delivery rows and receipts; see
        :meth:`Store.prune`. One transaction per :data:`PRUNE_CHUNK` events;
        ids come from the sequence, which pruning never moves back."""
        deleted = 0
        cursor = 0
        while True:
            count, cursor, done = await self._run(
                "prune", self._prune_chunk(cursor, through, older_than_ms)
            )
            deleted += count
            if done:
                break
        if deleted:
            self._log.info("events pruned", count=deleted, through=through)
        return deleted

    @staticmethod
    def _prune_chunk(
        cursor: int, through: int, older_than_ms: int
    ) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[tuple[int, int, bool]]]:
        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int, bool]:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    "SELECT sequence_id, routed_to FROM events WHERE sequence_id > %s"
                    " AND sequence_id <= %s AND created_at_ms < %s ORDER BY sequence_id LIMIT %s",
                    (cursor, through, older_than_ms, PRUNE_CHUNK),
                )
                candidates = await cur.fetchall()
                if not candidates:
                    return 0, cursor, True
                ids = [int(seq) for seq, _ in candidates]
                low, high = ids[0], ids[-1]
                finished = len(candidates) < PRUNE_CHUNK
                routed_cache: dict[str, tuple[str, ...]] = {}
                adapters: dict[str, None] = {}
                for routed_json in {row[1] for row in candidates}:
                    adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
                # Lock the delivered rows first: another process's mark() can then
                # no longer move them back to the outbox before we commit, and the
                # outbox check below (a new snapshot) sees every move made before.
                await cur.execute(
                    "SELECT 1 FROM deliveries WHERE sequence_id = ANY(%s::bigint[])"
                    " ORDER BY sequence_id, adapter FOR UPDATE",
                    (ids,),
                )
                await cur.execute(_SCAN_OUTBOX, (list(adapters), low, high))
                undelivered = {seq for seq, _, _ in await cur.fetchall()}
                doomed = [seq for seq in ids if seq not in undelivered]
                if not doomed:
                    return 0, high, finished
                await cur.execute(
                    "WITH gone AS (DELETE FROM deliveries WHERE sequence_id = ANY(%s::bigint[])"
                    " RETURNING adapter, state) SELECT adapter, state, count(*) FROM gone"
                    " GROUP BY 1, 2",
                    (doomed,),
                )
                counts = {(a, s): -int(n) for a, s, n in await cur.fetchall()}
                await cur.execute(
                    "DELETE FROM receipts WHERE sequence_id = ANY(%s::bigint[])", (doomed,)
                )
                receipts = cur.rowcount
                await cur.execute(
                    "DELETE FROM events WHERE sequence_id = ANY(%s::bigint[])", (doomed,)
                )
                events = cur.rowcount
                await cur.execute(
                    "INSERT INTO watermarks (name, value) VALUES ('pruned_through', %s)"
                    " ON CONFLICT (name) DO UPDATE"
                    " SET value = greatest(watermarks.value, excluded.value)",
                    (max(doomed),),
                )
                # Counters last, in key order (see _add_counts).
                await _add_counts(cur, counts)
                await cur.execute(_ADD_META, (-events, "event_count"))
                await cur.execute(_ADD_META, (-receipts, "receipt_count"))
            return events, high, finished

        return body

    async def get_watermark(self, name: str) -> int:
        """A persisted counter (``watermarks`` table); 0 if never set."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.cursor() as cur:
                await cur.execute("SELECT value FROM watermarks WHERE name = %s", (name,))
                row = await cur.fetchone()
                return 0 if row is None else int(row[0])

        return await self._run("get_watermark", body)

    async def set_watermark(self, name: str, value: int) -> None:
        """Persist a counter (committed before this returns)."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.cursor() as cur:
                await cur.execute(
                    "INSERT INTO watermarks (name, value) VALUES (%s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    (name, int(value)),
                )

        await self._run("set_watermark", body)

    # -- runtime config and audit trail -------------------------------------

    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        """Replace the ``runtime_config`` row and insert the ``audit`` row in one
        transaction; see :meth:`Store.save_runtime_config`. Values are serialised
        before the transaction starts; a failed call leaves both tables as they were."""
        doc, before_json, after_json = config_json_of(config, before, after)

        async def body(conn: psycopg.AsyncConnection[Any]) -> AuditEntry:
            async with conn.transaction(), conn.cursor() as cur:
                texts = (doc, path, before_json, after_json)
                return await rollout_sql.write_config(cur, texts, actor, self._now_ms)

        return await self._run("save_runtime_config", body)

    # -- several service instances ---------------------------------------------

    async def heartbeat(
        self, instance_id: str, info: Mapping[str, Any], *, expire_after_s: float
    ) -> None:
        """See :meth:`Store.heartbeat` (the database's clock)."""
        info_json = json.dumps(dict(info))

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    f"INSERT INTO instances VALUES (%(id)s, {_NOW_MS}, {_NOW_MS}, %(info)s)"
                    f" ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at_ms = {_NOW_MS},"
                    " info_json = %(info)s",
                    {"id": instance_id, "info": info_json},
                )
                await cur.execute(
                    f"DELETE FROM instances WHERE heartbeat_at_ms < {_NOW_MS} - %s",
                    (int(expire_after_s * 1000),),
                )

        await self._run("heartbeat", body)

    async def instances(self, *, expire_after_s: float) -> list[InstanceInfo]:
        """See :meth:`Store.instances` (the database's clock)."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[InstanceInfo]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT instance_id, started_at_ms, heartbeat_at_ms, info_json FROM instances"
                    f" WHERE heartbeat_at_ms >= {_NOW_MS} - %s ORDER BY instance_id",
                    (int(expire_after_s * 1000),),
                )
                rows = await cur.fetchall()
            return [InstanceInfo(i, int(a), int(h), json.loads(j)) for i, a, h, j in rows]

        return await self._run("instances", body)

    async def claim_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        """See :meth:`Store.claim_lease`: one statement decides, under the
        row's lock, by the database's clock."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> LeaseState:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    f"INSERT INTO leases VALUES (%(name)s, %(holder)s, {_NOW_MS} + %(ttl)s)"
                    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                    " expires_at_ms = excluded.expires_at_ms"
                    f" WHERE leases.holder = excluded.holder OR leases.expires_at_ms < {_NOW_MS}"
                    " RETURNING expires_at_ms",
                    {"name": name, "holder": holder, "ttl": int(ttl_s * 1000)},
                )
                won = await cur.fetchone()
                if won is not None:
                    return LeaseState(name, holder, int(won[0]), True)
                await cur.execute(
                    "SELECT holder, expires_at_ms FROM leases WHERE name = %s", (name,)
                )
                row = await cur.fetchone()
            assert row is not None  # the INSERT met a row it did not take
            return LeaseState(name, str(row[0]), int(row[1]), False)

        return await self._run("claim_lease", body)

    async def release_lease(self, name: str, holder: str) -> None:
        """See :meth:`Store.release_lease`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    "DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder)
                )

        await self._run("release_lease", body)

    async def runtime_config(self) -> dict[str, Any] | None:
        """The ``runtime_config`` document, or ``None`` if never saved."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> str | None:
            async with conn.cursor() as cur:
                await cur.execute("SELECT doc_json FROM runtime_config WHERE id = 1")
                row = await cur.fetchone()
                return None if row is None else str(row[0])

        doc_json = await self._run("runtime_config", body)
        if doc_json is None:
            return None
        doc: dict[str, Any] = json.loads(doc_json)
        return doc

    async def audit_log(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with id > ``after``, oldest first, at most ``limit``
        (a range read of the ``audit`` primary key)."""
        if limit <= 0:
            return []

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.cursor() as cur:
                await cur.execute(rollout_sql.AUDIT_PAGE, (after, limit))
                return await cur.fetchall()

        rows = await self._run("audit_log", body)
        return [audit_entry(*row) for row in rows]

    # -- progressive rollouts ---------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def create_rollout(
        self, category: str, doc: Mapping[str, Any], *, change: ConfigChange | None = None
    ) -> RolloutWrite:
        """See :meth:`Store.create_rollout`: one transaction."""
        doc_json, texts = rollout_json_of(doc, change)

        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[RolloutRow, AuditEntry | None]:
            async with conn.transaction(), conn.cursor() as cur:
                return await rollout_sql.create_rollout(
                    cur, category, doc_json, texts, self._now_ms
                )

        return RolloutWrite(*await self._run("create_rollout", body))

    async def save_rollout(
        self,
        rollout_id: int,
        doc: Mapping[str, Any],
        *,
        state: str,
        version: int,
        change: ConfigChange | None = None,
    ) -> RolloutWrite:
        """See :meth:`Store.save_rollout`: one transaction."""
        doc_json, texts = rollout_json_of(doc, change)

        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[RolloutRow, AuditEntry | None]:
            async with conn.transaction(), conn.cursor() as cur:
                return await rollout_sql.save_rollout(
                    cur, rollout_id, doc_json, state, version, texts, self._now_ms
                )

        return RolloutWrite(*await self._run("save_rollout", body))

    async def rollout(self, rollout_id: int) -> RolloutRow | None:
        """See :meth:`Store.rollout`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> RolloutRow | None:
            async with conn.cursor() as cur:
                return await rollout_sql.read_rollout(cur, rollout_id)

        return await self._run("rollout", body)

    async def rollouts(self, *, active_only: bool = False) -> list[RolloutRow]:
        """See :meth:`Store.rollouts`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[RolloutRow]:
            async with conn.cursor() as cur:
                return await rollout_sql.read_rollouts(cur, active_only)

        return await self._run("rollouts", body)


async def postgres_store_exists(url: str, *, connect_timeout: int = 5) -> bool:
    """Whether the database at ``url`` holds a store (its ``meta`` table on
    the connection's search path), asked without creating anything."""
    try:
        async with (
            await psycopg.AsyncConnection.connect(
                url, connect_timeout=connect_timeout, autocommit=True
            ) as conn,
            conn.cursor() as cur,
        ):
            await cur.execute("SELECT to_regclass('meta') IS NOT NULL")
            row = await cur.fetchone()
    except psycopg.Error as exc:
        raise StoreUnavailable(f"PostgreSQL is not reachable: {exc}".strip()) from exc
    return bool(row and row[0])
