"""The reconciler over a real store, and repair through the broadcaster's lanes.
Time is a fake clock: no sleeping for windows and delays."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.core import Broadcaster
from broadcaster.reconcile.matching import Outcome
from broadcaster.reconcile.reconciler import RECONCILED_THROUGH, Reconciler
from broadcaster.settings import load_settings
from broadcaster.store.base import ConsumerReceipt, DeliveryState, PlainPage, plain_counts
from broadcaster.store.memory import MemoryStore
from broadcaster.store.sqlite import SQLiteStore
from tests._fakes import receipts_for


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, store: MemoryStore) -> tuple[Broadcaster, MemoryAdapter, MemoryAdapter]:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    b = Broadcaster(load_settings(env_file=None), adapters=[ws, rt], store=store, clock=clock)
    return b, ws, rt


async def test_matched_missing_and_awaiting_then_repair_is_recorded_and_judged() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    b, ws, rt = make(clock, store)
    async with b:
        for i in range(10):
            await b.publish("CRITICAL", "order.created", {"order": i, "total": 1.5})
        await b.flush(timeout=5)
        now_ms = int(clock.now * 1000)
        # The websocket consumer saw everything; the realtime consumer lost 3..5.
        await store.record_receipts(receipts_for(ws.events, "websocket", now_ms + 10))
        kept = [r for r in rt.events if r.sequence_id not in (3, 4, 5)]
        await store.record_receipts(receipts_for(kept, "realtime", now_ms + 20))

        report = await b.reconcile()  # inside the buffer: nothing judged yet
        assert report.total(Outcome.AWAITING) == 20
        assert await store.get_watermark(RECONCILED_THROUGH) == 0

        clock.now += 40  # past the 30 s buffer, before the 300 s max delay
        report = await b.reconcile()
        assert report.total(Outcome.MATCHED) == 17
        assert report.total(Outcome.AWAITING) == 3
        assert await store.get_watermark(RECONCILED_THROUGH) == 2

        clock.now += 300  # past max delay: missing
        report = await b.reconcile()
        assert report.missing == {"realtime": [3, 4, 5]}
        assert report.unrepaired_loss == 3
        assert report.as_dict()["categories"]["CRITICAL"]["realtime"]["missing"] == 3
        assert await store.get_watermark(RECONCILED_THROUGH) == 10

        before = len(rt.events)
        assert await b.repair() == {"realtime": 3}
        await b.flush(timeout=5)
        assert [r.sequence_id for r in rt.events[before:]] == [3, 4, 5]
        trace = await store.get(4)
        assert trace is not None and trace.states["realtime"] is DeliveryState.REPAIRED
        assert trace.states["websocket"] is DeliveryState.ACKED

        repaired = rt.events[before:]
        await store.record_receipts(receipts_for(repaired, "realtime", int(clock.now * 1000) + 5))
        report = await b.reconcile()
        assert report.total(Outcome.REPAIRED) == 3
        assert report.unrepaired_loss == 0
        assert report.total(Outcome.MATCHED) == 17
        # Repeating repair is harmless: nothing is missing any more.
        assert await b.repair() == {}


async def test_checksum_mismatch_and_duplicates_are_reported() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    b, ws, _ = make(clock, store)
    async with b:
        await b.publish("SYSTEM", "deploy.finished", {"v": 1})
        await b.publish("PERFORMANCE", "cpu.sample", {"cpu": 0.5}, key="k")
        await b.flush(timeout=5)
        now_ms = int(clock.now * 1000)
        good = receipts_for(ws.events, "websocket", now_ms + 1)
        bad = [
            ConsumerReceipt(
                sequence_id=1,
                adapter="realtime",
                event_type="deploy.finished",
                received_at_ms=now_ms + 1,
                checksum="00000000",
                checksum_ok=False,
            )
        ]
        # The same batch twice (a retried post) is one receipt each; the
        # consumer's second delivery of event 1 is a duplicate.
        await store.record_receipts(good + bad)
        await store.record_receipts(good + [replace(good[0], deliveries=2)])
        clock.now += 40
        report = await b.reconcile()
    data = report.as_dict()
    assert data["categories"]["SYSTEM"]["realtime"]["mismatch"] == 1
    assert data["categories"]["SYSTEM"]["websocket"]["duplicate"] == 1
    assert data["categories"]["PERFORMANCE"]["websocket"]["duplicate"] == 0
    assert data["categories"]["PERFORMANCE"]["websocket"]["matched"] == 1
    assert report.mismatched == {"realtime": [1]}


async def test_pending_behind_a_breaker_is_not_missing_and_holds_the_watermark() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    b, ws, rt = make(clock, store)
    async with b:
        await b.publish("CRITICAL", "e", {})
        await b.flush(timeout=5)
        await store.mark("realtime", [1], DeliveryState.PENDING)
        await store.record_receipts(receipts_for(ws.events, "websocket", int(clock.now * 1000)))
        clock.now += 1000
        report = await b.reconcile()
    assert report.total(Outcome.PENDING) == 1
    assert report.unrepaired_loss == 0
    assert await store.get_watermark(RECONCILED_THROUGH) == 0


async def test_prune_keeps_unreconciled_and_undelivered_events() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    b, ws, rt = make(clock, store)
    async with b:
        for i in range(4):
            await b.publish("CRITICAL", "e", {"i": i})
        await b.flush(timeout=5)
        at = int(clock.now * 1000)
        await store.record_receipts(receipts_for(ws.events, "websocket", at))
        await store.record_receipts(receipts_for(rt.events[:2], "realtime", at))
        await store.mark("realtime", [4], DeliveryState.FAILED, "boom")
        clock.now += 40
        await b.reconcile()
        assert await store.get_watermark(RECONCILED_THROUGH) == 2
        clock.now += 3600
        assert await b.prune(older_than_s=60) == 2
        assert await store.get(1) is None and await store.get(2) is None
        assert await store.get(3) is not None and await store.get(4) is not None
        # Ids are never reused after pruning.
        receipt = await b.publish("CRITICAL", "e", {})
    assert receipt.sequence_id == 5


async def test_store_size_stays_bounded_under_a_long_run(tmp_path: Path) -> None:
    """Retention in a long run: waves of events, each received by both
    consumers, reconciled and pruned after RETENTION_S. The number of stored
    events stays at about one retention period and the SQLite file stops
    growing (freed pages are reused)."""
    clock = Clock()
    path = tmp_path / "long.db"
    store = SQLiteStore(str(path), clock=clock)
    settings = load_settings(env_file=None, reconcile_interval_s=0, retention_s=0)
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    counts: list[int] = []
    sizes: list[int] = []
    async with Broadcaster(settings, adapters=[ws, rt], store=store, clock=clock) as b:
        for wave in range(24):
            ws.batches.clear()
            rt.batches.clear()
            await b.publish_many(
                [
                    {"category": "CRITICAL", "event_type": "e", "payload": {"w": wave, "i": i}}
                    for i in range(300)
                ]
            )
            await b.flush(timeout=10)
            at = int(clock.now * 1000)
            await store.record_receipts(receipts_for(ws.events, "websocket", at))
            await store.record_receipts(receipts_for(rt.events, "realtime", at))
            clock.now += 60  # a minute between waves
            await b.reconcile()
            await b.prune(older_than_s=180)  # keep about three minutes
            counts.append((await store.stats()).events)
            sizes.append(path.stat().st_size)
        assert await store.last_sequence_id() == 24 * 300
    assert min(counts[4:]) >= 2 * 300 and max(counts[4:]) <= 4 * 300, counts  # about 3 waves
    assert sizes[-1] <= sizes[8] * 1.1, sizes  # the file plateaued


async def test_progress_reports_the_watermark_and_the_oldest_unreconciled_event() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    b, ws, rt = make(clock, store)
    async with b:
        assert await b.reconciler.progress() == (0, None)
        for i in range(2):
            await b.publish("CRITICAL", "e", {"i": i})
        await b.flush(timeout=5)
        created = int(clock.now * 1000)
        assert await b.reconciler.progress() == (0, created)
        await store.record_receipts(receipts_for(ws.events, "websocket", created))
        await store.record_receipts(receipts_for(rt.events, "realtime", created))
        clock.now += 60
        await b.reconcile()
        assert await b.reconciler.progress() == (2, None)


class JudgeEveryPair(SQLiteStore):
    """Never vouches for a page, so the reconciler judges every pair itself;
    ``overshoot`` reports pages reaching past the stored events, as when they
    are pruned between plain_page() and scan()."""

    overshoot = 0

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        page = await super().plain_page(
            after=after, limit=limit, judged_before_ms=judged_before_ms, window_ms=window_ms
        )
        return PlainPage(page.last + self.overshoot if page.last else 0, None)


@pytest.mark.parametrize("overshoot", [0, 3])
async def test_counting_plain_pages_gives_the_report_of_judging_every_pair(
    tmp_path: Path, overshoot: int
) -> None:
    """Same store, two reconcilers: one that counts pages the store vouches for,
    one that judges every pair; their reports and watermarks are the same."""
    clock = Clock()
    store = JudgeEveryPair(tmp_path / "r.db", clock=clock)
    b, ws, rt = make(clock, store)
    async with b:
        for i in range(40):
            await b.publish(("CRITICAL", "SYSTEM", "DEBUG")[i % 3], "e", {"i": i})
        await b.flush(timeout=5)
        now_ms = int(clock.now * 1000)
        rt_receipts = receipts_for(rt.events, "realtime", now_ms + 10)
        # Plain pages first; then a lost event, a late one and a duplicate.
        n = len(rt_receipts)
        lost = rt_receipts.pop(n // 2).sequence_id
        rt_receipts[-4] = replace(rt_receipts[-4], received_at_ms=now_ms + 60_000)
        rt_receipts.append(replace(rt_receipts[-2], deliveries=2))
        await store.record_receipts(receipts_for(ws.events, "websocket", now_ms + 10))
        await store.record_receipts(rt_receipts)
        clock.now += 600
        # Young events at the end: awaiting, they hold the watermark.
        for i in range(3):
            await b.publish("CRITICAL", "young", {"i": i})
        await b.flush(timeout=5)
        clock.now += 1

        counted = Reconciler(
            store, b.reconciler.policy, clock=clock, page_size=3, plain_page_size=8
        )
        fast = await counted.run()
        fast_through = await store.get_watermark(RECONCILED_THROUGH)
        await store.set_watermark(RECONCILED_THROUGH, 0)
        store.overshoot = overshoot
        store_judging = Reconciler(store, b.reconciler.policy, clock=clock, page_size=3)
        slow = await store_judging.run()
        slow_through = await store.get_watermark(RECONCILED_THROUGH)
    assert fast.as_dict() == slow.as_dict()
    assert fast_through == slow_through == 40
    pairs = len(ws.events) - 3 + n  # judged pairs: the young events are not
    assert fast.total(Outcome.MATCHED) == pairs - 2
    assert fast.missing == {"realtime": [lost]}
    assert fast.total(Outcome.LATE) == 1
    assert fast.total(Outcome.AWAITING) == 6
    assert fast.as_dict()["totals"]["duplicate"] == 1
    assert 0 < n < 40  # routings differ within a page


class NeverVouches(MemoryStore):
    """A MemoryStore whose plain_page() never vouches for a page: the
    reconciler judges every pair itself."""

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        page = await super().plain_page(
            after=after, limit=limit, judged_before_ms=judged_before_ms, window_ms=window_ms
        )
        return PlainPage(page.last, None)


@pytest.mark.parametrize(("after_window_ms", "outcome"), [(0, Outcome.MATCHED), (1, Outcome.LATE)])
@pytest.mark.parametrize("store_class", [MemoryStore, NeverVouches])
async def test_a_receipt_exactly_at_the_window_edge_is_matched_on_both_paths(
    store_class: type[MemoryStore], after_window_ms: int, outcome: Outcome
) -> None:
    """The window is inclusive: a receipt exactly ``window`` after the event is
    matched, one a millisecond later is late — whether the store vouches for
    the page (plain_page, counted without judging) or the reconciler judges
    each pair. The two paths must agree at the edge."""
    clock = Clock()
    store = store_class(clock=clock)
    b, ws, rt = make(clock, store)
    async with b:
        await b.publish("CRITICAL", "order.created", {"order": 1})
        await b.flush(timeout=5)
        stored = await store.get(1)
        assert stored is not None and stored.routed_to == ("websocket", "realtime")
        window_ms = b.reconciler.policy.window_ms
        at = stored.created_at_ms + window_ms + after_window_ms
        await store.record_receipts(receipts_for(ws.events, "websocket", at))
        await store.record_receipts(receipts_for(rt.events, "realtime", at))
        clock.now += 40  # past the 30 s buffer: judged
        judged_before_ms = int(clock.now * 1000) - b.reconciler.policy.buffer_ms
        rows = await store.scan()
        report = await b.reconcile()
    # The reference rule of plain pages takes the edge as in time, and only it.
    plain = plain_counts(rows, judged_before_ms=judged_before_ms, window_ms=window_ms)
    assert (plain is not None) is (outcome is Outcome.MATCHED)
    assert report.total(outcome) == 2
    assert report.total(Outcome.MATCHED) + report.total(Outcome.LATE) == 2


async def test_what_nobody_watched_is_unobserved_and_the_report_names_the_consumers() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    b, ws, _ = make(clock, store)
    async with b:
        for i in range(3):
            await b.publish("CRITICAL", "e", {"i": i})  # nobody watches either path yet
        await store.register_consumer("probe:a", "realtime", int(clock.now * 1000))
        for i in range(2):
            await b.publish("CRITICAL", "e", {"i": i})  # the probe watches realtime now
        await b.flush(timeout=5)
        now_ms = int(clock.now * 1000)
        await store.record_receipts(receipts_for(ws.events[3:], "websocket", now_ms + 1))
        clock.now += 400  # past max delay
        report = await b.reconcile()
    counts = report.as_dict()["categories"]["CRITICAL"]  # type: ignore[index]
    # realtime: 1-3 before the probe registered, 4-5 after it, never received.
    assert counts["realtime"]["unobserved"] == 3 and counts["realtime"]["missing"] == 2
    # websocket: its only consumer reported from event 4 on.
    assert counts["websocket"]["unobserved"] == 3 and counts["websocket"]["matched"] == 2
    assert report.unrepaired_loss == 2 and report.missing == {"realtime": [4, 5]}
    assert [(c["adapter"], c["consumer"], c["from_sequence_id"]) for c in report.consumers] == [
        ("realtime", "probe:a", 4),
        ("websocket", "default", 4),
    ]
