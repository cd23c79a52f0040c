"""The Supabase Realtime adapter (docs/wire-format.md), on the official ``realtime`` client.

Each category has a channel ``<prefix>:<category lowercase>`` joined with
broadcast ``ack: true``. Events are batched per channel (``batch_ms``,
``batch_max``, ``batch_bytes``) and each batch is one ``broadcast`` push
``{"type": "broadcast", "event": "events", "payload": {"events": [...]}}``
whose ``phx_reply`` is the acknowledgement. Many pushes are in flight at once.
A channel's events wait for company only while one of its pushes awaits its
reply (Nagle's rule), and never longer than ``batch_ms``: at low rates every
event goes at once, under load a batch fills while the acks travel.

Connection handling is ours, not the client's: the client's own
auto-reconnect runs *inside* ``push()`` when a write fails (blocking the
ordered send path for its whole backoff, then dropping the frame) and gives up
after ``max_retries``. So every connection is made with ``auto_reconnect=False``
and a supervisor (:class:`RealtimeLink`) replaces a lost connection with a
fresh client, rejoining every channel, with capped exponential backoff, until
``close()``. While it is down, ``send()`` fails fast with
:class:`~broadcaster.exceptions.AdapterUnavailable`; nothing is buffered.

The connection itself (client, channels, supervisor) is in
:mod:`.realtime_link`, re-exported here.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import orjson
import structlog
from realtime import RealtimeAcknowledgementStatus
from realtime._async.push import AsyncPush

from ..events import Category, EventRecord
from ..exceptions import (
    AdapterError,
    AdapterRejected,
    AdapterTimeout,
    AdapterUnavailable,
    ConfigError,
)
from .base import Adapter, AdapterHealth
from .realtime_link import (
    BROADCAST_EVENT,
    PreEncodedPushClient,
    RealtimeLink,
    _redact,
    broadcast_channel_params,
    channel_topic,
    normalize_realtime_url,
)

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "BROADCAST_EVENT",
    "PreEncodedPushClient",
    "RealtimeAdapter",
    "RealtimeLink",
    "broadcast_channel_params",
    "channel_topic",
    "normalize_realtime_url",
]

log = structlog.get_logger("broadcaster.adapters.realtime", adapter="realtime")


class _Waiter:
    """One ``send()`` call: resolved when all its events are acked."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future[None], remaining: int) -> None:
        self.future = future
        self.remaining = remaining

    def ack(self, count: int) -> None:
        self.remaining -= count
        if self.remaining <= 0 and not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: AdapterError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False, slots=True)
class _Inflight:
    """One push waiting for its reply."""

    lane: _Lane
    size: int
    waiters: dict[_Waiter, int]
    push: AsyncPush | None = None
    done: bool = False


@dataclass(eq=False, slots=True)
class _Lane:
    """The per-channel queue; one flusher task pushes from it, in order."""

    topic: str
    queue: deque[tuple[EventRecord, _Waiter]] = field(default_factory=deque)
    queued_bytes: int = 0
    nonempty: asyncio.Event = field(default_factory=asyncio.Event)
    #: Push without waiting for more: the batch is full, or a reply came in
    #: since the last push. Cleared by each take that leaves less than a batch.
    go: asyncio.Event = field(default_factory=asyncio.Event)
    #: Pushes of this channel awaiting their reply.
    inflight: int = 0
    task: asyncio.Task[None] | None = None


class _TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; FIFO waiters."""

    def __init__(self, rate: float, burst: float = 1.0) -> None:
        self._rate = rate
        self._burst = max(1.0, burst)
        self._tokens = self._burst
        self._last = asyncio.get_running_loop().time()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            while True:
                now = loop.time()
                self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self._rate)


class RealtimeAdapter(Adapter):
    """Delivers events to Supabase Realtime broadcast channels (docs/wire-format.md).

    ``url`` is the Realtime endpoint (``<SUPABASE_URL>/realtime/v1``; a bare
    project URL gets that path appended), ``key`` the project's API key.

    ``send(batch)`` returns when every event of ``batch`` is acknowledged.
    It raises :class:`AdapterUnavailable` at once while not connected (never
    buffers), and for events in flight when the connection drops;
    :class:`AdapterRejected` if the server answers a push with an error;
    :class:`AdapterTimeout` if no answer comes within ``ack_timeout_s``.
    Overlapping ``send()`` calls put their events on each channel in the
    order the calls began (events are queued before the first ``await``).

    ``start()`` raises :class:`AdapterUnavailable` if the first connection
    fails, but keeps reconnecting in the background until ``close()``, so a
    caller that retries ``send()`` gets through once the server is up.
    ``batch_ms`` is the longest an event waits for others to share its push,
    and only while a push of its channel awaits its reply (0: never waits).
    ``max_messages_per_s`` caps pushes per second over all channels (0: no cap).
    """

    name = "realtime"

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        channel_prefix: str = "events",
        batch_ms: float = 5.0,
        batch_max: int = 100,
        batch_bytes: int = 200_000,
        max_messages_per_s: float = 0.0,
        ack_timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        reconnect_initial_s: float = 0.1,
        reconnect_max_s: float = 5.0,
        poll_s: float = 0.5,
    ) -> None:
        if batch_max < 1 or batch_bytes < 1 or batch_ms < 0 or max_messages_per_s < 0:
            raise ValueError("batch_max and batch_bytes must be >= 1, rates and times >= 0")
        self.url = normalize_realtime_url(url)
        self._key = key
        self.channel_prefix = channel_prefix
        self._batch_s = batch_ms / 1000.0
        self._batch_max = batch_max
        self._batch_bytes = batch_bytes
        self._rate = max_messages_per_s
        self._ack_timeout = ack_timeout_s
        self._connect_timeout = connect_timeout_s
        self._reconnect_initial = reconnect_initial_s
        self._reconnect_max = reconnect_max_s
        self._poll_s = poll_s
        self._topics = {cat: channel_topic(channel_prefix, cat) for cat in Category}
        self._lanes: dict[Category, _Lane] = {}
        self._inflight: set[_Inflight] = set()
        self._link: RealtimeLink | None = None
        self._bucket: _TokenBucket | None = None
        self._closed = False
        #: Pushes sent and events acknowledged so far (for health and tests).
        self.pushes = 0
        self.events_acked = 0

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> RealtimeAdapter:
        """Build from :class:`~broadcaster.settings.Settings` (docs/configuration.md).

        ``url`` defaults to ``settings.realtime_url()``; raises ConfigError if
        neither is set (the caller starts a local server in that case).
        """
        endpoint = url if url is not None else settings.realtime_url()
        if endpoint is None:
            raise ConfigError("SUPABASE_URL", None, "no Realtime URL configured")
        key = settings.supabase_key.get_secret_value() if settings.supabase_key else None
        return cls(
            endpoint,
            key,
            channel_prefix=settings.realtime_channel_prefix,
            batch_ms=settings.realtime_batch_ms,
            batch_max=settings.realtime_batch_max,
            batch_bytes=settings.realtime_batch_bytes,
            max_messages_per_s=settings.realtime_max_messages_per_s,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Connect and join every category channel. See the class doc."""
        if self._link is not None:
            if not self._link.ready:
                raise AdapterUnavailable(self.name, f"still connecting ({self._link.last_error})")
            return
        self._closed = False
        self._bucket = _TokenBucket(self._rate) if self._rate > 0 else None
        loop = asyncio.get_running_loop()
        for cat, topic in self._topics.items():
            lane = _Lane(topic)
            lane.task = loop.create_task(self._run_lane(lane), name=f"realtime-lane-{topic}")
            self._lanes[cat] = lane
        self._link = RealtimeLink(
            self.url,
            self._key,
            list(self._topics.values()),
            ack=True,
            on_lost=self._on_lost,
            connect_timeout_s=self._connect_timeout,
            reconnect_initial_s=self._reconnect_initial,
            reconnect_max_s=self._reconnect_max,
            poll_s=self._poll_s,
            logger=log,
            client_factory=PreEncodedPushClient,
        )
        try:
            await self._link.start(keep_trying=True)
        except Exception as exc:
            log.warning("realtime connect failed; retrying in background", error=repr(exc))
            raise AdapterUnavailable(self.name, f"cannot connect: {exc!r}") from exc
        log.info("realtime connected", url=_redact(self.url), channels=len(self._topics))

    async def close(self) -> None:
        """Fail what is pending with AdapterUnavailable and disconnect. Idempotent."""
        if self._closed:
            return
        self._closed = True
        lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*(ln.task for ln in lanes if ln.task), return_exceptions=True)
        self._fail_everything("adapter closed")
        self._lanes.clear()
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        log.info("realtime adapter closed")

    def health(self) -> AdapterHealth:
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
            extra={
                "url": _redact(self.url),
                "joined_channels": link.joined_topics() if link else [],
                "outstanding_acks": len(self._inflight),
                "queued_events": sum(len(ln.queue) for ln in self._lanes.values()),
                "pushes": self.pushes,
                "events_acked": self.events_acked,
                "reconnects": max(0, link.connects - 1) if link else 0,
            },
        )

    @property
    def outstanding_acks(self) -> int:
        """Pushes sent and not yet answered."""
        return len(self._inflight)

    @property
    def link(self) -> RealtimeLink | None:
        """The supervised connection (for tests and diagnostics)."""
        return self._link

    # -- sending -----------------------------------------------------------------

    async def send(self, batch: Sequence[EventRecord]) -> None:
        """Queue ``batch`` on its channels and wait for every ack. See the class doc."""
        if not batch:
            return
        link = self._link
        if link is None or self._closed:
            raise AdapterUnavailable(self.name, "not started")
        if not link.ready:
            raise AdapterUnavailable(self.name, f"not connected ({link.last_error})")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), len(batch))
        # No await before every event is queued: this is what keeps pushes in
        # the order the send() calls began.
        batch_max, batch_bytes = self._batch_max, self._batch_bytes
        for record in batch:
            lane = self._lanes[record.category]
            lane.queue.append((record, waiter))
            lane.queued_bytes += len(record.wire)
            lane.nonempty.set()
            if len(lane.queue) >= batch_max or lane.queued_bytes >= batch_bytes:
                lane.go.set()
        await waiter.future

    async def _run_lane(self, lane: _Lane) -> None:
        while True:
            await lane.nonempty.wait()
            if self._batch_s > 0 and lane.inflight and not lane.go.is_set():
                # A push of this channel awaits its reply: gather what comes
                # until a reply is in, the batch is full, or batch_ms passed —
                # whichever is first. With nothing in flight the events go at
                # once: a fixed window cost every event up to batch_ms of
                # latency even at low rates (figures in loadtests/HISTORY.md),
                # while under load the replies come no faster than pushes go
                # out, so batches still fill.
                try:
                    async with asyncio.timeout(self._batch_s):
                        await lane.go.wait()
                except TimeoutError:
                    pass
            if self._bucket is not None:
                await self._bucket.acquire()
            items = self._take(lane)
            if not items:
                continue
            try:
                await self._push(lane, items)
            except Exception as exc:
                # A bug here must fail these sends, not kill the lane and
                # leave every later send() on this channel waiting forever.
                log.exception("realtime push failed unexpectedly", topic=lane.topic)
                reason = f"internal error: {exc!r}"
                for _, waiter in items:
                    waiter.fail(_with_cause(AdapterUnavailable(self.name, reason), exc))

    def _take(self, lane: _Lane) -> list[tuple[EventRecord, _Waiter]]:
        items: list[tuple[EventRecord, _Waiter]] = []
        size = 0
        queue = lane.queue
        while queue and len(items) < self._batch_max:
            record = queue[0][0]
            n = len(record.wire)
            # Always take at least one event, even one larger than batch_bytes.
            if items and size + n > self._batch_bytes:
                break
            items.append(queue.popleft())
            size += n
        lane.queued_bytes -= size
        if not queue:
            lane.nonempty.clear()
            lane.queued_bytes = 0
        if len(queue) < self._batch_max and lane.queued_bytes < self._batch_bytes:
            lane.go.clear()
        return items

    async def _push(self, lane: _Lane, items: list[tuple[EventRecord, _Waiter]]) -> None:
        waiters: dict[_Waiter, int] = {}
        for _, waiter in items:
            waiters[waiter] = waiters.get(waiter, 0) + 1
        inflight = _Inflight(lane, len(items), waiters)
        lane.inflight += 1  # _settle takes it back, once, however the push ends
        link = self._link
        channel = link.channel(lane.topic) if link is not None else None
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
            # The client types timeout as int seconds; it only feeds asyncio.sleep.
            push = await channel.push("broadcast", payload, timeout=cast(int, self._ack_timeout))
        except Exception as exc:
            cause = exc
            self._settle(
                inflight,
                lambda: _with_cause(
                    AdapterUnavailable(self.name, f"push failed: {cause!r}"), cause
                ),
            )
            return
        self.pushes += 1
        if inflight.done:
            push.destroy()
            return
        inflight.push = push
        push.receive(RealtimeAcknowledgementStatus.Ok, lambda _resp: self._settle(inflight, None))
        push.receive(
            RealtimeAcknowledgementStatus.Error,
            lambda resp: self._settle(
                inflight,
                lambda: AdapterRejected(self.name, f"{lane.topic}: server replied error {resp}"),
            ),
        )
        push.receive(
            RealtimeAcknowledgementStatus.Timeout,
            lambda: self._settle(
                inflight,
                lambda: AdapterTimeout(
                    self.name, f"{lane.topic}: no ack within {self._ack_timeout}s"
                ),
            ),
        )

    def _settle(self, inflight: _Inflight, error: Callable[[], AdapterError] | None) -> None:
        if inflight.done:
            return
        inflight.done = True
        self._inflight.discard(inflight)
        lane = inflight.lane
        lane.inflight -= 1
        lane.go.set()
        if error is None:
            self.events_acked += inflight.size
            for waiter, count in inflight.waiters.items():
                waiter.ack(count)
        else:
            if inflight.push is not None:
                inflight.push.destroy()
            for waiter in inflight.waiters:
                waiter.fail(error())

    def _on_lost(self, reason: str) -> None:
        self._fail_everything(f"connection lost: {reason}")

    def _fail_everything(self, reason: str) -> None:
        def error() -> AdapterError:
            return AdapterUnavailable(self.name, reason)

        for inflight in list(self._inflight):
            self._settle(inflight, error)
        for lane in self._lanes.values():
            while lane.queue:
                _, waiter = lane.queue.popleft()
                waiter.fail(error())
            lane.queued_bytes = 0
            lane.nonempty.clear()
            lane.go.clear()


def _with_cause(exc: AdapterError, cause: BaseException) -> AdapterError:
    exc.__cause__ = cause
    return exc
