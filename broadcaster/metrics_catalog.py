"""The metrics' catalogue: every metric's name, type and help, the latency
buckets, the weighted histogram the delivery hooks feed, and the small
helpers that build families (see :mod:`broadcaster.metrics`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from .breaker_policy import BreakerState

__all__ = ["BREAKER_STATE_VALUES", "LATENCY_BUCKETS", "METRIC_NAMES", "REFUSAL_REASONS"]

#: Upper bounds (seconds) of every latency histogram: 0.5 ms to 10 s, roughly
#: 1-2.5-5 per decade, plus 0.15/0.2/0.3 s around the adapters' slow-call bounds.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BUCKET_LABELS: Final = tuple(repr(b) for b in LATENCY_BUCKETS)  # "0.0005", "1.0", as Go

#: ``broadcaster_breaker_state`` values.
BREAKER_STATE_VALUES: Final[Mapping[str, int]] = {
    BreakerState.CLOSED.value: 0,
    BreakerState.HALF_OPEN.value: 1,
    BreakerState.OPEN.value: 2,
}

#: Every transition the breaker policy makes, exported at 0 until it happens.
_TRANSITIONS: Final = ("closed->open", "open->half_open", "half_open->closed", "half_open->open")

_DUPLICATE: Final = "duplicate"

#: Every reason a quota refusal is counted under, exported at 0 until it happens.
REFUSAL_REASONS: Final = ("payload_too_large", "rate_limit")


@dataclass(frozen=True, slots=True)
class _Spec:
    kind: str  # counter, gauge, histogram, info
    help: str
    labels: tuple[str, ...] = ()


_SPECS: Final[dict[str, _Spec]] = {
    "broadcaster_events_published_total": _Spec(
        "counter", "Events durably stored and routed, per category.", ("category",)
    ),
    "broadcaster_events_routed_total": _Spec(
        "counter",
        "Events routed to an adapter (open breaker included), per category and adapter.",
        ("category", "adapter"),
    ),
    "broadcaster_events_delivered_total": _Spec(
        "counter",
        "Events acknowledged by an adapter (live, backfilled, recovered or repaired).",
        ("category", "adapter"),
    ),
    "broadcaster_events_failed_total": _Spec(
        "counter",
        "Failed delivery attempts, counted per event in the failed batch; an event "
        "retried twice counts twice.",
        ("category", "adapter"),
    ),
    "broadcaster_events_pending": _Spec(
        "gauge",
        "Events this process recorded PENDING for the adapter (breaker open or held "
        "back by the restore ramp) and has not delivered yet.",
        ("adapter",),
    ),
    "broadcaster_events_parked_total": _Spec(
        "counter", "Events recorded PENDING for the adapter.", ("adapter",)
    ),
    "broadcaster_events_backfilled_total": _Spec(
        "counter",
        "Pending events delivered later by backfill or half-open probes.",
        ("adapter",),
    ),
    "broadcaster_events_refused_total": _Spec(
        "counter",
        "Events a quota of the adapter refused, per reason: rate_limit (the batch "
        "waited and was sent again; an event retried twice counts twice), "
        "payload_too_large (never deliverable on that path; reconciliation reports "
        "it missing there).",
        ("adapter", "reason"),
    ),
    "broadcaster_dual_write_success_ratio": _Spec(
        "gauge",
        "Since start: min over the category's routed adapters of "
        "min(delivered, routed) / routed. Absent while nothing was routed.",
        ("category",),
    ),
    "broadcaster_checksum_mismatches_total": _Spec(
        "counter",
        "Mismatch verdicts (checksum, payload keys or event type) newly found by "
        "reconciliation runs.",
        ("category", "adapter"),
    ),
    "broadcaster_reconciliation_events": _Spec(
        "gauge",
        "(event, adapter) pairs per outcome in the last reconciliation report; "
        "outcome=duplicate counts extra receipts.",
        ("category", "adapter", "outcome"),
    ),
    "broadcaster_reconciliation_lag_seconds": _Spec(
        "gauge",
        "Age of the oldest event above the reconciled_through watermark (0: none).",
    ),
    "broadcaster_reconciliation_last_run_timestamp_seconds": _Spec(
        "gauge", "When the last reconciliation run judged (Unix time, broadcaster clock)."
    ),
    "broadcaster_reconciliation_last_duration_seconds": _Spec(
        "gauge", "How long the last reconciliation run took."
    ),
    "broadcaster_breaker_state": _Spec(
        "gauge", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ("adapter",)
    ),
    "broadcaster_breaker_share_percent": _Spec(
        "gauge", "Percent of live traffic the adapter gets now (restore ramp).", ("adapter",)
    ),
    "broadcaster_breaker_failure_ratio": _Spec(
        "gauge",
        "Failure rate (slow calls included) over the breaker's sliding window.",
        ("adapter",),
    ),
    "broadcaster_breaker_transitions_total": _Spec(
        "counter", "Circuit breaker state changes.", ("adapter", "transition")
    ),
    "broadcaster_store_up": _Spec(
        "gauge",
        "1 if the store accepts writes and the last refresh() read it, else 0.",
    ),
    "broadcaster_store_events": _Spec(
        "gauge", "Stored events per adapter and delivery state.", ("adapter", "state")
    ),
    "broadcaster_store_oldest_undelivered_age_seconds": _Spec(
        "gauge",
        "Age of the oldest stored event the adapter has not acknowledged (0: none).",
        ("adapter",),
    ),
    "broadcaster_publish_latency_seconds": _Spec(
        "histogram", "Producer-visible latency of one publish() or publish_many() call."
    ),
    "broadcaster_delivery_latency_seconds": _Spec(
        "histogram",
        "Event timestamp to adapter acknowledgement, one count per event.",
        ("adapter", "category"),
    ),
    "broadcaster_send_seconds": _Spec(
        "histogram", "Duration of one acknowledged batch send.", ("adapter",)
    ),
    "broadcaster_delivering": _Spec(
        "gauge",
        "1 where this instance delivers to the adapter now: with several instances on"
        " one store, Realtime only on the holder of its lease.",
        ("adapter",),
    ),
    "broadcaster_rollout_step": _Spec(
        "gauge",
        "The step the category's latest rollout stands at (1 the first; the cutover after"
        " the last).",
        ("category",),
    ),
    "broadcaster_rollout_state": _Spec(
        "gauge",
        "1 for the state of the category's latest rollout (running, paused, rolled_back,"
        " aborted, completed), 0 for the others.",
        ("category", "state"),
    ),
    "broadcaster_info": _Spec(
        "info", "Broadcaster build information and this instance's name.", ("version", "instance")
    ),
}

#: Every exported metric name -> its help text. Counters are named with their
#: ``_total`` suffix and histograms by their base name (``_bucket``, ``_sum`` and
#: ``_count`` series follow), as PromQL refers to them.
METRIC_NAMES: Final[Mapping[str, str]] = {name: spec.help for name, spec in _SPECS.items()}


def _family(name: str) -> Metric:
    """An empty family of metric ``name`` (its type, help and label names)."""
    spec = _SPECS[name]
    if spec.kind == "histogram":
        return _histogram(name)
    if spec.kind == "info":
        return InfoMetricFamily(name.removesuffix("_info"), spec.help, labels=[])
    return _series(name)


def _series(name: str) -> CounterMetricFamily | GaugeMetricFamily:
    spec = _SPECS[name]
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=list(spec.labels))
    return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))


def _histogram(name: str) -> HistogramMetricFamily:
    spec = _SPECS[name]
    return HistogramMetricFamily(name, spec.help, labels=list(spec.labels))


def _package_version() -> str:
    try:
        return version("dualwrite-broadcaster")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


class _Histogram:
    """Cumulative-at-export bucket counts with weighted observations. Updated
    on the event loop only; no lock (``render()`` from another thread may see
    one observation half-applied, which the next scrape corrects)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last: above 10 s (+Inf)
        self.total = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, value)] += count
        self.total += value * count

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        counts, running = list(self.counts), 0
        buckets: list[tuple[str, float]] = []
        for label, n in zip(_BUCKET_LABELS, counts, strict=False):
            running += n
            buckets.append((label, running))
        buckets.append(("+Inf", running + counts[-1]))
        family.add_metric(list(labels), buckets, self.total)


_EMPTY: Final = _Histogram()


def _with_extra(
    known: Iterable[tuple[str, str]], counts: Mapping[tuple[str, str], int]
) -> list[tuple[str, str]]:
    """``known`` label pairs (exported at 0 before they count anything, so
    rates and alerts have a series) plus any other pair ``counts`` has."""
    keys = set(known) | set(counts)
    return sorted(keys)


def _ratio(
    routed: Mapping[tuple[str, str], int],
    delivered: Mapping[tuple[str, str], int],
    categories: Sequence[str],
    adapters: Sequence[str],
) -> Metric:
    """``broadcaster_dual_write_success_ratio``: for each category with routed
    events, the smallest per-adapter ``min(delivered, routed) / routed``. An
    upper bound on the share of events delivered to *all* their adapters;
    cumulative since start, so events in flight or pending behind an open
    breaker lower it until they are acknowledged. Deliveries beyond routing
    (recovery from a previous run, repair) are capped so it never exceeds 1."""
    family = _series("broadcaster_dual_write_success_ratio")
    for category in categories:
        ratios = [
            min(delivered.get((category, a), 0), n) / n
            for a in adapters
            if (n := routed.get((category, a), 0)) > 0
        ]
        if ratios:
            family.add_metric([category], min(ratios))
    return family


def _age(created_ms: int | None, now: float) -> float:
    if created_ms is None:
        return 0.0
    return max(0.0, now - created_ms / 1000)
