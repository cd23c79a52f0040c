"""The Realtime adapter's batching: each channel's queue of events, the pushes
in flight, the ``send()`` calls waiting on them, and the pacing of pushes
under the message-rate quota."""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ...events import EventRecord
from ...exceptions import AdapterError, AdapterThrottled, EventsRefused
from ...realtime_plan import RateGovernor
from .client_glue import PushHandle

__all__ = [
    "MAX_PACED_WAIT_S",
    "ChannelQueue",
    "Inflight",
    "Item",
    "Pacer",
    "PushMeter",
    "TokenBucket",
    "Waiter",
]

#: Seconds of push history :class:`PushMeter` measures over.
METER_S: Final = 5
#: The longest a ``send()`` may expect its pushes to wait behind the cap; one
#: that would wait longer is held back instead (:meth:`Pacer.paced_error`).
#: The breaker judges a send by how long it takes, and a wait the adapter
#: imposes on itself says nothing about the far side's health.
MAX_PACED_WAIT_S: Final = 0.1
#: Seconds of the cap's pushes :class:`Pacer` lets go at once after a lull.
#: Supabase judges a mean over ticks of seconds, which a quarter of a
#: second's budget sent at once barely moves; spacing every push instead
#: makes the events of a burst wait behind the cap, and the breaker takes that
#: wait for slowness. Much more at once, and the acknowledgements of the last
#: pushes of the burst come back late.
BURST_S: Final = 0.25


class Waiter:
    """One ``send()`` call: resolved when each of its events is acked or
    refused, failed by the first error of any of them."""

    __slots__ = ("adapter", "detail", "future", "refused", "remaining")

    def __init__(self, adapter: str, future: asyncio.Future[None], remaining: int) -> None:
        self.adapter = adapter
        self.future = future
        self.remaining = remaining
        self.refused: dict[int, str] = {}
        self.detail = ""

    def ack(self, count: int) -> None:
        self.remaining -= count
        self._maybe_done()

    def refuse(self, sequence_id: int, reason: str, detail: str) -> None:
        self.refused[sequence_id] = reason
        self.detail = self.detail or detail
        self.remaining -= 1
        self._maybe_done()

    def fail(self, exc: AdapterError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)

    def _maybe_done(self) -> None:
        if self.remaining > 0 or self.future.done():
            return
        if self.refused:
            self.future.set_exception(EventsRefused(self.adapter, self.refused, self.detail))
        else:
            self.future.set_result(None)


#: One queued event and the send() call it belongs to.
Item = tuple[EventRecord, Waiter]


@dataclass(eq=False, slots=True)
class ChannelQueue:
    """One channel's queue; one task pushes from it, in order."""

    topic: str
    queue: deque[Item] = field(default_factory=deque)
    queued_bytes: int = 0
    nonempty: asyncio.Event = field(default_factory=asyncio.Event)
    #: Push without waiting for more: the batch is full, or a reply came in
    #: since the last push. Cleared by each take that leaves less than a batch.
    go: asyncio.Event = field(default_factory=asyncio.Event)
    #: Pushes of this channel awaiting their reply.
    inflight: int = 0
    task: asyncio.Task[None] | None = None

    def add(self, item: Item, batch_max: int, batch_bytes: int) -> None:
        self.queue.append(item)
        self.queued_bytes += len(item[0].wire)
        self.nonempty.set()
        if len(self.queue) >= batch_max or self.queued_bytes >= batch_bytes:
            self.go.set()

    def pushes_queued(self, batch_max: int, batch_bytes: int) -> int:
        """About how many pushes what is queued needs."""
        if not self.queue:
            return 0
        by_count = -(-len(self.queue) // batch_max)
        return max(by_count, -(-self.queued_bytes // batch_bytes))

    def take(self, batch_max: int, batch_bytes: int) -> list[Item]:
        """The next push's events: up to ``batch_max`` of them and
        ``batch_bytes`` of their bytes, but always at least one."""
        items: list[Item] = []
        size = 0
        queue = self.queue
        while queue and len(items) < batch_max:
            n = len(queue[0][0].wire)
            if items and size + n > batch_bytes:
                break
            items.append(queue.popleft())
            size += n
        self.queued_bytes -= size
        if not queue:
            self.nonempty.clear()
            self.queued_bytes = 0
        if len(queue) < batch_max and self.queued_bytes < batch_bytes:
            self.go.clear()
        return items

    def put_back(self, items: list[Item], size: int) -> None:
        """Return a push's events to the front, to go again at once."""
        self.queue.extendleft(reversed(items))
        self.queued_bytes += size
        self.nonempty.set()
        self.go.set()

    def fail_all(self, error: Callable[[], AdapterError]) -> None:
        """Fail every queued event's send() call and empty the queue."""
        while self.queue:
            _, waiter = self.queue.popleft()
            waiter.fail(error())
        self.queued_bytes = 0
        self.nonempty.clear()
        self.go.clear()


@dataclass(eq=False, slots=True)
class Inflight:
    """One push waiting for its reply."""

    channel: ChannelQueue
    items: list[Item]
    size: int
    waiters: dict[Waiter, int]
    push: PushHandle | None = None
    done: bool = False


class TokenBucket:
    """``rate`` tokens per second and at most ``burst`` saved up (both
    changeable); FIFO waiters. It starts full."""

    def __init__(self, burst: float = 1.0) -> None:
        self.rate = 1.0
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._last = asyncio.get_running_loop().time()
        self._lock = asyncio.Lock()

    def available(self, now: float) -> float:
        """Tokens there at ``now`` (loop time), waiters not counted."""
        return min(self.burst, self._tokens + max(0.0, now - self._last) * self.rate)

    async def acquire(self) -> None:
        async with self._lock:
            loop = asyncio.get_running_loop()
            while True:
                now = loop.time()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


class PushMeter:
    """Pushes per second over the last :data:`METER_S` seconds, in one-second
    buckets (over less time while less has passed since the first push)."""

    def __init__(self) -> None:
        self._counts = [0] * METER_S
        self._second = 0
        self._first: float | None = None

    def add(self, now: float) -> None:
        self._advance(now)
        if self._first is None:
            self._first = now
        self._counts[self._second % METER_S] += 1

    def rate(self, now: float) -> float:
        self._advance(now)
        span = METER_S if self._first is None else min(METER_S, max(0.1, now - self._first))
        return sum(self._counts) / span

    def _advance(self, now: float) -> None:
        second = math.floor(now)
        if second - self._second >= METER_S:
            self._counts = [0] * METER_S
        else:
            for s in range(self._second + 1, second + 1):
                self._counts[s % METER_S] = 0
        self._second = max(self._second, second)


class Pacer:
    """Pushes paced to a message-rate cap that a refusal for rate lowers
    (:class:`~broadcaster.realtime_plan.RateGovernor`), and the pause after
    such a refusal. Times are the event loop's."""

    def __init__(self, adapter: str, max_messages_per_s: float, pause_s: float) -> None:
        self.adapter = adapter
        self.pause_s = pause_s
        self._governor = RateGovernor(max_messages_per_s)
        self._meter = PushMeter()
        self._bucket: TokenBucket | None = None
        #: Loop time the pause after the last refusal for rate ends.
        self.until = -math.inf
        self.detail = ""

    def cap(self, now: float) -> float:
        """Messages per second allowed at ``now`` (0: no cap)."""
        return self._governor.cap(now)

    async def wait_turn(self) -> None:
        """Wait until a push may go under the cap."""
        rate = self._governor.cap(asyncio.get_running_loop().time())
        if rate > 0:
            if self._bucket is None:
                self._bucket = TokenBucket(rate * BURST_S)
            self._bucket.rate = rate
            self._bucket.burst = max(1.0, rate * BURST_S)
            await self._bucket.acquire()

    def pushed(self, now: float) -> None:
        self._meter.add(now)

    def wait_s(self, pushes: int, now: float) -> float:
        """Seconds until ``pushes`` more pushes may go under the cap at ``now``."""
        rate = self._governor.cap(now)
        if rate <= 0:
            return 0.0
        bucket = self._bucket
        tokens = bucket.available(now) if bucket is not None else max(1.0, rate * BURST_S)
        return max(0.0, (pushes - tokens) / rate)

    def paced_error(self, wait_s: float) -> AdapterThrottled:
        """What a send gets when its pushes would wait ``wait_s`` behind the cap."""
        detail = f"{wait_s:.2f}s of pushes queued behind the rate cap"
        return AdapterThrottled(self.adapter, detail, wait_s, refused=False)

    def refused(self, now: float, detail: str) -> float:
        """The server refused for rate: pause, lower the cap, return it."""
        self.detail = detail
        self.until = now + self.pause_s
        return self._governor.refused(now, self._meter.rate(now))

    def hold(self, now: float, detail: str) -> None:
        """The server refused for rate again within the same excess: pause
        again, leaving the cap as it is."""
        self.detail = detail
        self.until = now + self.pause_s

    def paused_for(self, now: float) -> float:
        """Seconds left of the pause (0: none)."""
        return max(0.0, self.until - now)

    def error(self, now: float, retry_after_s: float | None = None) -> AdapterThrottled:
        """What a send gets while the pause lasts."""
        retry = self.paused_for(now) if retry_after_s is None else retry_after_s
        return AdapterThrottled(self.adapter, self.detail, retry)
