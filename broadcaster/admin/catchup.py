"""``GET /events?after=N``: stored events after a sequence id, in order — the
catch-up read for consumers (docs/rest-api.md).

What ``ws://…/events?since=N`` replays over the WebSocket path, over HTTP:
for consumers whose path has no history (Realtime broadcasts cannot be
replayed), and for scripts. Each event is the object the WebSocket path
sends (the stored wire bytes, signature included), so a consumer verifies it
the same way. Page with ``after=<next>``; ``more`` says whether the page was
full (ask again at once) or the store has nothing beyond it yet (poll later).

Scope: ``consumer`` tokens (the read is theirs), and as a GET, ``read``,
``operator`` and ``admin`` (see :data:`~broadcaster.admin.guard.ALSO_PERMITTED`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer

from ..adapters.websocket import parse_categories

if TYPE_CHECKING:
    from ..core import Broadcaster

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "add_catchup_route", "read_events"]

#: Events per page unless ``limit`` says otherwise.
DEFAULT_LIMIT: Final = 1000
#: The most events one page may hold.
MAX_LIMIT: Final = 10_000

# The largest id a store can hold (a signed 64-bit integer): a bigger one is
# 422, not an overflow deeper down.
_MAX_ID: Final = 2**63 - 1

# Declared for the OpenAPI document only: AccessGuard checks the token.
_bearer = HTTPBearer(auto_error=False, description="a token of BROADCASTER_ADMIN_TOKEN / _TOKENS")

_PAGE_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "events": {"type": "array", "items": {"type": "object"}},
        "next": {"type": "integer", "description": "the after of the next page"},
        "more": {"type": "boolean", "description": "the page was full: more may follow now"},
    },
}


def _unprocessable(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=422)


def add_catchup_route(app: FastAPI) -> None:
    """Add ``GET /events`` (route name ``read_events``) to ``app``, whose
    ``state.broadcaster`` is the running broadcaster. A route of the app's
    own router, not an included router: the access guard and the security
    tests find routes by name on that router."""
    app.add_api_route(
        "/events",
        read_events,
        methods=["GET"],
        name="read_events",
        response_class=Response,
        responses={200: {"content": {"application/json": {"schema": _PAGE_SCHEMA}}}},
    )


async def read_events(
    request: Request,
    _: Annotated[object, Depends(_bearer)],
    after: Annotated[
        int, Query(ge=0, le=_MAX_ID, description="events with sequence id > after")
    ] = 0,
    categories: Annotated[
        list[str] | None, Query(description="comma list, e.g. CRITICAL,SYSTEM (default: all)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    adapter: Annotated[
        str | None,
        Query(max_length=100, description="only events routed to this adapter, e.g. realtime"),
    ] = None,
) -> Response:
    """Stored events after sequence id ``after``, in order, at most ``limit``
    (default 1000, at most 10000): only ``categories`` when given, only those
    routed to ``adapter`` when given. ``{"events": [...], "next": <after of
    the next page>, "more": <the page was full>}``."""
    b: Broadcaster = request.app.state.broadcaster
    wanted = None
    if categories is not None:
        try:
            wanted = parse_categories(",".join(categories))
        except ValueError as exc:
            return _unprocessable("query.categories", str(exc))
    if adapter is not None and adapter not in b.adapters:
        known = ", ".join(b.adapters) or "none"
        return _unprocessable("query.adapter", f"unknown adapter {adapter!r}; configured: {known}")
    records = await b.store.read_events(
        after=after, limit=limit, categories=wanted, adapter=adapter
    )
    cursor = records[-1].sequence_id if records else after
    # The stored wire bytes are already the JSON of each event: joined, not
    # decoded and encoded again.
    body = b"".join(
        (
            b'{"events":[',
            b",".join(record.wire for record in records),
            b'],"next":',
            str(cursor).encode(),
            b',"more":',
            orjson.dumps(len(records) == limit),
            b"}",
        )
    )
    return Response(body, media_type="application/json")
