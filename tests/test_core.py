"""Broadcaster core: publish, routing into lanes, ordering, backpressure,
failure isolation and recovery, with in-memory adapters and stores."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from broadcaster import commit_scheduler
from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.breaker_policy import BreakerConfig
from broadcaster.core import Broadcaster, Receipt
from broadcaster.events import Category, EventRecord, parse_frame, seal
from broadcaster.exceptions import (
    AdapterUnavailable,
    BroadcasterClosed,
    FlushTimeout,
    InvalidEvent,
    SignatureMismatch,
    StoreUnavailable,
)
from broadcaster.settings import load_settings
from broadcaster.store.base import DeliveryState
from broadcaster.store.memory import MemoryStore
from tests._fakes import GatedAdapter, WriteNowStore


class FlakyAdapter(MemoryAdapter):
    """Fails the first ``failures`` sends."""

    def __init__(self, name: str, failures: int) -> None:
        super().__init__(name)
        self.failures = failures
        self.attempts = 0

    async def send(self, batch: Sequence[EventRecord]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise AdapterUnavailable(self.name, "connection refused")
        await super().send(batch)


class BrokenStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.broken = True

    async def append(self, items):  # type: ignore[no-untyped-def]
        if self.broken:
            raise StoreUnavailable("database or disk is full")
        return await super().append(items)


@pytest.fixture
def loop_keeps_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the loop-lag bound on commits in callers' steps out of the way:
    on a slow or loaded machine (CI, coverage, asyncio debug mode) the lag of
    an idle test loop can pass it. One test below exercises the bound."""
    monkeypatch.setattr(commit_scheduler, "_INLINE_MAX_LAG_S", 1.0)


def make(
    *adapters: MemoryAdapter, store: MemoryStore | None = None, **kwargs: object
) -> Broadcaster:
    settings = load_settings(env_file=None)
    return Broadcaster(
        settings,
        adapters=list(adapters) or [MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=store or MemoryStore(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_publish_returns_receipt_and_delivers_to_routed_adapters() -> None:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt) as b:
        receipt = await b.publish("CRITICAL", "order.created", {"order": 42}, key="order-42")
        perf = await b.publish("PERFORMANCE", "cpu.sample", {"cpu": 0.5})
        await b.flush(timeout=5)
    assert receipt.sequence_id == 1
    assert len(receipt.event_id) == 26
    assert receipt.checksum.algorithm == "sha256" and len(receipt.checksum.value) == 64
    assert receipt.routed_to == ("websocket", "realtime")
    # A real frozen Receipt (built without its __init__ on the hot path).
    assert type(receipt) is Receipt
    assert receipt == Receipt(
        1,
        receipt.event_id,
        Category.CRITICAL,
        receipt.timestamp,
        "sha256",
        receipt.checksum.value,
        ("websocket", "realtime"),
    )
    assert hash(receipt) == hash(dataclasses.replace(receipt))
    with pytest.raises(dataclasses.FrozenInstanceError):
        receipt.sequence_id = 2  # type: ignore[misc]
    assert perf.routed_to == ("websocket",)
    assert perf.checksum.algorithm == "crc32"
    assert ws.sequence_ids == [1, 2]
    assert rt.sequence_ids == [1]
    assert rt.events[0].wire == ws.events[0].wire


async def test_invalid_event_consumes_no_sequence_id() -> None:
    async with make() as b:
        with pytest.raises(InvalidEvent) as info:
            await b.publish("NOPE", "x", {})
        assert info.value.field == "category"
        with pytest.raises(InvalidEvent):
            await b.publish("CRITICAL", "bad type!", {})
        receipt = await b.publish("CRITICAL", "ok", {})
    assert receipt.sequence_id == 1


async def test_publish_many_validates_all_before_storing() -> None:
    store = MemoryStore()
    async with make(store=store) as b:
        with pytest.raises(InvalidEvent) as info:
            await b.publish_many(
                [
                    {"category": "SYSTEM", "event_type": "a", "payload": {}},
                    {"category": "SYSTEM", "event_type": "b", "payload": [1]},
                ]
            )
        assert info.value.index == 1 and info.value.field == "payload"
        assert "event[1].payload" in str(info.value)
        assert await store.last_sequence_id() == 0
        with pytest.raises(InvalidEvent, match="event_type: is required"):
            await b.publish_many([{"category": "SYSTEM", "payload": {}}])
        with pytest.raises(InvalidEvent, match="colour: unknown field"):
            await b.publish_many(
                [{"category": "SYSTEM", "event_type": "a", "payload": {}, "colour": 1}]
            )
        receipts = await b.publish_many(
            {"category": "SYSTEM", "event_type": f"e{i}", "payload": {"i": i}} for i in range(5)
        )
        assert [r.sequence_id for r in receipts] == [1, 2, 3, 4, 5]
        assert await b.publish_many([]) == []


async def test_a_routed_adapter_without_a_lane_is_skipped_by_both_hand_offs() -> None:
    """publish() (one record) and publish_many() hand records to the lanes by
    different code; an adapter named by the routing but not running has no
    lane: both store the routing as decided and deliver to the lanes there are."""
    ws = MemoryAdapter("websocket")
    store = MemoryStore()
    async with make(ws, store=store) as b:
        one = await b.publish("CRITICAL", "order.created", {"order": 1})
        many = await b.publish_many(
            [{"category": "CRITICAL", "event_type": "order.created", "payload": {"order": i}}
             for i in (2, 3)]
        )  # fmt: skip
        await b.flush(timeout=5)
    assert one.routed_to == many[0].routed_to == ("websocket", "realtime")
    assert ws.sequence_ids == [1, 2, 3]
    assert [r.sequence_id for r in await store.undelivered("realtime")] == [1, 2, 3]


async def test_concurrent_producers_get_unique_ordered_ids_and_lanes_keep_order() -> None:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt) as b:

        async def producer(p: int) -> list[int]:
            return [
                (await b.publish("SYSTEM", "tick", {"p": p, "i": i})).sequence_id
                for i in range(200)
            ]

        results = await asyncio.gather(*(producer(p) for p in range(5)))
        await b.flush(timeout=5)
    all_ids = sorted(i for r in results for i in r)
    assert all_ids == list(range(1, 1001))
    for ids in results:
        assert ids == sorted(ids)
    assert ws.sequence_ids == list(range(1, 1001))
    assert rt.sequence_ids == list(range(1, 1001))


async def test_slow_adapter_does_not_delay_the_other() -> None:
    ws, rt = MemoryAdapter("websocket"), GatedAdapter("realtime")
    async with make(ws, rt) as b:
        for i in range(50):
            await b.publish("CRITICAL", "e", {"i": i})
        await asyncio.wait_for(b.lane("websocket").wait_idle(), 2)
        assert ws.sequence_ids == list(range(1, 51))
        assert rt.sequence_ids == []
        assert b.lane("realtime").outstanding == 50
        rt.gate.set()
        await b.flush(timeout=5)
    assert rt.sequence_ids == list(range(1, 51))


async def test_failing_adapter_is_retried_until_delivered_and_failure_recorded() -> None:
    """A refused send opens the breaker at once (SPEC 6); the events wait in the
    store and reach the adapter once it recovers — retried, never dropped."""
    ws, rt = MemoryAdapter("websocket"), FlakyAdapter("realtime", failures=3)
    store = MemoryStore()
    fast_recovery = BreakerConfig(
        latency_threshold_ms=1000, recovery_time_s=0.05, half_open_requests=1, ramp_step_s=0.01
    )
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with make(ws, rt, store=store, breaker_config=lambda name: fast_recovery) as b:
            for i in range(20):
                await b.publish("CRITICAL", "e", {"i": i})
            async with asyncio.timeout(10):
                await rt.wait_for(set(range(1, 21)))
            await b.flush(timeout=10)
            trace = await store.get(1)
    assert sorted(set(rt.sequence_ids)) == list(range(1, 21))
    assert ws.sequence_ids == list(range(1, 21))
    assert trace is not None and trace.states["realtime"] is DeliveryState.ACKED
    assert b.stats.failed[("CRITICAL", "realtime")] >= 1
    failures = [e for e in logs if e["event"].startswith("delivery failed")]
    assert failures and all(e["adapter"] == "realtime" for e in failures)
    assert "connection refused" in failures[0]["error"]


async def test_backpressure_blocks_publish_and_never_drops() -> None:
    ws = GatedAdapter("websocket")
    async with make(ws, MemoryAdapter("realtime"), max_pending=10) as b:
        receipts = [await b.publish("PERFORMANCE", "e", {"i": i}, key="k") for i in range(10)]
        blocked = asyncio.create_task(b.publish("PERFORMANCE", "e", {"i": 10}, key="k"))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        ws.gate.set()
        receipts.append(await asyncio.wait_for(blocked, 2))
        await b.flush(timeout=5)
    assert ws.sequence_ids == [r.sequence_id for r in receipts] == list(range(1, 12))


async def test_store_unavailable_is_raised_and_publishing_resumes() -> None:
    store = BrokenStore()
    ws = MemoryAdapter("websocket")
    with capture_logs() as logs:
        async with make(ws, MemoryAdapter("realtime"), store=store) as b:
            with pytest.raises(StoreUnavailable, match="disk is full"):
                await b.publish("SYSTEM", "e", {"n": 1})
            store.broken = False
            receipt = await b.publish("SYSTEM", "e", {"n": 2})
            await b.flush(timeout=5)
    assert receipt.sequence_id == 1
    assert ws.sequence_ids == [1]
    errors = [e for e in logs if e["event"] == "publish failed: store unavailable"]
    assert errors and errors[0]["category"] == "SYSTEM" and len(errors[0]["event_id"]) == 26


async def test_start_resends_what_the_store_holds_undelivered() -> None:
    store = MemoryStore()
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt, store=store) as b:
        for i in range(3):
            await b.publish("CRITICAL", "e", {"i": i})
        await b.flush(timeout=5)
    # A previous run stored an event but never got it acknowledged by realtime.
    await store.mark("realtime", [2], DeliveryState.FAILED, "timeout")
    ws2, rt2 = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws2, rt2, store=store) as b:
        await b.flush(timeout=5)
    assert rt2.sequence_ids == [2]
    assert ws2.sequence_ids == []


async def test_flush_timeout_reports_pending() -> None:
    rt = GatedAdapter("realtime")
    b = make(MemoryAdapter("websocket"), rt)
    await b.start()
    try:
        await b.publish("CRITICAL", "e", {})
        with pytest.raises(FlushTimeout) as info:
            await b.flush(timeout=0.05)
        assert info.value.pending == 1
    finally:
        rt.gate.set()
        await b.close()


async def test_publish_when_not_running_raises() -> None:
    b = make()
    with pytest.raises(BroadcasterClosed):
        await b.publish("CRITICAL", "e", {})
    async with b:
        pass
    with pytest.raises(BroadcasterClosed):
        await b.publish_many([{"category": "CRITICAL", "event_type": "e", "payload": {}}])


async def test_routing_change_applies_to_next_event() -> None:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    seen = []
    async with make(ws, rt) as b:
        b.on_routing_change(seen.append)
        first = await b.publish("CRITICAL", "e", {})
        b.set_routing(b.routing.with_override("websocket"))
        second = await b.publish("CRITICAL", "e", {})
        await b.flush(timeout=5)
    assert first.routed_to == ("websocket", "realtime")
    assert second.routed_to == ("websocket",)
    assert seen and seen[0].override == "websocket"


async def test_receipt_as_dict_and_records_match_store() -> None:
    store = MemoryStore()
    async with make(store=store) as b:
        receipt = await b.publish("USER_ACTIVITY", "login", {"user": "é"}, key="u1")
    stored = await store.get(receipt.sequence_id)
    assert stored is not None
    data = receipt.as_dict()
    assert data["checksum"] == {"algorithm": "sha256", "value": stored.record.checksum}
    assert data["category"] == "USER_ACTIVITY"
    assert stored.record.category is Category.USER_ACTIVITY
    # The default routing keeps USER_ACTIVITY on the primary only.
    assert data["routed_to"] == ["websocket"]
    assert seal  # imported for type checkers of helpers


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
async def test_with_a_signing_key_every_event_is_signed_on_the_wire_and_in_the_store(
    tmp_path: Path, store_kind: str
) -> None:
    from broadcaster.store.sqlite import SQLiteStore

    settings = load_settings(
        env_file=None, event_signing_key="the-signing-key", event_signing_key_id="k7"
    )
    store = MemoryStore() if store_kind == "memory" else SQLiteStore(tmp_path / "signed.db")
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with Broadcaster(settings, adapters=[ws, rt], store=store) as b:
        receipts = [await b.publish("CRITICAL", "order.created", {"order": n}) for n in range(3)]
        receipts += await b.publish_many(
            [{"category": "SYSTEM", "event_type": "disk.full", "payload": {"free": 0}}]
        )
        await b.flush(timeout=5)
        stored = [await store.get(r.sequence_id) for r in receipts]
    keys = {"k7": b"the-signing-key"}
    assert [r.sequence_id for r in ws.events] == [r.sequence_id for r in receipts]
    for record, kept in zip(ws.events, stored, strict=True):
        event = parse_frame(record.wire)
        assert event.signature is not None and event.signature.key_id == "k7"
        event.verify(keys)
        # What the store hands back for backfill and repair is signed too.
        assert kept is not None and kept.record.wire == record.wire
    with pytest.raises(SignatureMismatch, match="does not match"):
        parse_frame(ws.events[0].wire).verify({"k7": b"another-key"})


async def test_without_a_signing_key_events_carry_no_signature() -> None:
    ws = MemoryAdapter("websocket")
    async with make(ws) as b:
        await b.publish("CRITICAL", "order.created", {"order": 1})
        await b.flush(timeout=5)
    (record,) = ws.events
    assert "signature" not in record.to_dict()
    assert parse_frame(record.wire).signature is None


async def test_full_disk_raises_store_unavailable_and_publishing_resumes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from broadcaster.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "full.db")
    ws = MemoryAdapter("websocket")
    b = Broadcaster(
        load_settings(env_file=None), adapters=[ws, MemoryAdapter("realtime")], store=store
    )
    async with b:
        first = await b.publish("SYSTEM", "before", {"n": 0})
        await b.flush(timeout=5)
        pages = await store.pragma("page_count")
        await store.pragma("max_page_count", pages)  # the "disk" is now full
        with pytest.raises(StoreUnavailable, match="full"):
            await b.publish_many(
                [{"category": "SYSTEM", "event_type": "e", "payload": {"x": "y" * 2000}}] * 50
            )
        assert await store.last_sequence_id() == first.sequence_id  # nothing half-written
        await store.pragma("max_page_count", 1_000_000)  # space freed
        after = await b.publish("SYSTEM", "after", {"n": 1})
        await b.flush(timeout=5)
    assert after.sequence_id == first.sequence_id + 1
    assert ws.sequence_ids == [first.sequence_id, after.sequence_id]


@pytest.mark.usefixtures("commits_in_callers_step")
async def test_publish_commits_in_its_own_step_when_nothing_else_is_written() -> None:
    """Small calls commit in the caller's step; a batch too big for one, or a
    store that cannot write at once, goes through the writer task; sequence
    ids follow the calls either way. Neither the loop's lag nor the per-turn
    time budget may decide here: the first two calls run in one step, and a
    first write slower than the 1 ms budget (a loaded machine) sent the
    second to the writer task."""
    store = WriteNowStore()
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt, store=store) as b:
        first = await b.publish("SYSTEM", "e", {"n": 1})
        spec = {"category": "SYSTEM", "event_type": "e", "payload": {}}
        many = await b.publish_many([spec] * 3)
        big = await b.publish_many([spec] * 40)  # a big batch goes through the writer task
        store.refuse_now = True  # e.g. SQLite's write lock is taken: the writer task waits
        last = await b.publish("SYSTEM", "e", {"n": 2})
        await b.flush(timeout=5)
    assert store.now == [1, 3] and store.later == [40, 1]
    ids = [first.sequence_id, *(r.sequence_id for r in many + big), last.sequence_id]
    assert ids == list(range(1, 46))
    assert ws.sequence_ids == rt.sequence_ids == ids


@pytest.mark.usefixtures("commits_in_callers_step")
async def test_records_committed_in_a_callers_step_reach_the_lanes_on_the_next_turn() -> None:
    """publish() does not hand its record to each lane itself (each routed
    adapter cost the call ~1.3 µs): the records committed in one loop turn
    go to the lanes in the next, in commit order, as one batch per lane; until
    then they count against ``max_pending`` like records in the lanes."""
    store = WriteNowStore()
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt, store=store, max_pending=4) as b:
        spec = {"category": "SYSTEM", "event_type": "e", "payload": {}}
        go = asyncio.Event()

        async def fifth() -> Receipt:
            await go.wait()
            return await b.publish("SYSTEM", "e", {"n": 3})

        blocked = asyncio.create_task(fifth())
        await asyncio.sleep(0)  # it waits for ``go``
        go.set()  # it runs next turn, ahead of the hand-off this step schedules
        await b.publish("SYSTEM", "e", {"n": 1})
        await b.publish_many([spec] * 2)
        await b.publish("SYSTEM", "e", {"n": 2})
        assert store.now == [1, 2, 1]  # all committed in this step
        lanes = b.lane("websocket"), b.lane("realtime")
        assert [lane.outstanding for lane in lanes] == [0, 0]
        assert b.stats.published == {}
        await asyncio.sleep(0)  # the fifth call, then the hand-off
        assert not blocked.done()  # four queued for the lanes: the fifth waits
        assert [lane.outstanding for lane in lanes] == [4, 4]
        assert b.stats.published == {"SYSTEM": 4}
        assert (await blocked).sequence_id == 5
        await b.flush(timeout=5)
    assert ws.sequence_ids == rt.sequence_ids == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("commits_in_callers_step")
async def test_an_idle_lane_starts_delivering_from_the_hand_off_itself() -> None:
    """The hand-off runs a loop turn after the commit; an idle lane starts the
    delivery task right there, so the adapter gets the record the turn after
    (as when the lane was woken in the producer's step), not a turn later."""
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt, store=WriteNowStore()) as b:
        await b.flush(timeout=5)  # both lanes idle
        await b.publish("SYSTEM", "e", {"n": 1})
        await asyncio.sleep(0)  # the hand-off: each lane starts a delivery task
        assert ws.sequence_ids == rt.sequence_ids == []
        await asyncio.sleep(0)  # the delivery tasks send
        assert ws.sequence_ids == rt.sequence_ids == [1]


async def test_flush_right_after_publish_hands_the_records_over_first() -> None:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    async with make(ws, rt) as b:
        await b.publish("SYSTEM", "e", {"n": 1})
        await b.flush(timeout=5)
        assert ws.sequence_ids == rt.sequence_ids == [1]


async def test_close_right_after_publish_delivers_the_record() -> None:
    ws = MemoryAdapter("websocket")
    store = MemoryStore()
    b = make(ws, MemoryAdapter("realtime"), store=store)
    await b.start()
    await b.publish("SYSTEM", "e", {"n": 1})
    await b.close()
    assert ws.sequence_ids == [1]
    assert await store.undelivered("websocket") == []


@pytest.mark.usefixtures("loop_keeps_up")
async def test_callers_beyond_the_budget_of_a_loop_turn_share_one_commit() -> None:
    # 1.5 ms per write: the first caller of the turn spends the 1 ms budget.
    store = WriteNowStore(write_s=0.0015)
    ws = MemoryAdapter("websocket")
    async with make(ws, MemoryAdapter("realtime"), store=store) as b:
        receipts = await asyncio.gather(*(b.publish("SYSTEM", "e", {"i": i}) for i in range(5)))
        await b.flush(timeout=5)
    assert store.now == [1] and store.later == [4]
    assert [r.sequence_id for r in receipts] == [1, 2, 3, 4, 5]
    assert ws.sequence_ids == [1, 2, 3, 4, 5]


@pytest.mark.usefixtures("loop_keeps_up")
async def test_a_queued_commit_is_swept_up_ahead_of_the_next_callers_events() -> None:
    store = WriteNowStore(write_s=0.0015)
    ws = MemoryAdapter("websocket")
    async with make(ws, MemoryAdapter("realtime"), store=store) as b:

        async def after_a_turn() -> Receipt:
            await asyncio.sleep(0)  # runs again in the next turn, before the writer task
            return await b.publish("SYSTEM", "e", {"who": "third"})

        # Turn 1: the first caller writes (budget spent), the third yields, the
        # second queues. Turn 2: the third finds the second's events queued and
        # the writer task not started: one commit, the second's events first.
        first, third, second = await asyncio.gather(
            b.publish("SYSTEM", "e", {"who": "first"}),
            after_a_turn(),
            b.publish("SYSTEM", "e", {"who": "second"}),
        )
        await b.flush(timeout=5)
    assert store.now == [1, 2] and store.later == []
    assert (first.sequence_id, second.sequence_id, third.sequence_id) == (1, 2, 3)
    assert ws.sequence_ids == [1, 2, 3]


@pytest.mark.usefixtures("loop_keeps_up")
async def test_a_caller_publishing_in_a_tight_loop_lets_the_loop_run() -> None:
    store = WriteNowStore(write_s=0.0005)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with make(MemoryAdapter("websocket"), MemoryAdapter("realtime"), store=store) as b:
        task = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        for i in range(60):  # no other await: only publish() can let the ticker run
            await b.publish("SYSTEM", "e", {"i": i})
        ran = ticks - before
        task.cancel()
        await b.flush(timeout=5)
    # 60 writes of 0.5 ms with a 1 ms budget per turn: ~20 turns at least.
    assert ran >= 15, ran
    assert sum(store.now) + sum(store.later) == 60 and store.later


@pytest.mark.usefixtures("loop_keeps_up")
async def test_a_failed_write_in_the_callers_step_fails_the_queued_callers_it_took() -> None:
    store = WriteNowStore(write_s=0.0015)
    ws = MemoryAdapter("websocket")
    with capture_logs() as logs:
        async with make(ws, MemoryAdapter("realtime"), store=store) as b:

            async def after_a_turn() -> Receipt:
                await asyncio.sleep(0)
                store.broken = True  # the disk fills between the two turns
                return await b.publish("SYSTEM", "e", {"who": "third"})

            results = await asyncio.gather(
                b.publish("SYSTEM", "e", {"who": "first"}),
                after_a_turn(),
                b.publish("SYSTEM", "e", {"who": "second"}),
                return_exceptions=True,
            )
            store.broken = False
            after = await b.publish("SYSTEM", "e", {"who": "after"})
            await b.flush(timeout=5)
    first, third, second = results
    assert isinstance(first, Receipt) and first.sequence_id == 1
    assert isinstance(second, StoreUnavailable) and isinstance(third, StoreUnavailable)
    assert after.sequence_id == 2
    assert ws.sequence_ids == [1, 2]
    assert len([e for e in logs if e["event"] == "publish failed: store unavailable"]) == 2


@pytest.mark.usefixtures("loop_keeps_up")
async def test_an_unexpected_error_of_a_write_in_the_callers_step_is_a_store_error() -> None:
    store = WriteNowStore()
    async with make(MemoryAdapter("websocket"), MemoryAdapter("realtime"), store=store) as b:
        store.bug = True
        with pytest.raises(StoreUnavailable, match="a bug in the store"):
            await b.publish("SYSTEM", "e", {})
        store.bug = False
        assert (await b.publish("SYSTEM", "e", {})).sequence_id == 1


async def test_commits_go_back_to_the_writer_task_while_the_loop_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A bound far above an idle loop's lag on any machine, far below a busy one's.
    monkeypatch.setattr(commit_scheduler, "_INLINE_MAX_LAG_S", 0.005)
    # The loop below spins, so its thread is saturated; a low share keeps other
    # processes on a loaded machine (two busy ones on two cores took it to
    # 50-66 % of a CPU) from making it look idle.
    monkeypatch.setattr(commit_scheduler, "_SATURATED_SHARE", 0.2)
    store = WriteNowStore()
    stop = False

    async def busy() -> None:  # every turn of the loop takes 20 ms of CPU
        while not stop:
            until = time.perf_counter() + 0.02
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    async def publish(n: int) -> None:
        for i in range(n):
            await b.publish("SYSTEM", "e", {"i": i})
            await asyncio.sleep(0)  # a producer doing other things between calls

    async with make(MemoryAdapter("websocket"), MemoryAdapter("realtime"), store=store) as b:
        task = asyncio.get_running_loop().create_task(busy())
        await publish(20)
        # Within a few calls the loop's lag average passed the bound: the
        # rest went through the writer task.
        assert len(store.now) <= 5 and len(store.later) >= 15
        stop = True
        await task
        before = len(store.now)
        await publish(40)
        assert len(store.now) > before  # the loop keeps up again
        await b.flush(timeout=5)


async def test_commits_stay_in_the_callers_step_while_the_loop_lags_but_idles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Long turns alone do not send commits to the writer task: its shared
    commits only pay off when the loop's thread has no idle time left, and its
    two turns per call made dual-write publish() p50 jump 3-6x at 2 000
    events/s on a slow VM, where the Realtime client's pushes made turns long."""
    monkeypatch.setattr(commit_scheduler, "_INLINE_MAX_LAG_S", 0.005)
    store = WriteNowStore()
    stop = False

    async def blocking() -> None:  # every turn waits 20 ms without using the CPU
        while not stop:
            time.sleep(0.02)  # noqa: ASYNC251 - the point: a long turn, an idle thread
            await asyncio.sleep(0)

    async with make(MemoryAdapter("websocket"), MemoryAdapter("realtime"), store=store) as b:
        task = asyncio.get_running_loop().create_task(blocking())
        turns: list[float] = []
        for i in range(20):
            await b.publish("SYSTEM", "e", {"i": i})
            started = time.perf_counter()
            await asyncio.sleep(0)  # a turn of the loop: ``blocking`` takes 20 ms of it
            turns.append(time.perf_counter() - started)
        assert min(turns) > 0.005  # the turns were longer than the bound...
        assert (len(store.now), len(store.later)) == (20, 0)  # ...and every call committed at once
        stop = True
        await task
        await b.flush(timeout=5)
