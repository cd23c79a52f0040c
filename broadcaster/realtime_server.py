"""A local server speaking the Supabase Realtime broadcast protocol.

It implements the part of Realtime the broadcaster uses — Phoenix channels
with the JSON serializer (``vsn=1.0.0``), ``phx_join``, ``heartbeat``,
``broadcast`` (with ``ack`` and ``self``), ``phx_leave`` — so that the demo
and the tests run the official ``realtime`` client against a real socket
without a Supabase project. Point ``SUPABASE_URL`` at :attr:`LocalRealtimeServer.url`.

Wire format: every frame is a JSON object ``{topic, event, payload, ref,
join_ref}``. The official client connects to
``<SUPABASE_URL>/realtime/v1/websocket?apikey=...&vsn=1.0.0``; the server
also accepts ``/socket/websocket`` and ``/websocket``.

API key: given one (``key``), the server accepts only clients that present
it, as Supabase's Realtime does: in the ``x-api-key`` header, else the
``apikey`` query parameter; any other client is refused at the handshake
with HTTP 403, before the WebSocket opens. Without one it accepts any key
(or none), and says so in its log: any local process can then broadcast.

Fault injection: each client frame goes through :meth:`LocalRealtimeServer.decode`,
then each client event is handled by an overridable coroutine
(:meth:`LocalRealtimeServer.on_join`, :meth:`~LocalRealtimeServer.on_broadcast`,
:meth:`~LocalRealtimeServer.ack_broadcast`, ...). A test subclass may delay an
ack (schedule it with :meth:`~LocalRealtimeServer.spawn` so the connection keeps
reading), drop it (do nothing), answer with an error, or stall (sleep inline,
which stops reading that connection).

Run it on its own with ``python -m broadcaster.realtime_server --port N
[--key KEY]`` (``--key`` defaults to ``$SUPABASE_KEY``; the environment keeps
the key out of the process list, where every local user can read it).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson
import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_PORT",
    "LocalRealtimeServer",
    "Peer",
    "ServerStats",
    "Subscription",
    "main",
    "run",
]

log = structlog.get_logger("broadcaster.realtime_server")

DEFAULT_PORT: Final = 54321
#: A subscriber whose unsent backlog exceeds this is closed with 1013.
DEFAULT_MAX_BUFFER_BYTES: Final = 16 * 1024 * 1024
#: Largest frame accepted from a client (a batch is at most ~200 kB; events up to 256 KiB).
DEFAULT_MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024

PHOENIX_TOPIC: Final = "phoenix"
WEBSOCKET_PATHS: Final = frozenset({"/realtime/v1/websocket", "/socket/websocket", "/websocket"})
CLOSE_TRY_AGAIN_LATER: Final = 1013

Message = dict[str, Any]


@dataclass(slots=True)
class Subscription:
    """One peer's join of one topic, with the options it asked for."""

    topic: str
    join_ref: str | None
    ack: bool
    self_broadcast: bool


@dataclass(eq=False, slots=True)
class Peer:
    """One client connection and the topics it joined (identity-hashed)."""

    conn: ServerConnection
    id: int
    joins: dict[str, Subscription] = field(default_factory=dict)
    evicted: bool = False

    def buffered(self) -> int:
        """Bytes written to this peer but not yet taken by the kernel."""
        return self.conn.transport.get_write_buffer_size()


@dataclass(slots=True)
class ServerStats:
    """Counters for tests and logs; never reset."""

    connections: int = 0
    joins: int = 0
    broadcasts: int = 0
    fanout_frames: int = 0
    acks: int = 0
    errors_replied: int = 0
    malformed: int = 0
    evicted: int = 0
    #: Handshakes refused for a missing or wrong ``apikey``.
    refused: int = 0


def _encode(obj: Message) -> bytes:
    return orjson.dumps(obj)


class LocalRealtimeServer:
    """A Supabase-Realtime-compatible broadcast server on ``host:port``.

    ``port=0`` picks a free port; read it from :attr:`port` after
    :meth:`start`. ``max_buffer_bytes`` bounds each subscriber's unsent
    backlog: past it the subscriber is closed with code 1013 so one slow
    reader can neither block the others nor grow memory without bound.
    :meth:`close` and :meth:`start` may alternate (stop and restart on the
    same port, as tests of reconnection do). ``key``: the only ``apikey``
    accepted (None or empty: any; see the module doc).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        evict_grace_s: float = 1.0,
        key: str | None = None,
    ) -> None:
        self.host = host
        self._key = key.encode() if key else None
        self._requested_port = port
        self.max_buffer_bytes = max_buffer_bytes
        self.max_message_bytes = max_message_bytes
        self.evict_grace_s = evict_grace_s
        self.stats = ServerStats()
        self._server: Server | None = None
        self._bound_port: int | None = None
        self._topics: dict[str, dict[Peer, Subscription]] = {}
        self._peers: set[Peer] = set()
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
            process_request=self._check_path,
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
        await server.wait_closed()
        self._topics.clear()
        self._peers.clear()
        self._closed.set()
        log.info("realtime server closed", port=self._bound_port)

    async def serve_forever(self) -> None:
        """Start if needed, then wait until :meth:`close` is called."""
        await self.start()
        await self._closed.wait()

    async def __aenter__(self) -> LocalRealtimeServer:
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

    @property
    def checks_key(self) -> bool:
        """Whether only one ``apikey`` is accepted."""
        return self._key is not None

    def _check_path(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path.rstrip("/") not in WEBSOCKET_PATHS:
            return conn.respond(404, "unknown path\n")
        if self._key is None:
            return None
        # Where Realtime looks: the x-api-key header, else the query parameter.
        presented = request.headers.get("x-api-key")
        if presented is None:
            values = parse_qs(url.query).get("apikey")
            presented = values[0] if values else None
        if presented is not None and hmac.compare_digest(presented.encode(), self._key):
            return None
        self.stats.refused += 1
        log.warning("connection refused: bad apikey", missing=presented is None)
        return conn.respond(403, "invalid or missing apikey\n")

    async def _handle(self, conn: ServerConnection) -> None:
        self._next_peer_id += 1
        peer = Peer(conn, self._next_peer_id)
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
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._malformed(peer, raw, f"not JSON: {exc}")
            return None
        if not isinstance(msg, dict):
            self._malformed(peer, raw, f"a JSON {type(msg).__name__}, not an object")
            return None
        if not isinstance(msg.get("topic"), str) or not isinstance(msg.get("event"), str):
            self._malformed(peer, raw, "topic and event must be strings")
            return None
        payload = msg.get("payload")
        if payload is None:
            msg["payload"] = {}
        elif not isinstance(payload, dict):
            self._malformed(peer, raw, "payload must be an object")
            return None
        ref = msg.get("ref")
        if ref is not None and not isinstance(ref, str | int):
            self._malformed(peer, raw, "ref must be a string or null")
            return None
        return msg

    def _malformed(self, peer: Peer, raw: str | bytes, reason: str) -> None:
        self.stats.malformed += 1
        log.warning("malformed frame ignored", peer=peer.id, reason=reason, head=repr(raw[:80]))

    def _forget(self, peer: Peer) -> None:
        self._peers.discard(peer)
        for topic in peer.joins:
            subs = self._topics.get(topic)
            if subs is not None:
                subs.pop(peer, None)
                if not subs:
                    del self._topics[topic]
        peer.joins.clear()

    # -- message dispatch (override points) --------------------------------------

    async def handle_message(self, peer: Peer, msg: Message) -> None:
        """Dispatch one decoded client message to its ``on_*`` handler."""
        event = msg["event"]
        topic = msg["topic"]
        if topic == PHOENIX_TOPIC:
            if event == "heartbeat":
                await self.on_heartbeat(peer, msg)
            else:
                await self.reply(peer, msg, "error", {"reason": f"unknown event {event!r}"})
        elif event == "phx_join":
            await self.on_join(peer, msg)
        elif event == "access_token":
            await self.on_access_token(peer, msg)
        elif topic not in peer.joins:
            # Phoenix answers anything on a topic the socket did not join this way.
            await self.reply(peer, msg, "error", {"reason": "unmatched topic"})
        elif event == "broadcast":
            await self.on_broadcast(peer, msg)
        elif event == "phx_leave":
            await self.on_leave(peer, msg)
        else:
            await self.on_other(peer, msg)

    async def on_heartbeat(self, peer: Peer, msg: Message) -> None:
        await self.reply(peer, msg, "ok", {})

    async def on_join(self, peer: Peer, msg: Message) -> None:
        """Join (or re-join) ``msg["topic"]``; remember ``broadcast.ack``/``self``."""
        topic = msg["topic"]
        config = msg["payload"].get("config")
        broadcast = config.get("broadcast") if isinstance(config, dict) else None
        if not isinstance(broadcast, dict):
            broadcast = {}
        join_ref = msg.get("join_ref") or msg.get("ref")
        sub = Subscription(
            topic=topic,
            join_ref=None if join_ref is None else str(join_ref),
            ack=bool(broadcast.get("ack", False)),
            self_broadcast=bool(broadcast.get("self", False)),
        )
        peer.joins[topic] = sub
        self._topics.setdefault(topic, {})[peer] = sub
        self.stats.joins += 1
        await self.reply(peer, msg, "ok", {"postgres_changes": []})

    async def on_broadcast(self, peer: Peer, msg: Message) -> None:
        """Fan the broadcast out to the topic's other subscribers, then ack.

        The ack (if the sender joined with ``ack: true``) is written after the
        fan-out frames, so a sender that sees the ack knows they left.
        """
        payload = msg["payload"]
        topic = msg["topic"]
        self.stats.broadcasts += 1
        frame = _encode({"topic": topic, "event": "broadcast", "payload": payload, "ref": None})
        sub = peer.joins[topic]
        self.fan_out(topic, frame, exclude=None if sub.self_broadcast else peer)
        if sub.ack:
            await self.ack_broadcast(peer, msg)

    async def ack_broadcast(self, peer: Peer, msg: Message) -> None:
        """Send the broadcast's ``phx_reply`` ok. Override to delay or drop acks."""
        self.stats.acks += 1
        await self.reply(peer, msg, "ok", {})

    async def on_leave(self, peer: Peer, msg: Message) -> None:
        topic = msg["topic"]
        sub = peer.joins.pop(topic, None)
        subs = self._topics.get(topic)
        if subs is not None:
            subs.pop(peer, None)
            if not subs:
                del self._topics[topic]
        await self.reply(peer, msg, "ok", {})
        await self.send(
            peer,
            _encode(
                {
                    "topic": topic,
                    "event": "phx_close",
                    "payload": {},
                    "ref": sub.join_ref if sub else None,
                    "join_ref": sub.join_ref if sub else None,
                }
            ),
        )

    async def on_access_token(self, peer: Peer, msg: Message) -> None:
        """Token refresh: accepted and ignored (the local server has no auth)."""

    async def on_other(self, peer: Peer, msg: Message) -> None:
        """Any other event on a joined topic (presence, ...): not supported."""
        await self.reply(peer, msg, "error", {"reason": f"unsupported event {msg['event']!r}"})

    # -- writing -------------------------------------------------------------------

    async def reply(self, peer: Peer, msg: Message, status: str, response: Message) -> None:
        """Send ``phx_reply`` for ``msg`` with ``status`` (``ok``/``error``)."""
        if status != "ok":
            self.stats.errors_replied += 1
        frame = _encode(
            {
                "topic": msg["topic"],
                "event": "phx_reply",
                "payload": {"status": status, "response": response},
                "ref": msg.get("ref"),
                "join_ref": msg.get("join_ref"),
            }
        )
        await self.send(peer, frame)

    async def send(self, peer: Peer, frame: bytes) -> None:
        """Write one text frame to one peer, with backpressure (awaits drain)."""
        if peer.evicted:
            return
        await peer.conn.send(frame, text=True)

    def fan_out(self, topic: str, frame: bytes, *, exclude: Peer | None = None) -> int:
        """Write ``frame`` (already encoded, once) to every subscriber of ``topic``.

        Synchronous on purpose: writing into each transport without awaiting
        its drain means a slow subscriber cannot delay the others; its backlog
        is checked instead, and past ``max_buffer_bytes`` it is evicted.
        Returns how many subscribers were written to.
        """
        subs = self._topics.get(topic)
        if not subs:
            return 0
        written = 0
        slow: list[Peer] = []
        for peer in subs:
            if peer is exclude:
                continue
            conn = peer.conn
            if conn.protocol.state is not State.OPEN:
                continue  # closing: its handler is about to forget it
            try:
                conn.protocol.send_text(frame)
                conn.send_data()
            except Exception as exc:
                # Closing or broken connection: its handler will clean up.
                log.debug("fan-out write skipped", peer=peer.id, error=repr(exc))
                continue
            written += 1
            if peer.buffered() > self.max_buffer_bytes:
                slow.append(peer)
        self.stats.fanout_frames += written
        for peer in slow:
            self.evict(peer, "subscriber too slow: write buffer over limit")
        return written

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


async def _run(host: str, port: int, key: str | None) -> int:
    # Handlers first: a supervisor may signal as soon as it reads the URL line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = LocalRealtimeServer(host, port, key=key)
    await server.start()
    if not server.checks_key:
        # On stderr: stdout carries only the URL line, which supervisors read.
        print(
            "realtime-server: no --key and no SUPABASE_KEY: accepting any apikey",
            file=sys.stderr,
            flush=True,
        )
    print(server.url, flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; prints its URL on one stdout line."""
    parser = argparse.ArgumentParser(
        prog="python -m broadcaster.realtime_server",
        description="Local Supabase Realtime (broadcast) protocol server.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--key", help="the only apikey accepted (default: $SUPABASE_KEY; neither: any)"
    )
    args = parser.parse_args(argv)
    key = args.key if args.key is not None else os.environ.get("SUPABASE_KEY")
    return run(args.host, args.port, key=key)


def run(host: str, port: int, *, key: str | None) -> int:
    """Run the server until SIGTERM/SIGINT, accepting only ``key`` (None or
    empty: any key); prints its URL on one stdout line. Returns the exit code."""
    from .logs import configure_logging

    # Logs go to stderr so stdout carries only the URL line.
    configure_logging("console", "INFO")
    try:
        return asyncio.run(_run(host, port, key or None))
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
