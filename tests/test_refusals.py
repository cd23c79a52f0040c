"""A quota refusal end to end: with ``REALTIME_PLAN=free``, an event too large
for Supabase's Free payload limit even alone is refused on the Realtime path —
recorded ``refused`` in the store, counted in ``/stats`` and the metrics, the
breaker untouched — is still delivered on the WebSocket path, and
reconciliation reports it missing on Realtime. Real sockets: the broadcaster's
WebSocket fan-out, the local Realtime server, a subscriber on each path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from broadcaster.admin.app import collect_stats
from broadcaster.consumer import ReceiptCollector, StoreReceiptWriter
from broadcaster.consumer.realtime import RealtimeSubscriber
from broadcaster.consumer.websocket import WebSocketSubscriber
from broadcaster.core import Broadcaster
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.reconcile.matching import Outcome
from broadcaster.settings import load_settings
from broadcaster.store import DeliveryState
from tests._wait import until


async def test_an_event_too_large_for_the_plan_is_refused_counted_and_reported_missing(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        env_file=None,
        websocket_port=0,
        store_url=f"sqlite:///{tmp_path / 'refusals.db'}",
        realtime_plan="free",
        event_max_bytes=400_000,
        reconcile_window_s=0.05,
        reconcile_buffer_s=0,
        reconcile_max_delay_s=0.05,
        reconcile_interval_s=0,
    )
    async with Broadcaster(settings) as b:
        writer = StoreReceiptWriter(b.store)
        ws_col = ReceiptCollector("websocket", on_receipt=writer.add)
        rt_col = ReceiptCollector("realtime", on_receipt=writer.add)
        ws_url = b.adapters["websocket"].url  # type: ignore[attr-defined]
        assert b.local_realtime_url is not None
        async with (
            WebSocketSubscriber(ws_url, collector=ws_col),
            RealtimeSubscriber(b.local_realtime_url, b.local_realtime_key, collector=rt_col),
        ):
            small = await b.publish("CRITICAL", "order.created", {"n": 1})
            big = await b.publish("CRITICAL", "report.attached", {"blob": "x" * 300_000})
            after = await b.publish("CRITICAL", "order.created", {"n": 2})
            assert big.routed_to == ("websocket", "realtime")
            await b.flush(timeout=30)
            await until(lambda: ws_col.stats.verified == 3 and rt_col.stats.verified == 2)
        await writer.close()

        # The acknowledgements reach the store a moment after the lanes settle.
        expected = {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.REFUSED}
        async with asyncio.timeout(30):
            while True:
                stored = await b.store.get(big.sequence_id)
                others = [await b.store.get(r.sequence_id) for r in (small, after)]
                assert stored is not None and None not in others
                if stored.states == expected and all(
                    set(o.states.values()) == {DeliveryState.ACKED} for o in others if o
                ):
                    break
                await asyncio.sleep(0.01)
        assert "payload_too_large" in stored.errors["realtime"]
        assert await b.store.undelivered("realtime") == []

        stats = await collect_stats(b)
        realtime = stats["adapters"]["realtime"]
        assert realtime["refused"] == {"payload_too_large": 1}
        assert realtime["breaker"] == "closed" and realtime["failure_rate"] == 0
        assert stats["store"]["states"]["realtime"]["refused"] == 1
        metrics = BroadcasterMetrics(b)
        try:
            text = metrics.render()[0].decode()
        finally:
            metrics.close()
        assert (
            'broadcaster_events_refused_total{adapter="realtime",reason="payload_too_large"} 1.0'
            in text
        )

        async with asyncio.timeout(30):
            while True:
                report = await b.reconcile()
                if not report.total(Outcome.AWAITING):
                    break
                await asyncio.sleep(0.05)  # events still younger than the window
        assert report.missing == {"realtime": [big.sequence_id]}
        assert report.total(Outcome.MISSING) == 1
