"""The legacy delivery path: a WebSocket fan-out server (docs/wire-format.md).

Clients connect to ``ws://HOST:PORT/events`` (``wss://`` with TLS) and may
filter with ``?categories=CRITICAL,SYSTEM`` (case-insensitive). Every event is
one JSON text frame holding exactly :attr:`EventRecord.wire`; frames to one
connection follow sequence order.

With a token set (``WEBSOCKET_REQUIRE_TOKEN``, docs/security.md) the handshake needs a
token whose scope allows subscribing (``consumer`` or ``admin``), as
``Authorization: Bearer <token>`` or, for browsers, which cannot set headers
on a WebSocket handshake, ``?access_token=<token>``: HTTP 401 without a valid
token, 403 for a valid token whose scope does not allow it.

Resume (docs/deploying.md): ``?since=N`` (a whole number) first sends every stored
event after sequence id N that was routed to this adapter and matches the
filter, in sequence order, then continues live, with no gap and no duplicate
at the seam; see :class:`WebSocketAdapter`. The adapter reads history from
the :class:`ReplaySource` it was given (the broadcaster's store); without one
a ``since`` is refused with HTTP 400, as is a ``since`` that is not a whole
number. History pruned after N closes the connection with
:data:`PRUNED_CLOSE_CODE` (4410), naming the oldest sequence id still stored.

Delivery model: :meth:`WebSocketAdapter.send` writes the batch to every open,
matching connection's transport and returns. That is this adapter's "ack":
the frames are in each current subscriber's socket buffer. Nothing is awaited
per subscriber, so one slow or vanished subscriber cannot stall the others or
the broadcaster; instead a connection whose unsent backlog exceeds
``max_buffer_bytes`` is closed with code 1013 ("subscriber too slow"). Events a
subscriber misses that way show up in reconciliation (docs/deploying.md) — the fan-out
never buffers without bound on a subscriber's behalf.

The adapter is put together from rooms of its own: the wire protocol and
per-connection records (:mod:`.websocket_protocol`, its public names
re-exported here), the handshake's checks (:mod:`.websocket_handshake`), the
send path (:mod:`.websocket_fanout`) and the replay of a resume
(:mod:`.websocket_resume`). This module keeps the adapter's lifecycle, its
subscribers and the connection handler, which own the one piece of state the
others share: which connections are live.
"""

from __future__ import annotations

import asyncio
import logging
from ssl import SSLContext
from typing import TYPE_CHECKING, TypedDict

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..exceptions import AdapterUnavailable, ConfigError
from ..security import TokenSet
from ..tls import server_ssl_context
from .base import Adapter, AdapterHealth
from .websocket_fanout import FanoutMixin
from .websocket_handshake import HandshakeGate
from .websocket_protocol import (
    _MAX_INCOMING_BYTES,
    ACCESS_TOKEN_PARAMETER,
    AHEAD_CLOSE_CODE,
    EVENTS_PATH,
    PRUNED_CLOSE_CODE,
    REPLAY_PAGE,
    SINCE_PARAMETER,
    SLOW_CLOSE_CODE,
    SLOW_CLOSE_REASON,
    ReplaySource,
    SubscriberInfo,
    _can_subscribe,
    _describe,
    _remote,
    _request_from_path,
    _Subscriber,
    parse_categories,
    parse_since,
    text_frames,
)
from .websocket_resume import ResumeMixin

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "ACCESS_TOKEN_PARAMETER",
    "AHEAD_CLOSE_CODE",
    "EVENTS_PATH",
    "PRUNED_CLOSE_CODE",
    "SINCE_PARAMETER",
    "SLOW_CLOSE_CODE",
    "SLOW_CLOSE_REASON",
    "ReplaySource",
    "SubscriberInfo",
    "WebSocketAdapter",
    "WebSocketHealth",
    "parse_categories",
    "parse_since",
    "text_frames",
]

log = structlog.get_logger("broadcaster.adapters.websocket", adapter="websocket")

# websockets logs each request's path and headers at DEBUG, which would put a
# subscriber's token in the logs; its logger here drops every DEBUG record (a
# filter, not a level, so what reaches the handlers otherwise is unchanged).
_protocol_log = logging.getLogger("broadcaster.adapters.websocket.protocol")
_protocol_log.addFilter(lambda record: record.levelno > logging.DEBUG)


class WebSocketHealth(TypedDict):
    """:meth:`WebSocketAdapter.health`'s ``extra``."""

    #: Connections receiving events now.
    subscribers: int
    #: Frames written to subscribers, all together.
    frames_sent: int
    #: Subscribers closed for falling too far behind.
    dropped_slow: int


class WebSocketAdapter(FanoutMixin, ResumeMixin, Adapter):
    """WebSocket fan-out server at ``ws://host:port/events``.

    ``port=0`` binds a free port; read it back from :attr:`port` / :attr:`url`
    after :meth:`start`. With ``ssl`` (a server context) it serves
    ``wss://``. With ``tokens``, subscribers must present one whose scope
    allows :attr:`~broadcaster.security.Permission.CONSUME` (see the module
    docstring); ``ValueError`` if none of them does. A subscriber whose unsent backlog exceeds
    ``max_buffer_bytes`` is sent close code 1013 and aborted after
    ``close_timeout`` seconds if it has not gone by then. ``ping_interval`` /
    ``ping_timeout`` drive keepalive pings that detect peers which vanished
    without closing their socket (``None`` disables them).

    :meth:`send` never waits on a subscriber; see the module docstring.

    **Resume.** With ``replay`` (a :class:`ReplaySource`: the store), a
    client connecting with ``?since=N`` is registered at once, so live
    batches for it are held from that moment (bounded by
    ``max_buffer_bytes``, past which it is closed as too slow, 1013); the
    adapter then pages through the stored events after N routed to this
    adapter and matching the filter (``replay_page`` at a time, pacing
    itself on the client's reading), sends the held live events it did not
    replay, and switches the connection to live. Every event committed
    before a page was read is in that page or an earlier one, and every
    event sent live after registration was held, so nothing falls between
    the two, and what was replayed is not sent twice: frames follow
    sequence order. What a resuming subscriber can see:

    * every stored event after N that was routed to this adapter and matches
      its filter, once, in order, then live events;
    * events held back by an open breaker are stored, so replay sends them
      although the live path has not yet (at-least-once); when the breaker
      closes, the backfill does not send them again to this connection if
      they are after N, and a backfilled event at or before N arrives out of
      order, as it does for any live subscriber;
    * close code 4410 (:data:`PRUNED_CLOSE_CODE`) before anything is sent
      when events after N were pruned: the reason names the oldest sequence
      id still stored ("no event is stored" when none is). The check is
      against that lowest id: an event kept because it is still undelivered
      somewhere hides a pruned range above it;
    * close code 4416 (:data:`AHEAD_CLOSE_CODE`) when N is beyond every
      sequence id the store has handed out (a cursor from another store);
    * close code 1013 when the store cannot be read: reconnect later with the
      same ``since``.
    """

    name = "websocket"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        max_buffer_bytes: int = 16 * 2**20,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float = 2.0,
        ssl: SSLContext | None = None,
        tokens: TokenSet | None = None,
        replay: ReplaySource | None = None,
        replay_page: int = REPLAY_PAGE,
    ) -> None:
        if max_buffer_bytes < 1:
            raise ValueError("max_buffer_bytes must be positive")
        if replay_page < 1:
            raise ValueError("replay_page must be positive")
        self._replay = replay
        self._replay_page = replay_page
        if tokens is not None and not _can_subscribe(tokens):
            raise ValueError("tokens has no token whose scope allows subscribing")
        self.host = host
        self._ssl = ssl
        self._tokens = tokens
        self._gate = HandshakeGate(tokens, resumable=replay is not None)
        self._port = port
        self._max_buffer = max_buffer_bytes
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._server: Server | None = None
        # Connections that receive events. A dropped connection leaves this
        # dict at once, and ``_connections`` when its handler ends.
        self._live: dict[ServerConnection, _Subscriber] = {}
        self._connections: dict[ServerConnection, _Subscriber] = {}
        # Set whenever a subscriber joins or leaves (never on the hot path).
        self._membership = asyncio.Event()
        self._frames_sent = 0
        self._dropped_slow = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, replay: ReplaySource | None = None
    ) -> WebSocketAdapter:
        """Build from ``WEBSOCKET_HOST`` / ``WEBSOCKET_PORT``, the TLS files
        ``WEBSOCKET_TLS_CERT`` / ``WEBSOCKET_TLS_KEY`` and
        ``WEBSOCKET_REQUIRE_TOKEN`` (with the tokens of
        ``BROADCASTER_ADMIN_TOKEN`` / ``BROADCASTER_TOKENS``), resuming
        from ``replay`` (see the class doc). Raises
        :class:`ConfigError` for TLS files that do not load, or a token
        requirement that no configured token can meet."""
        context = None
        cert, key = settings.websocket_tls_cert, settings.websocket_tls_key
        if cert is not None and key is not None:
            context = server_ssl_context(cert, key, variable="WEBSOCKET")
        tokens = None
        if settings.websocket_require_token:
            tokens = settings.api_tokens()
            if not _can_subscribe(tokens):
                raise ConfigError(
                    "WEBSOCKET_REQUIRE_TOKEN",
                    "true",
                    "no configured token may subscribe: add a 'consumer' token to"
                    " BROADCASTER_TOKENS or set BROADCASTER_ADMIN_TOKEN",
                )
        return cls(
            settings.websocket_host,
            settings.websocket_port,
            ssl=context,
            tokens=tokens,
            replay=replay,
        )

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port once started (the configured one before)."""
        if self._server is not None:
            for sock in self._server.sockets:
                return int(sock.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/events`` (``wss://`` with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://{host}:{self.port}{EVENTS_PATH}"

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve. Raises :class:`AdapterUnavailable` naming ``host:port``
        if the address cannot be bound (port in use, bad host). Idempotent."""
        if self._server is not None:
            return
        try:
            self._server = await serve(
                self._handler,
                self.host,
                self._port,
                process_request=self._gate.check,
                ssl=self._ssl,
                logger=_protocol_log,
                # Compression would cost CPU per frame per subscriber on the
                # hot path, and hide the real backlog size from the buffer check.
                # send() frames batches itself (text_frames), which assumes it.
                compression=None,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_timeout,
                close_timeout=self._close_timeout,
                max_size=_MAX_INCOMING_BYTES,
                # Flow control only pauses websockets' own writers (keepalive
                # pings, close); with the high-water mark at our limit a backlog
                # below it never blocks a ping, so keepalive still detects
                # vanished peers. Our writes bypass drain() by design.
                write_limit=self._max_buffer,
            )
        except OSError as exc:
            raise AdapterUnavailable(
                self.name, f"cannot listen on {self.host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        log.info(
            "websocket server started",
            url=self.url,
            max_buffer_bytes=self._max_buffer,
            require_token=self._tokens is not None,
        )

    async def close(self) -> None:
        """Close every connection (code 1001) and stop listening. Idempotent.

        Connections that do not finish the closing handshake within
        ``close_timeout`` (stalled peers) are aborted.
        """
        server = self._server
        if server is None:
            return
        url = self.url
        self._server = None
        self._live.clear()
        self._membership.set()
        server.close(close_connections=True)
        try:
            async with asyncio.timeout(self._close_timeout + 1.0):
                await server.wait_closed()
        except TimeoutError:
            # A peer that stopped reading cannot take even a close frame.
            for connection in list(self._connections):
                connection.transport.abort()
            await server.wait_closed()
        for sub in self._connections.values():
            if sub.abort_handle is not None:
                sub.abort_handle.cancel()
        self._connections.clear()
        log.info("websocket server stopped", url=url)

    def health(self) -> AdapterHealth[WebSocketHealth]:
        """``connected`` while serving; ``extra`` has subscriber and frame counts."""
        serving = self._server is not None and self._server.is_serving()
        return AdapterHealth(
            name=self.name,
            connected=serving,
            detail=self.url if serving else "not serving",
            extra=WebSocketHealth(
                subscribers=len(self._live),
                frames_sent=self._frames_sent,
                dropped_slow=self._dropped_slow,
            ),
        )

    # -- subscribers -----------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        """Connections currently receiving events."""
        return len(self._live)

    def subscribers(self) -> list[SubscriberInfo]:
        """Snapshot of the connections currently receiving events."""
        return [sub.info() for sub in self._live.values()]

    async def wait_for_subscribers(self, count: int) -> None:
        """Wait until exactly ``count`` subscribers are connected (tests, demo).

        Bound it with ``asyncio.timeout(...)``; it waits for ever otherwise.
        """
        while len(self._live) != count:
            self._membership.clear()
            await self._membership.wait()

    async def _handler(self, connection: ServerConnection) -> None:
        # The handshake gate already validated the path, so this cannot fail.
        request = connection.request
        categories, since = _request_from_path(request.path if request else "")
        token = self._gate.authenticate(request) if request is not None else None
        sub = _Subscriber(_remote(connection), categories, token.name if token else None, since)
        # Registered before the first await: a client whose handshake has
        # completed gets every event sent after that (held while it replays).
        self._live[connection] = sub
        self._connections[connection] = sub
        self._membership.set()
        log.info(
            "subscriber connected",
            remote=sub.remote,
            categories=_describe(categories),
            token=sub.token,
            since=since,
        )
        replay: asyncio.Task[None] | None = None
        if since is not None:
            replay = asyncio.get_running_loop().create_task(
                self._resume(connection, sub, since), name=f"websocket-replay {sub.remote}"
            )
        try:
            # Subscribers have nothing to say; reading (and discarding) keeps
            # pongs and the close handshake flowing and ends when the peer goes.
            async for _ in connection:
                pass
        except ConnectionClosed:
            pass
        finally:
            if replay is not None:
                replay.cancel()
                await asyncio.gather(replay, return_exceptions=True)
            self._forget(connection)
            self._connections.pop(connection, None)
            if sub.abort_handle is not None:
                sub.abort_handle.cancel()
            rcvd = connection.protocol.close_rcvd
            sent = connection.protocol.close_sent
            log.info(
                "subscriber disconnected",
                remote=sub.remote,
                categories=_describe(categories),
                frames_sent=sub.frames_sent,
                close_code_received=int(rcvd.code) if rcvd else None,
                close_code_sent=int(sent.code) if sent else None,
            )

    def _forget(self, connection: ServerConnection) -> None:
        if self._live.pop(connection, None) is not None:
            self._membership.set()
