"""The PostgreSQL store's schema: its ordered migrations, and
:func:`migrate`, which :meth:`~broadcaster.store.postgres.PostgresStore.open`
runs in one transaction under an advisory lock (several processes may open
the store at once); and :func:`postgres_store_exists`, which asks whether a
database holds a store without creating one.

Schema (version ``SCHEMA_VERSION``)::

    meta(key text PRIMARY KEY, value bigint)  -- schema_version, receipt_count,
                                              -- event_count (+ 'event_count:<shard>')
    SEQUENCE event_sequence_id (bigint, CACHE 1)
    events(sequence_id bigint PRIMARY KEY, event_id, category, event_type,
           created_at_ms bigint, routed_to text  -- JSON array
           , wire bytea
           , checksum, payload_keys text)        -- copied out of the wire for scan()
    -- per (sequence_id, adapter) routed pair, at most one row in one of
    -- (none: acknowledged, the usual case once delivered):
    outbox(adapter, sequence_id, state, error, updated_at_ms,     -- queued, failed,
           PRIMARY KEY (adapter, sequence_id))                    -- pending: to deliver
    deliveries(sequence_id, adapter, state, error, updated_at_ms, -- repaired, refused,
               PRIMARY KEY (sequence_id, adapter))                -- acked with an error
    VIEW delivery_state  -- every routed pair's state, for people and reports
    receipts(id bigserial PRIMARY KEY, sequence_id, adapter, event_type,
             received_at_ms, checksum, checksum_ok boolean, consumer, payload_keys)
    delivered_counts(adapter, state, n bigint)  -- settled pairs per (adapter, state)
    watermarks(name text PRIMARY KEY, value bigint)  -- e.g. reconciled_through
    audit(id bigserial PRIMARY KEY, at_ms bigint, actor, path,
          before_json, after_json text)           -- JSON text
    runtime_config(id smallint PRIMARY KEY CHECK (id = 1),  -- one row
                   doc_json text, updated_at_ms bigint)

The counters (``meta.event_count``, ``meta.receipt_count``, ``delivered_counts``)
change in the transactions that change what they count, as each transaction's
last statement and in key order (no lock-order deadlock between processes), so
:meth:`~broadcaster.store.postgres.PostgresStore.stats` reads a few rows
instead of counting millions. Pruning deletes from ``events``; the sequence
never goes back.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg

from ...exceptions import StoreError, StoreUnavailable

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "postgres_store_exists"]

# Advisory lock key (an arbitrary constant, "bcst" + purpose).
_MIGRATE_LOCK: Final = 0x62637374_0001

#: Ordered schema migrations; migration ``n`` brings version ``n - 1`` to ``n``.
#: Append new tuples for later tables; never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: the id sequence, events, and per-adapter delivery state split as in
    # the SQLite store: what is still to deliver (outbox) apart from what is
    # done (deliveries), so undelivered() is a range scan of a small key.
    (
        "CREATE SEQUENCE event_sequence_id AS bigint MINVALUE 1 CACHE 1",
        """CREATE TABLE events (
            sequence_id   bigint PRIMARY KEY,
            event_id      text   NOT NULL,
            category      text   NOT NULL,
            event_type    text   NOT NULL,
            created_at_ms bigint NOT NULL,
            routed_to     text   NOT NULL,
            wire          bytea  NOT NULL
        )""",
        """CREATE TABLE outbox (
            adapter       text   NOT NULL,
            sequence_id   bigint NOT NULL,
            state         text   NOT NULL,
            error         text,
            updated_at_ms bigint NOT NULL,
            PRIMARY KEY (adapter, sequence_id)
        )""",
        """CREATE TABLE deliveries (
            sequence_id   bigint NOT NULL,
            adapter       text   NOT NULL,
            state         text   NOT NULL,
            error         text,
            updated_at_ms bigint NOT NULL,
            PRIMARY KEY (sequence_id, adapter)
        )""",
        """CREATE VIEW delivery_state AS
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM outbox
            UNION ALL
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM deliveries""",
    ),
    # 2: consumer receipts (evidence for reconciliation; duplicates kept).
    (
        """CREATE TABLE receipts (
            id             bigserial PRIMARY KEY,
            sequence_id    bigint  NOT NULL,
            adapter        text    NOT NULL,
            event_type     text    NOT NULL,
            received_at_ms bigint  NOT NULL,
            checksum       text    NOT NULL,
            checksum_ok    boolean NOT NULL,
            consumer       text    NOT NULL
        )""",
        "CREATE INDEX receipts_sequence_id ON receipts (sequence_id)",
    ),
    # 3: reconciliation and retention. checksum and payload_keys are copied out
    # of the wire at append so scan() never parses the wire; rows of older
    # versions are backfilled from the wire. PostgreSQL's JSON functions reject
    # a \u0000 escape (and the whole migration with it), so wires holding one
    # (hex 5c7530303030) are left NULL, like rows an old-version process writes
    # during a rolling upgrade: scan() reads those from the wire instead.
    # Counters make stats() O(adapters), not O(rows).
    (
        "ALTER TABLE events ADD COLUMN checksum text, ADD COLUMN payload_keys text",
        # COLLATE "C": byte order of UTF-8 is code point order, as Python's
        # sorted() (payload_keys_of); to_json quotes each key as JSON.
        """UPDATE events SET
            checksum = convert_from(wire, 'UTF8')::json #>> '{checksum,value}',
            payload_keys = coalesce((
                SELECT '[' || string_agg(to_json(k)::text, ',' ORDER BY k COLLATE "C") || ']'
                FROM json_object_keys(convert_from(wire, 'UTF8')::json -> 'payload') AS k
            ), '[]')
            WHERE position(decode('5c7530303030', 'hex') IN wire) = 0""",
        "ALTER TABLE receipts ADD COLUMN payload_keys text",
        """CREATE TABLE watermarks (
            name  text   PRIMARY KEY,
            value bigint NOT NULL
        )""",
        """CREATE TABLE delivered_counts (
            adapter text   NOT NULL,
            state   text   NOT NULL,
            n       bigint NOT NULL,
            PRIMARY KEY (adapter, state)
        )""",
        """INSERT INTO delivered_counts (adapter, state, n)
            SELECT adapter, state, count(*) FROM deliveries GROUP BY adapter, state""",
        """INSERT INTO meta (key, value) VALUES
            ('event_count', (SELECT count(*) FROM events)),
            ('receipt_count', (SELECT count(*) FROM receipts))
            ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
    ),
    # 4: runtime configuration set through the admin API (one JSON document,
    # replaced whole) and the audit trail of its changes. JSON is kept as text,
    # not jsonb: it reads back exactly as written, and jsonb refuses \u0000.
    (
        """CREATE TABLE audit (
            id          bigserial PRIMARY KEY,
            at_ms       bigint NOT NULL,
            actor       text   NOT NULL,
            path        text   NOT NULL,
            before_json text   NOT NULL,
            after_json  text   NOT NULL
        )""",
        """CREATE TABLE runtime_config (
            id            smallint PRIMARY KEY CHECK (id = 1),
            doc_json      text   NOT NULL,
            updated_at_ms bigint NOT NULL
        )""",
    ),
    # 5: receipts are idempotent per (event, adapter, consumer): a batch posted
    # twice changes nothing, and a consumer's later deliveries of an event
    # raise its row's deliveries (duplicates) instead of adding rows. Earlier
    # rows of one key fold into the first. consumers is the registry of who
    # reported what (reconciliation's "unobserved" and the reports' view).
    (
        "ALTER TABLE receipts ADD COLUMN deliveries integer NOT NULL DEFAULT 1",
        """UPDATE receipts AS r SET deliveries = k.n FROM (
            SELECT min(id) AS id, count(*) AS n FROM receipts
            GROUP BY sequence_id, adapter, consumer HAVING count(*) > 1) AS k
            WHERE r.id = k.id""",
        """DELETE FROM receipts AS r WHERE EXISTS (SELECT 1 FROM receipts AS o
            WHERE o.sequence_id = r.sequence_id AND o.adapter = r.adapter
            AND o.consumer = r.consumer AND o.id < r.id)""",
        """UPDATE meta SET value = (SELECT count(*) FROM receipts)
            WHERE key = 'receipt_count'""",
        "DROP INDEX receipts_sequence_id",
        "CREATE UNIQUE INDEX receipts_key ON receipts (sequence_id, adapter, consumer)",
        """CREATE TABLE consumers (
            adapter             text   NOT NULL,
            consumer            text   NOT NULL,
            from_sequence_id    bigint NOT NULL,
            through_sequence_id bigint NOT NULL,
            first_seen_ms       bigint NOT NULL,
            last_seen_ms        bigint NOT NULL,
            receipts            bigint NOT NULL,
            PRIMARY KEY (adapter, consumer)
        )""",
        """INSERT INTO consumers SELECT adapter, consumer, min(sequence_id), max(sequence_id),
            min(received_at_ms), max(received_at_ms), sum(deliveries)
            FROM receipts GROUP BY adapter, consumer""",
    ),
    # 6: service instances' heartbeats and named leases (the Realtime writer's).
    # Times are the database's clock, so that the instances' clocks do not matter.
    (
        """CREATE TABLE instances (
            instance_id     text   PRIMARY KEY,
            started_at_ms   bigint NOT NULL,
            heartbeat_at_ms bigint NOT NULL,
            info_json       text   NOT NULL
        )""",
        """CREATE TABLE leases (
            name          text   PRIMARY KEY,
            holder        text   NOT NULL,
            expires_at_ms bigint NOT NULL
        )""",
    ),
    # 7: resume is refused by the highest id ever pruned, which prune() keeps
    # from now on. A store pruned before: every id below its first event
    # counts as pruned, and every id handed out where no event is left.
    (
        """INSERT INTO watermarks (name, value) SELECT 'pruned_through',
            coalesce((SELECT min(sequence_id) - 1 FROM events),
                     (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
                      FROM event_sequence_id))
            ON CONFLICT (name) DO NOTHING""",
    ),
    # 8: progressive rollouts, one document each; a category has at most
    # one running or paused, whichever instance starts it.
    (
        """CREATE TABLE rollouts (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            category      text   NOT NULL,
            state         text   NOT NULL,
            version       bigint NOT NULL,
            doc_json      text   NOT NULL,
            created_at_ms bigint NOT NULL,
            updated_at_ms bigint NOT NULL
        )""",
        """CREATE UNIQUE INDEX rollouts_active ON rollouts (category)
            WHERE state IN ('running', 'paused')""",
    ),
    # 9: a plain acknowledgement deletes the pair's outbox row and writes no
    # deliveries row: a routed pair with no row anywhere is ACKED (as in the
    # SQLite store's schema 7). Half the rows an acknowledgement wrote; the
    # view shows such pairs again. Code of version 8 must not read this
    # schema (it would take those pairs for unknown): the version says so.
    (
        "DROP VIEW delivery_state",
        """CREATE VIEW delivery_state AS
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM outbox
            UNION ALL
            SELECT sequence_id, adapter, state, error, updated_at_ms FROM deliveries
            UNION ALL
            SELECT e.sequence_id, r.adapter, 'acked', NULL, NULL FROM events AS e
            CROSS JOIN LATERAL (SELECT DISTINCT value AS adapter
                                FROM jsonb_array_elements_text(e.routed_to::jsonb)) AS r
            WHERE NOT EXISTS (SELECT 1 FROM outbox AS o
                              WHERE o.adapter = r.adapter AND o.sequence_id = e.sequence_id)
              AND NOT EXISTS (SELECT 1 FROM deliveries AS d
                              WHERE d.sequence_id = e.sequence_id AND d.adapter = r.adapter)""",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)


async def migrate(conn: psycopg.AsyncConnection[Any]) -> int:
    """Create or migrate the schema to :data:`SCHEMA_VERSION` in one
    transaction on ``conn``; returns the version found. Raises
    :class:`StoreError` if the database's schema is newer than this code."""
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
            await cur.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (version,))
    return found


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
