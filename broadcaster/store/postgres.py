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
* **Schema.** Created and migrated by :meth:`PostgresStore.open` (version in
  ``meta``; migrations serialised across processes by an advisory lock). Table
  names are unqualified: give the broadcaster its own database, or its own
  schema via ``?options=-csearch_path%3Dbroadcaster``.

Schema (version ``SCHEMA_VERSION``)::

    meta(key text PRIMARY KEY, value bigint)         -- schema_version
    SEQUENCE event_sequence_id (bigint, CACHE 1)
    events(sequence_id bigint PRIMARY KEY, event_id, category, event_type,
           created_at_ms bigint, routed_to text  -- JSON array
           , wire bytea)
    -- per (sequence_id, adapter) routed pair, exactly one row in one of:
    outbox(adapter, sequence_id, state, error, updated_at_ms,     -- queued, failed,
           PRIMARY KEY (adapter, sequence_id))                    -- pending: to deliver
    deliveries(sequence_id, adapter, state, error, updated_at_ms, -- acked, repaired
               PRIMARY KEY (sequence_id, adapter))
    VIEW delivery_state  -- outbox UNION ALL deliveries, for people and reports
    receipts(id bigserial PRIMARY KEY, sequence_id, adapter, event_type,
             received_at_ms, checksum, checksum_ok boolean, consumer)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import orjson
import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict

from ..events import EventDraft, EventRecord, record_from_wire, seal
from ..exceptions import StoreError, StoreUnavailable
from .base import ConsumerReceipt, DeliveryState, Store, StoredEvent
from .sqlite import DELIVERED_STATES, GroupCommit, MarkRequest, coalesce_marks

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "PostgresStore"]

_T = TypeVar("_T")

# Loggers stay lazy proxies (no .bind()): a bound logger captures the output
# stream of the moment it is built, which may be closed later.
_LOGGER_NAME: Final = "broadcaster.store.postgres"

# Advisory lock keys (arbitrary constants, "bcst" + purpose).
_MIGRATE_LOCK: Final = 0x62637374_0001
_APPEND_LOCK: Final = 0x62637374_0002


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
)

SCHEMA_VERSION: Final = len(MIGRATIONS)

# Multi-row inserts from arrays: one statement and one round trip per batch.
# %b: binary parameters; text-format bytea arrays cost a regex escape per item.
_INSERT_EVENTS: Final = (
    "INSERT INTO events (sequence_id, event_id, category, event_type, created_at_ms,"
    " routed_to, wire) SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[],"
    " %b::text[], %b::bigint[], %b::text[], %b::bytea[])"
)
_INSERT_OUTBOX: Final = (
    "INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT a, i, 'queued', %b FROM unnest(%b::text[]) AS a CROSS JOIN unnest(%b::bigint[]) AS i"
)


def _mark_statement(source: str, target: str) -> str:
    """A state change as one statement: move the ``source`` rows to ``target``
    and update the rows already there. (All parts see one snapshot, so the
    final UPDATE touches only pre-existing ``target`` rows.) COALESCE keeps the
    last error when a state carries none."""
    where = "adapter = %(adapter)s AND sequence_id = ANY(%(ids)b::bigint[])"
    return (
        f"WITH moved AS (DELETE FROM {source} WHERE {where} RETURNING sequence_id, error),"
        f" inserted AS (INSERT INTO {target} (sequence_id, adapter, state, error, updated_at_ms)"
        f" SELECT sequence_id, %(adapter)s, %(state)s, COALESCE(%(error)s, error), %(now)s"
        f" FROM moved)"
        f" UPDATE {target} SET state = %(state)s, error = COALESCE(%(error)s, error),"
        f" updated_at_ms = %(now)s WHERE {where}"
    )


_MARK_DELIVERED: Final = _mark_statement("outbox", "deliveries")
_MARK_UNDELIVERED: Final = _mark_statement("deliveries", "outbox")
_UNDELIVERED: Final = (
    "SELECT e.wire FROM outbox AS o JOIN events AS e ON e.sequence_id = o.sequence_id"
    " WHERE o.adapter = %s AND o.sequence_id > %s ORDER BY o.sequence_id LIMIT %s"
)
_STATES_OF: Final = (
    "SELECT adapter, state, error FROM outbox"
    " WHERE adapter = ANY(%(adapters)s::text[]) AND sequence_id = %(seq)s"
    " UNION ALL SELECT adapter, state, error FROM deliveries"
    " WHERE sequence_id = %(seq)s AND adapter = ANY(%(adapters)s::text[])"
)


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
        """Run ``body`` with the connection, one call at a time, translating errors."""
        if not self._opened:
            raise StoreError("postgres store is not open")
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

    async def close(self) -> None:
        """Flush queued marks and close the connection. Idempotent."""
        if not self._opened:
            return
        try:
            await self._marks.wait_idle()
        finally:
            self._opened = False
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
                # Serialise appends across processes until COMMIT so that ids
                # become visible in increasing order (see module docstring).
                await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_APPEND_LOCK,))
                await cur.execute(
                    "SELECT nextval('event_sequence_id') FROM generate_series(1, %s)",
                    (len(batch),),
                )
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
                    ),
                )
                for routed, seqs in by_routing.items():
                    adapters = list(dict.fromkeys(routed))
                    if adapters:
                        await cur.execute(_INSERT_OUTBOX, (now_ms, adapters, seqs))
            return records

        return await self._run("append", body)

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
        for r in coalesce_marks(requests):
            statement = _MARK_DELIVERED if r.state in DELIVERED_STATES else _MARK_UNDELIVERED
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
                for statement, params_seq in groups:
                    await cur.executemany(statement, params_seq)

        await self._run("mark", body)

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        """Store consumer receipts in one transaction; duplicates are kept."""
        if not receipts:
            return
        rows = [
            (
                r.sequence_id,
                r.adapter,
                r.event_type,
                r.received_at_ms,
                r.checksum,
                r.checksum_ok,
                r.consumer,
            )
            for r in receipts
        ]

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO receipts (sequence_id, adapter, event_type, received_at_ms,"
                    " checksum, checksum_ok, consumer) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )

        await self._run("record_receipts", body)

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
                    " checksum_ok, consumer FROM receipts WHERE sequence_id = %s ORDER BY id",
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
                )
                for seq, adapter, event_type, received, checksum, ok, consumer in receipt_rows
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
