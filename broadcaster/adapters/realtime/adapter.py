"""The Supabase Realtime adapter (docs/wire-format.md), on the official clients.

Each category has a channel ``<prefix>:<category lowercase>`` joined with
broadcast ``ack: true`` (and ``private: true`` with ``private=True``). Events
are batched per channel (``batch_ms``, ``batch_max``, ``batch_bytes``) and each
batch is one ``broadcast`` push
``{"type": "broadcast", "event": "events", "payload": {"events": [...]}}``
whose ``phx_reply`` is the acknowledgement. Many pushes are in flight at once.
A channel's events wait for company only while one of its pushes awaits its
reply (Nagle's rule), and never longer than ``batch_ms``: at low rates every
event goes at once, under load a batch fills while the acks travel.

Connection handling is ours, not the client's: the client's own
auto-reconnect runs *inside* ``push()`` when a write fails (blocking the
ordered send path for its whole backoff, then dropping the frame) and gives up
after ``max_retries``. So every connection is made with ``auto_reconnect=False``
and a supervisor (:class:`~.link.RealtimeLink`) replaces a lost connection with
a fresh client, rejoining every channel, with capped exponential backoff, until
``close()``. While it is down, ``send()`` fails fast with
:class:`~broadcaster.exceptions.AdapterUnavailable`; nothing is buffered.

Quotas (docs/configuration.md, ``REALTIME_PLAN``): pushes are paced to a
message rate, and an event too large for the plan's payload limit even alone
is refused without being sent. When the server refuses anyway, the refusal is
a quota, not an outage: a push refused as too large is split and retried (one
event alone is refused for good, :class:`~broadcaster.exceptions.EventsRefused`);
a refusal for rate (an error reply, or a channel the server shuts with a
``system`` error) lowers the adapter's own rate cap and fails what is waiting
with :class:`~broadcaster.exceptions.AdapterThrottled`, which the lane retries
after the pause and the breaker does not count. Supabase refuses for rate only
by shutting channels that receive messages, which the adapter's own never
do: its canary channel (:mod:`.canary`) does, and while the project is over
its rate (from the canary's shutdown until its pings come back) ``send()``
is throttled at once, pushing nothing, since every copy would be lost.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson
import structlog
from supabase import AsyncClient

from ...events import Category, EventRecord
from ...exceptions import (
    AdapterTimeout,
    AdapterUnavailable,
    ConfigError,
)
from ...realtime_plan import (
    CANARY_INTERVAL_S,
    PAYLOAD_TOO_LARGE,
    RealtimeLimits,
)
from ..base import Adapter, AdapterHealth
from .batching import MAX_PACED_WAIT_S, ChannelQueue, Inflight, Item, Pacer, Waiter
from .canary import Canary
from .client_glue import PreEncodedPushClient, push_broadcast
from .health import RealtimeHealth
from .link import BROADCAST_EVENT, RealtimeLink, _redact, channel_topic, normalize_realtime_url
from .outcomes import PushOutcomes, with_cause

if TYPE_CHECKING:
    from ...settings import Settings

__all__ = ["RealtimeAdapter"]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")


class RealtimeAdapter(PushOutcomes, Adapter):
    """Delivers events to Supabase Realtime broadcast channels (docs/wire-format.md).

    ``url`` is the project URL (or its Realtime endpoint, ``.../realtime/v1``),
    ``key`` the project's API key (the service key in production).

    ``send(batch)`` returns when every event of ``batch`` is acknowledged.
    It raises :class:`AdapterUnavailable` at once while not connected (never
    buffers), and for events in flight when the connection drops;
    :class:`AdapterRejected` if the server answers a push with an error;
    :class:`AdapterTimeout` if no answer comes within ``ack_timeout_s``;
    :class:`AdapterThrottled` after a refusal for rate (for ``throttle_s``,
    and while the connection comes back from a channel the server shut for
    rate); :class:`EventsRefused` when some events can never fit in a push
    (larger than ``max_event_bytes``, or refused by the server as too large
    alone) and every other event was delivered. Overlapping ``send()`` calls
    put their events on each channel in the order the calls began (events are
    queued before the first ``await``).

    ``start()`` raises :class:`AdapterUnavailable` if the first connection
    fails, but keeps reconnecting in the background until ``close()``, so a
    caller that retries ``send()`` gets through once the server is up.
    ``batch_ms`` is the longest an event waits for others to share its push,
    and only while a push of its channel awaits its reply (0: never waits).
    ``max_messages_per_s`` caps pushes per second over all channels (0: no
    cap); a refusal for rate lowers the cap below it (and below the rate
    refused) and it climbs back slowly. ``canary_s``: how often the canary
    channel is pinged while pushing (0: no canary; the adapter then learns
    of an excess only if the server refuses a push itself).
    """

    name = "realtime"

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        channel_prefix: str = "events",
        batch_ms: float = 5.0,
        batch_max: int = 100,
        batch_bytes: int = 200_000,
        max_messages_per_s: float = 0.0,
        max_event_bytes: int | None = None,
        private: bool = False,
        ack_timeout_s: float = 10.0,
        throttle_s: float = 1.0,
        canary_s: float = CANARY_INTERVAL_S,
        connect_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        poll_s: float = 0.5,
    ) -> None:
        if batch_max < 1 or batch_bytes < 1 or batch_ms < 0 or max_messages_per_s < 0:
            raise ValueError("batch_max and batch_bytes must be >= 1, rates and times >= 0")
        if max_event_bytes is not None and max_event_bytes < 1:
            raise ValueError("max_event_bytes must be >= 1")
        if canary_s < 0:
            raise ValueError("canary_s must be >= 0")
        if not key:
            raise ConfigError("SUPABASE_KEY", "(unset)", "the project's API key is required")
        self.url = normalize_realtime_url(url)
        self._key = key
        self.channel_prefix = channel_prefix
        self._batch_s = batch_ms / 1000.0
        self._batch_max = batch_max
        self._batch_bytes = batch_bytes
        self._max_event = max_event_bytes
        self._private = private
        self._pacer = Pacer(self.name, max_messages_per_s, throttle_s)
        self._ack_timeout = ack_timeout_s
        self._connect_timeout = connect_timeout_s
        self._reconnect_initial = reconnect_initial_s
        self._reconnect_max = reconnect_max_s
        self._poll_s = poll_s
        self._topics = {cat: channel_topic(channel_prefix, cat) for cat in Category}
        self._canary = (
            Canary(channel_topic(channel_prefix, "canary"), canary_s, ack_timeout_s)
            if canary_s > 0
            else None
        )
        self._channels: dict[Category, ChannelQueue] = {}
        self._inflight: set[Inflight] = set()
        self._link: RealtimeLink | None = None
        self._closed = False
        #: Pushes sent and events acknowledged so far (for health and tests).
        self.pushes = 0
        self.events_acked = 0
        #: Refusals by reason: events refused as too large, pushes refused for rate.
        self.refusals: Counter[str] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> RealtimeAdapter:
        """Build from :class:`~broadcaster.settings.Settings` (docs/configuration.md).

        ``url`` defaults to ``settings.realtime_url()``; raises ConfigError if
        neither is set (the caller starts a local server in that case), or
        without ``SUPABASE_KEY``. The batch sizes and the message rate are
        those of ``settings.realtime_limits()`` (``REALTIME_PLAN``).
        """
        endpoint = url if url is not None else settings.realtime_url()
        if endpoint is None:
            raise ConfigError("SUPABASE_URL", None, "no Realtime URL configured")
        if settings.supabase_key is None:
            raise ConfigError("SUPABASE_KEY", "(unset)", "required with SUPABASE_URL")
        limits = settings.realtime_limits()
        return cls(
            endpoint,
            settings.supabase_key.get_secret_value(),
            channel_prefix=settings.realtime_channel_prefix,
            batch_ms=settings.realtime_batch_ms,
            batch_max=limits.batch_max,
            batch_bytes=limits.batch_bytes,
            max_messages_per_s=limits.max_messages_per_s,
            max_event_bytes=limits.max_event_bytes,
            private=settings.realtime_private_channels,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect and join every category channel. See the class doc."""
        if self._link is not None:
            if not self._link.ready:
                raise AdapterUnavailable(self.name, f"still connecting ({self._link.last_error})")
            return
        self._closed = False
        loop = asyncio.get_running_loop()
        for cat, topic in self._topics.items():
            queue = ChannelQueue(topic)
            queue.task = loop.create_task(self._run_channel(queue), name=f"realtime-{topic}")
            self._channels[cat] = queue
        self._link = RealtimeLink(
            self.url,
            self._key,
            list(self._topics.values()),
            ack=True,
            private=self._private,
            on_lost=self._on_lost,
            canary_topic=self._canary.topic if self._canary is not None else None,
            on_canary=self._canary.on_echo if self._canary is not None else None,
            on_ready=self._canary.on_joined if self._canary is not None else None,
            connect_timeout_s=self._connect_timeout,
            reconnect_initial_s=self._reconnect_initial,
            reconnect_max_s=self._reconnect_max,
            poll_s=self._poll_s,
            logger=log,
            client_factory=PreEncodedPushClient,
        )
        if self._canary is not None:
            self._canary.start(lambda: self._link, lambda: self.pushes)
        try:
            await self._link.start(keep_trying=True)
        except Exception as exc:
            log.warning("realtime connect failed; retrying in background", error=repr(exc))
            raise AdapterUnavailable(self.name, f"cannot connect: {exc!r}") from exc
        log.info(
            "realtime connected",
            url=_redact(self.url),
            channels=len(self._topics),
            private=self._private,
        )

    async def close(self) -> None:
        """Fail what is pending with AdapterUnavailable and disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        channels = list(self._channels.values())
        for channel in channels:
            if channel.task is not None:
                channel.task.cancel()
        await asyncio.gather(*(c.task for c in channels if c.task), return_exceptions=True)
        if self._canary is not None:
            await self._canary.close()
        self._fail_everything(lambda: AdapterUnavailable(self.name, "adapter closed"))
        self._channels.clear()
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        log.info("realtime adapter closed")

    def health(self) -> AdapterHealth[RealtimeHealth]:
        link = self._link
        connected = link is not None and link.ready
        if link is None:
            detail = "closed" if self._closed else "not started"
        else:
            detail = "connected" if connected else f"reconnecting: {link.last_error}"
        return AdapterHealth(
            name=self.name,
            connected=connected,
            detail=detail,
            extra=RealtimeHealth(
                url=_redact(self.url),
                private_channels=self._private,
                joined_channels=link.joined_topics() if link else [],
                outstanding_acks=len(self._inflight),
                queued_events=sum(len(c.queue) for c in self._channels.values()),
                pushes=self.pushes,
                events_acked=self.events_acked,
                max_messages_per_s=self.max_messages_per_s(),
                batch_max=self._batch_max,
                batch_bytes=self._batch_bytes,
                max_event_bytes=self._max_event,
                throttled_for_s=self._throttled_for(),
                refused=dict(self.refusals),
                reconnects=max(0, link.connects - 1) if link else 0,
                canary=self._canary.health() if self._canary is not None else None,
            ),
        )

    @property
    def outstanding_acks(self) -> int:
        """Pushes sent and not yet answered."""
        return len(self._inflight)

    @property
    def link(self) -> RealtimeLink | None:
        """The supervised connection (for tests and diagnostics)."""
        return self._link

    @property
    def project(self) -> AsyncClient | None:
        """The project's ``supabase`` client once started (its ``realtime`` is
        the live connection; its ``auth`` refreshes the access token)."""
        return self._link.project if self._link is not None else None

    @property
    def private(self) -> bool:
        """Whether the channels are joined as private ones."""
        return self._private

    @property
    def batch_ms(self) -> float:
        """The longest an event waits for others to share its push."""
        return self._batch_s * 1000.0

    @property
    def limits(self) -> RealtimeLimits:
        """The caps in force now: ``batch_bytes`` falls when the server refuses a
        push as too large, the message rate when it refuses for rate."""
        return RealtimeLimits(
            self.max_messages_per_s(), self._batch_max, self._batch_bytes, self._max_event
        )

    def _throttled_for(self) -> float:
        """Seconds left of the pause after a refusal for rate (0: none)."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0
        return round(self._pacer.paused_for(now), 3)

    def max_messages_per_s(self) -> float:
        """The message-rate cap now (0: none): the configured one, or lower
        after a refusal for rate."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # no loop: nothing was refused on one either
            return self._pacer.cap(0.0)
        return self._pacer.cap(now)

    # -- sending -----------------------------------------------------------------

    async def send(self, batch: Sequence[EventRecord]) -> None:
        """Queue ``batch`` on its channels and wait for every ack. See the class doc."""
        if not batch:
            return
        link = self._link
        if link is None or self._closed:
            raise AdapterUnavailable(self.name, "not started")
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pacer.paused_for(now) > 0:
            raise self._pacer.error(now)
        canary = self._canary
        if canary is not None and link.ready and not canary.gate.is_open(now):
            # The project is over its rate: a push would shut the channels
            # of those who get it. Wait for the canary, not the pause.
            raise self._pacer.error(now, canary.interval_s)
        if not link.ready:
            # Back from a channel the server shut for rate: not an outage
            # unless the connection stays away longer than a reconnect takes.
            grace = self._pacer.until + self._connect_timeout + self._reconnect_max
            if now < grace:
                raise self._pacer.error(now, self._pacer.pause_s)
            raise AdapterUnavailable(self.name, f"not connected ({link.last_error})")
        batch_max, batch_bytes, max_event = self._batch_max, self._batch_bytes, self._max_event
        ahead = sum(c.pushes_queued(batch_max, batch_bytes) for c in self._channels.values())
        if ahead:
            wait_s = self._pacer.wait_s(ahead + -(-len(batch) // batch_max), now)
            if wait_s > MAX_PACED_WAIT_S:
                # Behind the cap for longer than a send should take: held back
                # by the lane, not queued here where its wait would look slow.
                raise self._pacer.paced_error(wait_s)
        waiter = Waiter(self.name, loop.create_future(), len(batch))
        # No await before every event is queued: this is what keeps pushes in
        # the order the send() calls began.
        for record in batch:
            size = len(record.wire)
            if max_event is not None and size > max_event:
                self.refusals[PAYLOAD_TOO_LARGE] += 1
                detail = (
                    f"event {record.sequence_id} is {size} bytes; a push carries at most"
                    f" {max_event} bytes of events under the plan's payload limit"
                )
                log.warning("event refused: too large for a push", sequence_id=record.sequence_id)
                waiter.refuse(record.sequence_id, PAYLOAD_TOO_LARGE, detail)
                continue
            self._channels[record.category].add((record, waiter), batch_max, batch_bytes)
        await waiter.future

    async def _run_channel(self, channel: ChannelQueue) -> None:
        while True:
            await channel.nonempty.wait()
            if self._batch_s > 0 and channel.inflight and not channel.go.is_set():
                # A push of this channel awaits its reply: gather what comes
                # until a reply is in, the batch is full, or batch_ms passed —
                # whichever is first. With nothing in flight the events go at
                # once: a fixed window cost every event up to batch_ms of
                # latency even at low rates, while under load the replies come
                # no faster than pushes go out, so batches still fill.
                try:
                    async with asyncio.timeout(self._batch_s):
                        await channel.go.wait()
                except TimeoutError:
                    pass
            await self._pacer.wait_turn()
            items = channel.take(self._batch_max, self._batch_bytes)
            if not items:
                continue
            try:
                await self._push(channel, items)
            except Exception as exc:
                # A bug here must fail these sends, not kill the channel's task
                # and leave every later send() on it waiting forever.
                log.exception("realtime push failed unexpectedly", topic=channel.topic)
                reason = f"internal error: {exc!r}"
                for _, waiter in items:
                    waiter.fail(with_cause(AdapterUnavailable(self.name, reason), exc))

    async def _push(self, queue: ChannelQueue, items: list[Item]) -> None:
        waiters: dict[Waiter, int] = {}
        size = 0
        for record, waiter in items:
            waiters[waiter] = waiters.get(waiter, 0) + 1
            size += len(record.wire)
        inflight = Inflight(queue, items, size, waiters)
        queue.inflight += 1  # _finish takes it back, once, however the push ends
        link = self._link
        channel = link.channel(queue.topic) if link is not None else None
        if channel is None:
            self._settle(inflight, lambda: AdapterUnavailable(self.name, "not connected"))
            return
        payload = {
            "type": "broadcast",
            "event": BROADCAST_EVENT,
            # Fragments: the sealed wire bytes go into the frame as they are
            # (PreEncodedPushClient), in sequence order.
            "payload": {"events": [orjson.Fragment(record.wire) for record, _ in items]},
        }
        # Registered before the write: a loss noticed during the write fails it.
        self._inflight.add(inflight)
        try:
            push = await push_broadcast(
                channel,
                payload,
                self._ack_timeout,
                on_ok=lambda: self._settle(inflight, None),
                on_error=lambda reply: self._on_error_reply(inflight, reply),
                on_timeout=lambda: self._settle(
                    inflight,
                    lambda: AdapterTimeout(
                        self.name, f"{queue.topic}: no ack within {self._ack_timeout}s"
                    ),
                ),
            )
        except Exception as exc:
            cause = exc
            self._settle(
                inflight,
                lambda: with_cause(AdapterUnavailable(self.name, f"push failed: {cause!r}"), cause),
            )
            return
        self.pushes += 1
        self._pacer.pushed(asyncio.get_running_loop().time())
        if inflight.done:
            push.destroy()
            return
        inflight.push = push
