"""Prometheus exporter for one :class:`~broadcaster.core.Broadcaster`.

Usage (an admin ``/metrics`` handler)::

    metrics = BroadcasterMetrics(broadcaster)      # own registry, hooks attached
    ...
    await metrics.refresh()                        # store figures (async sources)
    body, content_type = metrics.render()          # Prometheus text format
    ...
    metrics.close()                                # detach the hooks

Where each figure comes from:

* **Counters and gauges that mirror in-memory state** (published, routed,
  delivered, failed, backfilled, parked, refused, pending, breaker state/share/
  transitions, reconciliation outcomes) are read at scrape time by a custom
  collector from ``broadcaster.stats``, ``broadcaster.breaker_states()`` and
  ``broadcaster.reconciler``: nothing is counted twice.
* **Store figures** (events per adapter and state, oldest undelivered age,
  reconciliation lag, the latest rollout of each category) need the store,
  which is async: :meth:`~BroadcasterMetrics.refresh` reads and caches them;
  ``render()`` never touches the store. They appear after the first
  successful refresh; ages are computed at scrape time from the
  cached creation times. If the store fails, the last figures are kept and
  ``broadcaster_store_up`` drops to 0. It is 0 too while the store does not
  accept writes (:meth:`~broadcaster.core.Broadcaster.store_health`: a failed
  write, a deleted database file), read at scrape time, even if reads work.
* **Latency histograms** are fed by the hooks on :class:`~broadcaster.stats.DeliveryStats`,
  which run inline on the delivery path, once per acknowledged batch. To keep them
  cheap, the histograms are plain bucket arrays updated with weighted
  observations (``prometheus_client.Histogram`` has no weighted ``observe`` and
  takes a lock per call):

  - ``broadcaster_publish_latency_seconds``: one observation per
    ``publish()``/``publish_many()`` call (what the producer waited).
  - ``broadcaster_send_seconds{adapter}``: one observation per acknowledged batch.
  - ``broadcaster_delivery_latency_seconds{adapter,category}``: one count per
    acknowledged *event*, so ``_count`` equals delivered events. Events of a
    batch that share a category and a millisecond timestamp are observed
    together (one bucket search and one timestamp parse per group). Event time
    is the event's ``timestamp`` (millisecond resolution, so latencies carry up
    to 1 ms of rounding up); the end is the moment the hook runs, right after
    the adapter acknowledged the batch, on ``clock``. Its cost per event is
    small beside delivering it (figures in loadtests/HISTORY.md).

The catalogue of metrics (names, help, buckets) is in
:mod:`.metrics_catalog`; this module holds the collector that fills it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import InfoMetricFamily, Metric

from .events import Category, EventRecord
from .exceptions import StoreError
from .metrics_catalog import (
    _DUPLICATE,
    _EMPTY,
    _SPECS,
    _TRANSITIONS,
    BREAKER_STATE_VALUES,
    LATENCY_BUCKETS,
    METRIC_NAMES,
    REFUSAL_REASONS,
    _age,
    _family,
    _Histogram,
    _histogram,
    _package_version,
    _ratio,
    _series,
    _with_extra,
)
from .reconcile.matching import Outcome, Report
from .rollout.policy import RolloutState
from .store.base import DeliveryState, RolloutRow, StoreStats

if TYPE_CHECKING:
    from .core import Broadcaster

__all__ = ["BREAKER_STATE_VALUES", "LATENCY_BUCKETS", "METRIC_NAMES", "BroadcasterMetrics"]

log = structlog.get_logger("broadcaster.metrics")


class BroadcasterMetrics:
    """Prometheus metrics for one broadcaster (names in :data:`METRIC_NAMES`).

    Construction registers a collector in ``registry`` (default: a new
    :class:`~prometheus_client.CollectorRegistry` of its own, never the global
    one) and appends latency hooks to ``broadcaster.stats``; it may happen
    before or after ``broadcaster.start()``. Latencies are observed only while
    attached. Call :meth:`close` to detach (idempotent).

    ``clock`` (wall time, seconds) must be the clock the broadcaster stamps
    events with (its ``clock`` argument) and the store's: delivery latency,
    reconciliation lag and ages are "now" minus those stamps.

    Use it from the broadcaster's event loop. Registering two instances in one
    registry raises ``ValueError`` (duplicate time series).
    """

    def __init__(
        self,
        broadcaster: Broadcaster,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broadcaster = broadcaster
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._version = _package_version()
        self._publish = _Histogram()
        self._send: dict[str, _Histogram] = {}
        self._delivery: dict[tuple[str, str], _Histogram] = {}
        self._event_times: dict[str, float] = {}
        # Reconciliation mismatches, made monotonic across reports.
        self._seen_report: Report | None = None
        self._last_mismatches: Counter[tuple[str, str]] = Counter()
        self._mismatches: Counter[tuple[str, str]] = Counter()
        # Cached by refresh().
        self._store_up: bool | None = None
        self._store_stats: StoreStats | None = None
        self._unreconciled_ms: int | None = None
        self._rollouts: dict[str, RolloutRow] = {}
        self.registry.register(self)
        self._closed = False
        broadcaster.stats.publish_hooks.append(self._on_publish)
        broadcaster.stats.delivered_hooks.append(self._on_delivered)

    # -- public API ------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the store's figures (events per adapter and state, oldest
        undelivered event, first event above the ``reconciled_through``
        watermark) and cache them for :meth:`render`. Call it before each
        render (a scrape) when store figures are wanted; it costs a few store
        queries. A :class:`~broadcaster.exceptions.StoreError` is logged, not
        raised: the previous figures stay and ``broadcaster_store_up`` is 0.
        A store that is down is probed first (at most once a second), so one
        that came back is seen up without waiting for a publish."""
        store = self.broadcaster.store
        await self.broadcaster.check_store()
        try:
            stats = await store.stats()
            _, unreconciled_ms = await self.broadcaster.reconciler.progress()
            rollouts = await store.rollouts()
        except StoreError as exc:
            log.warning("metrics refresh could not read the store", error=str(exc))
            self._store_up = False
            return
        self._store_up = True
        self._store_stats = stats
        self._unreconciled_ms = unreconciled_ms
        # By id: the last one of each category is its latest.
        self._rollouts = {row.category: row for row in rollouts}

    def render(self) -> tuple[bytes, str]:
        """``(body, content_type)`` of a ``/metrics`` response: the registry in
        the Prometheus text format. Reads in-memory state only (never awaits)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """Detach the hooks and unregister from the registry. Idempotent."""
        if self._closed:
            return
        self._closed = True
        stats = self.broadcaster.stats
        stats.publish_hooks.remove(self._on_publish)
        stats.delivered_hooks.remove(self._on_delivered)
        self.registry.unregister(self)

    # -- hooks (hot path) --------------------------------------------------------

    def _on_publish(self, events: int, seconds: float) -> None:
        self._publish.observe(seconds)

    def _on_delivered(
        self, adapter: str, records: Sequence[EventRecord], send_seconds: float
    ) -> None:
        send = self._send.get(adapter)
        if send is None:
            send = self._send[adapter] = _Histogram()
        send.observe(send_seconds)
        groups: dict[tuple[Category, str], int] = {}
        for record in records:
            key = (record.category, record.timestamp)
            groups[key] = groups.get(key, 0) + 1
        now = self._clock()
        for (category, timestamp), count in groups.items():
            event_time = self._event_time(timestamp)
            if event_time is None:
                continue
            labels = (adapter, category.value)
            hist = self._delivery.get(labels)
            if hist is None:
                hist = self._delivery[labels] = _Histogram()
            hist.observe(max(0.0, now - event_time), count)

    def _event_time(self, timestamp: str) -> float | None:
        """Unix seconds of an event timestamp (cached: events of one
        millisecond share it); None if it does not parse."""
        cached = self._event_times.get(timestamp)
        if cached is not None:
            return cached
        try:
            parsed = datetime.fromisoformat(timestamp)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        if len(self._event_times) >= 4096:
            self._event_times.clear()
        seconds = self._event_times[timestamp] = parsed.timestamp()
        return seconds

    # -- the collector -------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (lets the registry detect clashes)."""
        return (_family(name) for name in _SPECS)

    def collect(self) -> Iterator[Metric]:
        """All families with their samples, read now (called by the registry)."""
        now = self._clock()
        b = self.broadcaster
        stats = b.stats
        adapters = self._adapters()
        categories = [c.value for c in Category]
        pairs = [(c, a) for c in categories for a in adapters]

        published = _series("broadcaster_events_published_total")
        for category in categories:
            published.add_metric([category], stats.published[category])
        yield published
        for name, counts in (
            ("broadcaster_events_routed_total", stats.routed),
            ("broadcaster_events_delivered_total", stats.delivered),
            ("broadcaster_events_failed_total", stats.failed),
        ):
            family = _series(name)
            for key in _with_extra(pairs, counts):
                family.add_metric(list(key), counts[key])
            yield family
        yield _ratio(stats.routed, stats.delivered, categories, adapters)

        breakers = b.breaker_states()
        yield from self._breaker_families(breakers, adapters)
        yield from self._reconciliation_families(pairs, now)
        yield from self._store_families(adapters, now)
        yield from self._rollout_families()
        yield from self._histogram_families(adapters, categories)

        delivering = _series("broadcaster_delivering")
        for adapter in sorted(b.adapters):
            delivering.add_metric([adapter], int(adapter in b.delivering_to))
        yield delivering
        info = InfoMetricFamily("broadcaster", _SPECS["broadcaster_info"].help, labels=[])
        info.add_metric([], {"version": self._version, "instance": b.settings.instance_id})
        yield info

    # -- collector parts -------------------------------------------------------------

    def _adapters(self) -> list[str]:
        stats = self.broadcaster.stats
        names = set(self.broadcaster.adapters)
        names.update(a for _, a in stats.routed)
        names.update(a for _, a in stats.delivered)
        names.update(stats.backfilled)
        names.update(stats.parked)
        names.update(a for a, _ in stats.refused)
        return sorted(names)

    def _breaker_families(
        self, breakers: Mapping[str, Mapping[str, Any]], adapters: Sequence[str]
    ) -> Iterator[Metric]:
        stats = self.broadcaster.stats
        pending = _series("broadcaster_events_pending")
        state = _series("broadcaster_breaker_state")
        share = _series("broadcaster_breaker_share_percent")
        failure = _series("broadcaster_breaker_failure_ratio")
        for adapter, health in sorted(breakers.items()):
            pending.add_metric([adapter], health["pending"])
            state.add_metric([adapter], BREAKER_STATE_VALUES[health["state"]])
            share.add_metric([adapter], health["share"])
            failure.add_metric([adapter], health["failure_rate"])
        parked = _series("broadcaster_events_parked_total")
        backfilled = _series("broadcaster_events_backfilled_total")
        for adapter in adapters:
            parked.add_metric([adapter], stats.parked[adapter])
            backfilled.add_metric([adapter], stats.backfilled[adapter])
        refused = _series("broadcaster_events_refused_total")
        known = [(a, r) for a in adapters for r in REFUSAL_REASONS]
        for key in _with_extra(known, stats.refused):
            refused.add_metric(list(key), stats.refused[key])
        transitions = _series("broadcaster_breaker_transitions_total")
        known = [(a, t) for a in sorted(set(adapters) | set(breakers)) for t in _TRANSITIONS]
        for key in _with_extra(known, stats.breaker_transitions):
            transitions.add_metric(list(key), stats.breaker_transitions[key])
        yield from (pending, parked, backfilled, refused, state, share, failure, transitions)

    def _reconciliation_families(
        self, pairs: Sequence[tuple[str, str]], now: float
    ) -> Iterator[Metric]:
        reconciler = self.broadcaster.reconciler
        report = reconciler.last_report
        self._count_new_mismatches(report)
        mismatches = _series("broadcaster_checksum_mismatches_total")
        for key in _with_extra(pairs, self._mismatches):
            mismatches.add_metric(list(key), self._mismatches[key])
        yield mismatches
        events = _series("broadcaster_reconciliation_events")
        if report is not None:
            judged = {(c, a) for c, a, _ in report.counts} | set(report.duplicates)
            for category, adapter in sorted(judged):
                for outcome in Outcome:
                    n = report.counts[(category, adapter, outcome.value)]
                    events.add_metric([category, adapter, outcome.value], n)
                dup = report.duplicates[(category, adapter)]
                events.add_metric([category, adapter, _DUPLICATE], dup)
        yield events
        if reconciler.last_run_at_ms is not None:
            last_run = _series("broadcaster_reconciliation_last_run_timestamp_seconds")
            last_run.add_metric([], reconciler.last_run_at_ms / 1000)
            yield last_run
        if reconciler.last_duration_s is not None:
            duration = _series("broadcaster_reconciliation_last_duration_seconds")
            duration.add_metric([], reconciler.last_duration_s)
            yield duration
        if self._store_stats is not None:
            lag = _series("broadcaster_reconciliation_lag_seconds")
            lag.add_metric([], _age(self._unreconciled_ms, now))
            yield lag

    def _count_new_mismatches(self, report: Report | None) -> None:
        """Each report counts every retained mismatched event again, and
        retention pruning makes its figures fall. The counter adds, per
        (category, adapter), how much a new report's mismatch count rose over
        the previous report's: monotonic, never double-counting an event.
        (A prune and a new mismatch in the same interval cancel out.)"""
        if report is None or report is self._seen_report:
            return
        self._seen_report = report
        current: Counter[tuple[str, str]] = Counter()
        for (category, adapter, outcome), n in report.counts.items():
            if outcome == Outcome.MISMATCH.value:
                current[(category, adapter)] = n
        for key, n in current.items():
            rise = n - self._last_mismatches[key]
            if rise > 0:
                self._mismatches[key] += rise
        self._last_mismatches = current

    def _store_families(self, adapters: Sequence[str], now: float) -> Iterator[Metric]:
        if self._store_up is None:
            return
        up = _series("broadcaster_store_up")
        writable = self.broadcaster.store_health().up
        up.add_metric([], 1 if self._store_up and writable else 0)
        yield up
        stats = self._store_stats
        if stats is None:
            return
        names = sorted(set(adapters) | set(stats.states) | set(stats.oldest_undelivered_ms))
        events = _series("broadcaster_store_events")
        oldest = _series("broadcaster_store_oldest_undelivered_age_seconds")
        for adapter in names:
            per_state = stats.states.get(adapter, {})
            for delivery_state in DeliveryState:
                value = delivery_state.value
                events.add_metric([adapter, value], per_state.get(value, 0))
            oldest.add_metric([adapter], _age(stats.oldest_undelivered_ms.get(adapter), now))
        yield events
        yield oldest

    def _rollout_families(self) -> Iterator[Metric]:
        step = _series("broadcaster_rollout_step")
        state = _series("broadcaster_rollout_state")
        for category, row in sorted(self._rollouts.items()):
            step.add_metric([category], int(row.doc.get("stage", 0)) + 1)
            for value in RolloutState:
                state.add_metric([category, value.value], int(row.state == value.value))
        yield step
        yield state

    def _histogram_families(
        self, adapters: Sequence[str], categories: Sequence[str]
    ) -> Iterator[Metric]:
        publish = _histogram("broadcaster_publish_latency_seconds")
        self._publish.add_to(publish, [])
        yield publish
        delivery = _histogram("broadcaster_delivery_latency_seconds")
        keys = {(a, c) for a in adapters for c in categories} | set(self._delivery)
        for key in sorted(keys):
            self._delivery.get(key, _EMPTY).add_to(delivery, key)
        yield delivery
        send = _histogram("broadcaster_send_seconds")
        for adapter in sorted(set(adapters) | set(self._send)):
            self._send.get(adapter, _EMPTY).add_to(send, [adapter])
        yield send
