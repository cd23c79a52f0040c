"""The :class:`Broadcaster`: publish → validate → route → store → deliver.

``publish()`` validates and routes on the caller's task. The store gives the
events sequence ids, seals them (canonical bytes + checksum) and stores them in
one transaction; once that commit is durable the records go to the adapters'
lanes (one ordered lane per adapter) and ``publish()`` returns. Delivery runs
concurrently; ``flush()`` waits for it.

Who commits: when nothing else is being written and the store can commit
without waiting (SQLite's small writes), the caller's own step does, taking
along whatever is queued ahead of it — up to a time budget per turn of the
event loop. Otherwise the events queue for a group-commit writer: one task
that takes everything submitted since its last commit into one transaction.
Either way sequence ids follow the order of the calls.

Backpressure: at most ``max_pending`` events may be waiting for the writer or
for the slowest lane; beyond that ``publish()`` waits. It never drops.

Why one module of this size: the group commit heuristics, the hand-off to
the lanes and ``flush()`` share the broadcaster's state (what is queued,
committed, handed over) turn by turn; split, each part would reach into
the others'.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict

import structlog
from pydantic import SecretStr

from .adapters.base import Adapter, AdapterHealth
from .breaker import AdapterBreaker
from .breaker_policy import BreakerConfig, BreakerState, Transition
from .events import (
    Category,
    EventDraft,
    EventRecord,
)
from .exceptions import (
    BroadcasterClosed,
    BroadcasterError,
    FlushTimeout,
    StoreError,
)
from .flags import RuntimeFlags
from .lanes import Lane
from .logs import use_log_settings
from .producer import Receipt, Submission, draft_batch, event_factory, receipt_of, store_error
from .reconcile.matching import MatchPolicy, Report
from .reconcile.reconciler import RECONCILED_THROUGH, Reconciler
from .routing import RoutingTable
from .security import mask_url_password
from .settings import Settings, load_settings
from .stats import DeliveryStats
from .store import Store, StoreHealth, store_from_url
from .tail import Tail

__all__ = ["BreakerView", "Broadcaster", "Receipt"]

log = structlog.get_logger("broadcaster")

_RECOVERY_PAGE = 5000

#: Least seconds between two probes of a store that is down (``check_store``):
#: ``/health`` needs no token, and its callers must not load the database.
_STORE_PROBE_S = 1.0

#: Time per turn of the event loop that publish() calls may spend committing
#: their own writes (see ``Broadcaster._submit``); later callers in the same
#: turn share one commit through the writer task.
_INLINE_BUDGET_S = 0.001

#: Most events (queued ones included) such a write takes: bigger batches gain
#: little from skipping the writer task (their commit dominates), and commits
#: of hundreds of events in callers' steps took turns from the lanes (Realtime
#: sends got slow enough to trip the breaker under a flood of publish_many).
_INLINE_MAX_EVENTS = 32

#: ... and only while the event loop keeps up: once it takes longer than this
#: to get through what is ready (a moving average), calls arrive faster than
#: commits and the writer task's shared commits are worth their two turns (at
#: high rates in small calls, commits in callers' steps multiplied the
#: commits and raised the end-to-end latency) — if the loop's thread is also
#: saturated (``_SATURATED_SHARE``).
_INLINE_MAX_LAG_S = 0.0006

#: The loop's thread counts as saturated while it used at least this share of
#: a CPU over the last ``_SHARE_WINDOW_S``. Only then do lagging turns send
#: commits to the writer task. A loop with idle time gains nothing from shared
#: commits, and its turns can be long for other reasons (the Realtime client's
#: pushes, on a slow VM): there the lag bound alone sent calls to the writer
#: task, whose commits lengthen the turns further, and dual-write publish()
#: latency tripled in some runs.
_SATURATED_SHARE = 0.9
_SHARE_WINDOW_S = 0.02


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
        self._lane_max_batch = lane_max_batch
        self._lane_max_in_flight = lane_max_in_flight
        self.stats = DeliveryStats()
        self.adapters: dict[str, Adapter] = {}
        self._lanes: dict[str, Lane] = {}
        self._submissions: list[Submission] = []
        self._pending_count = 0
        self._has_work = asyncio.Event()
        self._writer_idle = asyncio.Event()
        self._writer_idle.set()
        # Seconds spent on writes in publish()'s own step since the loop last
        # ran other callbacks (see _submit).
        self._inline_spent = 0.0
        # When the loop turn of the last publish() began and (a moving average
        # of) how long the loop then took to get through what was ready.
        self._turn_mark: float | None = None
        self._loop_lag = 0.0
        # Wall and loop-thread CPU time at the start of the current share
        # window, and whether the last full window was saturated.
        self._share_mark: tuple[float, float] | None = None
        self._saturated = False
        # The writer task is between taking submissions and dispatching them.
        self._writing = False
        # Committed records not yet handed to their lanes, in sequence order,
        # with their routing; a callback the loop runs next (_hand_off) takes
        # them all (see _dispatch).
        self._handoff: list[tuple[EventRecord, tuple[str, ...]]] = []
        self._handoff_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._space = asyncio.Event()
        self._space.set()
        self._writer: asyncio.Task[None] | None = None
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
        self._breaker_config = breaker_config
        self._backfill_rate = backfill_rate
        self._monotonic = monotonic
        self.breakers: dict[str, AdapterBreaker] = {}
        # Following the store (a service): delivers what other processes
        # appended too, in sequence order (see tail.py).
        self._tail = (
            Tail(
                self._store,
                hand=self._deliver,
                own_first=self._own_first,
                release_own=self._hand_off,
                wait_space=self._wait_space,
            )
            if follow_store
            else None
        )
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
        table = settings.routing_table()
        log.info(
            "configuration loaded",
            env_file=env_file if env_file is not None and Path(env_file).is_file() else None,
            dual_write_enabled=table.enabled,
            primary=table.primary,
            override=table.override,
            categories={
                cat.value: f"{'on' if r.enabled else 'off'} {r.percentage}% {','.join(r.adapters)}"
                for cat, r in table.categories.items()
            },
            store_url=mask_url_password(settings.store_url),
        )
        return cls(settings, **kwargs)

    async def _build_adapters(self) -> list[Adapter]:
        if self._injected_adapters is not None:
            return self._injected_adapters
        from .adapters.realtime import RealtimeAdapter
        from .adapters.websocket import WebSocketAdapter

        url = self.settings.supabase_url
        if url is None:
            # All in one, without a Supabase project: a stand-in in this
            # process, so that the realtime path is real end to end.
            from .local_realtime import start_local_realtime

            local = await start_local_realtime(
                self.settings.supabase_key, self.settings.supabase_jwt_secret
            )
            self._closers.append(local.close)
            self.local_realtime_url = url = local.url
            self.local_realtime_key = local.key
        realtime_url = url.rstrip("/") + "/realtime/v1"
        rt_settings = self.settings
        if self.local_realtime_key is not None and not self.settings.supabase_key:
            rt_settings = rt_settings.model_copy(
                update={"supabase_key": SecretStr(self.local_realtime_key)}
            )
        return [
            # Resume (?since=N) replays from this broadcaster's store.
            WebSocketAdapter.from_settings(self.settings, replay=self._store),
            RealtimeAdapter.from_settings(rt_settings, url=realtime_url),
        ]

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
            await self._start_adapters()
            for name in self.adapters:
                if name not in self._deferred:
                    self._lanes[name] = self._new_lane(name)
            # Following: the tail takes every event after this id; recovery
            # re-sends what is undelivered up to it.
            through = await self._store.committed_through() if self._tail is not None else None
            for name, lane in self._lanes.items():
                await self._recover(name, lane, through)
        except BaseException:
            await self._shutdown()
            raise
        for lane in self._lanes.values():
            lane.start()
        if self._tail is not None and through is not None:
            self._tail.start(through)
        self._loop = asyncio.get_running_loop()
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name="broadcaster-writer"
        )
        self._running = True
        log.info(
            "broadcaster started",
            adapters=list(self.adapters),
            store=type(self._store).__name__,
        )

    def _new_lane(self, name: str) -> Lane:
        self.breakers[name] = self._make_breaker(name)
        return Lane(
            self.adapters[name],
            self._store,
            self.stats,
            max_batch=self._lane_max_batch,
            max_in_flight=self._lane_max_in_flight,
            on_progress=self._on_progress,
            clock=self._monotonic,
            breaker=self.breakers[name],
            backfill_rate=self._backfill_rate,
            sync_handoff=self._hand_off,
            handed=self._handed_through if self._tail is not None else None,
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
        lane = self._new_lane(name)
        # Synchronously, so that no event falls between the two: what is
        # committed goes to the lanes there are, then every later hand-off
        # includes this one, and recovery takes what came before.
        self._hand_off()
        through = self._handed_through()
        self._lanes[name] = lane
        lane.start()
        return await self._recover(name, lane, through)

    async def release_lane(self, name: str) -> None:
        """Stop delivering to ``name`` (the lease is lost or given up): the
        lane stops; what it had not delivered stays undelivered in the store
        for the next writer."""
        lane = self._lanes.pop(name, None)
        if lane is None:
            return
        await lane.stop()
        self.breakers.pop(name, None)
        self._on_progress()

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
            self.settings, name, self._monotonic, on_transition=on_transition
        )

    def _on_breaker_transition(self, name: str, transition: Transition) -> None:
        self.stats.count_transition(name, transition.key)
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

    async def _start_adapters(self) -> None:
        primary = self._routing.primary
        results = await asyncio.gather(
            *(a.start() for a in self.adapters.values()), return_exceptions=True
        )
        for adapter, result in zip(self.adapters.values(), results, strict=True):
            if isinstance(result, BaseException):
                if adapter.name == primary or not isinstance(result, BroadcasterError):
                    raise result
                # A secondary path that is down at start must not stop the
                # primary: its lane retries until it comes up.
                log.warning("adapter failed to start", adapter=adapter.name, error=str(result))
            else:
                log.info("adapter started", adapter=adapter.name)

    async def _recover(self, name: str, lane: Lane, through: int | None) -> int:
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
        if self._handoff_handle is not None:
            # What flush() could not hand over stays undelivered in the store
            # and is re-sent on the next start.
            self._handoff_handle.cancel()
            self._handoff_handle = None
        self._handoff.clear()
        if self._tail is not None:
            await self._tail.stop()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
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
        if self._turn_mark is None:
            # Measure how long until the loop gets through what is ready now.
            self._turn_mark = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._turned)
        try:
            if (
                not self._writing
                and self._inline_spent < _INLINE_BUDGET_S
                and self._pending_count + len(items) <= _INLINE_MAX_EVENTS
                and (self._loop_lag < _INLINE_MAX_LAG_S or not self._saturated)
            ):
                records = self._write_now(items)
                if records is not None:
                    return records
            future: asyncio.Future[list[EventRecord]] = asyncio.get_running_loop().create_future()
            self._submissions.append(Submission(items, future))
            self._pending_count += len(items)
            self._writer_idle.clear()
            self._has_work.set()
            return await future
        except StoreError as exc:
            log.error(
                "publish failed: store unavailable",
                error=str(exc),
                event_id=items[0][0].event_id,
                category=items[0][0].category.value,
                count=len(items),
            )
            raise

    def _write_now(
        self, items: list[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord] | None:
        """Commit what is queued and then ``items`` in one transaction, in this
        step, if the store can without waiting; None if it cannot (nothing written).

        Through the writer task a publish waits two loop turns, each behind
        whatever else is ready (in dual-write: the other lane, its pushes and
        acks), which doubled publish() latency at moderate rates. Such writes
        get ``_INLINE_BUDGET_S`` per loop turn and ``_INLINE_MAX_EVENTS``
        each, and happen only while the loop keeps up (``_INLINE_MAX_LAG_S``)
        or has idle time (``_SATURATED_SHARE``):
        a caller publishing in a tight loop still lets the loop run, and
        callers beyond that queue for one shared commit — taken by the writer
        task, or swept up by the next such write, ahead of its own events
        (sequence ids follow call order).
        """
        queued = self._submissions
        batch = [item for sub in queued for item in sub.items] + items if queued else items
        started = time.perf_counter()
        try:
            records = self._store.append_now(batch)
        except Exception as exc:
            error = store_error(exc)
            if queued:
                self._submissions = []
                self._settle(queued, error)
            if error is exc:
                raise
            raise error from exc
        if records is None:
            return None
        self._dispatch(records, batch)
        if queued:
            self._submissions = []
            self._settle(queued, records)
        self._inline_spent += time.perf_counter() - started
        return records[len(records) - len(items) :]

    def _settle(
        self, submissions: list[Submission], outcome: list[EventRecord] | Exception
    ) -> None:
        """Wake the callers of ``submissions``: their slices of ``outcome`` (the
        records of all of them, in order) or its error."""
        self._pending_count -= sum(len(sub.items) for sub in submissions)
        if isinstance(outcome, Exception):
            for sub in submissions:
                if not sub.future.done():
                    sub.future.set_exception(outcome)
            self._on_progress()
            return
        start = 0
        for sub in submissions:
            end = start + len(sub.items)
            if not sub.future.done():
                sub.future.set_result(outcome[start:end])
            start = end

    def _turned(self) -> None:
        if self._turn_mark is not None:
            now = time.perf_counter()
            self._loop_lag += (now - self._turn_mark - self._loop_lag) * 0.25
            self._turn_mark = None
            mark = self._share_mark
            if mark is None:
                self._share_mark = (now, time.thread_time())
            elif now - mark[0] >= _SHARE_WINDOW_S:
                cpu = time.thread_time()
                self._saturated = cpu - mark[1] >= _SATURATED_SHARE * (now - mark[0])
                self._share_mark = (now, cpu)
        self._inline_spent = 0.0

    def _backlog(self) -> int:
        lanes = self._lanes.values()
        return (
            self._pending_count
            + len(self._handoff)
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

    def _own_first(self) -> int | None:
        return self._handoff[0][0].sequence_id if self._handoff else None

    async def _wait_space(self) -> None:
        while self._backlog() >= self._max_pending:
            self._space.clear()
            await self._space.wait()

    def _on_progress(self) -> None:
        if not self._space.is_set() and self._backlog() < self._max_pending:
            self._space.set()

    async def _write_loop(self) -> None:
        while True:
            if not self._submissions:
                self._writer_idle.set()
                self._has_work.clear()
                await self._has_work.wait()
                continue
            submissions, self._submissions = self._submissions, []
            items = [item for sub in submissions for item in sub.items]
            self._writing = True
            try:
                records = await self._store.append(items)
            except Exception as exc:
                self._settle(submissions, store_error(exc))
                continue
            finally:
                self._writing = False
            self._dispatch(records, items)
            self._settle(submissions, records)

    def _dispatch(
        self, records: list[EventRecord], items: list[tuple[EventDraft, tuple[str, ...]]]
    ) -> None:
        """Queue committed ``records`` for their lanes; the loop's next callback
        (:meth:`_hand_off`) hands them over.

        Why not here: this runs in the producer's step (``publish()`` waits for
        it), and handing a record to a lane costs a little per routed
        adapter, so each more path made every call slower. Queued,
        the call costs the same whatever the routing, and records committed in
        one loop turn reach each lane as one batch. Sequence order holds:
        records are queued in commit order and handed over in that order.
        """
        if len(records) == 1:
            self._handoff.append((records[0], items[0][1]))
        else:
            self._handoff.extend(zip(records, [routed for _, routed in items], strict=True))
        if self._handoff_handle is None:
            loop = self._loop
            assert loop is not None, "records are only committed while running"
            self._handoff_handle = loop.call_soon(self._hand_off)

    def _hand_off(self) -> None:
        """Hand every queued record to its lanes, now. The loop calls it after a
        commit; whoever must see each committed record in its lanes (flush,
        a lane reading its undelivered rows) calls it first."""
        if self._handoff_handle is not None:
            self._handoff_handle.cancel()
            self._handoff_handle = None
        queued = self._handoff
        if not queued:
            return
        tail = self._tail
        if tail is not None:
            # Following the store: only what continues its cursor goes now;
            # the tail reads the store for a hole first (see tail.py).
            drop, take = tail.split(len(queued), lambda i: queued[i][0].sequence_id)
            if drop + take < len(queued):
                self._handoff = queued[drop + take :]
                queued = queued[drop : drop + take]
            else:
                self._handoff = []
                queued = queued[drop:] if drop else queued
            if not queued:
                return
            tail.handed = queued[-1][0].sequence_id
        else:
            self._handoff = []
        self._deliver(queued)

    def _deliver(self, queued: Sequence[tuple[EventRecord, tuple[str, ...]]]) -> None:
        """Give committed records (in sequence order) to their lanes."""
        if len(queued) == 1:
            # One record (publish() at a modest rate): no per-lane lists, no Counter.
            record, routed = queued[0]
            self.stats.count_routed(record.category, routed, 1)
            for name in routed:
                lane = self._lanes.get(name)
                if lane is not None:
                    lane.enqueue_live(record)
            return
        per_lane: dict[str, list[EventRecord]] = {name: [] for name in self._lanes}
        routings: Counter[tuple[Category, tuple[str, ...]]] = Counter()
        for record, routed in queued:
            routings[record.category, routed] += 1
            for name in routed:
                lane_records = per_lane.get(name)
                if lane_records is not None:
                    lane_records.append(record)
        for (category, routed), n in routings.items():
            self.stats.count_routed(category, routed, n)
        for name, lane_records in per_lane.items():
            self._lanes[name].enqueue(lane_records)

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
                    await self._writer_idle.wait()
                    self._hand_off()
                    if self._handoff and self._tail is not None:
                        await self._tail.wait_caught_up()
                        continue
                    for lane in self._lanes.values():
                        await lane.wait_settled()
                    if (
                        self._writer_idle.is_set()
                        and not self._handoff
                        and all(lane.settled for lane in self._lanes.values())
                    ):
                        return
        except TimeoutError:
            pending = (
                self._pending_count
                + len(self._handoff)
                + sum(lane.outstanding for lane in self._lanes.values())
            )
            raise FlushTimeout(pending, timeout or 0.0) from None

    def health(self) -> dict[str, AdapterHealth]:
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

    def lane(self, name: str) -> Lane:
        return self._lanes[name]

    @property
    def store(self) -> Store:
        return self._store
