"""End to end over real loopback sockets: the broadcaster with its real
WebSocket fan-out server and the real Realtime adapter (official client) against
the local Realtime-protocol server, a real SQLite store, and real subscribers
on both paths."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from broadcaster.consumer import ReceiptCollector, StoreReceiptWriter
from broadcaster.consumer.realtime import RealtimeSubscriber
from broadcaster.consumer.websocket import WebSocketSubscriber
from broadcaster.core import Broadcaster
from broadcaster.events import Category
from broadcaster.settings import load_settings

pytestmark = pytest.mark.slow

N_EVENTS = 10_000


class OrderRecorder:
    """Keeps what a subscriber received, in arrival order, per category."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.by_category: dict[str, list[int]] = defaultdict(list)
        self.bad: list[int] = []
        self.done = asyncio.Event()
        self.expected = -1

    def __call__(self, obj: Mapping[str, Any], ok: bool) -> None:
        seq = obj["sequence_id"]
        self.order.append(seq)
        self.by_category[obj["category"]].append(seq)
        if not ok:
            self.bad.append(seq)
        if len(self.order) >= self.expected >= 0:
            self.done.set()


async def test_ten_thousand_events_reach_exactly_their_routed_adapters_in_order(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        env_file=None,
        websocket_port=0,
        store_url=f"sqlite:///{tmp_path / 'e2e.db'}",
        # 10 000 events published as fast as they go, with the Realtime server
        # and both subscribers in this process: a send waits behind the backlog
        # of the ones before it, which under coverage and asyncio debug mode on
        # a loaded machine passed the 300 ms slow-call bound now and then, and
        # the breaker's 30 s recovery outlasted the test's wait. Slow calls and
        # failover have their own tests; this one is about exact delivery.
        adapters={
            "websocket": {"latency_threshold_ms": 10_000},
            "realtime": {"latency_threshold_ms": 10_000},
        },
    )
    rng = random.Random(1)
    categories = list(Category)
    async with Broadcaster(settings) as b:
        ws_rec, rt_rec = OrderRecorder(), OrderRecorder()
        receipts_writer = StoreReceiptWriter(b.store)
        ws_col = ReceiptCollector("websocket", on_event=ws_rec, on_receipt=receipts_writer.add)
        rt_col = ReceiptCollector("realtime", on_event=rt_rec, on_receipt=receipts_writer.add)
        ws_url = b.adapters["websocket"].url  # type: ignore[attr-defined]
        assert b.local_realtime_url is not None
        async with (
            WebSocketSubscriber(ws_url, collector=ws_col),
            # The embedded server accepts only the key the broadcaster made up.
            RealtimeSubscriber(b.local_realtime_url, b.local_realtime_key, collector=rt_col),
        ):
            routed: dict[str, list[int]] = defaultdict(list)
            for start in range(0, N_EVENTS, 250):
                batch = [
                    {
                        "category": categories[(start + i) % len(categories)].value,
                        "event_type": "load.test",
                        "payload": {"i": start + i, "v": rng.random(), "s": "ünïcode ✓"},
                        "key": f"user-{rng.randrange(1000)}",
                    }
                    for i in range(250)
                ]
                for receipt in await b.publish_many(batch):
                    for name in receipt.routed_to:
                        routed[name].append(receipt.sequence_id)
            await b.flush(timeout=60)
            ws_rec.expected = len(routed["websocket"])
            rt_rec.expected = len(routed["realtime"])
            if len(ws_rec.order) >= ws_rec.expected:
                ws_rec.done.set()
            if len(rt_rec.order) >= rt_rec.expected:
                rt_rec.done.set()
            await asyncio.wait_for(ws_rec.done.wait(), 30)
            await asyncio.wait_for(rt_rec.done.wait(), 30)
        await receipts_writer.close()
        sample = await b.store.get(routed["realtime"][0])

    # Every category was published; the default flags route CRITICAL and SYSTEM
    # to both paths, PERFORMANCE to websocket only (its adapters list), and
    # USER_ACTIVITY and DEBUG (disabled) to the primary only.
    assert len(routed["websocket"]) == N_EVENTS
    assert 0 < len(routed["realtime"]) < N_EVENTS
    # Exactly the routed events, no more, no fewer, no duplicates, in order.
    assert ws_rec.order == routed["websocket"]
    assert sorted(rt_rec.order) == routed["realtime"]
    assert len(set(rt_rec.order)) == len(rt_rec.order)
    for seqs in rt_rec.by_category.values():
        assert seqs == sorted(seqs)  # one channel per category, each in sequence order
    assert set(rt_rec.by_category) == {"CRITICAL", "SYSTEM"}
    assert ws_rec.bad == [] and rt_rec.bad == []
    assert ws_col.stats.verified == N_EVENTS
    assert rt_col.stats.verified == len(routed["realtime"])
    # Consumer receipts reached the store.
    assert sample is not None and {r.adapter for r in sample.receipts} == {"websocket", "realtime"}


async def test_signed_events_verify_end_to_end_and_a_stranger_counts_every_one_bad(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        env_file=None,
        websocket_port=0,
        store_url=f"sqlite:///{tmp_path / 'signed.db'}",
        event_signing_key="the-signing-key",
        event_signing_key_id="2026-k1",
        # As above: this test is about what arrives, not about slow calls.
        adapters={
            "websocket": {"latency_threshold_ms": 10_000},
            "realtime": {"latency_threshold_ms": 10_000},
        },
    )
    holder_keys = {"2026-k1": "the-signing-key"}
    stranger_keys = {"2026-k1": "a-guess-at-the-key"}
    categories = list(Category)
    async with Broadcaster(settings) as b:
        ws_url = b.adapters["websocket"].url  # type: ignore[attr-defined]
        assert b.local_realtime_url is not None
        recorders = {
            (path, who): OrderRecorder()
            for path in ("websocket", "realtime")
            for who in ("holder", "stranger")
        }
        collectors = {
            (path, who): ReceiptCollector(path, signing_keys=keys, on_event=recorders[path, who])
            for path in ("websocket", "realtime")
            for who, keys in (("holder", holder_keys), ("stranger", stranger_keys))
        }
        async with (
            WebSocketSubscriber(ws_url, collector=collectors["websocket", "holder"]),
            WebSocketSubscriber(ws_url, collector=collectors["websocket", "stranger"]),
            RealtimeSubscriber(
                b.local_realtime_url,
                b.local_realtime_key,
                collector=collectors["realtime", "holder"],
            ),
            RealtimeSubscriber(
                b.local_realtime_url,
                b.local_realtime_key,
                collector=collectors["realtime", "stranger"],
            ),
        ):
            routed: dict[str, int] = defaultdict(int)
            receipts = await b.publish_many(
                {
                    "category": categories[i % len(categories)].value,
                    "event_type": "signed.event",
                    "payload": {"i": i, "s": "ünïcode ✓"},
                }
                for i in range(300)
            )
            for receipt in receipts:
                for name in receipt.routed_to:
                    routed[name] += 1
            await b.flush(timeout=30)
            for (path, _), recorder in recorders.items():
                recorder.expected = routed[path]
                if len(recorder.order) >= recorder.expected:
                    recorder.done.set()
            async with asyncio.timeout(30):
                for recorder in recorders.values():
                    await recorder.done.wait()

    assert routed["websocket"] == 300 and 0 < routed["realtime"] < 300
    for (path, who), collector in collectors.items():
        stats = collector.stats
        assert stats.received == routed[path], (path, who)
        assert stats.mismatches == stats.malformed == 0, (path, who)
        if who == "holder":
            assert (stats.verified, stats.bad_signatures) == (routed[path], 0), path
            assert recorders[path, who].bad == []
        else:
            assert (stats.verified, stats.bad_signatures) == (0, routed[path]), path
            assert len(recorders[path, who].bad) == routed[path]
