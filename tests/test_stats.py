"""DeliveryStats: counters per category and adapter, and the hooks the
Prometheus exporter observes latencies through."""

from __future__ import annotations

from collections.abc import Sequence

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.core import Broadcaster
from broadcaster.events import EventFactory, EventRecord, seal
from broadcaster.settings import load_settings
from broadcaster.stats import DeliveryStats, StatsSnapshot
from broadcaster.store.memory import MemoryStore
from tests._shapes import assert_shape


def test_count_delivered_calls_hooks_with_the_batch_and_send_time() -> None:
    stats = DeliveryStats()
    seen: list[tuple[str, list[int], float]] = []

    def hook(adapter: str, records: Sequence[EventRecord], seconds: float) -> None:
        seen.append((adapter, [r.sequence_id for r in records], seconds))

    stats.delivered_hooks.append(hook)
    factory = EventFactory()
    batch = [seal(factory.draft("SYSTEM", "t", {}), i) for i in (1, 2)]
    stats.count_delivered("realtime", batch, 0.25)
    assert seen == [("realtime", [1, 2], 0.25)]
    assert stats.delivered[("SYSTEM", "realtime")] == 2
    snapshot = stats.snapshot()["categories"]["SYSTEM"]
    assert snapshot["adapters"]["realtime"]["delivered"] == 2


def test_the_snapshot_has_every_category_with_the_adapters_it_reached() -> None:
    stats = DeliveryStats()
    factory = EventFactory()
    record = seal(factory.draft("SYSTEM", "t", {}), 1)
    stats.count_routed(record.category, ["websocket", "realtime"])
    stats.count_delivered("websocket", [record])
    stats.count_failed("realtime", [record])
    snapshot = stats.snapshot()
    assert_shape(snapshot, StatsSnapshot)
    assert snapshot["categories"]["SYSTEM"] == {
        "published": 1,
        "adapters": {
            "realtime": {"routed": 1, "delivered": 0, "failed": 1},
            "websocket": {"routed": 1, "delivered": 1, "failed": 0},
        },
    }
    assert snapshot["categories"]["DEBUG"] == {"published": 0, "adapters": {}}


async def test_broadcaster_reports_publish_and_delivery_latencies() -> None:
    published: list[tuple[int, float]] = []
    delivered: list[tuple[str, int]] = []
    b = Broadcaster(
        load_settings(env_file=None),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    b.stats.publish_hooks.append(lambda n, s: published.append((n, s)))
    b.stats.delivered_hooks.append(lambda a, recs, s: delivered.append((a, len(recs))))
    async with b:
        await b.publish("CRITICAL", "e", {})
        await b.publish_many([{"category": "CRITICAL", "event_type": "e", "payload": {}}] * 3)
        await b.flush(timeout=5)
    assert [n for n, _ in published] == [1, 3]
    assert all(s >= 0 for _, s in published)
    assert sum(n for a, n in delivered if a == "websocket") == 4
    assert sum(n for a, n in delivered if a == "realtime") == 4
