"""The PostgreSQL store's reads of events: what lanes deliver
(``undelivered``), what a service following the store and resume read
(``read_routed``, ``read_events``), one event's trace (``get``), what
reconciliation pages through (``scan``, ``plain_page``) and the counts of
``/stats``. Each is one transaction; those of several statements read one
snapshot (REPEATABLE READ).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import orjson
import psycopg

from ...events import Category, EventRecord, record_from_wire
from .._batching import assemble_scan, parse_routed, routed_pairs
from ..records import (
    ConsumerReceipt,
    DeliveryState,
    PlainPage,
    ScanRow,
    StoredEvent,
    StoreStats,
)
from .connection import ConnectedStore
from .sql import (
    FIRST_SEQUENCE_ID,
    INDEX_ORDER,
    PAGE_LAST,
    PAGE_RECEIPTS,
    PAGE_REPAIRED,
    PAGE_ROUTED,
    READ_EVENTS,
    READ_ROUTED,
    SCAN_DELIVERED,
    SCAN_EVENTS,
    SCAN_OUTBOX,
    SCAN_RECEIPTS,
    STATES_OF,
    UNDELIVERED,
)

__all__ = ["EventReads"]


class EventReads(ConnectedStore):
    """The part of :class:`~broadcaster.store.postgres.PostgresStore` that
    reads events back: for lanes, followers, resume, reconciliation and stats."""

    async def undelivered(
        self, adapter: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Events still to deliver to ``adapter`` (queued, failed, pending) with
        sequence id > ``after``, in order, at most ``limit`` (partial index)."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[bytes]:
            async with conn.cursor() as cur:
                await cur.execute(UNDELIVERED, (adapter, after, limit))
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
                await cur.execute(STATES_OF, {"seq": sequence_id, "adapters": orjson.loads(row[1])})
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
                await cur.execute(READ_ROUTED, (after, high, limit))
                return [(bytes(w), routed, keys) for w, routed, keys in await cur.fetchall()]

        rows = await self._run("read_routed", body)
        cache: dict[str, tuple[str, ...]] = {}
        return [
            (record_from_wire(wire, keys), parse_routed(routed, cache))
            for wire, routed, keys in rows
        ]

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
        id order (see the package doc), so a page never skips an id that
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
                await cur.execute(INDEX_ORDER)
                await cur.execute(READ_EVENTS, params)
                return [bytes(row[0]) for row in await cur.fetchall()]

        wires = await self._run("read_events", body)
        return [record_from_wire(wire) for wire in wires]

    async def first_sequence_id(self) -> int:
        """The lowest stored sequence id (0: none), from the primary key's first entry."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> int:
            async with conn.cursor() as cur:
                await cur.execute(FIRST_SEQUENCE_ID)
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
                await cur.execute(SCAN_EVENTS, (after, limit))
                events = await cur.fetchall()
                if not events:
                    return []
                low, high = events[0][0], events[-1][0]
                routed_cache: dict[str, tuple[str, ...]] = {}
                adapters: dict[str, None] = {}
                for routed_json in {row[6] for row in events}:
                    adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
                await cur.execute(SCAN_DELIVERED, (low, high))
                states = await cur.fetchall()
                if adapters:
                    await cur.execute(SCAN_OUTBOX, (list(adapters), low, high))
                    states += await cur.fetchall()
                await cur.execute(SCAN_RECEIPTS, (low, high))
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
                await cur.execute(PAGE_LAST, (after, limit))
                row = await cur.fetchone()
                if row is None or row[0] is None:
                    return PlainPage(0, {})
                low, high = after + 1, int(row[0])
                await cur.execute(PAGE_REPAIRED, (low, high))
                repaired = await cur.fetchone()
                if repaired is not None and repaired[0]:
                    return PlainPage(high, None)
                await cur.execute(PAGE_ROUTED, (low, high))
                expected = routed_pairs(await cur.fetchall(), judged_before_ms, {})
                if expected is None:
                    return PlainPage(high, None)
                counts, pairs = expected
                await cur.execute(PAGE_RECEIPTS, {"low": low, "high": high, "window": window_ms})
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
