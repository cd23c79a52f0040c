"""Lanes with circuit breakers (issue 4, SPEC 6): failover to PENDING, half-open
probes without live traffic, the ramp, and a rate-limited backfill that sends
each pending event once. In-memory adapters with injected faults; no mocks."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence

import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.breaker import AdapterBreaker
from broadcaster.breaker_policy import BreakerConfig
from broadcaster.core import Broadcaster
from broadcaster.events import EventFactory, EventRecord
from broadcaster.exceptions import AdapterThrottled
from broadcaster.lanes import Lane, TokenBucket
from broadcaster.routing import bucket
from broadcaster.settings import load_settings
from broadcaster.stats import DeliveryStats
from broadcaster.store.base import DeliveryState
from broadcaster.store.memory import MemoryStore
from tests._fakes import FaultyAdapter, WriteNowStore


def config(**overrides: object) -> BreakerConfig:
    values: dict[str, object] = {
        # Generous, so a loaded CI machine (coverage + asyncio debug) cannot turn
        # an ordinary call into a "slow" one; only the slow-call test tightens it.
        "latency_threshold_ms": 500,
        "recovery_time_s": 0.2,
        "half_open_requests": 2,
        "ramp_step_s": 0.15,
        "min_calls": 4,
        "window_s": 2.0,
        "bucket_s": 0.1,
    }
    values.update(overrides)
    return BreakerConfig(**values)  # type: ignore[arg-type]


class SkewedClock:
    """The monotonic clock plus an offset a test moves on (:meth:`jump`): time
    still passes (lanes sleep for real), and a test makes a long step happen
    exactly when it decides, however slow the machine."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


def make(
    rt: MemoryAdapter,
    store: MemoryStore,
    monotonic: SkewedClock | None = None,
    **overrides: object,
) -> Broadcaster:
    return Broadcaster(
        load_settings(env_file=None),
        adapters=[MemoryAdapter("websocket"), rt],
        store=store,
        breaker_config=lambda name: config(**overrides),
        monotonic=monotonic if monotonic is not None else time.monotonic,
    )


async def states(store: MemoryStore, ids: range, adapter: str) -> Counter[DeliveryState]:
    found: Counter[DeliveryState] = Counter()
    for seq in ids:
        event = await store.get(seq)
        assert event is not None
        found[event.states[adapter]] += 1
    return found


async def test_open_breaker_parks_events_pending_and_publish_keeps_going() -> None:
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode = "down"
    async with make(rt, store, recovery_time_s=60) as b:
        first = await b.publish("CRITICAL", "e", {"i": 0})
        await rt.wait_calls(1)
        started = time.perf_counter()
        receipts = [await b.publish("CRITICAL", "e", {"i": i}) for i in range(1, 200)]
        elapsed = time.perf_counter() - started
        await b.flush(timeout=5)  # pending behind an open breaker counts as done
        assert b.breakers["realtime"].state == "open"
        assert all(r.routed_to == ("websocket", "realtime") for r in [first, *receipts])
        assert b.lane("realtime").outstanding == 0
        assert await states(store, range(1, 201), "realtime") == {DeliveryState.PENDING: 200}
        assert await states(store, range(1, 201), "websocket") == {DeliveryState.ACKED: 200}
        health = b.breaker_states()["realtime"]
        assert health["state"] == "open" and health["share"] == 0
        assert health["pending"] == 200 and health["transitions"] == {"closed->open": 1}
        assert b.stats.breaker_transitions[("realtime", "closed->open")] == 1
        assert b.stats.parked["realtime"] == 200
    assert rt.calls <= 16  # only batches in flight when it opened: the rest never sent
    # Publishing never waited for the breaker to let a call through again.
    assert elapsed < 60


async def test_recovery_probes_with_stored_events_then_backfills_each_once() -> None:
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode = "down"
    async with make(rt, store) as b:
        for i in range(300):
            await b.publish("CRITICAL", "e", {"i": i}, key=f"k{i}")
        await b.flush(timeout=5)
        assert b.breakers["realtime"].state == "open"
        rt.mode = "ok"
        # No new events: the half-open probes come from the store.
        await asyncio.wait_for(rt.wait_for(set(range(1, 301))), 10)
        await b.flush(timeout=10)
        health = b.breaker_states()["realtime"]
        assert health["state"] == "closed" and health["pending"] == 0
        transitions = health["transitions"]
        # Probes that ran while the adapter was still down (a slow machine takes
        # longer than recovery_time_s to publish 300 events) re-open it; every
        # half-open ends in exactly one of re-open or close, and it closed once.
        assert transitions["closed->open"] == 1 and transitions["half_open->closed"] == 1
        assert transitions["open->half_open"] == transitions.get("half_open->open", 0) + 1
        assert await states(store, range(1, 301), "realtime") == {DeliveryState.ACKED: 300}
    assert sorted(rt.sequence_ids) == list(range(1, 301))  # each exactly once
    assert b.stats.backfilled["realtime"] == 300


async def test_ramp_sends_stable_share_live_and_backfills_the_rest() -> None:
    # Ramp steps of an hour, taken by jumping the clock: the test, not the
    # machine's speed, decides when the share widens (with 0.3 s real steps a
    # stalled loop could skip one).
    rt, store, clock = FaultyAdapter("realtime"), MemoryStore(), SkewedClock()
    step_s = 3600.0
    rt.mode = "down"
    async with make(rt, store, clock, ramp_step_s=step_s) as b:
        await b.publish("CRITICAL", "e", {}, key="warmup")
        await b.flush(timeout=5)
        rt.mode = "ok"
        await asyncio.wait_for(rt.wait_for({1}), 5)
        breaker = b.breakers["realtime"]
        while breaker.state != "closed":  # probes need only the stored event
            await b.publish("CRITICAL", "e", {}, key="half-open")
            await asyncio.sleep(0.01)  # a steady stream
        shares: list[int] = []
        live = Counter[tuple[int, bool]]()
        mismatched: list[tuple[int, str]] = []
        i = 0
        while breaker.share < 100:
            share = breaker.share
            shares.append(share)
            for _ in range(40):
                key = f"k{i}"
                before = len(rt.sequence_ids)
                receipt = await b.publish("CRITICAL", "e", {"i": i}, key=key)
                await b.lane("realtime").wait_idle()
                went_live = len(rt.sequence_ids) > before and receipt.sequence_id in rt.sequence_ids
                live[share, went_live] += 1
                if went_live != (bucket("CRITICAL", key) < share):
                    mismatched.append((share, key))
                i += 1
            clock.jump(step_s)
        await b.flush(timeout=10)
        total = await b.store.last_sequence_id()
    assert shares == [10, 25, 50]  # one step per jump, none skipped
    assert mismatched == []  # live iff the key's bucket is inside the share
    assert all(live[share, True] and live[share, False] for share in shares)
    assert sorted(set(rt.sequence_ids)) == list(range(1, total + 1))  # the rest backfilled
    assert len(rt.sequence_ids) == total  # nothing sent twice


async def test_failure_during_ramp_reopens() -> None:
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode = "down"
    async with make(rt, store, ramp_step_s=5) as b:
        await b.publish("CRITICAL", "e", {})
        await b.flush(timeout=5)
        rt.mode = "ok"
        await asyncio.wait_for(rt.wait_for({1}), 5)
        while b.breakers["realtime"].state != "closed":  # live traffic finishes probing
            await b.publish("CRITICAL", "e", {}, key="half-open")
            await asyncio.sleep(0.01)  # a steady stream
        assert b.breakers["realtime"].share == 10
        rt.mode = "stalled"
        rt.delay_s = 0.01
        calls = rt.calls
        i = 0
        while b.breakers["realtime"].state == "closed":
            await b.publish("CRITICAL", "e", {}, key=f"k{i}")  # some land in the 10 %
            i += 1
            await asyncio.sleep(0.001)
        assert rt.calls > calls
        assert b.stats.breaker_transitions[("realtime", "closed->open")] == 2
        rt.mode = "ok"
        await b.close()


async def test_stalled_adapter_trips_on_timeouts_and_recovers() -> None:
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode, rt.delay_s = "stalled", 0.05
    async with make(rt, store) as b:
        for i in range(100):
            await b.publish("CRITICAL", "e", {"i": i})
            await asyncio.sleep(0.002)
        await b.flush(timeout=5)
        assert b.stats.breaker_transitions[("realtime", "closed->open")] >= 1
        assert b.breakers["realtime"].state in ("open", "half_open")
        rt.mode = "ok"
        await asyncio.wait_for(rt.wait_for(set(range(1, 101))), 10)
        await b.flush(timeout=10)
        assert await states(store, range(1, 101), "realtime") == {DeliveryState.ACKED: 100}


async def test_slow_adapter_trips_on_slow_calls() -> None:
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode, rt.delay_s = "slow", 0.15  # > 50 ms x 2
    async with make(rt, store, latency_threshold_ms=50) as b:
        for i in range(60):
            await b.publish("CRITICAL", "e", {"i": i})
            await asyncio.sleep(0.005)
        await b.flush(timeout=5)
        assert b.stats.breaker_transitions[("realtime", "closed->open")] >= 1
        rt.mode = "ok"
        # Slow events were acknowledged: nothing is pending, so live traffic probes.
        i = 60
        while b.breakers["realtime"].state != "closed":
            await b.publish("CRITICAL", "e", {"i": i}, key=f"k{i}")
            i += 1
            await asyncio.sleep(0.005)  # a steady stream
        await b.flush(timeout=10)
        assert sorted(rt.sequence_ids) == list(range(1, i + 1))


async def test_backfill_is_rate_limited() -> None:
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode = "down"
    b = Broadcaster(
        load_settings(env_file=None),
        adapters=[MemoryAdapter("websocket"), rt],
        store=store,
        breaker_config=lambda name: config(ramp_step_s=0.01),
        backfill_rate=2000,
    )
    async with b:
        await b.publish_many([{"category": "CRITICAL", "event_type": "e", "payload": {}}] * 1000)
        await b.flush(timeout=5)
        rt.mode = "ok"
        started = time.perf_counter()
        await asyncio.wait_for(rt.wait_for(set(range(1, 1001))), 10)
        elapsed = time.perf_counter() - started
    # 1000 events at 2000/s with a burst of 200 take at least ~0.4 s.
    assert elapsed > 0.3


async def test_backfill_finishes_while_publishing_goes_on() -> None:
    """Under steady publishing the newest rows are always in flight; a backfill
    pass must still end (at the tail it started from) and come back for the
    events the ramp parked behind it, so nothing stays pending. (The SQLite
    path where a pass chased the tail for minutes is measured by
    ``python -m loadtests failover``: restore 75-290 s before, 4 s after.)"""
    rt, store = FaultyAdapter("realtime"), MemoryStore()
    rt.mode = "down"
    async with make(rt, store, ramp_step_s=0.1) as b:
        await b.publish_many([{"category": "CRITICAL", "event_type": "e", "payload": {}}] * 300)
        await b.flush(timeout=5)
        rt.mode, rt.delay_s = "slow", 0.05  # acks take a moment: rows stay in flight
        stop = asyncio.Event()

        async def live() -> None:
            i = 0
            while not stop.is_set():
                await b.publish_many(
                    [
                        {
                            "category": "CRITICAL",
                            "event_type": "live",
                            "payload": {},
                            "key": f"k{i}",
                        }
                        for i in range(i, i + 5)
                    ]
                )
                i += 5
                await asyncio.sleep(0.002)

        producer = asyncio.create_task(live())
        lane, breaker = b.lane("realtime"), b.breakers["realtime"]

        def done() -> bool:
            return breaker.state == "closed" and breaker.share == 100 and lane.pending == 0

        try:
            async with asyncio.timeout(20):
                while not done():  # noqa: ASYNC110 (breaker state has no awaitable)
                    await asyncio.sleep(0.05)
            assert not producer.done()  # publishing never paused
        finally:
            stop.set()
            await producer
        await b.flush(timeout=10)
        total = await store.last_sequence_id()
        assert sorted(set(rt.sequence_ids)) == list(range(1, total + 1))


async def test_a_failed_batch_is_retried_ahead_of_newer_records_in_sequence_order() -> None:
    """A batch the adapter refused goes back to the front of the lane's queue,
    ahead of the batches queued behind it: after the retry the adapter has
    every record exactly once and in sequence order — not the newer batches
    first and the refused one last. (No breaker: nothing parks, the lane
    retries after its backoff.)"""
    store = MemoryStore()
    factory = EventFactory()
    drafts = [(factory.draft("SYSTEM", "e", {"i": i}), ("realtime",)) for i in range(6)]
    records = await store.append(drafts)
    rt = FaultyAdapter("realtime")
    await rt.start()
    rt.mode = "down"
    # One batch in flight at a time, two records each: [1, 2] is sent while
    # [3, 4] and [5, 6] wait behind it.
    lane = Lane(rt, store, DeliveryStats(), max_batch=2, max_in_flight=1, backoff_initial_s=0.01)
    lane.start()
    try:
        lane.enqueue(records)
        async with asyncio.timeout(30):
            await rt.wait_calls(1)  # [1, 2] was refused (and maybe its retries)
            rt.mode = "ok"
            await lane.wait_idle()
    finally:
        await lane.stop()
    assert rt.sequence_ids == [1, 2, 3, 4, 5, 6]
    assert [len(batch) for batch in rt.batches] == [2, 2, 2]
    assert await states(store, range(1, 7), "realtime") == {DeliveryState.ACKED: 6}


class Throttling(MemoryAdapter):
    """Says no to the first sends: ``refusals`` times as a quota refusal for
    rate, then ``paced`` times as pacing under its own cap (neither is a
    failure); then takes them."""

    def __init__(self, refusals: int, paced: int) -> None:
        super().__init__("realtime")
        self.refusals = refusals
        self.paced = paced

    async def send(self, batch: Sequence[EventRecord]) -> None:
        if self.refusals:
            self.refusals -= 1
            raise AdapterThrottled(self.name, "Too many messages per second", 0.001)
        if self.paced:
            self.paced -= 1
            raise AdapterThrottled(self.name, "behind the cap", 0.001, refused=False)
        await super().send(batch)


async def test_a_refusal_for_rate_counts_each_event_once_and_pacing_none() -> None:
    """Retried after each pause, a batch a rate quota holds back counts once
    per event in the refusals (/stats, the metrics), however many times it is
    tried again; held back by the adapter's own pacing it counts as no
    refusal. Neither touches a breaker that opens on any failure."""
    store = MemoryStore()
    factory = EventFactory()
    records = await store.append(
        [(factory.draft("SYSTEM", "e", {"i": i}), ("realtime",)) for i in range(4)]
    )
    rt = Throttling(refusals=3, paced=2)
    await rt.start()
    stats = DeliveryStats()
    breaker = AdapterBreaker("realtime", config(error_threshold=0.0, min_calls=1))
    lane = Lane(rt, store, stats, max_batch=4, max_in_flight=1, breaker=breaker)
    lane.start()
    try:
        lane.enqueue(records)
        async with asyncio.timeout(30):
            await lane.wait_idle()
    finally:
        await lane.stop()
    assert rt.sequence_ids == [1, 2, 3, 4]
    assert stats.refused_by_reason("realtime") == {"rate_limit": 4}
    assert stats.retried_batches["realtime"] == 5
    assert breaker.state == "closed" and breaker.failure_rate == 0
    assert await states(store, range(1, 5), "realtime") == {DeliveryState.ACKED: 4}


async def test_token_bucket_paces() -> None:
    tokens = TokenBucket(1000, 10)
    started = time.perf_counter()
    for _ in range(20):
        await tokens.take(10)
    assert time.perf_counter() - started >= 0.15


@pytest.mark.usefixtures("commits_in_callers_step")
async def test_a_lane_reading_its_undelivered_rows_takes_over_records_being_handed_over() -> None:
    """A record committed in publish()'s own step reaches its lanes a loop
    turn later (the broadcaster's hand-off). A lane that reads its undelivered
    rows from the store in that turn (backfill, half-open probes) must count
    the record as its own, not send it a second time."""
    rt, store = FaultyAdapter("realtime"), WriteNowStore()
    async with make(rt, store) as b:
        await b.publish("SYSTEM", "e", {})
        lane = b.lane("realtime")
        rows = await store.undelivered("realtime")  # no await inside: same turn
        assert [r.sequence_id for r in rows] == [1] and lane.outstanding == 0
        assert lane.unheld(rows) == []  # the hand-off ran first: the lane holds it
        assert lane.outstanding == 1
        await b.flush(timeout=5)
    assert rt.sequence_ids == [1]
