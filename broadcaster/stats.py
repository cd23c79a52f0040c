"""In-process counters per category and adapter (published, routed, delivered,
failed), and per adapter for failover (parked, backfilled, breaker
transitions) and quotas (refused, by reason). Plain integers, updated on the
event loop; ``/stats`` and the Prometheus exporter read them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TypedDict

from .events import Category, EventRecord

__all__ = ["AdapterCounts", "CategoryCounts", "DeliveryStats", "StatsSnapshot"]

_category = attrgetter("category")


class AdapterCounts(TypedDict):
    """One category's events on one adapter, since the process started."""

    #: Events routed to the adapter.
    routed: int
    #: Events the adapter acknowledged; backfilled and repaired ones count
    #: too, so it may pass ``routed``.
    delivered: int
    #: Events of the batches that failed, once per failed try.
    failed: int


class CategoryCounts(TypedDict):
    """One category's events, since the process started."""

    #: Events stored and routed.
    published: int
    #: Adapter name -> its counts, for each adapter the category reached.
    adapters: dict[str, AdapterCounts]


class StatsSnapshot(TypedDict):
    """:meth:`DeliveryStats.snapshot`: the counts by category."""

    #: Category name -> its counts, every category.
    categories: dict[str, CategoryCounts]


@dataclass
class DeliveryStats:
    published: Counter[str] = field(default_factory=Counter)
    routed: Counter[tuple[str, str]] = field(default_factory=Counter)
    delivered: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: Counter[tuple[str, str]] = field(default_factory=Counter)
    retried_batches: Counter[str] = field(default_factory=Counter)
    #: adapter -> events recorded PENDING (breaker open or held back by the ramp)
    parked: Counter[str] = field(default_factory=Counter)
    #: adapter -> pending events delivered later by backfill or half-open probes
    backfilled: Counter[str] = field(default_factory=Counter)
    #: (adapter, reason) -> events a quota of the adapter refused: ``rate_limit``
    #: (retried after a pause), ``payload_too_large`` (never deliverable there)
    refused: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: (adapter, "closed->open" ...) -> how often that breaker transition happened
    breaker_transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Called as ``hook(adapter, records, send_seconds)`` after each acknowledged
    #: batch (the Prometheus exporter observes latencies here). Must not raise
    #: or block: it runs inline on the delivery path.
    delivered_hooks: list[Callable[[str, Sequence[EventRecord], float], None]] = field(
        default_factory=list
    )
    #: Called as ``hook(events, seconds)`` after each ``publish``/``publish_many``
    #: returns: the producer-visible latency. Same rules as ``delivered_hooks``.
    publish_hooks: list[Callable[[int, float], None]] = field(default_factory=list)

    def count_transition(self, adapter: str, key: str) -> None:
        self.breaker_transitions[(adapter, key)] += 1

    def count_routed(self, category: Category, adapters: Iterable[str], events: int = 1) -> None:
        """``events`` events of ``category`` were stored and routed to ``adapters``."""
        value = category.value  # an enum property: once, not once per adapter
        self.published[value] += events
        for name in adapters:
            self.routed[(value, name)] += events

    def count_delivered(
        self, adapter: str, records: Sequence[EventRecord], send_seconds: float = 0.0
    ) -> None:
        # Counted per category first, in C: this runs for every delivered batch.
        for category, n in Counter(map(_category, records)).items():
            self.delivered[(category.value, adapter)] += n
        for hook in self.delivered_hooks:
            hook(adapter, records, send_seconds)

    def count_published(self, events: int, seconds: float) -> None:
        for hook in self.publish_hooks:
            hook(events, seconds)

    def count_refused(self, adapter: str, reasons: Iterable[str]) -> None:
        """One refused event per item of ``reasons`` (its reason)."""
        for reason, n in Counter(reasons).items():
            self.refused[(adapter, reason)] += n

    def refused_by_reason(self, adapter: str) -> dict[str, int]:
        """``{reason: events}`` refused by ``adapter``'s quotas so far."""
        return {r: n for (a, r), n in sorted(self.refused.items()) if a == adapter}

    def count_failed(self, adapter: str, records: Iterable[EventRecord]) -> None:
        for record in records:
            self.failed[(record.category.value, adapter)] += 1

    def snapshot(self) -> StatsSnapshot:
        """Per category and adapter, as JSON-able data."""
        categories: dict[str, CategoryCounts] = {}
        for cat in Category:
            adapters: dict[str, AdapterCounts] = {}
            names = {a for (c, a) in self.routed if c == cat.value} | {
                a for (c, a) in self.delivered if c == cat.value
            }
            for name in sorted(names):
                routed = self.routed[(cat.value, name)]
                delivered = self.delivered[(cat.value, name)]
                adapters[name] = AdapterCounts(
                    routed=routed, delivered=delivered, failed=self.failed[(cat.value, name)]
                )
            categories[cat.value] = CategoryCounts(
                published=self.published[cat.value], adapters=adapters
            )
        return StatsSnapshot(categories=categories)
