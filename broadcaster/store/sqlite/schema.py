"""The SQLite store's schema: its ordered migrations and :func:`migrate`,
which brings a database file up to the version this code writes.

Schema (``SCHEMA_VERSION`` in ``meta``; created and migrated by :meth:`SQLiteStore.open`)::

    meta(key TEXT PRIMARY KEY, value INTEGER)     -- schema_version, last_sequence_id,
                                        -- event_count, receipt_count, outbox_through
    events(sequence_id INTEGER PRIMARY KEY, event_id, category, event_type,
           created_at_ms, routed_to TEXT  -- JSON array, routing order
           , wire BLOB                    -- the sealed JSON frame
           , checksum, payload_keys TEXT) -- copied out of the wire for scan()
    -- per (sequence_id, adapter) routed pair up to meta.outbox_through, at most
    -- one row in one of these; none: acknowledged (later pairs, "the tail", are
    -- queued; see _outbox):
    outbox(adapter, sequence_id, state, error, updated_at_ms,     -- queued, failed,
           PRIMARY KEY (adapter, sequence_id)) WITHOUT ROWID      -- pending: to deliver
    deliveries(sequence_id, adapter, state, error, updated_at_ms, -- repaired; acked
               PRIMARY KEY (sequence_id, adapter)) WITHOUT ROWID  -- with an error
    VIEW delivery_state  -- every routed pair's state, for people and reports
    receipts(id INTEGER PRIMARY KEY, sequence_id, adapter, event_type,
             received_at_ms, checksum, checksum_ok, consumer, payload_keys,
             dup,          -- not the first receipt of its (event, adapter)
             deliveries,   -- deliveries to this consumer (1: no duplicate)
             UNIQUE (sequence_id, adapter, consumer))
    consumers(adapter, consumer,                -- who watches which path:
              from_sequence_id, through_sequence_id,  -- from which event, how far
              first_seen_ms, last_seen_ms, receipts)
    delivered_counts(adapter, state, n)  -- delivered pairs per (adapter, state)
    watermarks(name TEXT PRIMARY KEY, value INTEGER)  -- e.g. reconciled_through
    audit(id INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids never reused
          at_ms, actor, path, before_json, after_json TEXT)
    runtime_config(id INTEGER PRIMARY KEY CHECK (id = 1),  -- one row
                   doc_json TEXT, updated_at_ms INTEGER)
    instances(instance_id TEXT PRIMARY KEY, started_at_ms, heartbeat_at_ms, info_json)
    leases(name TEXT PRIMARY KEY, holder, expires_at_ms)
    rollouts(id INTEGER PRIMARY KEY AUTOINCREMENT,  -- ids never reused
             category, state, version, doc_json TEXT, created_at_ms, updated_at_ms)
             -- at most one running or paused per category (a partial unique index)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from ...exceptions import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

#: Ordered schema migrations: migration ``n`` (1-based) brings the schema from
#: version ``n - 1`` to ``n``. Append new tuples for new tables (reconciliation
#: results, audit trail, runtime config); never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: events with their routing; per-adapter delivery state, split in two
    # tables so that what is still to deliver is a small, dense b-tree keyed for
    # undelivered(): each routed pair gets one outbox row (since version 6
    # written after the append: see "the tail" in ``_outbox``), an ack moves
    # it to deliveries (cheaper than one table with a partial index).
    (
        """CREATE TABLE events (
            sequence_id   INTEGER PRIMARY KEY,
            event_id      TEXT    NOT NULL,
            category      TEXT    NOT NULL,
            event_type    TEXT    NOT NULL,
            created_at_ms INTEGER NOT NULL,
            routed_to     TEXT    NOT NULL,
            wire          BLOB    NOT NULL
        )""",
        # WITHOUT ROWID: the key is the row; rows land at the right edge of one
        # b-tree (ids increase) instead of a table plus an index.
        """CREATE TABLE outbox (
            adapter       TEXT    NOT NULL,
            sequence_id   INTEGER NOT NULL,
            state         TEXT    NOT NULL,
            error         TEXT,
            updated_at_ms INTEGER NOT NULL,
            PRIMARY KEY (adapter, sequence_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE deliveries (
            sequence_id   INTEGER NOT NULL,
            adapter       TEXT    NOT NULL,
            state         TEXT    NOT NULL,
            error         TEXT,
            updated_at_ms INTEGER NOT NULL,
            PRIMARY KEY (sequence_id, adapter)
        ) WITHOUT ROWID""",
        """CREATE VIEW delivery_state AS
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM outbox
            UNION ALL
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM deliveries""",
    ),
    # 2: consumer receipts (evidence for reconciliation; duplicates kept).
    (
        """CREATE TABLE receipts (
            id             INTEGER PRIMARY KEY,
            sequence_id    INTEGER NOT NULL,
            adapter        TEXT    NOT NULL,
            event_type     TEXT    NOT NULL,
            received_at_ms INTEGER NOT NULL,
            checksum       TEXT    NOT NULL,
            checksum_ok    INTEGER NOT NULL,
            consumer       TEXT    NOT NULL
        )""",
        "CREATE INDEX receipts_sequence_id ON receipts (sequence_id)",
    ),
    # 3: reconciliation and retention. checksum and payload_keys are copied out
    # of the wire at append so scan() never parses the wire; rows of older
    # versions are backfilled here from the wire JSON (one pass, in the
    # migration's transaction). Counters make stats() O(adapters), not O(rows).
    (
        "ALTER TABLE events ADD COLUMN checksum TEXT",
        "ALTER TABLE events ADD COLUMN payload_keys TEXT",
        # ORDER BY key: BINARY collation on UTF-8 is code point order, as
        # Python's sorted() (payload_keys_of).
        """UPDATE events SET
            checksum = json_extract(CAST(wire AS TEXT), '$.checksum.value'),
            payload_keys = (
                SELECT json_group_array(key) FROM (
                    SELECT key FROM json_each(CAST(events.wire AS TEXT), '$.payload')
                    ORDER BY key
                )
            )""",
        "ALTER TABLE receipts ADD COLUMN payload_keys TEXT",
        """CREATE TABLE watermarks (
            name  TEXT    PRIMARY KEY,
            value INTEGER NOT NULL
        )""",
        """CREATE TABLE delivered_counts (
            adapter TEXT    NOT NULL,
            state   TEXT    NOT NULL,
            n       INTEGER NOT NULL,
            PRIMARY KEY (adapter, state)
        ) WITHOUT ROWID""",
        """INSERT INTO delivered_counts (adapter, state, n)
            SELECT adapter, state, count(*) FROM deliveries GROUP BY adapter, state""",
        """INSERT OR REPLACE INTO meta (key, value) VALUES
            ('event_count', (SELECT count(*) FROM events)),
            ('receipt_count', (SELECT count(*) FROM receipts))""",
    ),
    # 4: runtime configuration set through the admin API (one JSON document,
    # replaced whole) and the audit trail of its changes. AUTOINCREMENT: an
    # audit id is never reused, even after the newest rows were deleted.
    (
        """CREATE TABLE audit (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms       INTEGER NOT NULL,
            actor       TEXT    NOT NULL,
            path        TEXT    NOT NULL,
            before_json TEXT    NOT NULL,
            after_json  TEXT    NOT NULL
        )""",
        """CREATE TABLE runtime_config (
            id            INTEGER PRIMARY KEY CHECK (id = 1),
            doc_json      TEXT    NOT NULL,
            updated_at_ms INTEGER NOT NULL
        )""",
    ),
    # 5: receipts say at write time whether they repeat an earlier receipt of
    # the same (event, adapter), so plain_page() proves "exactly one receipt
    # per pair" from totals, without grouping millions of rows per run.
    (
        "ALTER TABLE receipts ADD COLUMN dup INTEGER NOT NULL DEFAULT 0",
        """UPDATE receipts SET dup = 1 WHERE EXISTS (
            SELECT 1 FROM receipts AS o WHERE o.sequence_id = receipts.sequence_id
            AND o.adapter = receipts.adapter AND o.id < receipts.id)""",
    ),
    # 6: outbox rows are written after the append, for the tail of events
    # after outbox_through (see ``_outbox``); every existing event has its
    # rows, so the tail starts empty. The view shows the tail's queued pairs.
    (
        """INSERT OR REPLACE INTO meta (key, value)
            SELECT 'outbox_through', value FROM meta WHERE key = 'last_sequence_id'""",
        "DROP VIEW delivery_state",
        """CREATE VIEW delivery_state AS
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM outbox
            UNION ALL
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM deliveries
            UNION ALL
            SELECT DISTINCT e.sequence_id, a.value, 'queued', NULL, e.created_at_ms
            FROM events AS e, json_each(e.routed_to) AS a
            WHERE e.sequence_id > (SELECT value FROM meta WHERE key = 'outbox_through')""",
    ),
    # 7: ACKED is implied: a routed pair up to outbox_through with no row in
    # outbox or deliveries was acknowledged (an ack deletes its outbox row);
    # deliveries keeps the other delivered state and acks that carry an error.
    # delivered_counts already counts the pairs. The view shows implied acks
    # (their updated_at_ms is not kept).
    (
        "DELETE FROM deliveries WHERE state = 'acked' AND error IS NULL",
        "DROP VIEW delivery_state",
        """CREATE VIEW delivery_state AS
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM outbox
            UNION ALL
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM deliveries
            UNION ALL
            SELECT DISTINCT e.sequence_id, a.value,
                CASE WHEN e.sequence_id > t.value THEN 'queued' ELSE 'acked' END,
                NULL, CASE WHEN e.sequence_id > t.value THEN e.created_at_ms END
            FROM events AS e, json_each(e.routed_to) AS a,
                (SELECT value FROM meta WHERE key = 'outbox_through') AS t
            WHERE NOT EXISTS (SELECT 1 FROM outbox AS o
                WHERE o.adapter = a.value AND o.sequence_id = e.sequence_id)
            AND NOT EXISTS (SELECT 1 FROM deliveries AS d
                WHERE d.sequence_id = e.sequence_id AND d.adapter = a.value)""",
    ),
    # 8: an append writes its event rows alone: meta's last_sequence_id and
    # event_count are a floor (see settle_high_mark), brought up to the
    # newest event before any delete takes it, by whatever deletes: ids are
    # never handed out again. The version also stops older code, which would
    # read the floor as the high-water mark.
    (
        """CREATE TRIGGER events_keep_high_mark BEFORE DELETE ON events
            WHEN old.sequence_id > (SELECT value FROM meta WHERE key = 'last_sequence_id')
            BEGIN
                UPDATE meta SET value = value + (SELECT max(sequence_id) FROM events)
                    - (SELECT value FROM meta WHERE key = 'last_sequence_id')
                    WHERE key = 'event_count';
                UPDATE meta SET value = (SELECT max(sequence_id) FROM events)
                    WHERE key = 'last_sequence_id';
            END""",
    ),
    # 9: receipts are idempotent per (event, adapter, consumer): a batch posted
    # twice changes nothing, and a consumer's later deliveries of an event
    # raise its row's deliveries (duplicates) instead of adding rows. Earlier
    # rows of one key fold into the first. consumers is the registry of who
    # reported what (reconciliation's "unobserved" and the reports' view).
    (
        "ALTER TABLE receipts ADD COLUMN deliveries INTEGER NOT NULL DEFAULT 1",
        """UPDATE receipts SET deliveries = (SELECT count(*) FROM receipts AS o
            WHERE o.sequence_id = receipts.sequence_id AND o.adapter = receipts.adapter
            AND o.consumer = receipts.consumer)""",
        """DELETE FROM receipts WHERE id > (SELECT min(o.id) FROM receipts AS o
            WHERE o.sequence_id = receipts.sequence_id AND o.adapter = receipts.adapter
            AND o.consumer = receipts.consumer)""",
        "UPDATE meta SET value = (SELECT count(*) FROM receipts) WHERE key = 'receipt_count'",
        "DROP INDEX receipts_sequence_id",
        "CREATE UNIQUE INDEX receipts_key ON receipts (sequence_id, adapter, consumer)",
        """CREATE TABLE consumers (
            adapter             TEXT    NOT NULL,
            consumer            TEXT    NOT NULL,
            from_sequence_id    INTEGER NOT NULL,
            through_sequence_id INTEGER NOT NULL,
            first_seen_ms       INTEGER NOT NULL,
            last_seen_ms        INTEGER NOT NULL,
            receipts            INTEGER NOT NULL,
            PRIMARY KEY (adapter, consumer)
        ) WITHOUT ROWID""",
        """INSERT INTO consumers SELECT adapter, consumer, min(sequence_id), max(sequence_id),
            min(received_at_ms), max(received_at_ms), sum(deliveries)
            FROM receipts GROUP BY adapter, consumer""",
    ),
    # 10: service instances' heartbeats and named leases (one store serves
    # one instance on SQLite, but the contract is the same on every store).
    (
        """CREATE TABLE instances (
            instance_id     TEXT    PRIMARY KEY,
            started_at_ms   INTEGER NOT NULL,
            heartbeat_at_ms INTEGER NOT NULL,
            info_json       TEXT    NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE leases (
            name          TEXT    PRIMARY KEY,
            holder        TEXT    NOT NULL,
            expires_at_ms INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
    # 11: resume is refused by the highest id ever pruned, which prune() keeps
    # from now on. A store pruned before: every id below its first event
    # counts as pruned, and every id handed out where no event is left.
    (
        """INSERT OR IGNORE INTO watermarks (name, value) SELECT 'pruned_through',
            coalesce((SELECT min(sequence_id) - 1 FROM events),
                     (SELECT value FROM meta WHERE key = 'last_sequence_id'), 0)""",
    ),
    # 12: progressive rollouts, one document each; a category has at most
    # one running or paused.
    (
        """CREATE TABLE rollouts (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            category      TEXT    NOT NULL,
            state         TEXT    NOT NULL,
            version       INTEGER NOT NULL,
            doc_json      TEXT    NOT NULL,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL
        )""",
        """CREATE UNIQUE INDEX rollouts_active ON rollouts (category)
            WHERE state IN ('running', 'paused')""",
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION: Final = len(MIGRATIONS)

META_DDL: Final = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"


def migrate(conn: sqlite3.Connection, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Bring the schema of ``conn`` (autocommit mode) up to ``len(migrations)``.

    All pending migrations run in one transaction: a crash leaves the old
    version intact. Returns the version found before migrating. Raises
    :class:`StoreError` if the file's schema is newer than ``migrations``.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(META_DDL)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value)"
            " VALUES ('schema_version', 0), ('last_sequence_id', 0)"
        )
        (found,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if found > len(migrations):
            raise StoreError(
                f"database schema version {found} is newer than this code's "
                f"{len(migrations)}; upgrade the broadcaster"
            )
        for version in range(found + 1, len(migrations) + 1):
            for statement in migrations[version - 1]:
                conn.execute(statement)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return int(found)
