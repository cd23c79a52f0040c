"""The one module that knows the ``realtime`` and ``supabase`` clients beyond
their documented API.

The adapter and the Realtime consumer use the official clients the way a
Supabase user does: :func:`create_project_client` makes the project's client
with ``supabase.acreate_client``, and each connection is a Realtime client
built from it (its Realtime URL, the key, the current access token) and
installed as its ``realtime``, so that ``supabase.channel()`` and the token
refreshes of ``supabase.auth`` (which call ``realtime.set_auth``) reach the
live connection.

Where more is needed than the clients offer publicly — frames written from
pre-encoded bytes, a reader that does not validate every frame with pydantic,
error replies the stock reader cannot parse, a bounded close, dropping a dead
client's timers — it is done here and nowhere else. Every attribute this
takes that is private (a leading underscore) or undocumented is listed in
:data:`INTERNALS`; :func:`missing_internals` checks them against the installed
clients, a test names each one, and :func:`ensure_supported_clients` stops a
connection from starting when a release removed one, naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import orjson
import structlog
from pydantic import ValidationError
from realtime import (
    AsyncRealtimeChannel,
    AsyncRealtimeClient,
    BroadcastMeta,
    BroadcastPayload,
    Message,
    NotConnectedError,
    RealtimeAcknowledgementStatus,
    ReplyPostgresChanges,
    ServerMessageAdapter,
)
from realtime import __version__ as realtime_version
from supabase import AsyncClient, AsyncClientOptions, AsyncSupabaseException, acreate_client
from supabase import __version__ as supabase_version
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.protocol import State

from ...exceptions import AdapterUnavailable, ConfigError

__all__ = [
    "INTERNALS",
    "FastBroadcastClient",
    "Internal",
    "PreEncodedPushClient",
    "PushHandle",
    "discard_client",
    "create_project_client",
    "ensure_supported_clients",
    "install_connection",
    "missing_internals",
    "project_url",
    "push_broadcast",
]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")

#: What the client would parse a broadcast's empty ``ok`` response into.
_EMPTY_REPLY: Final = ReplyPostgresChanges()

C = TypeVar("C", bound=AsyncRealtimeClient)


@dataclass(frozen=True, slots=True)
class Internal:
    """One attribute of a client class used beyond the client's documented API."""

    owner: str
    name: str
    use: str

    def __str__(self) -> str:
        return f"{self.owner}.{self.name}"


#: Every private or undocumented attribute of the clients used here.
INTERNALS: Final[tuple[Internal, ...]] = (
    Internal("AsyncRealtimeClient", "_listen", "overridden: the reader task connect() starts"),
    Internal(
        "AsyncRealtimeClient",
        "_ws_connection",
        "the socket: read by the reader, written pre-encoded, closed with a bound",
    ),
    Internal("AsyncRealtimeClient", "send_buffer", "where a write waits while not connected"),
    Internal("AsyncRealtimeClient", "channels", "the fast paths find a frame's channel"),
    Internal(
        "AsyncRealtimeClient", "access_token", "carried over: a refreshed token survives reconnects"
    ),
    Internal("AsyncRealtimeChannel", "_handle_message", "every frame the fast paths leave"),
    Internal(
        "AsyncRealtimeChannel",
        "messages_waiting_for_ack",
        "the pushes awaiting a reply: settled by the fast reply path, dropped at teardown",
    ),
    Internal("AsyncRealtimeChannel", "broadcast_callbacks", "called by the fast broadcast path"),
    Internal("AsyncRealtimeChannel", "rejoin_timer", "reset at teardown: no late rejoin"),
    Internal("AsyncRealtimeChannel", "join_push", "destroyed at teardown: its timer would fire"),
    Internal("AsyncPush", "receive", "registers a push's ok, error and timeout callbacks"),
    Internal("AsyncPush", "trigger", "the fast reply path settles a push as the reader would"),
    Internal("AsyncPush", "destroy", "cancels a settled or abandoned push's timeout"),
    Internal("AsyncPush", "event", "tells a broadcast push from joins and leaves"),
    Internal("AsyncClient", "realtime_url", "the Realtime endpoint supabase derives"),
)


#: missing_internals() per client class: the clients do not change while running.
_CHECKED: dict[type[AsyncRealtimeClient], tuple[Internal, ...]] = {}


def missing_internals(
    client_cls: type[AsyncRealtimeClient] = AsyncRealtimeClient,
) -> tuple[Internal, ...]:
    """Those of :data:`INTERNALS` the installed clients lack, with ``client_cls``
    as the Realtime client (checked on fresh, unconnected instances; no I/O)."""
    known = _CHECKED.get(client_cls)
    if known is not None:
        return known
    client = client_cls("ws://127.0.0.1:9/realtime/v1", "probe", auto_reconnect=False)
    channel = client.channel("probe")
    owners: dict[str, object] = {
        "AsyncRealtimeClient": client,
        "AsyncRealtimeChannel": channel,
        "AsyncPush": getattr(channel, "join_push", None),
        "AsyncClient": AsyncClient("http://127.0.0.1:9", "probe"),
    }
    missing = tuple(
        internal for internal in INTERNALS if not hasattr(owners[internal.owner], internal.name)
    )
    _CHECKED[client_cls] = missing
    return missing


def ensure_supported_clients(
    client_cls: type[AsyncRealtimeClient] = AsyncRealtimeClient,
) -> None:
    """Raise :class:`AdapterUnavailable` naming every attribute of
    :data:`INTERNALS` the installed clients (``client_cls`` for Realtime) lack."""
    missing = missing_internals(client_cls)
    if missing:
        names = ", ".join(f"{m} ({m.use})" for m in missing)
        raise AdapterUnavailable(
            "realtime",
            f"realtime {realtime_version} / supabase {supabase_version} lack {names};"
            " this broadcaster is tested with the versions pinned in pyproject.toml",
        )


# -- the project client (supabase) --------------------------------------------------


def project_url(url: str) -> str:
    """The project URL ``acreate_client`` takes, from a project URL or its
    Realtime endpoint (``.../realtime/v1``, which supabase appends itself);
    ``ws(s)://`` becomes ``http(s)://``."""
    parts = urlsplit(url.strip())
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    path = parts.path.rstrip("/")
    if path.endswith("/realtime/v1"):
        path = path[: -len("/realtime/v1")]
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def create_project_client(url: str, key: str, *, hb_interval_s: int) -> AsyncClient:
    """The project's client, made with ``supabase.acreate_client``.

    Makes no request: with no stored session the auth client only reads its
    (in-memory) storage. Raises :class:`ConfigError` for a URL or key the
    client refuses.
    """
    options = AsyncClientOptions(
        persist_session=False,
        realtime={"auto_reconnect": False, "max_retries": 1, "hb_interval": hb_interval_s},
    )
    try:
        return await acreate_client(project_url(url), key, options)
    except AsyncSupabaseException as exc:
        raise ConfigError("SUPABASE_URL", url, exc.message) from exc


def install_connection(
    project: AsyncClient,
    client_factory: Callable[..., C],
    key: str,
    *,
    hb_interval_s: int,
    timeout_s: int,
) -> C:
    """A new Realtime client for ``project``, installed as its ``realtime``.

    Built as supabase builds its own (its Realtime URL, the key), with the
    access token of the client it replaces, so a refreshed token outlives a
    reconnect. No automatic reconnection: the caller supervises.
    """
    previous = project.realtime
    client = client_factory(
        str(project.realtime_url),
        key,
        auto_reconnect=False,
        max_retries=1,
        hb_interval=hb_interval_s,
        timeout=timeout_s,
    )
    client.access_token = previous.access_token
    project.realtime = client
    return client


# -- pushing and tearing down ---------------------------------------------------------


class PushHandle(Protocol):
    """A push sent on a channel; :meth:`destroy` drops its timeout."""

    def destroy(self) -> None: ...


async def push_broadcast(
    channel: AsyncRealtimeChannel,
    payload: dict[str, Any],
    timeout_s: float,
    *,
    on_ok: Callable[[], None],
    on_error: Callable[[dict[str, Any]], None],
    on_timeout: Callable[[], None],
) -> PushHandle:
    """Push a ``broadcast`` and register its three outcomes. The reply's
    ``response`` reaches ``on_error`` as a dict (a bare string, as Supabase
    sends ``payload_size_exceeded``, as ``{"reason": ...}``)."""
    # The client types timeout as int seconds; it only feeds asyncio.sleep.
    push = await channel.push("broadcast", payload, timeout=cast(int, timeout_s))
    push.receive(RealtimeAcknowledgementStatus.Ok, lambda _reply: on_ok())
    push.receive(RealtimeAcknowledgementStatus.Error, on_error)
    push.receive(RealtimeAcknowledgementStatus.Timeout, on_timeout)
    return push


async def discard_client(client: AsyncRealtimeClient, *, close_timeout_s: float = 1.0) -> None:
    """Drop ``client``: its timers, pending pushes, socket and tasks."""
    for channel in list(client.channels.values()):
        # The client leaves these running after close(): rejoin timers and
        # the per-push timeout tasks would fire later on a dead client.
        channel.rejoin_timer.reset()
        channel.join_push.destroy()
        for push in list(channel.messages_waiting_for_ack.values()):
            push.destroy()
        channel.messages_waiting_for_ack.clear()
    # The client has no public handle on its socket; take it to bound the
    # closing handshake (a stalled server would hold close() 10 s).
    ws = client._ws_connection
    if ws is not None:
        try:
            async with asyncio.timeout(close_timeout_s):
                await ws.close()
        except TimeoutError:
            ws.transport.abort()
        except Exception as exc:
            log.debug("websocket close failed", error=repr(exc))
    try:
        await client.close()
    except Exception as exc:
        log.debug("client close failed", error=repr(exc))


# -- the client with fast paths ---------------------------------------------------------


class PreEncodedPushClient(AsyncRealtimeClient):
    """The official client, writing each outgoing message with orjson and
    reading the frames it knows without pydantic.

    Outgoing: the stock ``send`` serialises every message with pydantic
    (``Message.model_dump_json``), which would walk a batch's event objects
    again. Here a message is encoded with :func:`orjson.dumps`, so the adapter
    hands each event over as an :class:`orjson.Fragment` of the bytes it was
    sealed with: the frame carries exactly those bytes. The JSON object is the
    one the stock client writes (same five fields), as a text frame.

    Incoming, a reply to a broadcast push (``phx_reply``, a ref the channel
    waits for) is decoded once with orjson and settles the push as the client
    would; the stock reader validates every frame against a union of pydantic
    models (and drops an error reply whose response is not an object, as
    Supabase's ``payload_size_exceeded`` is, so the push would time out
    instead). A ``system`` error is reported to :attr:`on_channel_refused`
    before the client's own handling errors the channel. Every other frame
    takes the client's own path.

    The reader also reports the end of the connection, whatever ended it, to
    :attr:`on_connection_lost` (the stock reader, with ``auto_reconnect=False``,
    only marks the channels errored, and not at all when it fails on the
    deprecated ``ConnectionClosed.code`` that it reads).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called once, with a reason, when the connection ends on its own.
        self.on_connection_lost: Callable[[str], None] | None = None
        #: Called with (topic, message) for each ``system`` error a channel gets.
        self.on_channel_refused: Callable[[str, str], None] | None = None
        #: Topics whose incoming broadcasts are wanted (a callback listens);
        #: None: every topic's. Another publisher's broadcasts on a channel
        #: this client only sends on are dropped after one cheap parse: the
        #: stock reader validates each frame with pydantic and formats a
        #: debug string of it, which on a standby instance (joined, not the
        #: writer) cost most of its CPU.
        self.heard_topics: frozenset[str] | None = None
        self._reading = False

    @property
    def reading(self) -> bool:
        """The reader is running."""
        return self._reading

    @property
    def socket_open(self) -> bool:
        """The socket is open (no I/O)."""
        ws = self._ws_connection
        return ws is not None and ws.state is State.OPEN

    async def _listen(self) -> None:
        ws = self._ws_connection
        if ws is None:
            raise NotConnectedError("_listen")
        self._reading = True
        error: BaseException | None
        try:
            async for raw in ws:
                if self._shortcut(raw):
                    continue
                try:
                    message = ServerMessageAdapter.validate_json(raw)
                except ValidationError as exc:
                    log.warning("unrecognised realtime frame", error=str(exc)[:300])
                    continue
                if channel := self.channels.get(message.topic):
                    channel._handle_message(message)
        except ConnectionClosed as exc:
            error = exc
        except Exception as exc:
            # A bug in a callback must not leave a dead but "connected" socket.
            log.exception("realtime reader failed", error=repr(exc))
            error = exc
        else:
            error = ws.protocol.close_exc
        finally:
            self._reading = False
        # close() clears the socket before closing it: only an end the caller
        # did not ask for is a loss.
        if self._ws_connection is ws:
            self._ws_connection = None
            self._report_lost(f"reader ended: {error!r}")

    def _report_lost(self, reason: str) -> None:
        callback, self.on_connection_lost = self.on_connection_lost, None
        if callback is not None:
            callback(reason)

    def _shortcut(self, raw: str | bytes) -> bool:
        """Handle ``raw`` here if it is a frame this class knows, returning
        True; False leaves it to the client's own parser."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False
        return isinstance(msg, dict) and self._handle_fast(msg)

    def _handle_fast(self, msg: dict[str, Any]) -> bool:
        event = msg.get("event")
        if event == "phx_reply":
            return self._settle_broadcast(msg)
        if event == "system":
            self._note_system(msg)
        if event == "broadcast" and self.heard_topics is not None:
            return msg.get("topic") not in self.heard_topics
        return False

    def _settle_broadcast(self, msg: dict[str, Any]) -> bool:
        payload, ref, topic = msg.get("payload"), msg.get("ref"), msg.get("topic")
        if not isinstance(payload, dict) or not isinstance(ref, str) or not isinstance(topic, str):
            return False
        status, response = payload.get("status"), payload.get("response")
        channel = self.channels.get(topic)
        waiting = channel.messages_waiting_for_ack if channel is not None else {}
        push = waiting.get(ref)
        if push is None or push.event != "broadcast":
            return False
        if status == "ok" and response == {}:
            del waiting[ref]
            push.trigger(RealtimeAcknowledgementStatus.Ok, _EMPTY_REPLY)
            return True
        if status == "error":
            del waiting[ref]
            reply = response if isinstance(response, dict) else {"reason": response}
            push.trigger(RealtimeAcknowledgementStatus.Error, reply)
            return True
        return False

    def _note_system(self, msg: dict[str, Any]) -> None:
        payload, topic = msg.get("payload"), msg.get("topic")
        callback = self.on_channel_refused
        if (
            callback is not None
            and isinstance(payload, dict)
            and payload.get("status") == "error"
            and isinstance(topic, str)
        ):
            callback(topic, str(payload.get("message", "")))

    async def send(self, message: Message | dict[str, Any]) -> None:
        if not isinstance(message, Message):
            # The client's deprecated dict form; never used by the adapter.
            await super().send(message)
            return
        data = orjson.dumps(
            {
                "event": message.event,
                "payload": message.payload,
                "topic": message.topic,
                "ref": message.ref,
                "join_ref": message.join_ref,
            }
        )

        # As the stock send_message, but a write on a closed connection ends
        # the connection here (the stock handler reads the deprecated
        # ConnectionClosed.code: a DeprecationWarning with websockets 15);
        # a clean close is quiet.
        async def send_message() -> None:
            ws = self._ws_connection
            if ws is None:
                raise NotConnectedError("_send")
            try:
                await ws.send(data, text=True)
            except ConnectionClosedError as exc:
                log.warning("realtime connection closed under a write", error=repr(exc))
                if self._ws_connection is ws:
                    self._ws_connection = None
                    self._report_lost(f"write failed: {exc!r}")
            except ConnectionClosedOK:
                pass

        if self.is_connected:
            await send_message()
        else:
            self.send_buffer.append(send_message)


class FastBroadcastClient(PreEncodedPushClient):
    """:class:`PreEncodedPushClient` with a fast path for incoming ``broadcast``
    frames, for subscribers.

    The stock reader validates every frame against a union of pydantic models
    and formats debug f-strings of it whether or not debug logging is on,
    which bounds a subscriber's rate. Here a frame that is plainly a broadcast
    (``event == "broadcast"``, ``ref`` null, a payload with a string ``event``
    and an object ``payload``) is decoded once with orjson and handed to the
    channel's broadcast callbacks: the same dict the client would pass.
    """

    def _handle_fast(self, msg: dict[str, Any]) -> bool:
        if msg.get("event") == "broadcast":
            return self._dispatch_broadcast(msg)
        return super()._handle_fast(msg)

    def _dispatch_broadcast(self, msg: dict[str, Any]) -> bool:
        payload = msg.get("payload")
        if (
            msg.get("ref") is not None
            or not isinstance(payload, dict)
            or not isinstance(payload.get("event"), str)
            or not isinstance(payload.get("payload"), dict)
        ):
            return False
        topic = msg.get("topic")
        channel = self.channels.get(topic) if isinstance(topic, str) else None
        if channel is None:
            return True
        broadcast: BroadcastPayload = {"event": payload["event"], "payload": payload["payload"]}
        meta = payload.get("meta")
        if isinstance(meta, Mapping):
            broadcast["meta"] = cast(BroadcastMeta, meta)
        for callback in channel.broadcast_callbacks:
            callback(broadcast)
        return True
