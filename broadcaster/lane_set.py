"""The broadcaster's lanes: one per adapter it delivers to, each with its
circuit breaker.

Between the hand-off and the adapters: a lane takes committed records in
sequence order and delivers them to one adapter (:mod:`broadcaster.lanes`);
its breaker decides whether live traffic goes through or waits pending.
The :class:`LaneSet` builds them, re-sends what a previous writer left
undelivered, logs failovers and shows each breaker as a
:class:`BreakerView`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypedDict

import structlog

from .adapters.base import Adapter
from .breaker import AdapterBreaker
from .breaker_policy import BreakerConfig, BreakerState, Transition
from .lanes import Lane
from .settings import Settings
from .stats import DeliveryStats
from .store import Store

__all__ = ["BreakerView", "LaneSet"]

log = structlog.get_logger("broadcaster")

_RECOVERY_PAGE = 5000


class BreakerView(TypedDict):
    """One adapter's breaker, as ``/health`` and the metrics show it."""

    #: ``closed``, ``open`` or ``half_open``.
    state: str
    #: Percent of live traffic the adapter gets now (the restore ramp).
    share: float
    #: Failures (and slow calls) in the breaker's window, 0 to 1.
    failure_rate: float
    #: Monotonic seconds; None when not applicable.
    opened_at: float | None
    retry_at: float | None
    #: ``{"closed->open": n, ...}``.
    transitions: dict[str, int]
    #: Events this process recorded PENDING and has not delivered yet.
    pending: int


class LaneSet:
    """Builds, recovers and releases the lanes in ``lanes`` (the mapping the
    hand-off delivers to) and keeps their :attr:`breakers`.

    ``breaker_config`` overrides the breakers' settings per adapter;
    ``on_progress`` runs when the backlog may have shrunk (a breaker changed
    state, a lane stopped); ``sync_handoff`` and ``handed`` go to each
    :class:`~broadcaster.lanes.Lane`.
    """

    def __init__(
        self,
        lanes: dict[str, Lane],
        adapters: Mapping[str, Adapter],
        store: Store,
        stats: DeliveryStats,
        settings: Settings,
        *,
        max_batch: int,
        max_in_flight: int,
        breaker_config: Callable[[str], BreakerConfig] | None,
        backfill_rate: float,
        monotonic: Callable[[], float],
        on_progress: Callable[[], None],
        sync_handoff: Callable[[], None],
        handed: Callable[[], int] | None,
    ) -> None:
        self._lanes = lanes
        self._adapters = adapters
        self._store = store
        self._stats = stats
        self._settings = settings
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._breaker_config = breaker_config
        self._backfill_rate = backfill_rate
        self._monotonic = monotonic
        self._on_progress = on_progress
        self._sync_handoff = sync_handoff
        self._handed = handed
        #: Per adapter with a lane, its breaker.
        self.breakers: dict[str, AdapterBreaker] = {}

    def new_lane(self, name: str) -> Lane:
        """A lane (and its breaker) for adapter ``name``; the caller lists
        it in ``lanes`` and starts it."""
        self.breakers[name] = self._make_breaker(name)
        return Lane(
            self._adapters[name],
            self._store,
            self._stats,
            max_batch=self._max_batch,
            max_in_flight=self._max_in_flight,
            on_progress=self._on_progress,
            clock=self._monotonic,
            breaker=self.breakers[name],
            backfill_rate=self._backfill_rate,
            sync_handoff=self._sync_handoff,
            handed=self._handed,
        )

    async def recover(self, name: str, lane: Lane, through: int | None) -> int:
        """Enqueue what the store holds undelivered for ``name`` (up to
        ``through``, where the tail takes over); returns how many."""
        after, total = 0, 0
        while True:
            records = await self._store.undelivered(name, after=after, limit=_RECOVERY_PAGE)
            if through is not None:
                records = [r for r in records if r.sequence_id <= through]
            if not records:
                break
            lane.enqueue(records)
            total += len(records)
            after = records[-1].sequence_id
        if total:
            log.info("recovering undelivered events", adapter=name, count=total)
        return total

    async def release(self, name: str) -> None:
        """Stop ``name``'s lane, if it runs, and drop its breaker."""
        lane = self._lanes.pop(name, None)
        if lane is None:
            return
        await lane.stop()
        self.breakers.pop(name, None)
        self._on_progress()

    def views(self) -> dict[str, BreakerView]:
        """Per adapter with a running lane, its breaker."""
        states: dict[str, BreakerView] = {}
        for name, breaker in self.breakers.items():
            lane = self._lanes.get(name)
            states[name] = BreakerView(
                state=breaker.state,
                share=breaker.share,
                failure_rate=breaker.failure_rate,
                opened_at=breaker.opened_at,
                retry_at=breaker.retry_at,
                transitions=breaker.transitions,
                pending=lane.pending if lane is not None else 0,
            )
        return states

    def _make_breaker(self, name: str) -> AdapterBreaker:
        # Lane and breaker share one monotonic clock: the lane compares
        # breaker times (retry_at) with its own.
        def on_transition(transition: Transition) -> None:
            self._on_breaker_transition(name, transition)

        if self._breaker_config is not None:
            return AdapterBreaker(
                name, self._breaker_config(name), self._monotonic, on_transition=on_transition
            )
        return AdapterBreaker.from_settings(
            self._settings, name, self._monotonic, on_transition=on_transition
        )

    def _on_breaker_transition(self, name: str, transition: Transition) -> None:
        self._stats.count_transition(name, transition.key)
        lane = self._lanes.get(name)
        if (
            transition.to_state is BreakerState.OPEN
            and transition.from_state is BreakerState.CLOSED
        ):
            log.warning(
                "failover started: events for this adapter are pending",
                adapter=name,
                reason=transition.reason,
            )
        elif transition.to_state is BreakerState.CLOSED:
            log.info(
                "failover ended: adapter restored, ramping up and backfilling",
                adapter=name,
                pending=lane.pending if lane is not None else 0,
            )
        if lane is not None:
            lane.notify()
        self._on_progress()
