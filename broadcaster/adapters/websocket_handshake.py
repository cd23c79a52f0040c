"""The WebSocket fan-out's door: who may subscribe, and to what.

Every client's HTTP upgrade request passes :class:`HandshakeGate` before it
becomes a connection of :class:`~broadcaster.adapters.websocket.WebSocketAdapter`:
the token first (401 without a valid one, 403 for a scope that may not
subscribe), then the path and the ``categories`` / ``since`` parameters, so
a client learns what is wrong from the status and body rather than a close.
"""

from __future__ import annotations

import http

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ..security import ApiToken, Permission, TokenSet
from .websocket_protocol import (
    ACCESS_TOKEN_PARAMETER,
    _presented_token,
    _remote,
    _request_from_path,
)

__all__ = ["HandshakeGate"]

log = structlog.get_logger("broadcaster.adapters.websocket", adapter="websocket")


class HandshakeGate:
    """Decides whether a handshake may go on (see the module docstring).

    ``tokens``: the tokens a subscriber may present, or None when the fan-out
    is open. ``resumable``: whether the adapter keeps history to replay, so a
    ``since`` can be served.
    """

    def __init__(self, tokens: TokenSet | None, *, resumable: bool) -> None:
        self._tokens = tokens
        self._resumable = resumable

    def authenticate(self, request: Request) -> ApiToken | None:
        """The valid token ``request`` presents; None without one (or without tokens)."""
        if self._tokens is None:
            return None
        return self._tokens.authenticate(_presented_token(request))

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to go on with the handshake, or the refusal to answer with."""
        # Authentication first: an unknown client learns nothing else.
        if self._tokens is not None:
            token = self.authenticate(request)
            if token is None:
                log.warning("subscriber refused: no valid token", remote=_remote(connection))
                response = connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "a token allowing subscription is required: send"
                    f" 'Authorization: Bearer <token>' or ?{ACCESS_TOKEN_PARAMETER}=<token>\n",
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="broadcaster"'
                return response
            if not token.allows(Permission.CONSUME):
                log.warning(
                    "subscriber refused: token may not subscribe",
                    remote=_remote(connection),
                    token=token.name,
                    scope=token.scope.value,
                )
                return connection.respond(
                    http.HTTPStatus.FORBIDDEN,
                    f"token {token.name!r} has scope {token.scope.value!r}, which may not"
                    " subscribe; a 'consumer' (or 'admin') token may\n",
                )
        # Refuse bad paths and filters at the HTTP handshake, so a client
        # learns what is wrong from the status and body rather than a close.
        try:
            _, since = _request_from_path(request.path)
        except LookupError as exc:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"{exc}\n")
        except ValueError as exc:
            return connection.respond(http.HTTPStatus.BAD_REQUEST, f"{exc}\n")
        if since is not None and not self._resumable:
            return connection.respond(
                http.HTTPStatus.BAD_REQUEST,
                "this server keeps no history to resume from; connect without since\n",
            )
        return None
