"""The Realtime adapter within quotas: an event too large for the plan is
refused without being sent; a push the server refuses as too large is split
and retried; a refusal for rate (an error reply, or, as Supabase does, the
adapter's canary channel shut with a ``system`` error) slows the adapter down
and is neither an outage to the breaker nor a loss. The refusals are the ones
Supabase's server sends (its BroadcastHandler and RealtimeChannel)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from broadcaster.adapters.realtime import RealtimeHealth
from broadcaster.breaker import AdapterBreaker
from broadcaster.breaker_policy import BreakerConfig, BreakerState
from broadcaster.events import Category, EventFactory
from broadcaster.exceptions import AdapterThrottled, EventsRefused
from broadcaster.lanes import Lane
from broadcaster.realtime_server import Peer, Plan
from broadcaster.stats import DeliveryStats
from broadcaster.store import DeliveryState, MemoryStore
from tests._shapes import assert_shape
from tests._wait import until
from tests.adapters.realtime._support import Listener, Msg, RecordingServer, Records, is_batch
from tests.realtime_server._clients import FakeClock

RATE_REPLY = {"reason": "MessagePerSecondRateLimitReached: Too many messages per second"}


class SizeLimited(RecordingServer):
    """Refuses a broadcast whose payload is over ``limit`` bytes, as
    Supabase does with ``ack``: a bare-string error reply, nothing fanned out."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused = 0

    async def on_broadcast(self, peer: Peer, msg: Msg) -> None:
        if is_batch(msg) and len(orjson.dumps(msg["payload"])) > self.limit:
            self.refused += 1
            await self.reply(peer, msg, "error", "payload_size_exceeded")
            return
        await super().on_broadcast(peer, msg)


class RateLimited(RecordingServer):
    """Answers every ``every``-th broadcast, ``times`` times at most, with a
    rate-limit error instead of taking it (nothing fanned out)."""

    def __init__(self, every: int, times: int = 1_000_000) -> None:
        super().__init__()
        self.every = every
        self.times = times
        self.seen = 0
        self.refused = 0

    async def on_broadcast(self, peer: Peer, msg: Msg) -> None:
        if not is_batch(msg):
            await super().on_broadcast(peer, msg)
            return
        self.seen += 1
        if self.seen % self.every == 0 and self.refused < self.times:
            self.refused += 1
            await self.reply(peer, msg, "error", RATE_REPLY)
            return
        await super().on_broadcast(peer, msg)


async def test_an_event_too_large_for_the_plan_is_refused_unsent_and_the_rest_delivered(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url, max_event_bytes=2000)
    small, big, last = records.make(1), records.make(1, payload_bytes=3000), records.make(1)
    with pytest.raises(EventsRefused) as info:
        await adapter.send(small + big + last)
    refused = info.value
    assert refused.refused == {big[0].sequence_id: "payload_too_large"}
    assert refused.reason == "payload_too_large" and "2000 bytes" in str(refused)
    pushed = [s for _, seqs in server.pushes for s in seqs]
    assert pushed == [small[0].sequence_id, last[0].sequence_id]
    assert adapter.health().extra["refused"] == {"payload_too_large": 1}
    # A batch of nothing but the refused event ends at once too.
    with pytest.raises(EventsRefused):
        await adapter.send(big)


async def test_a_push_the_server_refuses_as_too_large_is_split_until_it_fits(
    records: Records, make_adapter: Any
) -> None:
    async with SizeLimited(limit=10_000) as srv:
        adapter = await make_adapter(srv.realtime_url, batch_max=100, batch_ms=0)
        batch = records.make(12, payload_bytes=2000)  # ~2.2 kB each: 4 fit in a push
        await adapter.send(batch)
        assert srv.refused >= 1
        assert sorted(s for _, seqs in srv.pushes for s in seqs) == [r.sequence_id for r in batch]
        assert adapter.limits.batch_bytes < 12 * 2000
        assert adapter.health().extra["refused"]["payload_too_large"] == srv.refused
        # One event over the server's limit alone is refused for good; the
        # others of its batch are delivered.
        huge = records.make(1, payload_bytes=20_000)
        ok = records.make(2)
        with pytest.raises(EventsRefused) as info:
            await adapter.send(ok[:1] + huge + ok[1:])
        assert info.value.refused == {huge[0].sequence_id: "payload_too_large"}
        assert "payload_size_exceeded" in str(info.value)
        assert {ok[0].sequence_id, ok[1].sequence_id} <= {s for _, seqs in srv.pushes for s in seqs}
        assert adapter.health().connected


async def test_a_rate_refusal_throttles_and_lowers_the_rate_cap(
    records: Records, make_adapter: Any
) -> None:
    async with RateLimited(every=1) as srv:
        adapter = await make_adapter(srv.realtime_url, throttle_s=0.2)
        assert adapter.max_messages_per_s() == 0  # no cap configured
        with pytest.raises(AdapterThrottled) as info:
            await adapter.send(records.make(3))
        assert info.value.reason == "rate_limit" and 0 < info.value.retry_after_s <= 0.2
        assert "MessagePerSecondRateLimitReached" in str(info.value)
        assert adapter.max_messages_per_s() > 0  # the adapter slows down on its own
        assert adapter.health().connected  # a quota, not a lost connection
        # During the pause a send fails at once, nothing pushed.
        pushes = srv.seen
        with pytest.raises(AdapterThrottled):
            await adapter.send(records.make(1))
        assert srv.seen == pushes
        srv.every = 1_000_000
        await until(lambda: adapter.health().extra["throttled_for_s"] == 0)
        await adapter.send(records.make(2))
        assert adapter.health().extra["refused"] == {"rate_limit": 1}


#: A project whose message rate is quickly over: ten a second.
TINY = Plan(
    "tiny",
    messages_per_second=10,
    joins_per_second=10_000,
    channels_per_connection=100,
    concurrent_connections=100,
    payload_kb=256,
)


async def test_over_the_projects_rate_the_canary_is_shut_and_sends_wait_until_it_is_back(
    records: Records, make_adapter: Any
) -> None:
    """As Supabase does, the server never refuses the sender: over the rate
    it shuts the channels that receive messages — the subscriber's, and the
    adapter's canary, whose pings come back to it."""
    clock = FakeClock()
    async with RecordingServer(limits=TINY, clock=clock) as srv:
        listener = Listener(srv.realtime_url)
        await listener.start()
        try:
            adapter = await make_adapter(srv.realtime_url, canary_s=0.02, throttle_s=0.05)
            canary = adapter.health().extra["canary"]
            assert canary["topic"] == "events:canary" and canary["open"]
            for _ in range(60):  # 60 pushes and 60 copies: 120 messages
                await adapter.send(records.make(1))
            clock.now += 5  # the tick: (0 + 120) / 2 / 5 > 10 a second
            await adapter.send(records.make(1))  # the sender is never refused...
            await until(lambda: srv.stats.too_many_messages >= 1)  # ...the listener is
            # The next ping comes back over the rate: the canary is shut too.
            await until(lambda: not adapter.health().extra["canary"]["open"])
            with pytest.raises(AdapterThrottled) as info:
                await adapter.send(records.make(1))
            assert info.value.reason == "rate_limit"
            assert "Too many messages per second" in str(info.value)
            pushes = adapter.pushes
            # Still over: pings go on, each shutting the canary, and the cap
            # is lowered once for the excess, not once per ping.
            cap = adapter.max_messages_per_s()
            await until(lambda: adapter.health().extra["canary"]["refusals"] >= 3)
            assert adapter.max_messages_per_s() == cap and adapter.pushes == pushes
            clock.now += 60  # a quiet minute: the mean is under the rate again
            await until(lambda: adapter.health().extra["canary"]["open"])
            batch = records.make(3)
            await adapter.send(batch)
            assert srv.pushes[-1][1] == [r.sequence_id for r in batch]
            extra = adapter.health().extra
            assert_shape(extra, RealtimeHealth)
            assert extra["canary"]["reopened"] == 1
            assert extra["refused"]["rate_limit"] == extra["canary"]["refusals"]
            assert adapter.health().connected
        finally:
            await listener.close()


async def test_through_a_lane_rate_refusals_lose_nothing_and_never_trip_the_breaker(
    records: Records, make_adapter: Any
) -> None:
    async with RateLimited(every=3, times=2) as srv:
        adapter = await make_adapter(srv.realtime_url, batch_max=5, batch_ms=0, throttle_s=0.05)
        store = MemoryStore()
        await store.open()
        stats = DeliveryStats()
        # A strict breaker: any failure above 0 % over 5 calls would trip it.
        breaker = AdapterBreaker(
            "realtime",
            BreakerConfig(latency_threshold_ms=10_000, error_threshold=0.0, min_calls=5),
        )
        lane = Lane(adapter, store, stats, max_batch=5, breaker=breaker, backoff_initial_s=0.01)
        lane.start()
        try:
            factory = EventFactory()
            drafts = [factory.draft(Category.SYSTEM, "t", {"i": i}) for i in range(40)]
            stored = await store.append([(d, ("realtime",)) for d in drafts])
            lane.enqueue(stored)
            async with asyncio.timeout(30):
                await lane.wait_idle()
        finally:
            await lane.stop()
        assert srv.refused == 2
        assert breaker.state == BreakerState.CLOSED.value
        assert await store.undelivered("realtime") == []
        for record in stored:
            got = await store.get(record.sequence_id)
            assert got is not None and got.states["realtime"] is DeliveryState.ACKED
        assert stats.refused_by_reason("realtime")["rate_limit"] >= 5
        delivered = sorted(s for _, seqs in srv.pushes for s in seqs)
        assert set(delivered) == {r.sequence_id for r in stored}
