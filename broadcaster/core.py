"""The :class:`Broadcaster`: publish → validate → route → store → deliver.

``publish()`` validates and routes on the caller's task. The store gives the
events sequence ids, seals them (canonical bytes + checksum) and stores them in
one transaction; once that commit is durable the records go to the adapters'
lanes (one ordered lane per adapter) and ``publish()`` returns. Delivery runs
concurrently; ``flush()`` waits for it.

Who commits, in the caller's step or a group-commit writer task, is
:mod:`broadcaster.group_commit`'s part (with the heuristic of
:mod:`broadcaster.commit_scheduler`); committed records reach the lanes
through :mod:`broadcaster.handoff`. Either way sequence ids follow the order
of the calls.

Backpressure: at most ``max_pending`` events may be waiting for the writer or
for the slowest lane; beyond that ``publish()`` waits. It never drops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import structlog

from .adapters.base import Adapter, AdapterHealth
from .assembly import default_adapters, log_configuration, start_adapters
from .breaker_policy import BreakerConfig
from .events import Category, EventDraft, EventRecord
from .exceptions import BroadcasterClosed, FlushTimeout, StoreError
from .flags import RuntimeFlags
from .group_commit import GroupCommit
from .handoff import Handoff
from .lane_set import BreakerView, LaneSet
from .lanes import Lane
from .logs import use_log_settings
from .producer import Receipt, draft_batch, event_factory, receipt_of
from .reconcile.matching import MatchPolicy, Report
from .reconcile.reconciler import RECONCILED_THROUGH, Reconciler
from .routing import RoutingTable
from .settings import Settings, load_settings
from .stats import DeliveryStats
from .store import Store, StoreHealth, store_from_url

__all__ = ["BreakerView", "Broadcaster", "Receipt"]

log = structlog.get_logger("broadcaster")

#: Least seconds between two probes of a store that is down (``check_store``):
#: ``/health`` needs no token, and its callers must not load the database.
_STORE_PROBE_S = 1.0


class Broadcaster:
    """Dual-write broadcaster. Use as an async context manager::

        async with Broadcaster.from_env() as b:
            receipt = await b.publish("CRITICAL", "order.created", {"order": 42})
            await b.flush()

    ``adapters`` and ``store`` default to what ``settings`` describes: the
    WebSocket fan-out server and the Realtime adapter, and ``STORE_URL``.
    With ``SUPABASE_URL`` unset, the broadcaster is all in one: it starts a
    local Realtime stand-in for the block (see
    :mod:`broadcaster.local_realtime`; ``broadcaster serve`` starts its own
    before the broadcaster instead). The
    default WebSocket server resumes subscribers (``?since=N``) from the
    store; an injected one from the ``replay`` it was built with.

    ``follow_store``: deliver every event the store holds, whichever process
    appended it (what ``broadcaster serve`` does). ``deferred``: adapters
    whose lane runs only between :meth:`take_lane` and :meth:`release_lane`
    (a service instance writes to Realtime only while it holds the lease).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        adapters: Sequence[Adapter] | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int = 20_000,
        lane_max_batch: int = 500,
        lane_max_in_flight: int = 16,
        breaker_config: Callable[[str], BreakerConfig] | None = None,
        backfill_rate: float = 5000.0,
        monotonic: Callable[[], float] = time.monotonic,
        follow_store: bool = False,
        deferred: Collection[str] = (),
    ) -> None:
        self.settings = settings if settings is not None else Settings(_env_file=None)
        self._injected_adapters = list(adapters) if adapters is not None else None
        self._store = store if store is not None else store_from_url(self.settings.store_url)
        self._factory = event_factory(self.settings, clock)
        self._routing = self.settings.routing_table()
        #: Runtime-changeable routing flags (admin API); persisted in the store.
        self.flags = RuntimeFlags(self.settings, self._store, self.set_routing)
        self._max_pending = max_pending
        self.stats = DeliveryStats()
        self.adapters: dict[str, Adapter] = {}
        self._lanes: dict[str, Lane] = {}
        # Committed records on their way to the lanes; following the store,
        # through its tail, which delivers what other processes appended too.
        self._handoff = Handoff(
            self._lanes,
            self.stats,
            follow=self._store if follow_store else None,
            wait_space=self._wait_space,
        )
        self._tail = self._handoff.tail
        self._commits = GroupCommit(self._store, self._handoff, self._on_progress)
        self._lane_set = LaneSet(
            self._lanes,
            self.adapters,
            self._store,
            self.stats,
            self.settings,
            max_batch=lane_max_batch,
            max_in_flight=lane_max_in_flight,
            breaker_config=breaker_config,
            backfill_rate=backfill_rate,
            monotonic=monotonic,
            on_progress=self._on_progress,
            sync_handoff=self._handoff.hand_off,
            handed=self._handed_through if follow_store else None,
        )
        #: Per adapter with a running lane, its circuit breaker.
        self.breakers = self._lane_set.breakers
        self._space = asyncio.Event()
        self._space.set()
        self._running = False
        self._closers: list[Callable[[], Any]] = []
        self._routing_listeners: list[Callable[[RoutingTable], None]] = []
        #: URL of the embedded local Realtime server, when one was started.
        self.local_realtime_url: str | None = None
        #: The ``apikey`` that server accepts (``SUPABASE_KEY``, or one made
        #: up at start), for in-process consumers of it.
        self.local_realtime_key: str | None = None
        self._store_probed: float | None = None
        self._clock = clock
        self.reconciler = Reconciler(
            self._store,
            MatchPolicy.from_seconds(
                self.settings.reconcile_window_s,
                self.settings.reconcile_buffer_s,
                self.settings.reconcile_max_delay_s,
            ),
            clock=clock,
        )
        self._monotonic = monotonic
        if deferred and not follow_store:
            raise ValueError("deferred lanes need follow_store=True")
        # Adapters whose lanes run only between take_lane and release_lane.
        self._deferred = frozenset(deferred)

    # -- construction --------------------------------------------------------

    @classmethod
    def from_env(cls, env_file: str | None = ".env", **kwargs: Any) -> Broadcaster:
        """Build from the environment (and ``env_file``). Raises ConfigError."""
        settings = load_settings(env_file)
        use_log_settings(settings.log_format, settings.log_level)
        log_configuration(settings, env_file)
        return cls(settings, **kwargs)

    async def _build_adapters(self) -> list[Adapter]:
        if self._injected_adapters is not None:
            return self._injected_adapters
        adapters, local = await default_adapters(self.settings, self._store, self._closers)
        if local is not None:
            self.local_realtime_url, self.local_realtime_key = local.url, local.key
        return adapters

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start adapters and lanes, re-send what a previous
        run left undelivered."""
        if self._running:
            return
        await self._store.open()
        try:
            await self.flags.load()
            for adapter in await self._build_adapters():
                self.adapters[adapter.name] = adapter
            await start_adapters(self.adapters, self._routing.primary)
            for name in self.adapters:
                if name not in self._deferred:
                    self._lanes[name] = self._lane_set.new_lane(name)
            # Following: the tail takes every event after this id; recovery
            # re-sends what is undelivered up to it.
            through = await self._store.committed_through() if self._tail is not None else None
            for name, lane in self._lanes.items():
                await self._lane_set.recover(name, lane, through)
        except BaseException:
            await self._shutdown()
            raise
        for lane in self._lanes.values():
            lane.start()
        if self._tail is not None and through is not None:
            self._tail.start(through)
        self._handoff.start()
        self._commits.start()
        self._running = True
        log.info(
            "broadcaster started",
            adapters=list(self.adapters),
            store=type(self._store).__name__,
        )

    async def take_lane(self, name: str) -> int:
        """Start delivering to adapter ``name``, one of the ``deferred`` ones
        (this instance won the lease to write to it): events handed over from
        now on go to it, and what is undelivered up to now is re-sent —
        whatever the previous writer sent without recording it goes again
        (at-least-once; reconciliation counts the duplicates). Returns how
        many were re-sent. A no-op while the lane runs."""
        if name not in self._deferred:
            raise ValueError(f"{name!r} is not a deferred adapter")
        if name in self._lanes or not self._running or self._tail is None:
            return 0
        lane = self._lane_set.new_lane(name)
        # Synchronously, so that no event falls between the two: what is
        # committed goes to the lanes there are, then every later hand-off
        # includes this one, and recovery takes what came before.
        self._handoff.hand_off()
        through = self._handed_through()
        self._lanes[name] = lane
        lane.start()
        return await self._lane_set.recover(name, lane, through)

    async def release_lane(self, name: str) -> None:
        """Stop delivering to ``name`` (the lease is lost or given up): the
        lane stops; what it had not delivered stays undelivered in the store
        for the next writer."""
        await self._lane_set.release(name)

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting events, deliver what is in flight (up to
        ``drain_timeout_s`` seconds), then close adapters and the store. What is not delivered by
        then stays in the store and is re-sent on the next start."""
        if not self._running:
            await self._shutdown()
            return
        self._running = False
        try:
            await self.flush(timeout=drain_timeout_s)
        except FlushTimeout as exc:
            log.warning("closing with undelivered events", pending=exc.pending)
        await self._shutdown()

    async def _shutdown(self) -> None:
        # What flush() could not hand over stays undelivered in the store
        # and is re-sent on the next start.
        self._handoff.discard()
        if self._tail is not None:
            await self._tail.stop()
        await self._commits.stop()
        for lane in self._lanes.values():
            await lane.stop()
        for adapter in self.adapters.values():
            try:
                await adapter.close()
            except Exception as exc:
                log.warning("adapter close failed", adapter=adapter.name, error=str(exc))
        for closer in reversed(self._closers):
            await closer()
        self._closers.clear()
        await self._store.close()
        log.info("broadcaster closed")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._running

    # -- routing -------------------------------------------------------------

    @property
    def routing(self) -> RoutingTable:
        return self._routing

    def set_routing(self, table: RoutingTable) -> None:
        """Swap the routing table; the next published event uses it."""
        self._routing = table
        for listener in self._routing_listeners:
            listener(table)

    def on_routing_change(self, listener: Callable[[RoutingTable], None]) -> None:
        self._routing_listeners.append(listener)

    # -- publishing ----------------------------------------------------------

    async def publish(
        self,
        category: str | Category,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        key: str | None = None,
        source: str = "default",
    ) -> Receipt:
        """Publish one event; return once it is durably stored and routed.

        Raises :class:`InvalidEvent` (nothing stored, no sequence id used),
        :class:`StoreUnavailable` (not accepted; safe to retry) or
        :class:`BroadcasterClosed`.
        """
        self._check_running()
        started = self._monotonic()
        draft = self._factory.draft(category, event_type, payload, key=key, source=source)
        routed = self._routing.route(draft.category, draft.routing_key)
        records = await self._submit([(draft, routed)])
        self.stats.count_published(1, self._monotonic() - started)
        return receipt_of(records[0], routed)

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[Receipt]:
        """Publish a batch: each mapping has ``category``, ``event_type``,
        ``payload`` and optionally ``key`` and ``source``. All are validated
        first: one invalid event raises :class:`InvalidEvent` (``.index`` says
        which) and none is stored."""
        self._check_running()
        started = self._monotonic()
        items = draft_batch(self._factory, self._routing, events)
        if not items:
            return []
        records = await self._submit(items)
        self.stats.count_published(len(records), self._monotonic() - started)
        return [receipt_of(rec, routed) for rec, (_, routed) in zip(records, items, strict=True)]

    def _check_running(self) -> None:
        if not self._running:
            raise BroadcasterClosed("the broadcaster is not running (use 'async with' or start())")

    async def _submit(self, items: list[tuple[EventDraft, tuple[str, ...]]]) -> list[EventRecord]:
        while self._backlog() >= self._max_pending:
            self._space.clear()
            await self._space.wait()
            self._check_running()
        try:
            return await self._commits.commit(items)
        except StoreError as exc:
            log.error(
                "publish failed: store unavailable",
                error=str(exc),
                event_id=items[0][0].event_id,
                category=items[0][0].category.value,
                count=len(items),
            )
            raise

    def _backlog(self) -> int:
        lanes = self._lanes.values()
        return (
            self._commits.pending
            + self._handoff.queued
            + (max(lane.outstanding for lane in lanes) if lanes else 0)
        )

    def _handed_through(self) -> int:
        assert self._tail is not None
        return self._tail.handed

    @property
    def delivering_to(self) -> frozenset[str]:
        """The adapters this broadcaster delivers to now (a deferred one only
        between :meth:`take_lane` and :meth:`release_lane`)."""
        return frozenset(self._lanes)

    @property
    def handed_through(self) -> int | None:
        """Following the store: every event up to this id has gone to the
        lanes (None: not following)."""
        return self._tail.handed if self._tail is not None else None

    async def _wait_space(self) -> None:
        while self._backlog() >= self._max_pending:
            self._space.clear()
            await self._space.wait()

    def _on_progress(self) -> None:
        if not self._space.is_set() and self._backlog() < self._max_pending:
            self._space.set()

    # -- reconciliation --------------------------------------------------------

    async def reconcile(self) -> Report:
        """Run reconciliation now (docs/deploying.md) and return the report."""
        return await self.reconciler.run()

    async def repair(self, report: Report | None = None) -> dict[str, int]:
        """Re-send the events ``report`` (default: the last one) found missing,
        to the adapter that lacks them, through that adapter's lane; their
        acknowledgement is recorded as ``REPAIRED``. Returns the count queued
        per adapter. Safe to repeat: an event received since is not missing."""
        report = report if report is not None else self.reconciler.last_report
        queued: dict[str, int] = {}
        if report is None:
            return queued
        for adapter, ids in report.missing.items():
            lane = self._lanes.get(adapter)
            if lane is None:
                log.warning("cannot repair: adapter not configured", adapter=adapter)
                continue
            records = []
            for seq in ids:
                stored = await self._store.get(seq)
                if stored is not None:
                    records.append(stored.record)
            lane.enqueue(records, repair=True)
            queued[adapter] = len(records)
            log.info("repair queued", adapter=adapter, count=len(records))
        return queued

    async def prune(self, older_than_s: float) -> int:
        """Delete fully delivered, reconciled events older than ``older_than_s``."""
        through = await self._store.get_watermark(RECONCILED_THROUGH)
        cutoff = int((self._clock() - older_than_s) * 1000)
        return await self._store.prune(through=through, older_than_ms=cutoff)

    # -- flushing and inspection ---------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (the public API's signature)
        """Wait until every event published so far is acknowledged by each of
        its adapters or recorded pending behind an open (or half-open) breaker;
        while a breaker is closed, that includes its backfill of pending events.
        Raises :class:`FlushTimeout` after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._commits.idle.wait()
                    self._handoff.hand_off()
                    if self._handoff.queued and self._tail is not None:
                        await self._tail.wait_caught_up()
                        continue
                    for lane in self._lanes.values():
                        await lane.wait_settled()
                    if (
                        self._commits.idle.is_set()
                        and not self._handoff.queued
                        and all(lane.settled for lane in self._lanes.values())
                    ):
                        return
        except TimeoutError:
            pending = (
                self._commits.pending
                + self._handoff.queued
                + sum(lane.outstanding for lane in self._lanes.values())
            )
            raise FlushTimeout(pending, timeout or 0.0) from None

    def health(self) -> dict[str, AdapterHealth[Mapping[str, object]]]:
        return {name: adapter.health() for name, adapter in self.adapters.items()}

    def store_health(self) -> StoreHealth:
        """Whether the store accepts writes, as its last write or probe found
        (no I/O). Down: ``publish()`` raises :class:`StoreUnavailable`."""
        return self._store.health()

    async def check_store(self) -> StoreHealth:
        """:meth:`store_health`, after probing the store if it is down and was
        not probed in the last second: how a database that came back is seen
        up without waiting for a publish (``/health``, metrics refresh)."""
        health = self._store.health()
        if health.up:
            return health
        now = self._monotonic()
        if self._store_probed is not None and now - self._store_probed < _STORE_PROBE_S:
            return health
        self._store_probed = now
        return await self._store.probe()

    def breaker_states(self) -> dict[str, BreakerView]:
        """Per adapter with a running lane, its breaker (see
        :class:`BreakerView`). For ``/health``, ``/stats`` and the metrics."""
        return self._lane_set.views()

    def lane(self, name: str) -> Lane:
        return self._lanes[name]

    @property
    def store(self) -> Store:
        return self._store
