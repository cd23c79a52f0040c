"""The connection to Supabase Realtime: channel names and options, and the
supervisor (:class:`RealtimeLink`) that connects through the project's
``supabase`` client, replaces a lost connection and rejoins every channel.
Shared by the adapter and the Realtime consumer. What it needs of the clients
beyond their public API is in :mod:`.client_glue`.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from typing import Any, Final
from urllib.parse import urlparse, urlunparse

import structlog
from realtime import (
    AsyncRealtimeChannel,
    BroadcastPayload,
    RealtimeChannelOptions,
    RealtimeSubscribeStates,
)
from supabase import AsyncClient

from ...events import Category
from ...exceptions import ConfigError
from ...realtime_plan import refusal_reason
from .client_glue import (
    PreEncodedPushClient,
    create_project_client,
    discard_client,
    ensure_supported_clients,
    install_connection,
)

__all__ = [
    "BROADCAST_EVENT",
    "CANARY_EVENT",
    "RealtimeLink",
    "broadcast_channel_params",
    "channel_topic",
    "normalize_realtime_url",
]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")

#: The broadcast event name every batch is sent under.
BROADCAST_EVENT: Final = "events"
#: The broadcast event name of the adapter's canary pings.
CANARY_EVENT: Final = "canary"
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


def broadcast_channel_params(
    *, ack: bool, private: bool = False, self_broadcast: bool = False
) -> RealtimeChannelOptions:
    """Join params (docs/wire-format.md; a fresh dict: the client mutates what it is given).

    ``private``: join as a private channel, which the server authorises with
    the access token the client sends on join (and again on each refresh).
    ``self_broadcast``: the server sends this client's own broadcasts back to it.
    """
    return {
        "config": {
            "broadcast": {"ack": ack, "self": self_broadcast},
            "presence": {"key": "", "enabled": False},
            "private": private,
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


class RealtimeLink:
    """One supervised Realtime connection of a Supabase project and its joined channels.

    ``url`` is the project URL or its Realtime endpoint; ``key`` the project's
    API key (a ``ConfigError`` names ``SUPABASE_KEY`` without one). The
    project's client is made with ``supabase.acreate_client`` on
    :meth:`start`; each connection is a Realtime client taken from it
    (:func:`~.client_glue.install_connection`), so token refreshes of its
    auth reach the live connection and survive a reconnect.

    ``start()`` makes the first connection (raising the client's error if it
    cannot) and starts a supervisor that, until ``close()``, notices a lost
    connection or channel (the reader's end, subscribe callbacks, plus a poll
    of the connection and channel states every ``poll_s``), discards the
    client and connects a fresh one with capped exponential backoff, rejoining
    every topic. With ``keep_trying=True``, a failed first connection still
    leaves the supervisor retrying in the background.

    ``on_lost(reason, refusal)`` runs synchronously the moment a loss is
    noticed (fail what is in flight there); ``refusal`` is
    :data:`~broadcaster.realtime_plan.RATE_LIMIT` when the server shut a
    channel for a quota (a ``system`` error), else None. ``on_ready()`` runs
    after each successful (re)join. ``on_broadcast(topic, payload)`` gets
    every ``broadcast_event`` broadcast. ``private`` joins private channels.
    ``canary_topic`` is one more channel, joined with ``self: true`` so that
    what this client broadcasts there comes back to it: ``on_canary()`` runs
    for each :data:`CANARY_EVENT` broadcast received on it.
    ``client_factory`` is the class of each client (:class:`PreEncodedPushClient`
    or a subclass); a connection does not start while it lacks an attribute
    :mod:`.client_glue` relies on.
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        topics: Sequence[str],
        *,
        ack: bool,
        private: bool = False,
        broadcast_event: str = BROADCAST_EVENT,
        on_broadcast: Callable[[str, BroadcastPayload], None] | None = None,
        on_lost: Callable[[str, str | None], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        canary_topic: str | None = None,
        on_canary: Callable[[], None] | None = None,
        connect_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        poll_s: float = 0.5,
        hb_interval_s: int = 25,
        logger: Any = None,
        client_factory: type[PreEncodedPushClient] = PreEncodedPushClient,
    ) -> None:
        if not key:
            raise ConfigError("SUPABASE_KEY", "(unset)", "the project's API key is required")
        self.url = normalize_realtime_url(url)
        self._key = key
        self.topics = tuple(topics)
        self._ack = ack
        self._private = private
        self._event = broadcast_event
        self._on_broadcast = on_broadcast
        self._on_lost = on_lost
        self._on_ready = on_ready
        self._canary_topic = canary_topic
        self._on_canary = on_canary
        self._connect_timeout = connect_timeout_s
        self._backoff_initial = reconnect_initial_s
        self._backoff_max = reconnect_max_s
        self._poll_s = poll_s
        self._hb_interval = hb_interval_s
        self._log = logger if logger is not None else log
        self._client_factory = client_factory
        self._project: AsyncClient | None = None
        self._client: PreEncodedPushClient | None = None
        self._channels: dict[str, AsyncRealtimeChannel] = {}
        self._ready = False
        self._ready_event = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closed = False
        self._next_delay_s: float | None = None
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

    @property
    def project(self) -> AsyncClient | None:
        """The project's ``supabase`` client (None before :meth:`start`): its
        ``realtime`` is the live connection, its ``auth`` refreshes the token."""
        return self._project

    @property
    def private(self) -> bool:
        """Whether the channels are joined as private ones."""
        return self._private

    def channel(self, topic: str) -> AsyncRealtimeChannel | None:
        """The joined channel of ``topic`` while ready, else ``None``."""
        return self._channels.get(topic) if self._ready else None

    def joined_topics(self) -> list[str]:
        return [t for t, ch in self._channels.items() if ch.is_joined] if self._ready else []

    async def wait_ready(self) -> None:
        """Wait until connected and joined (wrap in ``asyncio.timeout``)."""
        await self._ready_event.wait()

    def delay_next_attempt(self, seconds: float) -> None:
        """Make the next reconnect wait at least ``seconds`` (after a quota
        refusal, reconnecting at once would be refused again)."""
        self._next_delay_s = max(self._next_delay_s or 0.0, seconds)

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
        """Stop supervising, close the connection and the project client. Idempotent."""
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
            self._on_lost("closed", None)
        await self._teardown()
        project, self._project = self._project, None
        if project is not None:
            # The auth client's HTTP connection pool (never used without a session).
            await project.auth.close()

    # -- internals ---------------------------------------------------------------

    def _mark_lost(self, reason: str, refusal: str | None = None) -> None:
        if not self._ready:
            return
        self._ready = False
        self._ready_event.clear()
        self.losses += 1
        self.last_error = reason
        self._log.warning(
            "realtime connection lost", reason=reason, refusal=refusal, url=_redact(self.url)
        )
        if self._on_lost is not None:
            self._on_lost(reason, refusal)
        self._lost.set()

    def _state_callback(
        self, client: PreEncodedPushClient, topic: str
    ) -> Callable[[RealtimeSubscribeStates, Exception | None], None]:
        def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
            # Callbacks of a client already replaced are stale: ignore them.
            if client is self._client and state in _FAILED_STATES:
                self._mark_lost(f"channel {topic}: {state.value} {error!r}")

        return on_state

    def _loss_callback(self, client: PreEncodedPushClient) -> Callable[[str], None]:
        def on_connection_lost(reason: str) -> None:
            if client is self._client:
                self._mark_lost(reason)

        return on_connection_lost

    def _refusal_callback(self, client: PreEncodedPushClient) -> Callable[[str, str], None]:
        def on_channel_refused(topic: str, message: str) -> None:
            # Supabase shuts a channel over its project's message rate with a
            # system error, then closes it: a quota, not an outage.
            if client is self._client:
                self._mark_lost(f"channel {topic}: {message}", refusal_reason(message))

        return on_channel_refused

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

    def _canary_callback(self, handler: Callable[[], None]) -> Callable[[BroadcastPayload], None]:
        def on_canary(_payload: BroadcastPayload) -> None:
            # As with any broadcast: an exception must not end the reader.
            try:
                handler()
            except Exception as exc:
                self._log.exception("canary handler failed", error=repr(exc))

        return on_canary

    async def _connect(self) -> None:
        ensure_supported_clients(self._client_factory)
        if self._project is None:
            self._project = await create_project_client(
                self.url, self._key, hb_interval_s=self._hb_interval
            )
        project = self._project
        # auto_reconnect=False: the supervisor reconnects (the client's own
        # reconnect runs inside a failed write, blocking the ordered send path
        # for its backoff); the client's "timeout" is also its join timeout.
        client = install_connection(
            project,
            self._client_factory,
            self._key,
            hb_interval_s=self._hb_interval,
            timeout_s=max(1, math.ceil(self._connect_timeout)),
        )
        client.on_connection_lost = self._loss_callback(client)
        client.on_channel_refused = self._refusal_callback(client)
        self._client = client
        async with asyncio.timeout(self._connect_timeout):
            await client.connect()
            channels: dict[str, AsyncRealtimeChannel] = {}
            heard: set[str] = set()
            for topic in self.topics:
                params = broadcast_channel_params(ack=self._ack, private=self._private)
                channel = project.channel(topic, params)
                if self._on_broadcast is not None:
                    channel.on_broadcast(self._event, self._broadcast_callback(topic))
                    heard.add(channel.topic)
                channels[topic] = channel
            if self._canary_topic is not None:
                params = broadcast_channel_params(
                    ack=self._ack, private=self._private, self_broadcast=True
                )
                channel = project.channel(self._canary_topic, params)
                if self._on_canary is not None:
                    channel.on_broadcast(CANARY_EVENT, self._canary_callback(self._on_canary))
                    heard.add(channel.topic)
                channels[self._canary_topic] = channel
            # Only channels a callback listens on need their broadcasts read.
            client.heard_topics = frozenset(heard)
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

    def _healthy(self) -> bool:
        client = self._client
        return (
            client is not None
            and client.is_connected
            and client.reading
            and client.socket_open
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
                delay *= random.uniform(0.5, 1.0)
                pause, self._next_delay_s = self._next_delay_s, None
                await asyncio.sleep(max(delay, pause or 0.0))
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
        if client is not None:
            client.on_connection_lost = None
            client.on_channel_refused = None
            await discard_client(client)
