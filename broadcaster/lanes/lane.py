"""Delivery to one adapter: an ordered, pipelined queue.

Between the hand-off and the adapter: a lane takes sealed records in
sequence order, cuts them into batches and keeps up to ``max_in_flight``
batches outstanding with its adapter, so acknowledgements pipeline instead
of costing one round trip each. Lanes are independent tasks: a slow or
failing adapter holds up only its own lane, never another adapter's sends.

On failure the batch goes back to the front of the queue and the lane backs
off (exponentially, capped) before sending again; the store records the
failure. Nothing is dropped: a record leaves the lane only when acknowledged,
or — with a circuit breaker (docs/configuration.md) — when it is recorded
``PENDING`` (:mod:`broadcaster.lanes.failover`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence

import structlog

from ..adapters.base import Adapter
from ..breaker import AdapterBreaker
from ..breaker_policy import BreakerState
from ..events import EventRecord
from ..exceptions import AdapterError, AdapterThrottled, BreakerOpen, EventsRefused, StoreError
from ..routing import bucket
from ..stats import DeliveryStats
from ..store.base import DeliveryState, Store
from .failover import LaneFailover
from .pacing import Pulse

__all__ = ["Lane"]

log = structlog.get_logger("broadcaster.lane")


class Lane(LaneFailover):
    """Ordered, pipelined delivery of records to one adapter (see the module
    doc); with a ``breaker``, failover and backfill too (see
    :class:`~broadcaster.lanes.failover.LaneFailover`).

    ``clock`` must be the breaker's clock (monotonic seconds): backoff and
    breaker times are compared with it. ``sync_handoff``, where records
    committed to the store reach the lane a little later (the broadcaster's
    hand-off), must enqueue those records at once: the lane calls it before it
    reads the store for rows it does not hold (backfill, probes), so it never
    sends a row that is on its way live. ``handed``, where the broadcaster
    follows its store, is the id up to which stored rows have been handed
    over: the lane leaves rows above it to that hand-off.
    """

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
        breaker: AdapterBreaker | None = None,
        backfill_rate: float = 5000.0,
        sync_handoff: Callable[[], None] | None = None,
        handed: Callable[[], int] | None = None,
    ) -> None:
        self.adapter = adapter
        self.name = adapter.name
        self._store = store
        self._stats = stats
        self._max_batch = max_batch
        # Batches that may be in flight at once; _run waits on _slot_freed
        # when none is left (a counter, so that _launch can take one in a
        # callback, without awaiting).
        self._free_slots = max_in_flight
        self._slot_freed = asyncio.Event()
        # _run waits for work with nothing queued: records added now may start
        # their delivery at once (_launch_or_wake) instead of waking it.
        self._run_idle = False
        # _run's context (the adapter bound for logs), for delivery tasks.
        self._context: contextvars.Context | None = None
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
        # Hands over records committed and not yet enqueued (the broadcaster
        # queues them for one loop turn): called before the lane decides from
        # what it holds that a stored row is not on its way.
        self._sync_handoff = sync_handoff
        # Where the broadcaster follows its store: the id up to which stored
        # rows have been handed to the lanes; rows above it are on their way.
        self._handed = handed
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self.last_error: str | None = None
        self._repairing: set[int] = set()
        # Sequence ids a refusal for rate holds back, counted once until they go.
        self._rate_held: set[int] = set()
        self.breaker = breaker
        # Sequence ids this lane holds (queued, in flight, being parked): the
        # backfill must not send them a second time.
        self._held: set[int] = set()
        # Ids taken from the store (probes, backfill) and still held: acking
        # one of them lowers ``pending``; parking one again does not raise it.
        self._from_store: set[int] = set()
        self._changed = Pulse()
        # Parking, probes and backfill (failover.py).
        super().__init__(backfill_rate)

    # -- producer side -------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Records enqueued and not yet acknowledged by the adapter or recorded
        ``PENDING``."""
        return self._outstanding

    @property
    def settled(self) -> bool:
        """Nothing outstanding, and — unless the breaker is open or half-open,
        where what is left waits as ``PENDING`` behind it — no backfill under
        way. ``flush()`` waits for this."""
        if self._outstanding:
            return False
        if self.breaker is None or self.breaker.state != BreakerState.CLOSED:
            return True
        return self._backfill_idle.is_set()

    def enqueue(
        self, records: Sequence[EventRecord], *, repair: bool = False, live: bool = True
    ) -> None:
        """Add records (in sequence order). Never blocks; the broadcaster bounds
        how much may be outstanding before ``publish()`` waits. With
        ``repair=True`` (reconciliation re-sends) an acknowledgement is
        recorded as ``REPAIRED`` rather than ``ACKED``.

        Live records (``live=True``, not repairs) are subject to the breaker's
        share: while it is open, or for the part the ramp holds back, they are
        marked ``PENDING`` instead of sent (and backfilled later)."""
        if not records:
            return
        if repair:
            self._repairing.update(r.sequence_id for r in records)
        send: Sequence[EventRecord] = records
        if live and not repair and self.breaker is not None:
            share = self.breaker.share
            if share < 100:
                send = [r for r in records if bucket(r.category.value, r.routing_key) < share]
                if len(send) < len(records):
                    chosen = {r.sequence_id for r in send}
                    held_back = [r for r in records if r.sequence_id not in chosen]
                    self._outstanding += len(held_back)
                    self._idle.clear()
                    self._park(held_back)
        if not live:
            self._from_store.update(r.sequence_id for r in send)
        if send:
            self._held.update(r.sequence_id for r in send)
            self._queue.extend(send)
            self._outstanding += len(send)
            self._idle.clear()
            self._launch_or_wake()
        self._changed.fire()

    def enqueue_live(self, record: EventRecord) -> None:
        """``enqueue((record,))`` for one live record, without the general
        path's branches: the broadcaster's hand-off of a lone committed record
        (``publish()`` at a modest rate) runs it once per routed adapter, so
        its cost is paid per event and path. While the breaker holds part of
        the traffic back it takes the general path."""
        breaker = self.breaker
        if breaker is not None and breaker.share < 100:
            self.enqueue((record,))
            return
        self._held.add(record.sequence_id)
        self._queue.append(record)
        self._outstanding += 1
        self._idle.clear()
        self._launch_or_wake()
        self._changed.fire()

    async def wait_idle(self) -> None:
        """Wait until every enqueued record is acknowledged or recorded ``PENDING``."""
        await self._idle.wait()

    async def wait_settled(self) -> None:
        """Wait until :attr:`settled` holds."""
        while not self.settled:
            await self._changed.wait()

    def notify(self) -> None:
        """Wake the lane's tasks: call on every breaker transition."""
        self._changed.fire()
        self._wake.set()
        self._backfill_wake.set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=f"lane-{self.name}")
            if self.breaker is not None:
                self._helpers = [
                    loop.create_task(self._park_loop(), name=f"lane-{self.name}-park"),
                    loop.create_task(self._backfill_loop(), name=f"lane-{self.name}-backfill"),
                ]

    async def stop(self) -> None:
        """Stop sending. Records still queued stay undelivered in the store and
        are re-sent on the next start (recovery)."""
        tasks = [t for t in (self._task, *self._helpers, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._helpers = []

    # -- delivery ------------------------------------------------------------

    def _launch_or_wake(self) -> None:
        """After records were queued: start their delivery now if ``_run``
        would do just that on waking (it is idle, a slot is free, no backoff,
        the breaker closed), else wake it.

        Why: records reach the lane in a callback a loop turn after their
        commit (the broadcaster's hand-off); waking ``_run`` from there cost
        a second turn before the delivery task was even created, which
        showed in the WebSocket path's median latency."""
        breaker = self.breaker
        if (
            self._run_idle
            and not self._wake.is_set()
            and self._free_slots
            and not self._backoff
            and (breaker is None or breaker.state == BreakerState.CLOSED)
        ):
            self._launch()
            if not self._queue:
                return
        self._wake.set()

    def _launch(self) -> None:
        """Take a slot and start delivering the next batch (the queue is not empty)."""
        self._free_slots -= 1
        n = min(len(self._queue), self._max_batch)
        batch = [self._queue.popleft() for _ in range(n)]
        context = self._context.copy() if self._context is not None else None
        task = asyncio.get_running_loop().create_task(self._deliver(batch), context=context)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    def _release_slot(self) -> None:
        self._free_slots += 1
        self._slot_freed.set()

    async def _run(self) -> None:
        # Bound once for this task: every log line of this lane names its
        # adapter, and so do its delivery tasks (they start in this context).
        structlog.contextvars.bind_contextvars(adapter=self.name)
        self._context = contextvars.copy_context()
        while True:
            if not self._queue:
                self._wake.clear()
                self._run_idle = True
                try:
                    await self._wake.wait()
                finally:
                    self._run_idle = False
                continue
            breaker = self.breaker
            if breaker is not None and breaker.state == BreakerState.OPEN:
                # Failover: nothing waits in memory behind an open breaker.
                parked = list(self._queue)
                self._queue.clear()
                self._park(parked)
                continue
            delay = self._resume_at - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if not self._free_slots:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue  # look again: the queue may be drained, the breaker open
            self._launch()

    async def _send(self, batch: list[EventRecord]) -> None:
        if self.breaker is None:
            await self.adapter.send(batch)
        else:
            await self.breaker.call(lambda: self.adapter.send(batch))

    async def _deliver(self, batch: list[EventRecord]) -> None:
        started = self._clock()
        refused: dict[int, str] = {}
        try:
            await self._send(batch)
        except BreakerOpen:
            # Not a delivery failure: nothing was sent. Pending until backfill.
            self._release_slot()
            self._park(batch)
            return
        except AdapterThrottled as exc:
            self._release_slot()
            self._throttled(batch, exc)
            return
        except EventsRefused as exc:
            # Every other event of the batch was delivered.
            refused = exc.refused
            self._stats.count_refused(self.name, refused.values())
            log.warning(
                "events refused for good; reconciliation reports them missing here",
                error=str(exc),
                sequence_ids=sorted(refused),
            )
        except AdapterError as exc:
            self._release_slot()
            await self._failed(batch, exc)
            return
        except Exception as exc:  # an adapter bug must not kill the lane or lose events
            self._release_slot()
            log.exception("adapter raised an unexpected error", error=repr(exc))
            await self._failed(batch, exc)
            return
        self._release_slot()
        self._backoff = 0.0
        self.last_error = None
        if self._rate_held:
            self._rate_held.difference_update(r.sequence_id for r in batch)
        delivered = [r for r in batch if r.sequence_id not in refused] if refused else batch
        if delivered:
            self._stats.count_delivered(self.name, delivered, self._clock() - started)
        ids = [r.sequence_id for r in delivered]
        if self._from_store:
            settled = [r.sequence_id for r in batch if r.sequence_id in self._from_store]
            if settled:
                self._from_store.difference_update(settled)
                self.pending = max(0, self.pending - len(settled))
                backfilled = len(settled) - sum(1 for i in settled if i in refused)
                self.backfilled += backfilled
                self._stats.backfilled[self.name] += backfilled
        repaired = [i for i in ids if i in self._repairing] if self._repairing else []
        try:
            if refused:
                self._repairing.difference_update(refused)
                reasons = ", ".join(sorted(set(refused.values())))
                await self._store.mark(
                    self.name, list(refused), DeliveryState.REFUSED, f"refused: {reasons}"
                )
            if repaired:
                self._repairing.difference_update(repaired)
                await self._store.mark(self.name, repaired, DeliveryState.REPAIRED)
                ids = [i for i in ids if i not in set(repaired)]
            await self._store.mark(self.name, ids, DeliveryState.ACKED)
        except StoreError as exc:
            # The ack is not recorded: after a restart these are re-sent
            # (at-least-once) and reconciliation reports the duplicates.
            log.error("could not record acknowledgements", error=str(exc), count=len(batch))
        finally:
            # Released only once the ACK is written, so a backfill query cannot
            # read the row as undelivered after the lane let go of it; settled
            # only then too, so that flush() returns with every state recorded.
            self._release([r.sequence_id for r in batch])
            self._settle(len(batch))

    def _throttled(self, batch: list[EventRecord], exc: AdapterThrottled) -> None:
        """A rate quota said no: not a failure (nothing is marked FAILED and the
        breaker records nothing); the batch waits at the front for the pause.
        A refusal counts each event it holds back once, however many times
        the batch is tried again before it goes."""
        self.last_error = str(exc)
        if exc.refused:
            held = self._rate_held
            fresh = [r.sequence_id for r in batch if r.sequence_id not in held]
            held.update(fresh)
            self._stats.count_refused(self.name, [exc.reason] * len(fresh))
        self._stats.retried_batches[self.name] += 1
        # A non-zero backoff also keeps _launch_or_wake from sending before
        # _run has waited out the pause; the next success clears it.
        self._backoff = max(self._backoff, exc.retry_after_s, 1e-3)
        self._resume_at = max(self._resume_at, self._clock() + exc.retry_after_s)
        (log.info if exc.refused else log.debug)(
            "delivery throttled by a quota; will retry",
            error=str(exc),
            count=len(batch),
            retry_in_s=round(exc.retry_after_s, 3),
        )
        self._queue.extendleft(reversed(batch))
        self._wake.set()

    async def _failed(self, batch: list[EventRecord], exc: Exception) -> None:
        self.last_error = str(exc)
        self._stats.count_failed(self.name, batch)
        self._stats.retried_batches[self.name] += 1
        if self.breaker is not None and self.breaker.state != BreakerState.CLOSED:
            # The breaker opened (this failure or an earlier one): the batch
            # waits as PENDING in the store rather than in memory.
            log.warning(
                "delivery failed; breaker not closed, events pending",
                error=str(exc),
                count=len(batch),
                first_sequence_id=batch[0].sequence_id,
            )
            self._park(batch)
            return
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
        self._changed.fire()
        if self._on_progress is not None:
            self._on_progress()
