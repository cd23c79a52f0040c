"""Helpers shared by the SQL backends (SQLite, PostgreSQL).

* :class:`GroupCommit` coalesces concurrent ``mark()`` calls into one
  transaction; :func:`coalesce_marks` merges the requests of one such
  transaction into as few statements as possible.
* :func:`assemble_scan` turns the rows of a page read (events, delivery states,
  receipts: a few set-based queries per page) into :class:`ScanRow` objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from ..events import record_from_wire
from .base import ConsumerReceipt, DeliveryState, ScanRow

__all__ = [
    "GroupCommit",
    "MarkRequest",
    "assemble_scan",
    "coalesce_marks",
    "implied_pairs",
    "parse_routed",
    "routed_pairs",
]


class MarkRequest(NamedTuple):
    """One ``mark()`` call waiting for the next group commit."""

    adapter: str
    sequence_ids: Sequence[int]
    state: DeliveryState
    error: str | None


class GroupCommit:
    """Coalesces concurrent ``mark()`` calls into one transaction.

    Callers :meth:`submit` a request and wait; one background task takes every
    request queued so far, hands the list to ``flush`` (one transaction) and
    wakes the callers with its outcome. Requests that arrive while a flush runs
    go into the next one, so under load each transaction carries many calls.
    ``linger_s``: how long the first request after a quiet spell waits for
    company, so that at low rates the acks of several batches and adapters
    share one transaction instead of one each.
    """

    def __init__(
        self, flush: Callable[[list[MarkRequest]], Awaitable[None]], *, linger_s: float = 0.0
    ) -> None:
        self._flush = flush
        self._linger_s = linger_s
        self._queue: list[tuple[MarkRequest, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: MarkRequest) -> None:
        """Queue ``request``; return when its transaction committed, or raise its
        error. A caller cancelled while waiting may still see its change committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="store-group-commit")
            self._task.add_done_callback(self._drained)
        await future

    def _drained(self, task: asyncio.Task[None]) -> None:
        # Cancelled before it took the queue (while lingering, or before it
        # ever ran): its waiters would wait forever, unless a newer task has
        # already taken over the queue.
        if task.cancelled() and self._task is task:
            queued, self._queue = self._queue, []
            for _, future in queued:
                future.cancel()

    async def wait_idle(self) -> None:
        """Wait until every queued request has been flushed (for ``close()``)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        if self._linger_s > 0:
            await asyncio.sleep(self._linger_s)
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._flush([request for request, _ in batch])
            except asyncio.CancelledError:
                for _, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # every waiter of the batch gets the outcome
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


def coalesce_marks(requests: Sequence[MarkRequest]) -> list[MarkRequest]:
    """Merge the requests of one group commit into as few statements as possible.

    Per adapter, consecutive requests with the same state and error become one
    (their ids concatenated). Requests for different adapters touch different
    rows, so merging across them is safe; within one adapter only consecutive
    runs merge, so "failed, then acked" still ends acked.
    """
    runs: dict[str, list[MarkRequest]] = {}
    for request in requests:
        adapter_runs = runs.setdefault(request.adapter, [])
        if adapter_runs and adapter_runs[-1][2:] == request[2:]:
            previous = adapter_runs[-1]
            ids = previous.sequence_ids
            assert isinstance(ids, list)
            ids.extend(request.sequence_ids)
        else:
            adapter_runs.append(request._replace(sequence_ids=list(request.sequence_ids)))
    return [run for adapter_runs in runs.values() for run in adapter_runs]


_STATES: dict[str, DeliveryState] = {state.value: state for state in DeliveryState}


def parse_routed(routed_json: str, cache: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """``routed_to`` (a JSON array) as a tuple; a page has few distinct routings,
    so ``cache`` turns most of these into one dict lookup."""
    routed = cache.get(routed_json)
    if routed is None:
        routed = cache[routed_json] = tuple(orjson.loads(routed_json))
    return routed


def implied_pairs(
    events: Sequence[Sequence[Any]],
    through: int,
    rows: Iterable[Sequence[Any]],
    routed_cache: dict[str, tuple[str, ...]],
) -> list[tuple[int, str, str]]:
    """``(sequence_id, adapter, state)`` for the routed pairs of ``events``
    (rows of ``(sequence_id, routed_to)``) that have no row among ``rows``
    (``(sequence_id, adapter, ...)`` of outbox and deliveries): queued in the
    tail (after ``through``), acknowledged before it. (SQLite writes a tail's
    outbox rows late; PostgreSQL writes them with the event, so every pair
    without a row there is acknowledged.)"""
    explicit = {(row[0], row[1]) for row in rows}
    queued, acked = DeliveryState.QUEUED.value, DeliveryState.ACKED.value
    return [
        (seq, adapter, queued if seq > through else acked)
        for seq, routed_json in events
        for adapter in dict.fromkeys(parse_routed(routed_json, routed_cache))
        if (seq, adapter) not in explicit
    ]


def routed_pairs(
    groups: Iterable[Sequence[Any]],
    judged_before_ms: int,
    routings: dict[str, tuple[str, ...]],
) -> tuple[dict[tuple[str, str], int], int] | None:
    """For ``plain_page``: from a page's events grouped as ``(category,
    routed_to, events, newest created_at_ms, events lacking checksum or keys)``,
    the routed pairs per ``(category, adapter)`` and in all — or None if the
    page cannot be plain (too young, rows of an old version, an adapter routed
    twice). ``routings`` collects the page's parsed routings."""
    counts: dict[tuple[str, str], int] = {}
    pairs = 0
    for category, routed_json, n, newest, incomplete in groups:
        routed = parse_routed(routed_json, routings)
        if newest > judged_before_ms or incomplete or len(set(routed)) != len(routed):
            return None
        for adapter in routed:
            counts[category, adapter] = counts.get((category, adapter), 0) + n
        pairs += n * len(routed)
    return counts, pairs


def assemble_scan(
    events: Iterable[Sequence[Any]],
    states: Iterable[Sequence[Any]],
    receipts: Iterable[Sequence[Any]],
    routed_cache: dict[str, tuple[str, ...]],
) -> list[ScanRow]:
    """Build the rows of one :meth:`Store.scan` page from three result sets.

    ``events``: ``(sequence_id, category, event_type, created_at_ms, checksum,
    payload_keys, routed_to, wire)`` in sequence order, ``wire`` only where
    ``checksum`` or ``payload_keys`` is NULL (rows written by an older version);
    ``states``: ``(sequence_id, adapter, state)``; ``receipts``: ``(sequence_id,
    adapter, event_type, received_at_ms, checksum, checksum_ok, consumer,
    payload_keys, deliveries)`` in receipt order.
    """
    # Python-side cost dominates a scan (the SQL is a few range reads), so this
    # loop avoids per-row work it can share: enum and routing lookups are cached.
    state_of = _STATES
    by_seq: dict[int, dict[str, DeliveryState]] = {}
    for seq, adapter, state in states:
        per = by_seq.get(seq)
        if per is None:
            per = by_seq[seq] = {}
        per[adapter] = state_of[state]
    receipts_of: dict[int, list[ConsumerReceipt]] = {}
    for seq, adapter, event_type, received, checksum, ok, consumer, keys, n in receipts:
        receipt = ConsumerReceipt(
            seq, adapter, event_type, received, checksum, bool(ok), consumer, keys, n
        )
        got = receipts_of.get(seq)
        if got is None:
            receipts_of[seq] = [receipt]
        else:
            got.append(receipt)
    rows: list[ScanRow] = []
    append = rows.append
    for seq, category, event_type, created, checksum, keys, routed_json, wire in events:
        if checksum is None or keys is None:
            # Written by a version before these columns existed (e.g. a process
            # of the old version during a rolling upgrade): read the wire.
            record = record_from_wire(bytes(wire))
            checksum, keys = record.checksum, record.payload_keys
        got = receipts_of.get(seq)
        append(
            ScanRow(
                seq,
                category,
                event_type,
                created,
                checksum,
                keys,
                parse_routed(routed_json, routed_cache),
                by_seq.get(seq) or {},  # a fresh dict per event: rows share nothing
                tuple(got) if got is not None else (),
            )
        )
    return rows
