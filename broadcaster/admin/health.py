"""``/health`` and ``/metrics``: the admin API's open paths (no token).

The state of the whole flow at a glance: the store, each adapter's
connection and breaker, the probe consumers and the service instances for
``/health``; the Prometheus exporter's text for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from ..cluster import Membership
from ..core import Broadcaster
from ..exceptions import StoreError
from ..metrics import BroadcasterMetrics

__all__ = ["add_health_routes"]


async def _cluster_health(b: Broadcaster, cluster: Membership) -> dict[str, Any]:
    """``/health``'s view of the instances: names and heartbeats only (it
    answers without a token; their URLs are in ``GET /instances``)."""
    view: dict[str, Any] = dict(cluster.status())
    try:
        rows = await b.store.instances(expire_after_s=cluster.expire_after_s)
    except StoreError as exc:
        view["instances_error"] = str(exc)
        return view
    view["instances"] = [
        {
            "instance_id": i.instance_id,
            "heartbeat_at_ms": i.heartbeat_at_ms,
            "writes_realtime": i.instance_id == cluster.holder,
        }
        for i in rows
    ]
    return view


def add_health_routes(
    app: FastAPI,
    b: Broadcaster,
    exporter: BroadcasterMetrics,
    probes: Callable[[], Mapping[str, Mapping[str, Any]]] | None,
    cluster: Membership | None,
) -> None:
    """Add ``GET /health`` and ``GET /metrics`` to ``app`` (see
    :func:`~broadcaster.admin.create_app` for ``probes`` and ``cluster``)."""

    @app.get("/health", tags=["open"])
    async def health() -> dict[str, Any]:
        """Status, the store's and each adapter's connection and breaker state
        (no token). A store that does not accept writes makes the status
        ``down``: nothing can be published."""
        store = await b.check_store()
        breakers = b.breaker_states()
        adapters = {}
        for name, h in b.health().items():
            breaker = breakers.get(name)
            adapters[name] = {
                "connected": h.connected,
                "breaker": breaker["state"] if breaker is not None else None,
                "share": breaker["share"] if breaker is not None else None,
                "pending": breaker["pending"] if breaker is not None else None,
                "detail": h.detail,
            }
        states = [a["breaker"] for a in adapters.values()]
        if not b.running:
            status = "stopped"
        elif not store.up or (states and all(s == "open" for s in states)):
            status = "down"
        elif any(s != "closed" for s in states) or not all(
            a["connected"] for a in adapters.values()
        ):
            status = "degraded"
        else:
            status = "ok"
        body: dict[str, Any] = {
            "status": status,
            "store": {"up": store.up, "detail": store.detail},
            "adapters": adapters,
        }
        if probes is not None:
            # Informational: a probe that cannot connect does not change the
            # status, which says whether events can be published and delivered.
            body["probes"] = probes()
        if cluster is not None:
            body["cluster"] = await _cluster_health(b, cluster)
        return body

    @app.get("/metrics", tags=["open"], response_class=Response)
    async def metrics_text() -> Response:
        """Prometheus text format (no token)."""
        await exporter.refresh()
        body, content_type = exporter.render()
        return Response(body, media_type=content_type)
