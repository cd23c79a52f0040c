"""Delivery lanes: one per adapter, each an ordered, pipelined queue.

A lane takes sealed records in sequence order, cuts them into batches and
keeps up to ``max_in_flight`` batches outstanding with its adapter, so
acknowledgements pipeline instead of costing one round trip each. Lanes are
independent tasks: a slow or failing adapter holds up only its own lane, never
another adapter's sends.

On failure the batch goes back to the front of the queue and the lane backs
off (exponentially, capped) before sending again; the store records the
failure. Nothing is dropped: a record leaves the lane only when acknowledged.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from .adapters.base import Adapter
from .events import EventRecord
from .exceptions import AdapterError, StoreError
from .stats import DeliveryStats
from .store.base import DeliveryState, Store

__all__ = ["Lane"]

log = structlog.get_logger("broadcaster.lane")


class Lane:
    """Ordered, pipelined delivery of records to one adapter."""

    def __init__(
        self,
        adapter: Adapter,
        store: Store,
        stats: DeliveryStats,
        *,
        max_batch: int = 500,
        max_in_flight: int = 16,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        on_progress: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self._store = store
        self._stats = stats
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: deque[EventRecord] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._outstanding = 0
        self._in_flight: set[asyncio.Task[None]] = set()
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._backoff = 0.0
        self._resume_at = 0.0
        self._on_progress = on_progress
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self._repairing: set[int] = set()

    # -- producer side -------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Records enqueued and not yet acknowledged by the adapter."""
        return self._outstanding

    def enqueue(self, records: Sequence[EventRecord], *, repair: bool = False) -> None:
        """Add records (in sequence order). Never blocks; the broadcaster bounds
        how much may be outstanding before ``publish()`` waits. With
        ``repair=True`` (reconciliation re-sends) an acknowledgement is
        recorded as ``REPAIRED`` rather than ``ACKED``."""
        if not records:
            return
        if repair:
            self._repairing.update(r.sequence_id for r in records)
        self._queue.extend(records)
        self._outstanding += len(records)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait until every enqueued record is acknowledged."""
        await self._idle.wait()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"lane-{self.name}"
            )

    async def stop(self) -> None:
        """Stop sending. Records still queued stay undelivered in the store and
        are re-sent on the next start (recovery)."""
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    # -- delivery ------------------------------------------------------------

    async def _run(self) -> None:
        # Bound once for this task: every log line of this lane names its adapter.
        structlog.contextvars.bind_contextvars(adapter=self.name)
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._resume_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._slots.acquire()
            if not self._queue:  # drained while we waited for a slot
                self._slots.release()
                continue
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            task = asyncio.get_running_loop().create_task(self._deliver(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, batch: list[EventRecord]) -> None:
        try:
            await self.adapter.send(batch)
        except AdapterError as exc:
            self._slots.release()
            await self._failed(batch, exc)
            return
        except Exception as exc:  # an adapter bug must not kill the lane or lose events
            self._slots.release()
            log.exception("adapter raised an unexpected error", error=repr(exc))
            await self._failed(batch, exc)
            return
        self._slots.release()
        self._backoff = 0.0
        self.last_error = None
        self._stats.count_delivered(self.name, batch)
        self._settle(len(batch))
        ids = [r.sequence_id for r in batch]
        repaired = [i for i in ids if i in self._repairing] if self._repairing else []
        try:
            if repaired:
                self._repairing.difference_update(repaired)
                await self._store.mark(self.name, repaired, DeliveryState.REPAIRED)
                ids = [i for i in ids if i not in set(repaired)]
            await self._store.mark(self.name, ids, DeliveryState.ACKED)
        except StoreError as exc:
            # The ack is not recorded: after a restart these are re-sent
            # (at-least-once) and reconciliation reports the duplicates.
            log.error("could not record acknowledgements", error=str(exc), count=len(batch))

    async def _failed(self, batch: list[EventRecord], exc: Exception) -> None:
        self.last_error = str(exc)
        self._stats.count_failed(self.name, batch)
        self._stats.retried_batches[self.name] += 1
        self._backoff = min(self._backoff_max, max(self._backoff_initial, self._backoff * 2))
        self._resume_at = self._clock() + self._backoff
        log.warning(
            "delivery failed; will retry",
            error=str(exc),
            count=len(batch),
            first_sequence_id=batch[0].sequence_id,
            retry_in_s=round(self._backoff, 3),
        )
        try:
            # Recorded before the retry is queued, so a later ACK cannot be
            # overwritten by this FAILED.
            await self._store.mark(
                self.name, [r.sequence_id for r in batch], DeliveryState.FAILED, str(exc)
            )
        except StoreError as store_exc:
            log.error("could not record the failure", error=str(store_exc))
        # Back to the front, in order, ahead of anything newer.
        self._queue.extendleft(reversed(batch))
        self._wake.set()

    def _settle(self, count: int) -> None:
        self._outstanding -= count
        if self._outstanding == 0:
            self._idle.set()
        if self._on_progress is not None:
            self._on_progress()
