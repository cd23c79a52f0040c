"""A lane's failover and backfill: what happens to its records while the
adapter's circuit breaker is not closed, and how they reach the adapter
once it is.

Inside a lane (between the hand-off and one adapter), next to delivery
(:mod:`broadcaster.lanes.lane`), sharing its queue and its set of held ids:

* **Failover.** While the breaker is open, records routed here are not kept in
  memory: they are marked ``PENDING`` in the store (in batches) and leave the
  lane, so backpressure never blocks publishing because this adapter is down.
  ``BreakerOpen`` is not a delivery failure.
* **Half-open.** Live traffic (the breaker's first ramp share) carries the
  probes; with no live traffic the lane probes with the oldest pending events
  from the store, so recovery never waits for new events.
* **Ramp.** After closing, ``breaker.share`` percent of live traffic is sent
  (a stable per-event decision: ``bucket(category, routing_key) < share``);
  the rest is marked ``PENDING``.
* **Backfill.** Once closed, a background task pages through
  ``store.undelivered`` and sends what no lane holds, at most
  ``backfill_rate`` events/s and only while the lane is not busy, so live
  traffic keeps its latency. It runs until a pass at full share finds nothing.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence

import structlog

from ..breaker import AdapterBreaker
from ..breaker_policy import BreakerState
from ..events import EventRecord
from ..exceptions import StoreError
from ..stats import DeliveryStats
from ..store.base import DeliveryState, Store
from .pacing import Pulse, TokenBucket

__all__ = ["PROBE_PAGE", "LaneFailover"]

log = structlog.get_logger("broadcaster.lane")

#: Events per half-open probe taken from the store when there is no live traffic.
PROBE_PAGE = 50
#: How long a backfill that has nothing to do right now waits before looking again.
_BACKFILL_IDLE_S = 0.1


class LaneFailover(ABC):
    """The failover side of a :class:`~broadcaster.lanes.Lane` (see the
    module doc): parking records ``PENDING``, half-open probes and the
    backfill. The lane's delivery side sets the attributes declared here
    and implements the abstract methods; both work on one queue and one set
    of held ids, so that no row is sent twice and none is dropped.
    """

    # Set by the delivery side (lane.py).
    name: str
    breaker: AdapterBreaker | None
    _store: Store
    _stats: DeliveryStats
    _clock: Callable[[], float]
    _max_batch: int
    _outstanding: int
    _held: set[int]
    _from_store: set[int]
    _changed: Pulse
    _on_progress: Callable[[], None] | None
    _sync_handoff: Callable[[], None] | None
    _handed: Callable[[], int] | None

    def __init__(self, backfill_rate: float) -> None:
        # Ids released while a backfill query was running (see _store_page).
        self._watch: set[int] | None = None
        self._parking: list[EventRecord] = []
        self._park_wake = asyncio.Event()
        self._backfill_rate = backfill_rate
        self._backfill_needed = False
        #: Completed PENDING writes; a backfill pass may only declare itself
        #: complete if none finished while it ran (their rows were still held
        #: when its pages were read, so it skipped them).
        self._parked_writes = 0
        self._backfilling = False
        self._backfill_idle = asyncio.Event()
        self._backfill_idle.set()
        # Wakes an idle backfill task: only a breaker transition or a parked
        # record can give it work, not every send and ack (as _changed would).
        self._backfill_wake = asyncio.Event()
        #: Events this lane marked PENDING and has not delivered since (an
        #: estimate for /health: rows left PENDING by an earlier process are
        #: not counted until they are re-parked).
        self.pending = 0
        #: Events sent by the backfill (and store probes) and acknowledged.
        self.backfilled = 0

    @abstractmethod
    def enqueue(
        self, records: Sequence[EventRecord], *, repair: bool = False, live: bool = True
    ) -> None:
        """Add records (in sequence order) to the lane's queue."""

    @abstractmethod
    def _settle(self, count: int) -> None:
        """``count`` outstanding records left the lane (acknowledged or parked)."""

    def _release(self, ids: Collection[int]) -> None:
        """The lane lets go of ``ids`` (their state is recorded); a backfill
        query running now must not take them for rows nobody holds."""
        self._held.difference_update(ids)
        if self._watch is not None:
            self._watch.update(ids)

    # -- failover: parking records as PENDING ---------------------------------

    def _park(self, records: Sequence[EventRecord]) -> None:
        """Hand records (already counted in ``outstanding``) to the park task,
        which marks them PENDING; they stay held and outstanding until then."""
        if not records:
            return
        for r in records:
            self._held.add(r.sequence_id)
        self._parking.extend(records)
        self._park_wake.set()
        self._backfill_wake.set()

    async def _park_loop(self) -> None:
        structlog.contextvars.bind_contextvars(adapter=self.name)
        while True:
            if not self._parking:
                self._park_wake.clear()
                await self._park_wake.wait()
                continue
            batch, self._parking = self._parking, []
            ids = [r.sequence_id for r in batch]
            try:
                # One batched write per wake-up, however many records piled up.
                await self._store.mark(self.name, ids, DeliveryState.PENDING)
            except StoreError as exc:
                log.error("could not record pending events; retrying", error=str(exc))
                self._parking[:0] = batch
                await asyncio.sleep(0.5)  # the store is failing: do not spin on it
                continue
            fresh = sum(1 for i in ids if i not in self._from_store)
            self._from_store.difference_update(ids)
            self.pending += fresh
            self._stats.parked[self.name] += fresh
            self._parked_writes += 1
            self._backfill_needed = True
            self._backfill_idle.clear()
            self._backfill_wake.set()
            self._release(ids)
            self._settle(len(batch))

    # -- half-open probes and backfill ------------------------------------------

    async def _wait_change(self, within_s: float | None) -> None:
        try:
            async with asyncio.timeout(within_s):
                await self._changed.wait()
        except TimeoutError:
            pass

    async def _backfill_loop(self) -> None:
        structlog.contextvars.bind_contextvars(adapter=self.name)
        breaker = self.breaker
        assert breaker is not None
        bucket_ = TokenBucket(
            self._backfill_rate, max(1.0, self._backfill_rate / 10), clock=self._clock
        )
        while True:
            state = breaker.state
            if state == BreakerState.OPEN:
                retry_at = breaker.retry_at
                delay = (retry_at - self._clock()) if retry_at is not None else None
                if delay is None or delay > 0:
                    await self._wait_change(delay)
                    continue
                # Recovery time is up: go half-open now so live traffic (the
                # first ramp share) probes, rather than waiting for a call.
                breaker.policy.poll(self._clock())
                continue
            if state == BreakerState.HALF_OPEN:
                if self._outstanding == 0:
                    probes = self.unheld(await self._store_page(0, PROBE_PAGE))
                    if probes and breaker.state == BreakerState.HALF_OPEN:
                        log.info("probing with pending events", count=len(probes))
                        self.enqueue(probes, live=False)
                        continue
                await self._wait_change(_BACKFILL_IDLE_S)
                continue
            if not self._backfill_needed:
                self._backfill_idle.set()
                self._changed.fire()
                if self._on_progress is not None:
                    self._on_progress()
                await self._backfill_wake.wait()
                self._backfill_wake.clear()
                continue
            await self._backfill_pass(breaker, bucket_)

    async def _store_page(self, after: int, limit: int) -> list[EventRecord]:
        self._watch = set()
        try:
            rows = await self._store.undelivered(self.name, after=after, limit=limit)
        except StoreError as exc:
            log.error("backfill could not read the store", error=str(exc))
            await asyncio.sleep(0.5)  # the store is failing: do not spin on it
            return []
        finally:
            watched, self._watch = self._watch, None
        return [r for r in rows if r.sequence_id not in watched]

    def unheld(self, rows: list[EventRecord]) -> list[EventRecord]:
        """Those of ``rows`` (read from the store) this lane may send: not
        held by it (queued, in flight, being parked) and not on their way to
        it by the hand-off, which is run first for that."""
        if self._sync_handoff is not None:
            self._sync_handoff()
        if self._handed is not None:
            through = self._handed()
            return [r for r in rows if r.sequence_id not in self._held and r.sequence_id <= through]
        return [r for r in rows if r.sequence_id not in self._held]

    async def _backfill_pass(self, breaker: AdapterBreaker, tokens: TokenBucket) -> None:
        """One pass over the adapter's undelivered rows, oldest first."""
        after, sent, started = 0, 0, self._clock()
        parked_writes = self._parked_writes
        page = max(self._max_batch, 1)
        chunk = max(1, min(self._max_batch, int(self._backfill_rate / 20)))
        if not self._backfilling:
            self._backfilling = True
            log.info("backfill started", pending=self.pending)
        try:
            # The pass ends at the tail as it was when it began: under steady
            # publishing the newest rows are always in flight (undelivered and
            # held), and a pass that chased them would never end — nor come
            # back for rows parked behind it after it read their page.
            tail = await self._store.last_sequence_id()
        except StoreError as exc:
            log.error("backfill could not read the store", error=str(exc))
            await asyncio.sleep(0.5)  # the store is failing: do not spin on it
            return
        while breaker.state == BreakerState.CLOSED and after < tail:
            rows = [r for r in await self._store_page(after, page) if r.sequence_id <= tail]
            if not rows:
                break
            after = rows[-1].sequence_id
            fresh = self.unheld(rows)
            for i in range(0, len(fresh), chunk):
                await tokens.take(min(chunk, len(fresh) - i))
                # Live traffic first: wait while the lane has work of its own.
                while (
                    self._outstanding > 2 * self._max_batch and breaker.state == BreakerState.CLOSED
                ):
                    await self._wait_change(_BACKFILL_IDLE_S)
                if breaker.state != BreakerState.CLOSED:
                    return
                part = [r for r in fresh[i : i + chunk] if r.sequence_id not in self._held]
                self.enqueue(part, live=False)
                sent += len(part)
            if sent:
                log.info("backfill progress", count=sent, remaining=self.pending)
        if breaker.state != BreakerState.CLOSED:
            return
        if (
            sent == 0
            and breaker.share >= 100
            and not self._parking
            and parked_writes == self._parked_writes
        ):
            self._backfill_needed = False
            self._backfilling = False
            log.info(
                "backfill complete",
                duration_s=round(self._clock() - started, 3),
                backfilled_total=self.backfilled,
            )
            return
        if sent == 0:
            # Ramping: the ramp keeps parking live events; look again shortly.
            await self._wait_change(_BACKFILL_IDLE_S)
