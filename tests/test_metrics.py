"""The Prometheus exporter against a real Broadcaster with in-memory adapters and
store: counts per category and adapter, latency histograms, breaker figures
after a forced failure, store figures from refresh(), reconciliation figures.
The exposition text is parsed back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.breaker_policy import BreakerConfig
from broadcaster.core import Broadcaster
from broadcaster.events import Category, EventFactory, format_timestamp, seal
from broadcaster.exceptions import StoreUnavailable
from broadcaster.metrics import LATENCY_BUCKETS, BroadcasterMetrics
from broadcaster.settings import load_settings
from broadcaster.store.base import StoreStats
from broadcaster.store.memory import MemoryStore
from tests._fakes import FaultyAdapter, GatedAdapter, receipts_for

Labels = frozenset[tuple[str, str]]


class Clock:
    """Wall time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class BreakableStore(MemoryStore):
    """A MemoryStore whose stats() fails while ``broken``."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        super().__init__() if clock is None else super().__init__(clock)
        self.broken = False

    async def stats(self) -> StoreStats:
        if self.broken:
            raise StoreUnavailable("database is locked")
        return await super().stats()


def make(
    *adapters: MemoryAdapter,
    store: MemoryStore | None = None,
    clock: Callable[[], float] | None = None,
    breaker: BreakerConfig | None = None,
) -> Broadcaster:
    kwargs: dict[str, object] = {}
    if clock is not None:
        kwargs["clock"] = clock
    if breaker is not None:
        kwargs["breaker_config"] = lambda name: breaker
    return Broadcaster(
        load_settings(env_file=None),
        adapters=list(adapters) or [MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=store if store is not None else MemoryStore(),
        **kwargs,  # type: ignore[arg-type]
    )


def breaker_config(recovery_time_s: float) -> BreakerConfig:
    return BreakerConfig(
        latency_threshold_ms=500,  # generous: a loaded machine must not trip it
        recovery_time_s=recovery_time_s,
        half_open_requests=2,
        ramp_step_s=0.15,
        min_calls=4,
        window_s=2.0,
        bucket_s=0.1,
    )


class Scrape:
    """One parsed render(): samples by name and labels, and the family types."""

    def __init__(self, metrics: BroadcasterMetrics) -> None:
        body, self.content_type = metrics.render()
        self.text = body.decode()
        self.samples: dict[tuple[str, Labels], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                assert key not in self.samples, f"duplicate series {key}"
                self.samples[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}

    def buckets(self, name: str, **labels: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of one histogram, in bound order."""
        found = []
        for labelset, value in self.series(f"{name}_bucket").items():
            rest = dict(labelset)
            le = rest.pop("le")
            if rest == labels:
                found.append((float(le), value))
        return sorted(found)


# -- counts -------------------------------------------------------------------------


async def test_counts_per_category_and_adapter_mirror_the_delivery_stats() -> None:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    b = make(ws, rt)
    metrics = BroadcasterMetrics(b)
    async with b:
        for i in range(7):
            await b.publish("CRITICAL", "order.created", {"i": i})
        for i in range(4):
            await b.publish("PERFORMANCE", "cpu.sample", {"cpu": i}, key=f"host-{i}")
        await b.publish_many(
            [{"category": "SYSTEM", "event_type": "deploy", "payload": {"n": i}} for i in range(5)]
        )
        await b.publish("USER_ACTIVITY", "login", {"user": 1})
        await b.flush(timeout=5)
        scrape = Scrape(metrics)

    assert scrape.content_type.startswith("text/plain")
    published = {"CRITICAL": 7, "PERFORMANCE": 4, "SYSTEM": 5, "USER_ACTIVITY": 1, "DEBUG": 0}
    for category, n in published.items():
        assert scrape.value("broadcaster_events_published_total", category=category) == n
    # SPEC 4 defaults: CRITICAL and SYSTEM dual-write; PERFORMANCE's target set is
    # websocket only; USER_ACTIVITY is disabled, so primary (websocket) only.
    routed = {
        ("CRITICAL", "websocket"): 7,
        ("CRITICAL", "realtime"): 7,
        ("SYSTEM", "websocket"): 5,
        ("SYSTEM", "realtime"): 5,
        ("PERFORMANCE", "websocket"): 4,
        ("USER_ACTIVITY", "websocket"): 1,
    }
    for category in published:
        for adapter in ("websocket", "realtime"):
            n = routed.get((category, adapter), 0)
            labels = {"category": category, "adapter": adapter}
            assert scrape.value("broadcaster_events_routed_total", **labels) == n
            assert scrape.value("broadcaster_events_delivered_total", **labels) == n
            assert scrape.value("broadcaster_events_failed_total", **labels) == 0
            # One latency observation per acknowledged event.
            latency = "broadcaster_delivery_latency_seconds_count"
            assert scrape.value(latency, **labels) == n
    assert scrape.types["broadcaster_events_routed"] == "counter"

    ratio = scrape.series("broadcaster_dual_write_success_ratio")
    assert {dict(k)["category"]: v for k, v in ratio.items()} == {
        "CRITICAL": 1.0,
        "PERFORMANCE": 1.0,
        "SYSTEM": 1.0,
        "USER_ACTIVITY": 1.0,
    }  # DEBUG: nothing routed, no ratio

    # One publish-latency observation per publish()/publish_many() call.
    assert scrape.value("broadcaster_publish_latency_seconds_count") == 7 + 4 + 1 + 1
    assert scrape.value("broadcaster_publish_latency_seconds_sum") > 0
    # One send observation per acknowledged batch.
    assert scrape.value("broadcaster_send_seconds_count", adapter="websocket") == len(ws.batches)
    assert scrape.value("broadcaster_send_seconds_count", adapter="realtime") == len(rt.batches)
    [(labels, one)] = scrape.series("broadcaster_info").items()
    assert one == 1 and dict(labels)["version"] == "0.1.0" and dict(labels)["instance"]
    for adapter in ("websocket", "realtime"):
        # All in one: it delivers to both (no lease to wait for).
        assert scrape.value("broadcaster_delivering", adapter=adapter) == 1
        assert scrape.value("broadcaster_breaker_state", adapter=adapter) == 0
        assert scrape.value("broadcaster_breaker_share_percent", adapter=adapter) == 100
        assert scrape.value("broadcaster_breaker_failure_ratio", adapter=adapter) == 0
        assert scrape.value("broadcaster_events_pending", adapter=adapter) == 0
        assert scrape.value("broadcaster_events_parked_total", adapter=adapter) == 0
        assert scrape.value("broadcaster_events_backfilled_total", adapter=adapter) == 0
        for reason in ("payload_too_large", "rate_limit"):
            name = "broadcaster_events_refused_total"
            assert scrape.value(name, adapter=adapter, reason=reason) == 0
        for transition in ("closed->open", "open->half_open", "half_open->closed"):
            name = "broadcaster_breaker_transitions_total"
            assert scrape.value(name, adapter=adapter, transition=transition) == 0
    # Store and reconciliation figures wait for refresh() and a report.
    assert not scrape.series("broadcaster_store_events")
    assert scrape.get("broadcaster_store_up") is None
    assert scrape.get("broadcaster_reconciliation_lag_seconds") is None
    assert scrape.get("broadcaster_reconciliation_last_run_timestamp_seconds") is None
    assert not scrape.series("broadcaster_reconciliation_events")
    metrics.close()


async def test_histograms_are_cumulative_and_use_the_documented_buckets() -> None:
    clock = Clock()
    ws, rt = GatedAdapter("websocket"), GatedAdapter("realtime")
    ws.gate.set()
    rt.gate.set()
    b = make(ws, rt, store=MemoryStore(clock=clock), clock=clock)
    metrics = BroadcasterMetrics(b, clock=clock)
    async with b:
        for i in range(10):
            await b.publish("CRITICAL", "e", {"i": i})
        await b.flush(timeout=5)
        ws.gate.clear()
        rt.gate.clear()
        for i in range(3):
            await b.publish("SYSTEM", "e", {"i": i})
        clock.now += 0.25  # acknowledged 250 ms after their timestamp
        ws.gate.set()
        rt.gate.set()
        await b.flush(timeout=5)
        scrape = Scrape(metrics)
    metrics.close()

    bounds = [le for le, _ in scrape.buckets("broadcaster_publish_latency_seconds")]
    assert bounds == [*LATENCY_BUCKETS, float("inf")]
    assert LATENCY_BUCKETS[0] == 0.0005 and LATENCY_BUCKETS[-1] == 10.0
    for adapter in ("websocket", "realtime"):
        # The fake clock stood still while these were delivered: latency 0.
        critical = scrape.buckets(
            "broadcaster_delivery_latency_seconds", adapter=adapter, category="CRITICAL"
        )
        assert critical[0] == (0.0005, 10) and critical[-1] == (float("inf"), 10)
        counts = [n for _, n in critical]
        assert counts == sorted(counts)
        labels = {"adapter": adapter, "category": "CRITICAL"}
        assert scrape.value("broadcaster_delivery_latency_seconds_sum", **labels) == 0
        system = dict(
            scrape.buckets(
                "broadcaster_delivery_latency_seconds", adapter=adapter, category="SYSTEM"
            )
        )
        assert system[0.2] == 0 and system[0.3] == 3 and system[float("inf")] == 3
        labels = {"adapter": adapter, "category": "SYSTEM"}
        assert scrape.value("broadcaster_delivery_latency_seconds_sum", **labels) == 0.75
        send = scrape.buckets("broadcaster_send_seconds", adapter=adapter)
        assert send[-1][1] == scrape.value("broadcaster_send_seconds_count", adapter=adapter)


async def test_delivery_latency_counts_each_event_and_skips_unparsable_timestamps() -> None:
    clock = Clock()
    b = make(MemoryAdapter("websocket"), clock=clock)
    metrics = BroadcasterMetrics(b, clock=clock)
    base_ms = int(clock.now * 1000)
    good = seal(EventFactory(clock=clock).draft("CRITICAL", "e", {}), 1)
    # 9000 distinct milliseconds, 1.001 s to 10 s old: more than the parse cache
    # holds, so it is cleared on the way.
    spread = [
        dataclasses.replace(good, timestamp=format_timestamp(base_ms - 10_000 + i))
        for i in range(9000)
    ]
    naive = dataclasses.replace(good, timestamp="2023-11-14T22:13:19.000")  # taken as UTC
    broken = dataclasses.replace(good, timestamp="not a time")
    b.stats.count_delivered("websocket", [good, *spread, naive, broken], 0.004)
    scrape = Scrape(metrics)
    metrics.close()

    labels = {"adapter": "websocket", "category": "CRITICAL"}
    # The unparsable one is delivered but has no latency.
    assert scrape.value("broadcaster_events_delivered_total", **labels) == 9003
    assert scrape.value("broadcaster_delivery_latency_seconds_count", **labels) == 9002
    buckets = dict(scrape.buckets("broadcaster_delivery_latency_seconds", **labels))
    assert buckets[0.0005] == 1  # good: stamped now
    assert buckets[1.0] == 2  # and naive: exactly 1 s before 1_700_000_000 UTC
    assert buckets[2.5] == 2 + 1500
    assert buckets[5.0] == 2 + 4000
    assert buckets[10.0] == buckets[float("inf")] == 2 + 9000
    assert scrape.value("broadcaster_send_seconds_count", adapter="websocket") == 1
    assert scrape.value("broadcaster_send_seconds_sum", adapter="websocket") == 0.004


# -- registry and lifecycle ------------------------------------------------------------


async def test_own_registry_by_default_and_close_detaches() -> None:
    first, second = make(), make()
    m1, m2 = BroadcasterMetrics(first), BroadcasterMetrics(second)
    assert m1.registry is not m2.registry and m1.registry is not REGISTRY
    assert b"broadcaster_events_published_total" not in generate_latest(REGISTRY)
    assert len(first.stats.publish_hooks) == 1 and len(first.stats.delivered_hooks) == 1
    m1.close()
    m1.close()  # idempotent
    assert first.stats.publish_hooks == [] and first.stats.delivered_hooks == []
    assert m1.render()[0] == b""  # unregistered: nothing left to expose
    assert Scrape(m2).value("broadcaster_events_published_total", category="CRITICAL") == 0
    m2.close()


async def test_a_given_registry_is_used_and_rejects_a_second_exporter() -> None:
    registry = CollectorRegistry()
    b = make()
    metrics = BroadcasterMetrics(b, registry)
    assert metrics.registry is registry
    assert b"broadcaster_breaker_transitions_total" in generate_latest(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        BroadcasterMetrics(b, registry)
    assert len(b.stats.delivered_hooks) == 1  # the refused one attached nothing
    metrics.close()
    again = BroadcasterMetrics(b, registry)  # the names are free again
    again.close()


async def test_created_before_start_sees_adapters_once_started_and_extra_names() -> None:
    b = make()
    metrics = BroadcasterMetrics(b)
    before = Scrape(metrics)
    assert not before.series("broadcaster_breaker_state")  # no adapters yet
    assert not before.series("broadcaster_events_routed_total")
    async with b:
        await b.publish("CRITICAL", "e", {})
        await b.flush(timeout=5)
        # A name the stats know but no lane has (e.g. counted by another part).
        b.stats.count_routed(Category.CRITICAL, ["legacy"])
        scrape = Scrape(metrics)
    metrics.close()
    assert scrape.value("broadcaster_breaker_state", adapter="realtime") == 0
    assert (
        scrape.value("broadcaster_events_routed_total", category="CRITICAL", adapter="legacy") == 1
    )
    assert (
        scrape.value("broadcaster_events_delivered_total", category="SYSTEM", adapter="legacy") == 0
    )
    # legacy was routed 1 and delivered 0: the category's ratio is its minimum.
    assert scrape.value("broadcaster_dual_write_success_ratio", category="CRITICAL") == 0
    assert scrape.get("broadcaster_breaker_state", adapter="legacy") is None


# -- store figures (refresh) -------------------------------------------------------


async def test_refresh_reads_store_states_and_ages() -> None:
    clock = Clock()
    ws, rt = MemoryAdapter("websocket"), GatedAdapter("realtime")
    store = MemoryStore(clock=clock)
    b = make(ws, rt, store=store, clock=clock)
    metrics = BroadcasterMetrics(b, clock=clock)
    async with b:
        for i in range(4):
            await b.publish("CRITICAL", "e", {"i": i})
        await b.publish("PERFORMANCE", "p", {})
        await asyncio.wait_for(ws.wait_for({1, 2, 3, 4, 5}), 5)
        clock.now += 12  # realtime has held its 4 events for 12 s
        await metrics.refresh()
        scrape = Scrape(metrics)
        assert scrape.value("broadcaster_store_up") == 1
        states = {
            (dict(k)["adapter"], dict(k)["state"]): v
            for k, v in scrape.series("broadcaster_store_events").items()
            if v
        }
        assert states == {("websocket", "acked"): 5, ("realtime", "queued"): 4}
        assert scrape.value("broadcaster_store_events", adapter="realtime", state="pending") == 0
        age = "broadcaster_store_oldest_undelivered_age_seconds"
        assert scrape.value(age, adapter="realtime") == 12
        assert scrape.value(age, adapter="websocket") == 0
        # Nothing reconciled yet: the lag is the age of event 1.
        assert scrape.value("broadcaster_reconciliation_lag_seconds") == 12
        # Ages are computed at scrape time from the cached creation times.
        clock.now += 3
        assert Scrape(metrics).value(age, adapter="realtime") == 15
        rt.gate.set()
        await b.flush(timeout=5)
        await metrics.refresh()
        scrape = Scrape(metrics)
    metrics.close()
    assert scrape.value("broadcaster_store_events", adapter="realtime", state="acked") == 4
    assert scrape.value("broadcaster_store_oldest_undelivered_age_seconds", adapter="realtime") == 0


async def test_refresh_keeps_the_last_figures_when_the_store_fails() -> None:
    store = BreakableStore()
    b = make(store=store)
    metrics = BroadcasterMetrics(b)
    async with b:
        store.broken = True
        with capture_logs() as logs:
            await metrics.refresh()  # does not raise
        assert logs[0]["event"] == "metrics refresh could not read the store"
        assert logs[0]["log_level"] == "warning"
        scrape = Scrape(metrics)
        assert scrape.value("broadcaster_store_up") == 0
        assert not scrape.series("broadcaster_store_events")  # never read: nothing to show
        assert scrape.get("broadcaster_reconciliation_lag_seconds") is None

        store.broken = False
        await b.publish("SYSTEM", "e", {})
        await b.flush(timeout=5)
        await metrics.refresh()
        assert Scrape(metrics).value("broadcaster_store_up") == 1

        store.broken = True
        await b.publish("SYSTEM", "e", {})
        await b.flush(timeout=5)
        with capture_logs():
            await metrics.refresh()
        scrape = Scrape(metrics)
    metrics.close()
    assert scrape.value("broadcaster_store_up") == 0
    # The figures of the last good refresh (one event), not the current two.
    assert scrape.value("broadcaster_store_events", adapter="websocket", state="acked") == 1


async def test_ratio_is_capped_when_more_is_delivered_than_this_process_routed() -> None:
    store = MemoryStore()
    await store.open()
    factory = EventFactory()
    # A previous run stored three events and stopped before delivering them.
    leftovers = [(factory.draft("CRITICAL", "e", {"i": i}), ("websocket",)) for i in range(3)]
    await store.append(leftovers)
    b = make(store=store)
    metrics = BroadcasterMetrics(b)
    async with b:
        await b.publish("CRITICAL", "e", {"i": 3})
        await b.flush(timeout=5)
        scrape = Scrape(metrics)
    metrics.close()
    labels = {"category": "CRITICAL", "adapter": "websocket"}
    assert scrape.value("broadcaster_events_routed_total", **labels) == 1
    assert scrape.value("broadcaster_events_delivered_total", **labels) == 4
    realtime = {"category": "CRITICAL", "adapter": "realtime"}
    assert scrape.value("broadcaster_events_delivered_total", **realtime) == 1
    assert scrape.value("broadcaster_dual_write_success_ratio", category="CRITICAL") == 1


# -- breakers ------------------------------------------------------------------------


async def test_breaker_open_then_recovered_backfilled_and_counted() -> None:
    rt = FaultyAdapter("realtime")
    rt.mode = "down"
    b = make(MemoryAdapter("websocket"), rt, breaker=breaker_config(recovery_time_s=0.5))
    metrics = BroadcasterMetrics(b)
    async with b:
        for i in range(100):
            await b.publish("CRITICAL", "e", {"i": i}, key=f"k{i}")
        await b.flush(timeout=5)
        assert b.breakers["realtime"].state == "open"
        opened = Scrape(metrics)
        rt.mode = "ok"
        await asyncio.wait_for(rt.wait_for(set(range(1, 101))), 10)
        await b.flush(timeout=10)
        closed = Scrape(metrics)
    metrics.close()

    rt_labels = {"category": "CRITICAL", "adapter": "realtime"}
    assert opened.value("broadcaster_breaker_state", adapter="realtime") == 2
    assert opened.value("broadcaster_breaker_state", adapter="websocket") == 0
    assert opened.value("broadcaster_breaker_share_percent", adapter="realtime") == 0
    assert opened.get("broadcaster_breaker_failure_ratio", adapter="realtime") is not None
    transitions = "broadcaster_breaker_transitions_total"
    assert opened.value(transitions, adapter="realtime", transition="closed->open") == 1
    pending = opened.value("broadcaster_events_pending", adapter="realtime")
    failed = opened.value("broadcaster_events_failed_total", **rt_labels)
    assert failed >= 1
    assert pending + failed >= 100  # every event failed or waits as pending
    assert opened.value("broadcaster_events_parked_total", adapter="realtime") == 100
    assert opened.value("broadcaster_events_delivered_total", **rt_labels) == 0
    assert opened.value("broadcaster_dual_write_success_ratio", category="CRITICAL") == 0
    assert opened.value("broadcaster_delivery_latency_seconds_count", **rt_labels) == 0

    assert closed.value("broadcaster_breaker_state", adapter="realtime") == 0
    assert closed.value(transitions, adapter="realtime", transition="half_open->closed") == 1
    reopened = closed.value(transitions, adapter="realtime", transition="half_open->open")
    probes = closed.value(transitions, adapter="realtime", transition="open->half_open")
    assert probes == reopened + 1
    assert closed.value("broadcaster_events_pending", adapter="realtime") == 0
    assert closed.value("broadcaster_events_backfilled_total", adapter="realtime") == 100
    assert closed.value("broadcaster_events_delivered_total", **rt_labels) == 100
    assert closed.value("broadcaster_dual_write_success_ratio", category="CRITICAL") == 1
    assert closed.value("broadcaster_delivery_latency_seconds_count", **rt_labels) == 100


async def test_half_open_is_exported_as_one() -> None:
    rt = FaultyAdapter("realtime")
    rt.mode = "down"
    b = make(MemoryAdapter("websocket"), rt, breaker=breaker_config(recovery_time_s=0.05))
    metrics = BroadcasterMetrics(b)
    async with b:
        await b.publish("CRITICAL", "e", {})
        await b.flush(timeout=5)
        assert b.breakers["realtime"].state == "open"
        rt.mode = "hold"  # the next call, a half-open probe, hangs until the gate opens
        calls = rt.calls
        await asyncio.wait_for(rt.wait_calls(calls + 1), 5)
        assert b.breakers["realtime"].state == "half_open"
        state = Scrape(metrics).value("broadcaster_breaker_state", adapter="realtime")
        rt.gate.set()
        await asyncio.wait_for(rt.wait_for({1}), 5)
    metrics.close()
    assert state == 1


# -- reconciliation ---------------------------------------------------------------------


async def test_reconciliation_outcomes_lag_and_a_monotonic_mismatch_counter() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    b = make(ws, rt, store=store, clock=clock)
    metrics = BroadcasterMetrics(b, clock=clock)
    mismatches = "broadcaster_checksum_mismatches_total"
    system_rt = {"category": "SYSTEM", "adapter": "realtime"}

    async def deliver_with_one_bad_realtime_receipt(*categories: str) -> None:
        """Publish, deliver; consumers receive all, the first realtime one corrupted."""
        published = [
            await b.publish(c, "deploy.finished", {"i": i}) for i, c in enumerate(categories)
        ]
        await b.flush(timeout=5)
        first = published[0].sequence_id
        at_ms = int(clock.now * 1000) + 5
        ws_new = [r for r in ws.events if r.sequence_id >= first]
        rt_new = [r for r in rt.events if r.sequence_id >= first]
        await store.record_receipts(receipts_for(ws_new, "websocket", at_ms))
        await store.record_receipts(
            receipts_for(rt_new[:1], "realtime", at_ms, checksum="00000000")
        )
        await store.record_receipts(receipts_for(rt_new[1:], "realtime", at_ms))

    async with b:
        await deliver_with_one_bad_realtime_receipt(
            "SYSTEM", "SYSTEM", "SYSTEM", "PERFORMANCE", "PERFORMANCE"
        )
        # The websocket consumer got the first event a second time.
        again = receipts_for(ws.events[:1], "websocket", int(clock.now * 1000))
        await store.record_receipts([replace(r, deliveries=2) for r in again])
        clock.now += 7
        await metrics.refresh()
        before = Scrape(metrics)
        assert before.value("broadcaster_reconciliation_lag_seconds") == 7  # nothing reconciled
        assert before.value(mismatches, **system_rt) == 0

        clock.now += 33  # past the 30 s buffer: every pair judged
        await b.reconcile()
        await metrics.refresh()
        scrape = Scrape(metrics)
        events = "broadcaster_reconciliation_events"
        assert scrape.value(events, outcome="mismatch", **system_rt) == 1
        assert scrape.value(events, outcome="matched", **system_rt) == 2
        assert scrape.value(events, outcome="missing", **system_rt) == 0
        system_ws = {"category": "SYSTEM", "adapter": "websocket"}
        assert scrape.value(events, outcome="matched", **system_ws) == 3
        assert scrape.value(events, outcome="duplicate", **system_ws) == 1
        perf_ws = {"category": "PERFORMANCE", "adapter": "websocket"}
        assert scrape.value(events, outcome="matched", **perf_ws) == 2
        assert scrape.get(events, outcome="matched", category="DEBUG", adapter="websocket") is None
        assert scrape.value(mismatches, **system_rt) == 1
        assert sum(scrape.series(mismatches).values()) == 1
        assert scrape.value("broadcaster_reconciliation_lag_seconds") == 0  # all final
        last_run = scrape.value("broadcaster_reconciliation_last_run_timestamp_seconds")
        assert last_run == clock.now
        assert scrape.value("broadcaster_reconciliation_last_duration_seconds") >= 0
        assert Scrape(metrics).value(mismatches, **system_rt) == 1  # same report: same count

        await b.reconcile()  # the same mismatch judged again is not a new one
        assert Scrape(metrics).value(mismatches, **system_rt) == 1

        await deliver_with_one_bad_realtime_receipt("SYSTEM", "SYSTEM")
        clock.now += 40
        await metrics.refresh()
        assert Scrape(metrics).value("broadcaster_reconciliation_lag_seconds") == 40
        await b.reconcile()
        assert Scrape(metrics).value(mismatches, **system_rt) == 2

        # Retention prunes the judged events: the report's count falls to 0,
        # the counter does not, and the next mismatch still adds one.
        assert await b.prune(older_than_s=10) == 7
        report = await b.reconcile()
        assert not report.counts
        scrape = Scrape(metrics)
        assert scrape.value(mismatches, **system_rt) == 2
        assert not scrape.series(events)
        await deliver_with_one_bad_realtime_receipt("SYSTEM")
        clock.now += 40
        await b.reconcile()
        assert Scrape(metrics).value(mismatches, **system_rt) == 3
    metrics.close()
