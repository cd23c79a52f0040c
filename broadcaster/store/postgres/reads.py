"""The PostgreSQL store's reads of events: what lanes deliver
(``undelivered``), what a service following the store and resume read
(``read_routed``, ``read_events``), one event's trace (``get``), what
reconciliation pages through (``scan``, ``plain_page``) and the counts of
``/stats``. Each is one transaction; those of several statements read one
snapshot (REPEATABLE READ).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final

import orjson
import psycopg

from ...events import Category, EventRecord, record_from_wire
from ...exceptions import StoreUnavailable
from .._batching import assemble_scan, implied_pairs, parse_routed, routed_pairs
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
    EVENT_COUNT,
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
    SETTLE_MARK,
    STATES_OF,
    STILL_HOLDING,
    STILL_MISSING,
    UNDELIVERED,
)

__all__ = ["EventReads"]

#: How long a reader first waits for the appends it must let end, and the
#: longest it waits between two looks (the wait doubles).
_FIRST_LOOK_S: Final = 0.0005
_LAST_LOOK_S: Final = 0.005
#: No id is higher.
_NO_BOUND: Final = 2**63 - 1


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
        for adapter in routed:  # no row: acknowledged (schema 9)
            by_adapter.setdefault(adapter, (DeliveryState.ACKED.value, None))
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
        """See :meth:`Store.committed_through`: the highest id such that every
        id up to it is stored, pruned, or never will be (0: none).

        Appends run side by side and may commit out of id order; each holds
        the append lock, shared, from before its ``nextval`` to its end.
        So: read the newest visible id M and, after it, who holds the lock;
        any id below M was taken before M was, by a transaction that then
        held the lock and has either ended (its ids are visible, or never
        will be) or is among those holders. Once they have all ended, every
        id up to M is settled. Transactions that do not append are never
        waited for."""
        high, holders = await self._run("committed_through", self._settle_mark)
        look = _FIRST_LOOK_S
        deadline = asyncio.get_running_loop().time() + self._op_timeout
        while holders:
            if asyncio.get_running_loop().time() >= deadline:
                # A caller's transaction holding an event stays open: say
                # so rather than hang the read (the caller retries).
                raise StoreUnavailable(
                    f"postgres: committed_through: an append transaction has been open for"
                    f" more than {self._op_timeout}s; events after it wait for it to end"
                )
            await asyncio.sleep(look)
            look = min(look * 2, _LAST_LOOK_S)
            holders = await self._run("committed_through", self._still_holding(holders))
        self._settled_mark = max(self._settled_mark, high)
        return high

    @staticmethod
    async def _settle_mark(conn: psycopg.AsyncConnection[Any]) -> tuple[int, list[str]]:
        async with conn.cursor() as cur:
            await cur.execute(SETTLE_MARK)
            row = await cur.fetchone()
            assert row is not None
            return int(row[0]), list(row[1])

    async def _still_stopped(self, after: int) -> bool:
        """Whether a follower that stopped at the id after ``after`` (a
        missing id another append may commit) still must: the id is still
        missing and an append it waits for still runs. One cheap look,
        instead of a page read per wake."""
        pending = self._pending_settle
        if self._stopped_after != after or pending is None:
            return False
        high, holders = pending

        async def look(conn: psycopg.AsyncConnection[Any]) -> tuple[bool, list[str]]:
            async with conn.cursor() as cur:
                await cur.execute(STILL_MISSING, (after + 1, holders))
                row = await cur.fetchone()
                assert row is not None
                return bool(row[0]), list(row[1])

        there, holders = await self._run("read_routed", look)
        self._note_mark(high, holders)
        if there or not holders:
            self._stopped_after = None
            return False
        return True

    async def _settled_now(self, need: int) -> bool:
        """Whether every id up to ``need`` is known settled, finding out
        without waiting: a mark taken by an earlier call counts once its
        holders have ended; otherwise a new mark, kept for the next call.
        (A follower calls again when woken: an append's notification, or its
        idle read.)"""
        pending = self._pending_settle
        if pending is not None and pending[0] >= need:
            high, holders = pending
            holders = await self._run("read_routed", self._still_holding(holders))
        else:
            high, holders = await self._run("read_routed", self._settle_mark)
        self._note_mark(high, holders)
        return self._settled_mark >= need

    def _note_mark(self, high: int, holders: list[str]) -> None:
        """A mark ``high`` whose appends ``holders`` still run: kept for a
        later look, or, with none left, every id up to it settled."""
        self._pending_settle = (high, holders) if holders else None
        if not holders:
            self._settled_mark = max(self._settled_mark, high)

    @staticmethod
    def _still_holding(
        holders: list[str],
    ) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[list[str]]]:
        async def body(conn: psycopg.AsyncConnection[Any]) -> list[str]:
            async with conn.cursor() as cur:
                await cur.execute(STILL_HOLDING, (holders,))
                row = await cur.fetchone()
                assert row is not None
                return list(row[0])

        return body

    async def read_routed(
        self, *, after: int, limit: int, through: int | None = None
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        """See :meth:`Store.read_routed`: one range read of the primary key,
        cut before the first id missing above the settled mark (one another
        append may still commit). When that leaves nothing, it finds out
        without waiting whether the missing ids have settled meanwhile
        (:meth:`_settled_now`) and, if not, returns nothing: the follower is
        woken again by the next append's notification (the missing id's own,
        when it commits) or its idle read. A page that must vouch for the ids
        up to ``through`` waits for them to settle (:meth:`committed_through`)."""
        if limit <= 0:
            return []
        high = _NO_BOUND if through is None else through
        if through is None and await self._still_stopped(after):
            return []
        rows = await self._read_routed(after, high, limit)
        taken = self._settled_prefix(after, rows)
        if taken == len(rows) and (
            through is None
            or len(rows) == limit
            or through <= self._settled_mark
            or (rows and rows[-1][0] == through)
        ):
            return self._routed(rows)
        if through is None:
            if not taken:
                if not await self._settled_now(rows[0][0] - 1):
                    self._stopped_after = after
                    return []
                rows = await self._read_routed(after, high, limit)
                taken = self._settled_prefix(after, rows)
            return self._routed(rows[:taken])
        # Every id missing up to the settled mark will never be stored.
        settled = await self.committed_through()
        return self._routed(await self._read_routed(after, min(high, settled), limit))

    def _settled_prefix(self, after: int, rows: list[tuple[int, bytes, str, str | None]]) -> int:
        """How many of ``rows`` (ascending) follow ``after`` with no id
        missing between them that may still commit."""
        expected = after + 1
        for taken, (seq, _, _, _) in enumerate(rows):
            if seq != expected and seq - 1 > self._settled_mark:
                return taken
            expected = seq + 1
        return len(rows)

    async def _read_routed(
        self, after: int, high: int, limit: int
    ) -> list[tuple[int, bytes, str, str | None]]:
        if high <= after:
            return []

        async def body(
            conn: psycopg.AsyncConnection[Any],
        ) -> list[tuple[int, bytes, str, str | None]]:
            async with conn.cursor() as cur:
                await cur.execute(READ_ROUTED, (after, min(limit, high - after), high))
                return [
                    (int(seq), bytes(w), routed, keys)
                    for seq, w, routed, keys in await cur.fetchall()
                ]

        return await self._run("read_routed", body)

    @staticmethod
    def _routed(
        rows: list[tuple[int, bytes, str, str | None]],
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        cache: dict[str, tuple[str, ...]] = {}
        return [
            (record_from_wire(wire, keys), parse_routed(routed, cache))
            for _, wire, routed, keys in rows
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
        rows the filters refuse are skipped by the server. The page ends at
        :meth:`committed_through`, so it never skips an id that commits later."""
        if limit <= 0:
            return []
        params = {
            "after": after,
            "through": await self.committed_through(),
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
        # A page ends where ids have settled (never one that commits later).
        through = await self.committed_through()
        if through <= after:
            return []

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[ScanRow]:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute(SCAN_EVENTS, (after, min(limit, through - after), through))
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
            # Pairs with no row are acknowledged (schema 9).
            states += implied_pairs(
                [(row[0], row[6]) for row in events], _NO_BOUND, states, routed_cache
            )
            return assemble_scan(events, states, receipts, routed_cache)

        return await self._run("scan", body)

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        """See :meth:`Store.plain_page`: a few aggregate queries in one
        REPEATABLE READ transaction; no row of the page is sent to Python.
        Pairs are proven covered by receipts from totals: every receipt plainly
        matches a pair routed to its adapter and is a first delivery, and the
        distinct (event, adapter) among them are as many as the routed pairs.
        The page ends where ids have settled (:meth:`committed_through`)."""
        through = await self.committed_through()
        if through <= after:
            return PlainPage(0, {})

        async def body(conn: psycopg.AsyncConnection[Any]) -> PlainPage:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                await cur.execute(PAGE_LAST, (after, min(limit, through - after), through))
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
                await cur.execute("SELECT value FROM meta WHERE key = 'receipt_count'")
                receipts = await cur.fetchone()
                assert receipts is not None
                await cur.execute(EVENT_COUNT)
                events = await cur.fetchone()
                assert events is not None
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
                events=int(events[0]),
                receipts=int(receipts[0]),
                states=states,
                oldest_undelivered_ms=oldest,
            )

        return await self._run("stats", body)
