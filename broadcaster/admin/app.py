"""The admin REST API (docs/rest-api.md) as a FastAPI application over one running
:class:`~broadcaster.core.Broadcaster`.

Every path but ``/health``, ``/metrics`` and the dashboard shell needs
``Authorization: Bearer <token>`` with a scope that allows it (docs/security.md): 401
without a valid token, 403 when the scope does not allow the request. The
:class:`~broadcaster.admin.guard.AccessGuard` decides that before the body is
read, and caps the body's size. The audit names the token's name. Bad bodies
give 422 naming the field, unknown categories 404, a store that cannot take
a change 503 — and in each case nothing changed.

Over ~500 lines: the routes that share the application's state and error
handling; the bigger ones (receipts, catch-up, the guard) live in modules
of their own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Annotated, Any, Final

import orjson
import structlog
from fastapi import Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from ..cluster import Membership
from ..core import Broadcaster
from ..events import Category, format_timestamp
from ..exceptions import (
    BroadcasterClosed,
    ConfigError,
    InvalidEvent,
    RolloutConflict,
    StoreError,
    StoreUnavailable,
)
from ..flags import CategoryPatch, OverrideChange
from ..metrics import BroadcasterMetrics
from ..rollout.manager import Rollouts
from ..security import TokenSet
from ..store.base import AuditEntry, StoredEvent
from . import receipts
from .catchup import add_catchup_route
from .guard import AccessGuard, token_of
from .rollouts import add_rollout_routes, conflict

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BATCH",
    "EventIn",
    "collect_stats",
    "create_app",
    "generate_token",
]

log = structlog.get_logger("broadcaster.admin")

#: Most events one ``POST /events`` may carry.
MAX_BATCH = 1000

#: ``ADMIN_MAX_BODY_BYTES``' default.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 1024 * 1024

#: The largest id a store can hold (a signed 64-bit integer): bigger ones in
#: a path or query are 422, not an overflow deeper down.
_MAX_ID: Final = 2**63 - 1


def generate_token() -> str:
    """A fresh random admin token (for when ``BROADCASTER_ADMIN_TOKEN`` is unset)."""
    return secrets.token_urlsafe(24)


class EventIn(BaseModel):
    """One event for ``POST /events``."""

    model_config = ConfigDict(extra="forbid")

    category: Category
    event_type: str = Field(min_length=1, max_length=200)
    payload: dict[str, JsonValue]
    key: str | None = Field(default=None, max_length=500)
    source: str = Field(default="default", min_length=1, max_length=200)


# Declared for the OpenAPI document only: AccessGuard checks the token.
_bearer = HTTPBearer(auto_error=False, description="a token of BROADCASTER_ADMIN_TOKEN / _TOKENS")


def _actor(request: Request, _: Annotated[object, Depends(_bearer)]) -> str:
    """The name of the token AccessGuard authenticated (the audit's actor)."""
    return token_of(request.scope).name


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


#: The authenticated token's name, for handlers that need a token.
Actor = Annotated[str, Depends(_actor)]


def _category(name: str) -> Category:
    try:
        return Category(name.upper())
    except ValueError:
        raise HTTPException(
            404, f"unknown category {name!r}; known: {', '.join(c.value for c in Category)}"
        ) from None


def _audit_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": format_timestamp(entry.at_ms),
        "at_ms": entry.at_ms,
        "actor": entry.actor,
        "path": entry.path,
        "before": entry.before,
        "after": entry.after,
    }


def _trace(stored: StoredEvent) -> dict[str, Any]:
    return {
        "event": stored.record.to_dict(),
        "routed_to": list(stored.routed_to),
        "stored_at": format_timestamp(stored.created_at_ms),
        "adapters": {
            name: {"state": state.value, "error": stored.errors.get(name)}
            for name, state in stored.states.items()
        },
        "receipts": [
            {
                "adapter": r.adapter,
                "consumer": r.consumer,
                "received_at": format_timestamp(r.received_at_ms),
                "checksum": r.checksum,
                "checksum_ok": r.checksum_ok,
            }
            for r in stored.receipts
        ],
    }


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


def create_app(
    broadcaster: Broadcaster,
    tokens: TokenSet,
    *,
    metrics: BroadcasterMetrics | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    probes: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None,
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

    # -- open paths ----------------------------------------------------------

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

    # -- configuration -------------------------------------------------------

    @app.get("/config")
    async def get_config(actor: Actor) -> dict[str, Any]:
        """The effective configuration: settings (secrets masked) with the
        runtime flags in force."""
        flags = b.flags.snapshot()
        data = b.settings.effective()
        data["dual_write_global_override"] = flags["override"]
        for cat, values in flags["categories"].items():
            data["categories"][cat].update(values)
        return {"settings": data, "flags": flags}

    @app.patch("/config/categories/{category}")
    async def patch_category(
        actor: Actor,
        category: Annotated[str, Path(description="CRITICAL, PERFORMANCE, …")],
        patch: Annotated[CategoryPatch, Body()],
    ) -> Any:
        """Change a category's ``enabled``, ``percentage``, ``adapters`` and/or
        ``cutover`` (its adapters other than the primary only: needs it
        enabled at 100). Takes effect for the next published event; audited.
        409 while a rollout of the category is running or paused: it owns
        the category's flags until it ends."""
        cat = _category(category)
        active = await rollouts.active_for(cat)
        if active is not None:
            return conflict(
                RolloutConflict(
                    f"{cat.value} is under rollout {active.id} ({active.state}): abort it, or let"
                    " it end, before changing its flags by hand",
                    rollout_id=active.id,
                )
            )
        try:
            entry = await b.flags.patch_category(
                cat, patch, actor=actor, path=f"PATCH /config/categories/{cat.value}"
            )
        except ValidationError as exc:
            errors = exc.errors()
            # A check of the category as a whole is the cutover's.
            field = ".".join(str(p) for p in errors[0]["loc"]) or "cutover"
            return _unprocessable(field, errors[0]["msg"])
        except ValueError as exc:
            return _unprocessable("cutover", str(exc))
        return {"category": cat.value, "flags": b.flags.category(cat), "audit": _audit_dict(entry)}

    @app.put("/config/override")
    async def put_override(
        actor: Actor, change: Annotated[OverrideChange, Body()]
    ) -> dict[str, Any]:
        """Set the global override: one adapter, ``"all"``, or null to clear."""
        entry = await b.flags.set_override(change, actor=actor, path="PUT /config/override")
        return {"override": change.override, "audit": _audit_dict(entry)}

    @app.get("/audit")
    async def audit(
        actor: Actor,
        after: Annotated[
            int, Query(ge=0, le=_MAX_ID, description="return entries with id > after")
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Configuration changes, oldest first; page with ``after=<next>``."""
        entries = await b.store.audit_log(after=after, limit=limit)
        return {
            "entries": [_audit_dict(e) for e in entries],
            "next": entries[-1].id if len(entries) == limit else None,
        }

    # -- stats ---------------------------------------------------------------

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

    # -- events --------------------------------------------------------------

    @app.post("/events", status_code=201, openapi_extra=_EVENTS_BODY)
    async def post_events(actor: Actor, request: Request) -> Any:
        """Publish one event (returns its receipt) or a list of at most
        ``MAX_BATCH`` (returns a list of receipts, in order). A list is
        all-or-nothing: one invalid event and none is stored. Returns once
        the events are durably stored."""
        parsed = _parse_events(await request.body())
        if isinstance(parsed, JSONResponse):
            return parsed
        events, single = parsed
        try:
            receipts = await b.publish_many(events)
        except InvalidEvent as exc:
            where = f"{exc.index}." if exc.index is not None and not single else ""
            return _unprocessable(f"{where}{exc.field}", exc.reason)
        except StoreUnavailable as exc:
            return JSONResponse({"detail": f"not accepted, retry: {exc}"}, status_code=503)
        out = [r.as_dict() for r in receipts]
        return out[0] if single else out

    add_catchup_route(app)  # GET /events?after=N (catch-up)

    @app.get("/events/{sequence_id}")
    async def get_event(
        actor: Actor, sequence_id: Annotated[int, Path(ge=1, le=_MAX_ID)]
    ) -> dict[str, Any]:
        """The event and its trace: routed, per-adapter state, receipts, checksums."""
        stored = await b.store.get(sequence_id)
        if stored is None:
            last = await b.store.last_sequence_id()
            why = "pruned after reconciliation" if sequence_id <= last else "not published yet"
            raise HTTPException(404, f"no event {sequence_id}: {why}")
        return _trace(stored)

    # -- reconciliation ------------------------------------------------------

    @app.get("/reconciliation")
    async def get_reconciliation(actor: Actor) -> dict[str, Any]:
        """The last reconciliation report (null before the first run)."""
        report = b.reconciler.last_report
        return {
            "report": report.as_dict() if report is not None else None,
            "unrepaired_loss": report.unrepaired_loss if report is not None else None,
        }

    @app.post("/reconciliation/run")
    async def run_reconciliation(
        actor: Actor, repair: Annotated[bool, Query()] = False
    ) -> dict[str, Any]:
        """Reconcile now; with ``repair=true`` also re-send what is missing."""
        report = await b.reconcile()
        queued = await b.repair(report) if repair else {}
        if repair:
            log.info("repair requested", actor=actor, queued=queued)
        return {
            "report": report.as_dict(),
            "unrepaired_loss": report.unrepaired_loss,
            "repair": queued,
        }

    # -- dashboard -----------------------------------------------------------

    page = resources.files("broadcaster.admin").joinpath("dashboard.html").read_text()
    page_headers = {
        "Content-Security-Policy": _dashboard_csp(page),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        """The live page; it asks for the token and keeps it in the browser."""
        return HTMLResponse(page, headers=page_headers)

    return app


_EVENTS = TypeAdapter(list[EventIn])


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references inlined (the OpenAPI document
    has no place for a request body's own definitions)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


#: POST /events's body, described for the OpenAPI document; the handler
#: parses it itself so that it can count a list before validating it.
_EVENTS_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _inline_refs(
                    TypeAdapter(EventIn | list[EventIn]).json_schema(mode="validation")
                )
            }
        },
    }
}


def _unprocessable(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=422)


def _loads(body: bytes) -> Any:
    """The JSON of a body. orjson refuses lone surrogates outright; those
    bodies are read again by the standard parser, which keeps them, so that
    the event's own checks can name the field that holds one."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "surrogate" not in str(exc):
            raise

        def no_constants(name: str) -> Any:
            raise ValueError(f"{name} is not valid JSON")

        return json.loads(body, parse_constant=no_constants)


def _parse_events(body: bytes) -> tuple[list[dict[str, Any]], bool] | JSONResponse:
    """POST /events's body as plain event dicts and whether it was a single
    event; a 422 response naming the field otherwise. A list is counted
    before any event in it is validated."""
    try:
        data = _loads(body)
    except ValueError as exc:
        return _unprocessable("body", f"invalid JSON: {exc}")
    if isinstance(data, dict):
        try:
            event = EventIn.model_validate(data)
        except ValidationError as exc:
            return _first_error(exc, prefix="")
        return [_event_fields(event)], True
    if not isinstance(data, list):
        return _unprocessable("body", "expected an event (an object) or a list")
    if len(data) > MAX_BATCH:
        return _unprocessable("body", f"at most {MAX_BATCH} events per request, got {len(data)}")
    try:
        events = _EVENTS.validate_python(data)
    except ValidationError as exc:
        return _first_error(exc, prefix="")
    return [_event_fields(e) for e in events], False


def _event_fields(event: EventIn) -> dict[str, Any]:
    """``publish()``'s keyword arguments. Not a JSON-mode dump: that would
    replace lone surrogates in the payload instead of letting the event's own
    checks refuse them (three such keys would merge into one)."""
    fields = event.model_dump(exclude_none=True)
    fields["category"] = event.category.value
    return fields


def _first_error(exc: ValidationError, *, prefix: str) -> JSONResponse:
    errors = [
        {"field": prefix + ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
        for err in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)


_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


def _dashboard_csp(page: str) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script
    and style (by hash) and calls back to this origin, nothing else."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, text in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    scripts = " ".join(hashes["script"]) or "'none'"
    styles = " ".join(hashes["style"]) or "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {scripts}",
            f"style-src {styles}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


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
