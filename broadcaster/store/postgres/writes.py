"""The PostgreSQL store's writes of events and their delivery: ``append``
(producers; also inside a caller's own transaction, the transactional
outbox), ``mark`` (the lanes' delivery states, coalesced into one
transaction), ``prune`` (retention) and the watermarks.

Every write that changes what a counter counts changes the counter in the
same transaction, as its last statement and in key order, so that
:meth:`~broadcaster.store.postgres.PostgresStore.stats` reads a few rows and
concurrent transactions cannot deadlock on the counter rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
import psycopg
from psycopg.pq import TransactionStatus

from ...events import EventDraft, EventRecord, seal
from ...exceptions import InvalidEvent, StoreError, StoreUnavailable
from .._batching import MarkRequest, coalesce_marks, parse_routed
from ..records import SETTLED_STATES, DeliveryState
from .connection import ConnectedStore
from .sql import (
    ACK_PLAIN,
    ADD_DELIVERED_COUNTS,
    ADD_META,
    APPEND_LOCK,
    INSERT_APPEND,
    MARK_DELIVERED,
    MARK_SETTINGS,
    MARK_UNDELIVERED,
    NOTIFY_APPENDED,
    NOTIFY_IN_TRANSACTION,
    SCAN_OUTBOX,
    TAKE_IDS,
)

__all__ = ["PRUNE_CHUNK", "EventWrites"]


#: Events deleted per ``prune`` transaction (row locks are held until commit).
PRUNE_CHUNK: Final = 5000


async def _add_counts(cur: psycopg.AsyncCursor[Any], counts: dict[tuple[str, str], int]) -> None:
    """Apply per (adapter, state) changes to ``delivered_counts`` in the caller's
    transaction; in key order, so concurrent transactions lock the counter rows
    in the same order and cannot deadlock on them."""
    rows = [(adapter, state, n) for (adapter, state), n in sorted(counts.items()) if n]
    if rows:
        adapters, states, ns = (list(column) for column in zip(*rows, strict=True))
        await cur.execute(ADD_DELIVERED_COUNTS, (adapters, states, ns))


async def _append_rows(
    cur: psycopg.AsyncCursor[Any],
    batch: Sequence[tuple[EventDraft, tuple[str, ...]]],
    now_ms: int,
) -> list[EventRecord]:
    """In the caller's open transaction: give ``batch`` the next ids, seal and
    insert it. Holds the append lock, shared, until the transaction ends:
    appends run side by side, and readers know whom to wait for (see the
    package doc)."""
    await cur.execute(TAKE_IDS, (APPEND_LOCK, len(batch)))
    ids = sorted(int(row[0]) for row in await cur.fetchall())
    records = [seal(draft, seq) for (draft, _), seq in zip(batch, ids, strict=True)]
    adapters: list[str] = []
    queued: list[int] = []
    for (_, routed), seq in zip(batch, ids, strict=True):
        for adapter in dict.fromkeys(routed):
            adapters.append(adapter)
            queued.append(seq)
    await cur.execute(
        INSERT_APPEND,
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
            now_ms,
            adapters,
            queued,
            len(records),
        ),
    )
    return records


class EventWrites(ConnectedStore):
    """The part of :class:`~broadcaster.store.postgres.PostgresStore` that
    writes events, their delivery states, retention and watermarks."""

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
                records = await _append_rows(cur, batch, now_ms)
            # Committed: a failure to notify must not make the call look
            # failed (a retry would store the events twice). Followers then
            # find them at their next read (another append's notification or
            # their idle poll).
            try:
                await conn.execute(NOTIFY_APPENDED)
            except psycopg.Error as exc:
                self._log.warning("could not notify followers of an append", error=str(exc))
            return records

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

        Ordering: the append lock is taken, shared, in that transaction and
        held until it ends. Other producers do not wait for it; readers of
        the store wait for it to end before they pass the ids it holds, so
        none of them sees a later id while this one may still commit
        (see the package doc). Keep such transactions short: delivery of
        every later event waits for them.
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
                records = await _append_rows(cur, list(items), int(self._clock() * 1000))
                # Sent at the caller's COMMIT, and not at all on rollback.
                await cur.execute(NOTIFY_IN_TRANSACTION)
                return records
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
            if r.state == DeliveryState.ACKED and r.error is None:
                statement = ACK_PLAIN
            elif r.state in SETTLED_STATES:
                statement = MARK_DELIVERED
            else:
                statement = MARK_UNDELIVERED
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
                await cur.execute(MARK_SETTINGS)
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
                        # pairs that left ``old`` (deliveries rows, implied
                        # acknowledgements): for ``state`` or the outbox
                        counts[adapter, old] = counts.get((adapter, old), 0) - n
                        if delivered:
                            counts[adapter, state] = counts.get((adapter, state), 0) + n
                await _add_counts(cur, counts)

        await self._run("mark", body)

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
                # Lock the events and their delivered rows first: another
                # process's mark() can then no longer move a pair back to the
                # outbox before we commit (an acknowledged pair with no row is
                # re-queued through its event, which that mark locks too), and
                # the outbox check below (a new snapshot) sees every move made
                # before.
                await cur.execute(
                    "SELECT 1 FROM events WHERE sequence_id = ANY(%s::bigint[])"
                    " ORDER BY sequence_id FOR UPDATE",
                    (ids,),
                )
                await cur.execute(
                    "SELECT 1 FROM deliveries WHERE sequence_id = ANY(%s::bigint[])"
                    " ORDER BY sequence_id, adapter FOR UPDATE",
                    (ids,),
                )
                await cur.execute(SCAN_OUTBOX, (list(adapters), low, high))
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
                # The doomed events' other routed pairs had no row: acknowledged
                # implicitly (schema 9), and counted so.
                rowed: dict[str, int] = {}
                for (adapter, _), n in counts.items():
                    rowed[adapter] = rowed.get(adapter, 0) - n
                routed_of = dict(candidates)
                for seq in doomed:
                    for adapter in dict.fromkeys(parse_routed(routed_of[seq], routed_cache)):
                        if rowed.get(adapter, 0) > 0:
                            rowed[adapter] -= 1
                        else:
                            key = (adapter, DeliveryState.ACKED.value)
                            counts[key] = counts.get(key, 0) - 1
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
                await cur.execute(ADD_META, (-events, "event_count"))
                await cur.execute(ADD_META, (-receipts, "receipt_count"))
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
