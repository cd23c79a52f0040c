"""``/instances`` and ``/stats``: the service instances, and the counts of the
whole flow.

``GET /stats`` follows events from the producer to the reconciler: per
category and adapter what was published, routed, delivered, failed and
parked behind a breaker; the store's counts; and how far reconciliation
has matched receipts. The dashboard shows the same document.
"""

from __future__ import annotations

import time
from typing import Any, TypedDict

from fastapi import FastAPI

from ..cluster import Membership
from ..core import Broadcaster
from ..stats import AdapterCounts
from .common import Actor

__all__ = [
    "AdapterFlow",
    "AdapterStats",
    "CategoryStats",
    "ReconciliationStats",
    "StatsView",
    "StoreCounts",
    "add_stats_routes",
    "collect_stats",
]


class AdapterStats(AdapterCounts):
    """One category's events on one adapter: the delivery counts, and what
    reconciliation found."""

    #: Events the last reconciliation judged a mismatch (0 before the first).
    mismatches: int


class CategoryStats(TypedDict):
    """One category's events, from the producer to the reconciler."""

    #: Events stored and routed.
    published: int
    #: Adapter name -> its counts, for each adapter the category reached.
    adapters: dict[str, AdapterStats]
    #: Delivered ÷ routed summed over its adapters; 1.0 when nothing was routed.
    dual_write_success_rate: float


class AdapterFlow(TypedDict):
    """One adapter's breaker and what waits behind it or was refused."""

    #: ``closed``, ``open`` or ``half_open``.
    breaker: str
    #: Percent of live traffic the adapter gets now (the restore ramp).
    share: float
    #: Events waiting behind its breaker.
    pending: int
    #: Failures (slow calls included) in the breaker's window, 0 to 1.
    failure_rate: float
    #: Pending events delivered later, by backfill or half-open probes.
    backfilled: int
    #: Reason -> events a quota of the adapter refused.
    refused: dict[str, int]
    #: ``"closed->open"`` ... -> how often that breaker transition happened.
    transitions: dict[str, int]


class StoreCounts(TypedDict):
    """What the store holds."""

    last_sequence_id: int
    events: int
    receipts: int
    #: Adapter -> delivery state -> events in that state.
    states: dict[str, dict[str, int]]


class ReconciliationStats(TypedDict):
    """How far reconciliation has matched receipts."""

    #: Every event up to this sequence id is reconciled.
    reconciled_through: int
    #: Age in seconds of the oldest event not yet reconciled (0: none).
    lag_s: float
    #: The last report's pairs per outcome (None: no report yet; so for
    #: the fields below).
    last: dict[str, int] | None
    #: Events the last report found missing on some path.
    unrepaired_loss: int | None
    #: Who reported receipts, per adapter, and how far.
    consumers: list[dict[str, object]] | None


class StatsView(TypedDict):
    """The ``GET /stats`` document (:func:`collect_stats`)."""

    #: Category name -> its counts, every category.
    categories: dict[str, CategoryStats]
    #: Adapter name -> its breaker, for each adapter with a running lane.
    adapters: dict[str, AdapterFlow]
    store: StoreCounts
    reconciliation: ReconciliationStats


def add_stats_routes(app: FastAPI, b: Broadcaster, cluster: Membership | None) -> None:
    """Add ``GET /instances`` (``cluster``: this instance's membership) and
    ``GET /stats`` to ``app``."""

    @app.get("/instances")
    async def instances(actor: Actor) -> dict[str, Any]:
        """The service instances whose heartbeat is recent (each with what it
        says of itself), and the one that writes to Realtime."""
        expire = cluster.expire_after_s if cluster is not None else 2 * b.settings.instance_lease_s
        holder = cluster.holder if cluster is not None else None
        rows = await b.store.instances(expire_after_s=expire)
        return {
            "instances": [
                {
                    "instance_id": i.instance_id,
                    "started_at_ms": i.started_at_ms,
                    "heartbeat_at_ms": i.heartbeat_at_ms,
                    "writes_realtime": i.instance_id == holder,
                    **i.info,
                }
                for i in rows
            ],
            "lease_holder": holder,
            "this_instance": cluster.instance_id if cluster is not None else None,
        }

    @app.get("/stats")
    async def stats(actor: Actor) -> dict[str, Any]:
        """Per category and adapter: published, routed, delivered, failed,
        pending, checksum mismatches, dual-write success rate; breakers;
        quota refusals by reason; store counts; reconciliation lag."""
        # Plain: a StatsView annotation would add its schema to the OpenAPI document.
        return dict(await collect_stats(b))


async def collect_stats(b: Broadcaster) -> StatsView:
    """The ``GET /stats`` document (also used by the dashboard).

    ``dual_write_success_rate`` of a category is delivered ÷ routed summed
    over its adapters (1.0 when nothing was routed); ``pending`` per adapter
    is what waits behind its breaker; ``refused`` counts, by reason, events
    a quota of the adapter refused (docs/configuration.md); ``mismatches``
    come from the last reconciliation; ``reconciliation.lag_s`` is the age
    of the oldest event not yet reconciled."""
    snapshot = b.stats.snapshot()["categories"]
    report = b.reconciler.last_report
    breakers = b.breaker_states()
    categories: dict[str, CategoryStats] = {}
    for cat, entry in snapshot.items():
        adapters: dict[str, AdapterStats] = {}
        routed_sum = delivered_sum = 0
        for name, counts in entry["adapters"].items():
            mismatches = report.counts[(cat, name, "mismatch")] if report is not None else 0
            adapters[name] = AdapterStats(
                routed=counts["routed"],
                delivered=counts["delivered"],
                failed=counts["failed"],
                mismatches=mismatches,
            )
            routed_sum += counts["routed"]
            delivered_sum += min(counts["delivered"], counts["routed"])
        categories[cat] = CategoryStats(
            published=entry["published"],
            adapters=adapters,
            dual_write_success_rate=round(delivered_sum / routed_sum, 6) if routed_sum else 1.0,
        )
    store = await b.store.stats()
    through, unreconciled_ms = await b.reconciler.progress()
    lag_s = 0.0 if unreconciled_ms is None else max(0.0, time.time() - unreconciled_ms / 1000)
    return StatsView(
        categories=categories,
        adapters={
            name: AdapterFlow(
                breaker=state["state"],
                share=state["share"],
                pending=state["pending"],
                failure_rate=state["failure_rate"],
                backfilled=b.stats.backfilled[name],
                refused=b.stats.refused_by_reason(name),
                transitions=state["transitions"],
            )
            for name, state in breakers.items()
        },
        store=StoreCounts(
            last_sequence_id=store.last_sequence_id,
            events=store.events,
            receipts=store.receipts,
            states=store.states,
        ),
        reconciliation=ReconciliationStats(
            reconciled_through=through,
            lag_s=round(lag_s, 3),
            last=report.totals() if report is not None else None,
            unrepaired_loss=report.unrepaired_loss if report is not None else None,
            consumers=report.consumers if report is not None else None,
        ),
    )
