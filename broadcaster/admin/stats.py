"""``/instances`` and ``/stats``: the service instances, and the counts of the
whole flow.

``GET /stats`` follows events from the producer to the reconciler: per
category and adapter what was published, routed, delivered, failed and
parked behind a breaker; the store's counts; and how far reconciliation
has matched receipts. The dashboard shows the same document.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI

from ..cluster import Membership
from ..core import Broadcaster
from .common import Actor

__all__ = ["add_stats_routes", "collect_stats"]


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
        return await collect_stats(b)


async def collect_stats(b: Broadcaster) -> dict[str, Any]:
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
    categories: dict[str, Any] = {}
    for cat, entry in snapshot.items():
        adapters: dict[str, Any] = {}
        routed_sum = delivered_sum = 0
        for name, counts in entry["adapters"].items():
            mismatches = report.counts[(cat, name, "mismatch")] if report is not None else 0
            adapters[name] = {**counts, "mismatches": mismatches}
            routed_sum += counts["routed"]
            delivered_sum += min(counts["delivered"], counts["routed"])
        categories[cat] = {
            "published": entry["published"],
            "adapters": adapters,
            "dual_write_success_rate": round(delivered_sum / routed_sum, 6) if routed_sum else 1.0,
        }
    store = await b.store.stats()
    through, unreconciled_ms = await b.reconciler.progress()
    lag_s = 0.0 if unreconciled_ms is None else max(0.0, time.time() - unreconciled_ms / 1000)
    return {
        "categories": categories,
        "adapters": {
            name: {
                "breaker": state["state"],
                "share": state["share"],
                "pending": state["pending"],
                "failure_rate": state["failure_rate"],
                "backfilled": b.stats.backfilled[name],
                "refused": b.stats.refused_by_reason(name),
                "transitions": state["transitions"],
            }
            for name, state in breakers.items()
        },
        "store": {
            "last_sequence_id": store.last_sequence_id,
            "events": store.events,
            "receipts": store.receipts,
            "states": store.states,
        },
        "reconciliation": {
            "reconciled_through": through,
            "lag_s": round(lag_s, 3),
            "last": report.as_dict()["totals"] if report is not None else None,
            "unrepaired_loss": report.unrepaired_loss if report is not None else None,
            "consumers": report.consumers if report is not None else None,
        },
    }
