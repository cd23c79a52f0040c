"""The connection to Supabase Realtime: channel names and options, the
official client with pre-encoded pushes, and the supervisor
(:class:`RealtimeLink`) that replaces a lost connection and rejoins every
channel. Shared by the adapter and the Realtime consumer.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlparse, urlunparse

import orjson
import structlog
from pydantic import ValidationError
from realtime import (
    AsyncRealtimeChannel,
    AsyncRealtimeClient,
    BroadcastPayload,
    Message,
    NotConnectedError,
    RealtimeAcknowledgementStatus,
    RealtimeChannelOptions,
    RealtimeSubscribeStates,
    ReplyPostgresChanges,
    ServerMessageAdapter,
)
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from websockets.protocol import State

from ..events import Category

__all__ = [
    "BROADCAST_EVENT",
    "PreEncodedPushClient",
    "RealtimeLink",
    "broadcast_channel_params",
    "channel_topic",
    "normalize_realtime_url",
]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")

#: What the client would parse a broadcast's empty ``ok`` response into.
_EMPTY_REPLY: Final = ReplyPostgresChanges()
#: The broadcast event name every batch is sent under.
BROADCAST_EVENT: Final = "events"
_FAILED_STATES: Final = frozenset(
    {
        RealtimeSubscribeStates.CHANNEL_ERROR,
        RealtimeSubscribeStates.CLOSED,
        RealtimeSubscribeStates.TIMED_OUT,
    }
)


def channel_topic(prefix: str, category: Category | str) -> str:
    """The channel name of a category: ``<prefix>:<category lowercase>``.

    The client puts ``realtime:`` in front of it on the wire.
    """
    value = category.value if isinstance(category, Category) else str(category)
    return f"{prefix}:{value.lower()}"


def broadcast_channel_params(*, ack: bool) -> RealtimeChannelOptions:
    """Join params (docs/wire-format.md; a fresh dict: the client mutates what it is given)."""
    return {
        "config": {
            "broadcast": {"ack": ack, "self": False},
            "presence": {"key": "", "enabled": False},
            "private": False,
        }
    }


def normalize_realtime_url(url: str) -> str:
    """The Realtime endpoint for ``url``.

    A bare project URL (``https://xyz.supabase.co``, no path) gets
    ``/realtime/v1`` appended, as supabase-py does; a URL with a path is
    taken as the endpoint already. The client appends ``/websocket``.
    """
    parsed = urlparse(url)
    if parsed.path in ("", "/"):
        return urlunparse(parsed._replace(path="/realtime/v1"))
    return url.rstrip("/")


def _redact(url: str) -> str:
    parsed = urlparse(url)
    return urlunparse(parsed._replace(query="", fragment=""))


class PreEncodedPushClient(AsyncRealtimeClient):
    """The official client, writing each outgoing message with orjson.

    The stock ``send`` serialises every message with pydantic
    (``Message.model_dump_json``), which walks a batch's 100 event objects
    again; the adapter would first have to decode each event's wire bytes into
    a dict for it, a large share of the event loop at full rate. Here a
    message is encoded with :func:`orjson.dumps`, so the adapter hands over
    each event as an :class:`orjson.Fragment` of the bytes it was sealed with:
    the frame carries exactly those bytes, never re-encoded.
    The JSON object is the one the stock client writes (same five fields),
    sent as a text frame. Everything else — connection, joins, refs, acks,
    timeouts, heartbeats, the send buffer and its error handling — is the
    client's own; only the encoding differs.

    Incoming, the plain acknowledgement of a broadcast push (``phx_reply``,
    status ``ok``, empty response, a ref the channel waits for) is decoded
    once with orjson and triggers the push as the client would; the stock
    reader validates every frame against a union of pydantic models and
    formats three debug f-strings of it whatever the log level. Every other
    frame (join replies, errors, system messages, close) takes the client's
    own path.
    """

    async def _listen(self) -> None:
        ws = self._ws_connection
        if ws is None:
            raise NotConnectedError("_listen")
        error: Exception
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
        else:
            error = ws.protocol.close_exc
        # The stock reader's outcome with auto_reconnect=False (RealtimeLink
        # reconnects): the connection is gone and every channel errored.
        if self._ws_connection is ws:
            self._ws_connection = None
            self._set_channels_errored(error)

    def _shortcut(self, raw: str | bytes) -> bool:
        """Handle ``raw`` here if it is a frame this class knows, returning True;
        False leaves it to the client's own parser. Subclasses pick the frames."""
        return self._ack_broadcast(raw)

    def _ack_broadcast(self, raw: str | bytes) -> bool:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(msg, dict) or msg.get("event") != "phx_reply":
            return False
        payload, ref, topic = msg.get("payload"), msg.get("ref"), msg.get("topic")
        if (
            not isinstance(payload, dict)
            or payload.get("status") != "ok"
            or payload.get("response") != {}
            or not isinstance(ref, str)
            or not isinstance(topic, str)
        ):
            return False
        channel = self.channels.get(topic)
        waiting = channel.messages_waiting_for_ack if channel is not None else {}
        push = waiting.get(ref)
        if push is None or push.event != "broadcast":
            return False
        del waiting[ref]
        push.trigger(RealtimeAcknowledgementStatus.Ok, _EMPTY_REPLY)
        return True

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

        # As the stock send_message: a write on a closed connection ends the
        # connection and marks the channels errored for the supervisor to
        # notice (the client's _on_connect_error with auto_reconnect=False,
        # less its log line, which reads the deprecated ConnectionClosed.code:
        # a DeprecationWarning with websockets 15); a clean close is quiet.
        async def send_message() -> None:
            ws = self._ws_connection
            if ws is None:
                raise NotConnectedError("_send")
            try:
                await ws.send(data, text=True)
            except ConnectionClosedError as exc:
                log.warning("realtime connection closed under a write", error=repr(exc))
                self._ws_connection = None
                self._set_channels_errored(exc)
            except ConnectionClosedOK:
                pass

        if self.is_connected:
            await send_message()
        else:
            self.send_buffer.append(send_message)


class RealtimeLink:
    """One supervised connection of the official client and its joined channels.

    ``start()`` makes the first connection (raising the client's error if it
    cannot) and starts a supervisor that, until ``close()``, notices a lost
    connection or channel (subscribe callbacks, plus a poll of
    ``client.is_connected`` and channel states every ``poll_s``), discards the
    client and connects a fresh one with capped exponential backoff, rejoining
    every topic. With ``keep_trying=True``, a failed first connection still
    leaves the supervisor retrying in the background.

    ``on_lost(reason)`` runs synchronously the moment a loss is noticed (fail
    what is in flight there); ``on_ready()`` after each successful (re)join.
    ``on_broadcast(topic, payload)`` gets every ``broadcast_event`` broadcast.
    ``client_factory`` builds each client (the official ``AsyncRealtimeClient``
    or a subclass of it), called like the client's constructor.
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        topics: Sequence[str],
        *,
        ack: bool,
        broadcast_event: str = BROADCAST_EVENT,
        on_broadcast: Callable[[str, BroadcastPayload], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        connect_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        poll_s: float = 0.5,
        hb_interval_s: int = 25,
        logger: Any = None,
        client_factory: Callable[..., AsyncRealtimeClient] = AsyncRealtimeClient,
    ) -> None:
        self.url = normalize_realtime_url(url)
        self._key = key
        self.topics = tuple(topics)
        self._ack = ack
        self._event = broadcast_event
        self._on_broadcast = on_broadcast
        self._on_lost = on_lost
        self._on_ready = on_ready
        self._connect_timeout = connect_timeout_s
        self._backoff_initial = reconnect_initial_s
        self._backoff_max = reconnect_max_s
        self._poll_s = poll_s
        self._hb_interval = hb_interval_s
        self._log = logger if logger is not None else log
        self._client_factory = client_factory
        self._client: AsyncRealtimeClient | None = None
        self._channels: dict[str, AsyncRealtimeChannel] = {}
        self._ready = False
        self._ready_event = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        #: Successful connections so far (1 after start; +1 per reconnect).
        self.connects = 0
        #: Connection losses noticed so far.
        self.losses = 0
        #: Reconnect attempts made by the supervisor (failed ones included).
        self.attempts = 0
        self.last_error: str | None = None

    # -- state -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Connected and every topic joined (no I/O)."""
        return self._ready

    def channel(self, topic: str) -> AsyncRealtimeChannel | None:
        """The joined channel of ``topic`` while ready, else ``None``."""
        return self._channels.get(topic) if self._ready else None

    def joined_topics(self) -> list[str]:
        return [t for t, ch in self._channels.items() if ch.is_joined] if self._ready else []

    async def wait_ready(self) -> None:
        """Wait until connected and joined (wrap in ``asyncio.timeout``)."""
        await self._ready_event.wait()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, *, keep_trying: bool = False) -> None:
        """Connect and join every topic; then supervise until :meth:`close`."""
        if self._supervisor is not None:
            return
        self._closed = False
        try:
            await self._connect()
        except Exception as exc:
            await self._teardown()
            self.last_error = repr(exc)
            if not keep_trying:
                raise
            self._lost.set()
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise())
            raise
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def close(self) -> None:
        """Stop supervising and close the connection. Idempotent."""
        self._closed = True
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        was_ready = self._ready
        self._ready = False
        self._ready_event.clear()
        if was_ready and self._on_lost is not None:
            self._on_lost("closed")
        await self._teardown()

    # -- internals ---------------------------------------------------------------

    def _mark_lost(self, reason: str) -> None:
        if not self._ready:
            return
        self._ready = False
        self._ready_event.clear()
        self.losses += 1
        self.last_error = reason
        self._log.warning("realtime connection lost", reason=reason, url=_redact(self.url))
        if self._on_lost is not None:
            self._on_lost(reason)
        self._lost.set()

    def _state_callback(
        self, client: AsyncRealtimeClient, topic: str
    ) -> Callable[[RealtimeSubscribeStates, Exception | None], None]:
        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            # Callbacks of a client already replaced are stale: ignore them.
            if client is self._client and state in _FAILED_STATES:
                self._mark_lost(f"channel {topic}: {state.value} {error!r}")

        return on_state

    def _broadcast_callback(self, topic: str) -> Callable[[BroadcastPayload], None]:
        handler = self._on_broadcast
        assert handler is not None

        def on_broadcast(payload: BroadcastPayload) -> None:
            # An exception here would end the client's reader task and leave a
            # dead but "connected" socket; contain it.
            try:
                handler(topic, payload)
            except Exception as exc:
                self._log.exception("broadcast handler failed", topic=topic, error=repr(exc))

        return on_broadcast

    async def _connect(self) -> None:
        # auto_reconnect=False: see the module doc; the client's "timeout" is
        # also its join timeout (seconds; it only feeds asyncio.sleep and
        # open_timeout, both fine with an int).
        client = self._client_factory(
            self.url,
            self._key,
            auto_reconnect=False,
            max_retries=1,
            hb_interval=self._hb_interval,
            timeout=max(1, math.ceil(self._connect_timeout)),
        )
        self._client = client
        async with asyncio.timeout(self._connect_timeout):
            await client.connect()
            self._watch_client_tasks(client)
            channels: dict[str, AsyncRealtimeChannel] = {}
            for topic in self.topics:
                channel = client.channel(topic, broadcast_channel_params(ack=self._ack))
                if self._on_broadcast is not None:
                    channel.on_broadcast(self._event, self._broadcast_callback(topic))
                channels[topic] = channel
            await asyncio.gather(
                *(ch.subscribe(self._state_callback(client, t)) for t, ch in channels.items())
            )
        not_joined = [t for t, ch in channels.items() if not ch.is_joined]
        if not_joined or not client.is_connected:
            raise ConnectionError(f"join failed for {', '.join(not_joined) or 'connection'}")
        self._channels = channels
        self._lost.clear()
        self._ready = True
        self._ready_event.set()
        self.connects += 1
        self.last_error = None
        if self._on_ready is not None:
            self._on_ready()

    def _watch_client_tasks(self, client: AsyncRealtimeClient) -> None:
        """Notice the client's reader or heartbeat task ending, for any reason.

        The client (2.34) reads the deprecated ``ConnectionClosed.code`` when a
        connection drops without a close frame; where warnings are errors
        (our test suite) that kills its reader task before it marks anything
        errored, and the client would look connected forever. A done callback
        turns any end of the reader into a loss, and retrieves the exception.
        """
        # Private attributes: the client exposes no other handle on its tasks.
        for kind, task in (("reader", client._listen_task), ("heartbeat", client._heartbeat_task)):
            if task is None:
                continue

            def on_done(t: asyncio.Task[Any], kind: str = kind) -> None:
                error = None if t.cancelled() else t.exception()
                if error is not None:
                    self._log.warning("realtime client task failed", task=kind, error=repr(error))
                if kind == "reader" and client is self._client:
                    self._mark_lost(f"client reader ended: {error!r}")

            task.add_done_callback(on_done)

    def _healthy(self) -> bool:
        client = self._client
        if client is None or not client.is_connected:
            return False
        reader = client._listen_task
        ws = client._ws_connection
        return (
            reader is not None
            and not reader.done()
            and ws is not None
            and ws.state is State.OPEN
            and all(ch.is_joined for ch in self._channels.values())
        )

    async def _supervise(self) -> None:
        while not self._closed:
            while not self._lost.is_set():
                try:
                    async with asyncio.timeout(self._poll_s):
                        await self._lost.wait()
                except TimeoutError:
                    if self._ready and not self._healthy():
                        self._mark_lost("poll: not connected or a channel is not joined")
            await self._teardown()
            attempt = 0
            while not self._closed:
                # Capped exponential backoff with jitter, so many adapters
                # restarting together do not reconnect in lockstep.
                delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                attempt += 1
                self.attempts += 1
                try:
                    await self._connect()
                except Exception as exc:
                    self.last_error = repr(exc)
                    self._log.info("realtime reconnect failed", attempt=attempt, error=repr(exc))
                    await self._teardown()
                    continue
                self._log.info(
                    "realtime reconnected and rejoined",
                    attempt=attempt,
                    channels=len(self._channels),
                    url=_redact(self.url),
                )
                break

    async def _teardown(self) -> None:
        """Drop the current client: timers, pending pushes, socket, tasks."""
        client, self._client = self._client, None
        self._channels = {}
        self._ready = False
        self._ready_event.clear()
        if client is None:
            return
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
                async with asyncio.timeout(1.0):
                    await ws.close()
            except TimeoutError:
                ws.transport.abort()
            except Exception as exc:
                self._log.debug("websocket close failed", error=repr(exc))
        try:
            await client.close()
        except Exception as exc:
            self._log.debug("client close failed", error=repr(exc))
