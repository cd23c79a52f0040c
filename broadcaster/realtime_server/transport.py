"""The server's transport: listening, handshakes, connections, and writing to
them (replies, fan-out, channel shutdowns, eviction of slow subscribers).

The channel protocol on top of it is :class:`~.server.LocalRealtimeServer`'s;
:mod:`.protocol` frames the wire, :mod:`.quotas` and :mod:`.tokens` decide
what is refused.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlsplit

import orjson
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .peers import Peer, ServerSnapshot, ServerStats, Subscription
from .protocol import (
    VSN_1,
    Malformed,
    Message,
    Vsn,
    Wire,
    decode,
    encode_broadcast,
    encode_push,
    encode_reply,
    encode_user_broadcast,
    negotiate,
)
from .quotas import Plan, Quota, Quotas, plan_named
from .tokens import DEFAULT_PRIVATE_ROLES, TokenCheck

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORT",
    "SUPABASE_MAX_FRAME_BYTES",
    "Transport",
]

log = structlog.get_logger("broadcaster.realtime_server")

DEFAULT_PORT: Final = 54321
#: A subscriber whose unsent backlog exceeds this is closed with 1013.
DEFAULT_MAX_BUFFER_BYTES: Final = 16 * 1024 * 1024
#: Largest frame accepted from a client without limits (events up to 256 KiB, batched).
DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
#: Largest frame Supabase's endpoint accepts (``max_frame_size``); applies with limits.
SUPABASE_MAX_FRAME_BYTES: Final = 5_000_000

PHOENIX_TOPIC: Final = "phoenix"
WEBSOCKET_PATHS: Final = frozenset({"/realtime/v1/websocket", "/socket/websocket", "/websocket"})
CLOSE_TRY_AGAIN_LATER: Final = 1013
TOO_MANY_MESSAGES: Final = "Too many messages per second"


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _apikey_refusal(presented: str | None) -> str:
    # What Realtime's connect answers when the key is not the project's: its
    # keys are JWTs signed with the project's secret, so another one fails
    # the signature, and anything else is no JWT at all.
    if presented is None:
        return "API key is missing"
    if presented.count(".") == 2:
        return "Failed to validate JWT signature"
    return "The token provided is not a valid JWT"


class Transport(ABC):
    """Listens, takes connections through their handshake (path, protocol
    version, ``apikey``, connection quota), reads their frames into
    :meth:`handle_message`, and writes to them. See
    :class:`~.server.LocalRealtimeServer` for the arguments."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_message_bytes: int | None = None,
        evict_grace_s: float = 1.0,
        key: str | None = None,
        limits: str | Plan | None = None,
        jwt_secret: str | bytes | None = None,
        private_roles: Iterable[str] = DEFAULT_PRIVATE_ROLES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.host = host
        self._key = key.encode() if key else None
        self._requested_port = port
        plan = plan_named(limits) if isinstance(limits, str) else limits
        self.plan = plan
        self._quotas = Quotas(plan) if plan is not None else None
        self._tokens = TokenCheck(jwt_secret or None, private_roles)
        self._clock = clock
        self.max_buffer_bytes = max_buffer_bytes
        if max_message_bytes is None:
            max_message_bytes = (
                DEFAULT_MAX_MESSAGE_BYTES if plan is None else SUPABASE_MAX_FRAME_BYTES
            )
        self.max_message_bytes = max_message_bytes
        self.evict_grace_s = evict_grace_s
        self.stats = ServerStats()
        self._server: Server | None = None
        self._bound_port: int | None = None
        self._topics: dict[str, dict[Peer, Subscription]] = {}
        self._peers: set[Peer] = set()
        #: Connections that count against the concurrent-connection quota.
        self._users = 0
        self._next_peer_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting connections. A no-op while running.

        After :meth:`close`, ``start`` binds the same port again.
        """
        if self._server is not None:
            return
        port = self._bound_port if self._bound_port is not None else self._requested_port
        self._server = await serve(
            self._handle,
            self.host,
            port,
            process_request=self._handshake,
            # No permessage-deflate: compression runs per connection, so it
            # would re-encode every fan-out frame once per subscriber.
            compression=None,
            max_size=self.max_message_bytes,
            # Short close timeout: a stuck peer must not hold close() for 10 s.
            close_timeout=2.0,
            server_header=None,
        )
        sock = next(iter(self._server.sockets))
        self._bound_port = int(sock.getsockname()[1])
        self._closed.clear()
        log.info(
            "realtime server listening",
            url=self.url,
            apikey="checked" if self._key is not None else "any accepted",
            limits=self.plan.name if self.plan is not None else "none",
            private_channels="tokens checked" if self._tokens.has_secret else "refused",
        )

    async def close(self) -> None:
        """Close every connection (code 1001) and stop listening. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(close_connections=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Each connection's handler has forgotten its peer (and its timers).
        await server.wait_closed()
        self._topics.clear()
        self._closed.set()
        log.info("realtime server closed", port=self._bound_port)

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`close` is called."""
        await self.start()
        await self._closed.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        """The bound port (valid once started; kept across close/start)."""
        if self._bound_port is None:
            raise RuntimeError("server not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL to use as ``SUPABASE_URL`` (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def realtime_url(self) -> str:
        """The URL the official client takes (``<url>/realtime/v1``)."""
        return f"{self.url}/realtime/v1"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def peers(self) -> frozenset[Peer]:
        """Connected peers (a snapshot)."""
        return frozenset(self._peers)

    @property
    def checks_key(self) -> bool:
        """Whether only one ``apikey`` is accepted."""
        return self._key is not None

    @property
    def checks_tokens(self) -> bool:
        """Whether access tokens of private channels can be checked (a JWT
        secret was given); without one every private join is refused."""
        return self._tokens.has_secret

    def subscribers(self, topic: str) -> int:
        """How many peers joined ``topic`` (the full wire topic, ``realtime:...``)."""
        return len(self._topics.get(topic, ()))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background; it is cancelled by :meth:`close`.

        For fault-injection subclasses that delay a reply without stopping the
        connection's reader.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task failed", error=repr(exc))

    # -- connection handling -----------------------------------------------------

    def _handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") not in WEBSOCKET_PATHS:
            return conn.respond(404, "unknown path\n")
        query = parse_qs(url.query)
        vsn = _first(query, "vsn")
        if negotiate(vsn) is None:
            # Phoenix answers a version it has no serializer for with a bare 403
            # (negotiate_serializer in lib/phoenix/socket.ex).
            self.stats.bad_version += 1
            log.warning("connection refused: unsupported protocol version", vsn=vsn)
            return conn.respond(403, "")
        if self._key is not None:
            # Where Realtime looks: the x-api-key header, else the query parameter.
            presented = request.headers.get("x-api-key") or _first(query, "apikey")
            if presented is None or not hmac.compare_digest(presented.encode(), self._key):
                self.stats.refused += 1
                log.warning("connection refused: bad apikey", missing=presented is None)
                return self._refuse(conn, 401, _apikey_refusal(presented))
        if self._quotas is not None:
            refusal = self._quotas.connection_refusal(self._clock(), self._users)
            if refusal is not None:
                quota, message = refusal
                self._count(quota)
                log.warning("connection refused: quota", quota=quota.value)
                return self._refuse(conn, 429, message)
        return None

    @staticmethod
    def _refuse(conn: ServerConnection, status: int, message: str) -> Response:
        # As handle_error in lib/realtime_web/channels/user_socket.ex answers:
        # JSON with one "error".
        response = conn.respond(status, orjson.dumps({"error": message}).decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, conn: ServerConnection) -> None:
        request = conn.request
        query = parse_qs(urlsplit(request.path).query) if request is not None else {}
        apikey = None
        if request is not None:
            apikey = request.headers.get("x-api-key") or _first(query, "apikey")
        self._next_peer_id += 1
        peer = Peer(conn, self._next_peer_id, negotiate(_first(query, "vsn")) or VSN_1, apikey)
        self._peers.add(peer)
        self.stats.connections += 1
        try:
            async for raw in conn:
                msg = self.decode(peer, raw)
                if msg is None:
                    continue
                try:
                    await self.handle_message(peer, msg)
                except ConnectionClosed:
                    raise
                except Exception as exc:
                    # A bug or a fault-injection hook raising must cost one
                    # message, never the connection or the server.
                    log.exception("message handler failed", peer=peer.id, error=repr(exc))
        except ConnectionClosed:
            pass
        finally:
            self._forget(peer)

    def decode(self, peer: Peer, raw: str | bytes) -> Message | None:
        """The message in a frame ``peer`` sent, or None for a malformed one
        (counted in ``stats.malformed``, logged, ignored). Override to see
        every frame as it came off the wire."""
        msg = decode(raw, peer.vsn)
        if isinstance(msg, Malformed):
            self.stats.malformed += 1
            log.warning(
                "malformed frame ignored", peer=peer.id, reason=msg.reason, head=repr(raw[:80])
            )
            return None
        return msg

    def _forget(self, peer: Peer) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        if peer.counted:
            self._users -= 1
        for sub in list(peer.joins.values()):
            self._unsubscribe(peer, sub)

    def _unsubscribe(self, peer: Peer, sub: Subscription) -> None:
        if peer.joins.get(sub.topic) is sub:
            del peer.joins[sub.topic]
        subs = self._topics.get(sub.topic)
        if subs is not None and subs.get(peer) is sub:
            del subs[peer]
            if not subs:
                del self._topics[sub.topic]
        if sub.expiry is not None:
            sub.expiry.cancel()
            sub.expiry = None

    def _count(self, quota: Quota) -> None:
        setattr(self.stats, quota.value, getattr(self.stats, quota.value) + 1)

    def count_messages(self, n: int) -> None:
        """``n`` messages count against the message rate now (and in ``stats``)."""
        if n <= 0:
            return
        self.stats.messages += n
        if self._quotas is not None:
            self._quotas.count_messages(self._clock(), n)

    def snapshot(self) -> ServerSnapshot:
        """The counters as one JSON-able dict, with every quota refusal
        together (``quota_refusals``) and, under limits, the message rate as
        the plan judges it now and at its highest (``judged_messages_per_s``,
        ``peak_messages_per_s``; None without limits)."""
        judged: tuple[float | None, float | None] = (None, None)
        if self._quotas is not None:
            judged = self._quotas.judged_messages_per_s(self._clock())
        limits = self.plan.name if self.plan is not None else "none"
        return self.stats.snapshot(limits, *judged)

    @abstractmethod
    async def handle_message(self, peer: Peer, msg: Message) -> None:
        """Act on one decoded client message."""

    # -- writing -------------------------------------------------------------------

    async def reply(self, peer: Peer, msg: Message, status: str, response: object) -> None:
        """Send ``phx_reply`` for ``msg`` with ``status`` (``ok``/``error``)."""
        if status != "ok":
            self.stats.errors_replied += 1
        await self.send_wire(peer, encode_reply(peer.vsn, msg, status, response))

    async def send_wire(self, peer: Peer, wire: Wire) -> None:
        """Write one frame to one peer, with backpressure (awaits drain)."""
        if peer.evicted:
            return
        await peer.conn.send(wire.data, text=wire.text)

    def _write(self, peer: Peer, wire: Wire) -> bool:
        """Write ``wire`` into ``peer``'s transport without waiting for it to
        drain; False when the connection is closing or broken."""
        conn = peer.conn
        if peer.evicted or conn.protocol.state is not State.OPEN:
            return False  # closing: its handler is about to forget it
        try:
            if wire.text:
                conn.protocol.send_text(wire.data)
            else:
                conn.protocol.send_binary(wire.data)
            conn.send_data()
        except Exception as exc:
            # Closing or broken connection: its handler will clean up.
            log.debug("write skipped", peer=peer.id, error=repr(exc))
            return False
        return True

    def _close_frame(self, peer: Peer, sub: Subscription) -> Wire:
        return encode_push(
            peer.vsn, sub.topic, "phx_close", {}, join_ref=sub.join_ref, ref=sub.join_ref
        )

    def shut_down(self, peer: Peer, sub: Subscription, message: str) -> None:
        """Shut one channel down as ``shutdown_response`` in
        ``lib/realtime_web/channels/realtime_channel.ex`` does:
        a ``system`` error naming why, then ``phx_close``."""
        self._unsubscribe(peer, sub)
        log.warning("channel shut down", peer=peer.id, topic=sub.topic, message=message)
        system = {
            "extension": "system",
            "status": "error",
            "message": message,
            "channel": sub.channel,
        }
        if self._write(
            peer, encode_push(peer.vsn, sub.topic, "system", system, join_ref=sub.join_ref)
        ):
            self._write(peer, self._close_frame(peer, sub))

    def _broadcast_frame(self, vsn: Vsn, topic: str, msg: Message) -> Wire | None:
        user = msg.get("user_broadcast")
        if user is not None:
            return encode_user_broadcast(vsn, topic, user)
        return encode_broadcast(vsn, topic, msg["payload"])

    def fan_out(self, topic: str, msg: Message, *, exclude: Peer | None = None) -> int:
        """Write broadcast ``msg`` to every subscriber of ``topic`` (encoded
        once per protocol version).

        Synchronous on purpose: writing into each transport without awaiting
        its drain means a slow subscriber cannot delay the others; its backlog
        is checked instead, and past ``max_buffer_bytes`` it is evicted.
        With limits, each copy counts as a message, and while the message rate
        is over the plan's each receiving channel is shut down after it.
        Returns how many subscribers were written to.
        """
        subs = self._topics.get(topic)
        if not subs:
            return 0
        frames: dict[Vsn, Wire | None] = {}
        reached: list[tuple[Peer, Subscription]] = []
        for peer, sub in subs.items():
            if peer is exclude:
                continue
            if peer.vsn not in frames:
                frames[peer.vsn] = self._broadcast_frame(peer.vsn, topic, msg)
            wire = frames[peer.vsn]
            if wire is not None and self._write(peer, wire):
                reached.append((peer, sub))
        self.stats.fanout_frames += len(reached)
        self.count_messages(len(reached))
        quotas = self._quotas
        if quotas is not None and reached:
            now = self._clock()
            if quotas.messages_over(now):
                for peer, sub in reached:
                    self._count(Quota.MESSAGES)
                    self.shut_down(peer, sub, TOO_MANY_MESSAGES)
        for peer, _ in reached:
            if peer.buffered() > self.max_buffer_bytes:
                self.evict(peer, "subscriber too slow: write buffer over limit")
        return len(reached)

    def evict(self, peer: Peer, reason: str) -> None:
        """Drop ``peer``: no more frames, close 1013, abort after a grace period."""
        if peer.evicted:
            return
        peer.evicted = True
        self.stats.evicted += 1
        buffered = peer.buffered()
        self._forget(peer)
        log.warning("closing slow subscriber", peer=peer.id, buffered=buffered, reason=reason)
        try:
            # The close frame queues behind the backlog; a reader that is
            # merely slow still gets a clean 1013.
            peer.conn.protocol.send_close(CLOSE_TRY_AGAIN_LATER, "subscriber too slow")
            peer.conn.send_data()
        except Exception as exc:
            log.debug("close frame not written", peer=peer.id, error=repr(exc))
        self.spawn(self._abort_later(peer))

    async def _abort_later(self, peer: Peer) -> None:
        # A reader that is stuck would keep the backlog in memory until the
        # TCP connection dies; cut it after the grace period.
        await asyncio.sleep(self.evict_grace_s)
        peer.conn.transport.abort()
