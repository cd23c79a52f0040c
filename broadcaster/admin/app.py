"""The admin REST API (docs/rest-api.md) as a FastAPI application over one running
:class:`~broadcaster.core.Broadcaster`.

Every path but ``/health``, ``/metrics`` and the dashboard shell needs
``Authorization: Bearer <token>`` with a scope that allows it (docs/security.md): 401
without a valid token, 403 when the scope does not allow the request. The
:class:`~broadcaster.admin.guard.AccessGuard` decides that before the body is
read, and caps the body's size. The audit names the token's name. Bad bodies
give 422 naming the field, unknown categories 404, a store that cannot take
a change 503 — and in each case nothing changed.

:func:`create_app` assembles the application: the guard, the error
handling every route shares, and the routes, one module per resource
(health, config, stats, events, reconciliation, receipts, rollouts,
dashboard).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..cluster import Membership
from ..core import Broadcaster
from ..exceptions import BroadcasterClosed, ConfigError, StoreError
from ..metrics import BroadcasterMetrics
from ..probes import ProbeView
from ..rollout.manager import Rollouts
from ..security import TokenSet
from . import receipts
from .config import add_config_routes
from .dashboard import add_dashboard_route
from .events import MAX_BATCH, EventIn, add_event_routes
from .guard import AccessGuard
from .health import add_health_routes
from .reconciliation import add_reconciliation_routes
from .rollouts import add_rollout_routes
from .stats import add_stats_routes, collect_stats

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BATCH",
    "EventIn",
    "collect_stats",
    "create_app",
    "generate_token",
]

log = structlog.get_logger("broadcaster.admin")

#: ``ADMIN_MAX_BODY_BYTES``' default.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024


def generate_token() -> str:
    """A fresh random admin token (for when ``BROADCASTER_ADMIN_TOKEN`` is unset)."""
    return secrets.token_urlsafe(24)


#: Tags pydantic puts in an error's location for each alternative of a union
#: body (POST /events: one event or a list), and the body shape each is for.
_UNION_TAGS: dict[str, type] = {"EventIn": dict, "list[EventIn]": list}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """A request's validation errors as ``{"field", "message"}``: a union
    body's errors only for the alternative the body's shape chose, without
    the tags; a body that is not JSON as one error on ``body``."""
    errors: list[dict[str, str]] = []
    body = exc.body
    for err in exc.errors():
        loc = [p for p in err["loc"] if p != "body"]
        if err["type"] == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            errors.append({"field": "body", "message": f"invalid JSON: {reason}".rstrip(": ")})
            continue
        if loc and isinstance(loc[0], str) and loc[0] in _UNION_TAGS:
            if not isinstance(body, _UNION_TAGS[loc[0]]):
                continue
            loc = loc[1:]
        errors.append({"field": ".".join(str(p) for p in loc) or "body", "message": err["msg"]})
    if not errors:  # a union body of neither shape
        errors.append({"field": "body", "message": "expected an event (an object) or a list"})
    return errors


def create_app(
    broadcaster: Broadcaster,
    tokens: TokenSet,
    *,
    metrics: BroadcasterMetrics | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    probes: Callable[[], Mapping[str, ProbeView]] | None = None,
    cluster: Membership | None = None,
    rollouts: Rollouts | None = None,
) -> FastAPI:
    """The admin application for a started ``broadcaster``, accepting
    ``tokens`` (at least one; see :meth:`Settings.api_tokens`) and request
    bodies of at most ``max_body_bytes``. ``probes``, when given, returns
    the probe consumers' state per adapter (``/health`` shows it);
    ``cluster``, the service instance's membership (``/health`` and
    ``/instances`` show the instances and the Realtime writer);
    ``rollouts``, the service's rollouts (the ones its controller drives;
    by default, the broadcaster's store's, driven by nobody here)."""
    if not len(tokens):
        raise ConfigError("BROADCASTER_ADMIN_TOKEN", "", "at least one token is required")
    b = broadcaster
    exporter = metrics if metrics is not None else BroadcasterMetrics(b)
    app = FastAPI(
        title="broadcaster admin API",
        version="1",
        description="Runtime flags, stats, event trace, reconciliation, receipts and audit.",
    )
    app.state.broadcaster = b
    app.state.metrics = exporter
    app.add_middleware(AccessGuard, router=app.router, tokens=tokens, max_body_bytes=max_body_bytes)

    app.add_api_route(
        "/receipts", receipts.post_receipts, methods=["POST"], openapi_extra=receipts.OPENAPI
    )
    rollouts = rollouts if rollouts is not None else Rollouts(b)
    add_rollout_routes(app, rollouts)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_down(request: Request, exc: StoreError) -> JSONResponse:
        log.error("admin request failed: store", path=request.url.path, error=str(exc))
        return JSONResponse({"detail": f"store unavailable: {exc}"}, status_code=503)

    @app.exception_handler(BroadcasterClosed)
    async def _closed(request: Request, exc: BroadcasterClosed) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    # In this order: it is the order of the OpenAPI document's paths.
    add_health_routes(app, b, exporter, probes, cluster)
    add_config_routes(app, b, rollouts)
    add_stats_routes(app, b, cluster)
    add_event_routes(app, b)
    add_reconciliation_routes(app, b)
    add_dashboard_route(app)
    return app
