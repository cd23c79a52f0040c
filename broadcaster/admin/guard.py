"""The admin API's gate: who may call what, and how much they may send.

An ASGI middleware in front of every route. For each request it finds the
route, and unless the route is open it authenticates the bearer token and
checks the route's :class:`~broadcaster.security.Permission` against the
token's scope — all before one byte of the body is read, so an anonymous
caller cannot make the service parse a large body (docs/security.md). A body larger
than the cap gets 413: at once when ``Content-Length`` says so, otherwise as
soon as the bytes read pass it, without reading further. Every response gets
``X-Content-Type-Options: nosniff``.

Each route's decision lives in :data:`ROUTE_ACCESS`, keyed by the route's
name. A route without one needs the ``operate`` permission, the safer
mistake; the test suite walks the router and requires a decision for every
route, so none should be without. A route that more than one permission may
call lists the others in :data:`ALSO_PERMITTED`; :func:`permits` says
whether a scope may call a route.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any, Final

import orjson
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..security import GRANTS, ApiToken, Permission, TokenSet
from ..security import Scope as SecurityScope

__all__ = [
    "ALSO_PERMITTED",
    "OPEN",
    "ROUTE_ACCESS",
    "AccessGuard",
    "BodyTooLarge",
    "permits",
    "required",
    "token_of",
]


class _Open(Enum):
    OPEN = "open"


#: A route anyone may call, without a token.
OPEN: Final = _Open.OPEN

#: Every route of the admin API and what calling it needs. FastAPI's own
#: documentation routes are here too: the schema describes every path, so it
#: is for token holders only.
ROUTE_ACCESS: Final[Mapping[str, Permission | _Open]] = {
    "health": OPEN,
    "metrics_text": OPEN,
    # The dashboard page is a shell holding no data: it asks for a token and
    # every figure it shows comes from token-checked calls.
    "dashboard": OPEN,
    "openapi": Permission.READ,
    "swagger_ui_html": Permission.READ,
    "swagger_ui_redirect": Permission.READ,
    "redoc_html": Permission.READ,
    "get_config": Permission.READ,
    "patch_category": Permission.OPERATE,
    "put_override": Permission.OPERATE,
    "audit": Permission.READ,
    "stats": Permission.READ,
    "instances": Permission.READ,
    "post_events": Permission.INGEST,
    "get_event": Permission.READ,
    "get_reconciliation": Permission.READ,
    "run_reconciliation": Permission.OPERATE,
    "post_receipts": Permission.CONSUME,
    "list_rollouts": Permission.READ,
    "get_rollout": Permission.READ,
    "start_rollout": Permission.OPERATE,
    "pause_rollout": Permission.OPERATE,
    "resume_rollout": Permission.OPERATE,
    "abort_rollout": Permission.OPERATE,
    # GET /events?after=N: catch-up for consumers (docs/security.md); also
    # every GET for readers, see ALSO_PERMITTED.
    "read_events": Permission.CONSUME,
}

#: Routes that a permission besides their :data:`ROUTE_ACCESS` one also
#: allows: the catch-up read is a consumer's, and as a GET a reader's too.
ALSO_PERMITTED: Final[Mapping[str, frozenset[Permission]]] = {
    "read_events": frozenset({Permission.READ}),
}


def required(route: str) -> frozenset[Permission] | _Open:
    """What calling the route named ``route`` needs: OPEN, or a set of
    permissions any one of which suffices."""
    access = ROUTE_ACCESS.get(route, Permission.OPERATE)
    if access is OPEN:
        return OPEN
    return frozenset({access}) | ALSO_PERMITTED.get(route, frozenset())


def permits(route: str, scope: SecurityScope) -> bool:
    """Whether a token of ``scope`` may call the route named ``route``."""
    access = required(route)
    return access is OPEN or bool(access & GRANTS[scope])


_SCOPE_KEY: Final = "broadcaster.token"


class BodyTooLarge(Exception):
    """Raised into the application when a request body passes the cap."""


def token_of(scope: Mapping[str, Any]) -> ApiToken:
    """The token :class:`AccessGuard` authenticated for this request."""
    token: ApiToken = scope[_SCOPE_KEY]
    return token


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, credentials = text.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class AccessGuard:
    """``AccessGuard(app, router, tokens, max_body_bytes)``: see the module doc."""

    def __init__(
        self, app: ASGIApp, *, router: Router, tokens: TokenSet, max_body_bytes: int
    ) -> None:
        self._app = app
        self._router = router
        self._tokens = tokens
        self._max_body = max_body_bytes

    def _access(self, scope: Scope) -> frozenset[Permission] | _Open | None:
        """The matched route's decision (:func:`required`); None when no
        route matches fully (404 or 405 then, for token holders only)."""
        for route in self._router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return required(getattr(route, "name", ""))
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        send = _with_nosniff(send)
        access = self._access(scope)
        if access is not OPEN:
            token = self._tokens.authenticate(_bearer(scope))
            if token is None:
                why = "missing bearer token" if _bearer(scope) is None else "invalid token"
                await _reply(send, 401, why, {"www-authenticate": "Bearer"})
                return
            if access is not None and not any(token.allows(p) for p in access):
                await _reply(
                    send, 403, f"token {token.name!r} (scope {token.scope.value}) may not do this"
                )
                return
            scope[_SCOPE_KEY] = token
        declared = _content_length(scope)
        if declared is not None and declared > self._max_body:
            await _reply(send, 413, f"request body over {self._max_body} bytes")
            return
        await self._call_bounded(scope, receive, send)

    async def _call_bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self._max_body
        seen = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _reply(send, 413, f"request body over {limit} bytes", {"connection": "close"})


def _with_nosniff(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"x-content-type-options", b"nosniff"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped


async def _reply(
    send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None
) -> None:
    body = orjson.dumps({"detail": detail})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw.extend((k.encode(), v.encode()) for k, v in (headers or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
