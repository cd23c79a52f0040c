"""``/events``: publishing over HTTP, and reading what the store holds.

``POST /events`` is a producer's way in from another process: the events
are validated, routed and durably stored before the answer (their receipts),
then delivered like any other. ``GET /events?after=N`` is the consumers'
catch-up read (:mod:`~broadcaster.admin.catchup`); ``GET /events/{id}``
traces one event through the flow: its routing, each adapter's delivery
state and the consumers' receipts.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

import orjson
from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from ..core import Broadcaster
from ..events import Category, format_timestamp
from ..exceptions import InvalidEvent, StoreUnavailable
from ..store.base import StoredEvent
from .catchup import add_catchup_route
from .common import MAX_ID, Actor, unprocessable

__all__ = ["MAX_BATCH", "EventIn", "add_event_routes"]

#: Most events one ``POST /events`` may carry.
MAX_BATCH = 1000


class EventIn(BaseModel):
    """One event for ``POST /events``."""

    model_config = ConfigDict(extra="forbid")

    category: Category
    event_type: str = Field(min_length=1, max_length=200)
    payload: dict[str, JsonValue]
    key: str | None = Field(default=None, max_length=500)
    source: str = Field(default="default", min_length=1, max_length=200)


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


def add_event_routes(app: FastAPI, b: Broadcaster) -> None:
    """Add ``POST /events``, ``GET /events`` (catch-up) and
    ``GET /events/{sequence_id}`` to ``app``."""

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
            return unprocessable(f"{where}{exc.field}", exc.reason)
        except StoreUnavailable as exc:
            return JSONResponse({"detail": f"not accepted, retry: {exc}"}, status_code=503)
        out = [r.as_dict() for r in receipts]
        return out[0] if single else out

    add_catchup_route(app)  # GET /events?after=N (catch-up)

    @app.get("/events/{sequence_id}")
    async def get_event(
        actor: Actor, sequence_id: Annotated[int, Path(ge=1, le=MAX_ID)]
    ) -> dict[str, Any]:
        """The event and its trace: routed, per-adapter state, receipts, checksums."""
        stored = await b.store.get(sequence_id)
        if stored is None:
            last = await b.store.last_sequence_id()
            why = "pruned after reconciliation" if sequence_id <= last else "not published yet"
            raise HTTPException(404, f"no event {sequence_id}: {why}")
        return _trace(stored)


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
        return unprocessable("body", f"invalid JSON: {exc}")
    if isinstance(data, dict):
        try:
            event = EventIn.model_validate(data)
        except ValidationError as exc:
            return _first_error(exc, prefix="")
        return [_event_fields(event)], True
    if not isinstance(data, list):
        return unprocessable("body", "expected an event (an object) or a list")
    if len(data) > MAX_BATCH:
        return unprocessable("body", f"at most {MAX_BATCH} events per request, got {len(data)}")
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
