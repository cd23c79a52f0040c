"""``/health`` and ``/metrics``: the admin API's open paths (no token).

The state of the whole flow at a glance: the store, each adapter's
connection and breaker, the probe consumers and the service instances for
``/health``; the Prometheus exporter's text for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, NotRequired, TypedDict

from fastapi import FastAPI
from fastapi.responses import Response

from ..cluster import ClusterStatus, Membership
from ..core import Broadcaster
from ..exceptions import StoreError
from ..metrics import BroadcasterMetrics
from ..probes import ProbeView

__all__ = [
    "AdapterStatus",
    "ClusterView",
    "HealthStatus",
    "HealthView",
    "InstanceBeat",
    "StoreStatus",
    "add_health_routes",
    "health_view",
]

#: ``ok``; ``degraded`` (a breaker not closed, an adapter not connected);
#: ``down`` (the store refuses writes, or every breaker is open); ``stopped``.
HealthStatus = Literal["ok", "degraded", "down", "stopped"]


class StoreStatus(TypedDict):
    """Whether the store accepts writes."""

    up: bool
    #: Why not, in the store's words (None while it is up).
    detail: str | None


class AdapterStatus(TypedDict):
    """One adapter's connection and breaker."""

    connected: bool
    #: ``closed``, ``open``, ``half_open``; None without a running lane (so
    #: are ``share`` and ``pending``).
    breaker: str | None
    #: Percent of live traffic the adapter gets now (the restore ramp).
    share: float | None
    #: Events waiting behind its breaker.
    pending: int | None
    #: The adapter's own word on its state.
    detail: str


class InstanceBeat(TypedDict):
    """A service instance as ``/health`` names it (its URLs are in
    ``GET /instances``, behind a token)."""

    instance_id: str
    heartbeat_at_ms: int
    #: Whether it holds the lease to write to Realtime.
    writes_realtime: bool


class ClusterView(ClusterStatus):
    """This instance's view of the cluster, and the instances alive."""

    #: The instances whose heartbeat is recent.
    instances: NotRequired[list[InstanceBeat]]
    #: Why the instances could not be read (instead of ``instances``).
    instances_error: NotRequired[str]


class HealthView(TypedDict):
    """The ``GET /health`` document."""

    status: HealthStatus
    store: StoreStatus
    #: Adapter name -> its connection and breaker.
    adapters: dict[str, AdapterStatus]
    #: Probe consumers by adapter, when the service runs them. Informational:
    #: a probe that cannot connect does not change ``status``.
    probes: NotRequired[dict[str, ProbeView]]
    #: When the service is one of a cluster's instances.
    cluster: NotRequired[ClusterView]


async def _cluster_health(b: Broadcaster, cluster: Membership) -> ClusterView:
    status = cluster.status()
    view = ClusterView(
        instance_id=status["instance_id"],
        lease_holder=status["lease_holder"],
        holding_lease=status["holding_lease"],
        lease_s=status["lease_s"],
    )
    try:
        rows = await b.store.instances(expire_after_s=cluster.expire_after_s)
    except StoreError as exc:
        view["instances_error"] = str(exc)
        return view
    view["instances"] = [
        InstanceBeat(
            instance_id=i.instance_id,
            heartbeat_at_ms=i.heartbeat_at_ms,
            writes_realtime=i.instance_id == cluster.holder,
        )
        for i in rows
    ]
    return view


def _status(b: Broadcaster, store_up: bool, adapters: Mapping[str, AdapterStatus]) -> HealthStatus:
    states = [a["breaker"] for a in adapters.values()]
    if not b.running:
        return "stopped"
    if not store_up or (states and all(s == "open" for s in states)):
        return "down"
    if any(s != "closed" for s in states) or not all(a["connected"] for a in adapters.values()):
        return "degraded"
    return "ok"


async def health_view(
    b: Broadcaster,
    probes: Callable[[], Mapping[str, ProbeView]] | None = None,
    cluster: Membership | None = None,
) -> HealthView:
    """The ``GET /health`` document of ``b``, with its ``probes`` and
    ``cluster`` when given. A store that does not accept writes makes the
    status ``down``: nothing can be published."""
    store = await b.check_store()
    breakers = b.breaker_states()
    adapters: dict[str, AdapterStatus] = {}
    for name, h in b.health().items():
        breaker = breakers.get(name)
        adapters[name] = AdapterStatus(
            connected=h.connected,
            breaker=breaker["state"] if breaker is not None else None,
            share=breaker["share"] if breaker is not None else None,
            pending=breaker["pending"] if breaker is not None else None,
            detail=h.detail,
        )
    view = HealthView(
        status=_status(b, store.up, adapters),
        store=StoreStatus(up=store.up, detail=store.detail),
        adapters=adapters,
    )
    if probes is not None:
        view["probes"] = dict(probes())
    if cluster is not None:
        view["cluster"] = await _cluster_health(b, cluster)
    return view


def add_health_routes(
    app: FastAPI,
    b: Broadcaster,
    exporter: BroadcasterMetrics,
    probes: Callable[[], Mapping[str, ProbeView]] | None,
    cluster: Membership | None,
) -> None:
    """Add ``GET /health`` and ``GET /metrics`` to ``app`` (see
    :func:`~broadcaster.admin.create_app` for ``probes`` and ``cluster``)."""

    @app.get("/health", tags=["open"])
    async def health() -> dict[str, Any]:
        """Status, the store's and each adapter's connection and breaker state
        (no token). A store that does not accept writes makes the status
        ``down``: nothing can be published."""
        # Plain: a HealthView annotation would add its schema to the OpenAPI document.
        return dict(await health_view(b, probes, cluster))

    @app.get("/metrics", tags=["open"], response_class=Response)
    async def metrics_text() -> Response:
        """Prometheus text format (no token)."""
        await exporter.refresh()
        body, content_type = exporter.render()
        return Response(body, media_type=content_type)
