"""The Realtime adapter: the official client against the local Realtime server,
over real loopback sockets. Faults are injected with small server subclasses."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
import pytest

from broadcaster.adapters.realtime import (
    RealtimeAdapter,
    RealtimeHealth,
    broadcast_channel_params,
    channel_topic,
    normalize_realtime_url,
)
from broadcaster.events import Category
from broadcaster.exceptions import (
    AdapterRejected,
    AdapterThrottled,
    AdapterTimeout,
    AdapterUnavailable,
    ConfigError,
)
from broadcaster.realtime_plan import RealtimeLimits
from broadcaster.realtime_server import LocalRealtimeServer, Peer
from broadcaster.settings import load_settings
from tests._shapes import assert_shape
from tests._wait import until
from tests.adapters.realtime._support import Listener, Msg, RecordingServer, Records


def test_channel_names_params_and_url_normalisation() -> None:
    assert channel_topic("events", Category.USER_ACTIVITY) == "events:user_activity"
    assert channel_topic("pfx", "CRITICAL") == "pfx:critical"
    params = broadcast_channel_params(ack=True)
    assert params == {
        "config": {
            "broadcast": {"ack": True, "self": False},
            "presence": {"key": "", "enabled": False},
            "private": False,
        }
    }
    assert broadcast_channel_params(ack=True) is not params
    assert normalize_realtime_url("https://x.supabase.co") == "https://x.supabase.co/realtime/v1"
    assert normalize_realtime_url("http://h:1/") == "http://h:1/realtime/v1"
    assert normalize_realtime_url("http://h:1/realtime/v1/") == "http://h:1/realtime/v1"


def test_from_settings_takes_every_realtime_setting() -> None:
    settings = load_settings(
        env_file=None,
        supabase_url="http://127.0.0.1:9/",
        supabase_key="secret",
        realtime_channel_prefix="pfx",
        realtime_batch_ms=7,
        realtime_batch_max=3,
        realtime_batch_bytes=4096,
        realtime_max_messages_per_s=9,
        realtime_private_channels=True,
    )
    adapter = RealtimeAdapter.from_settings(settings)
    assert adapter.url == "http://127.0.0.1:9/realtime/v1"
    assert adapter.channel_prefix == "pfx"
    assert adapter.batch_ms == 7 and adapter.private
    assert adapter.limits == RealtimeLimits(9, 3, 4096, None)
    other = RealtimeAdapter.from_settings(settings, url="http://other:1/realtime/v1")
    assert other.url == "http://other:1/realtime/v1"
    with pytest.raises(ConfigError) as info:
        RealtimeAdapter.from_settings(load_settings(env_file=None))
    assert info.value.variable == "SUPABASE_URL"
    keyless = load_settings(env_file=None, supabase_url="http://127.0.0.1:9/")
    with pytest.raises(ConfigError) as info:
        RealtimeAdapter.from_settings(keyless)
    assert info.value.variable == "SUPABASE_KEY"


def test_the_plan_sets_the_caps_the_adapter_uses() -> None:
    settings = load_settings(
        env_file=None,
        supabase_url="http://127.0.0.1:9/",
        supabase_key="secret",
        realtime_plan="free",
    )
    limits = RealtimeAdapter.from_settings(settings).limits
    assert limits == settings.realtime_limits()
    # Half of the plan's 90 % for pushes: each reaches one subscriber (a copy).
    assert limits.max_messages_per_s == 44 and limits.max_event_bytes is not None
    assert limits.max_event_bytes < 256_000


async def test_send_delivers_batches_in_order_on_the_category_channel(
    server: RecordingServer, listener: Listener, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url)
    assert adapter.name == "realtime"
    health = adapter.health()
    # A channel per category, and the canary, which its own pings come back on.
    assert health.connected and len(health.extra["joined_channels"]) == len(Category) + 1
    assert_shape(health.extra, RealtimeHealth)
    joins = dict(server.join_payloads)
    assert joins["realtime:events:canary"]["config"]["broadcast"] == {"ack": True, "self": True}
    assert joins["realtime:events:critical"]["config"]["broadcast"]["self"] is False
    batch = records.make(5)
    await adapter.send(batch)
    await until(lambda: len(listener.events) == 5)
    assert listener.events == [r.to_dict() for r in batch]
    assert listener.batches[0]["event"] == "events"
    # Other categories go to their own channels, not this one.
    await adapter.send(records.make(2, Category.SYSTEM))
    assert {t for t, _ in server.pushes} == {
        "realtime:events:critical",
        "realtime:events:system",
    }
    assert len(listener.events) == 5
    assert adapter.health().extra["events_acked"] == 7
    assert adapter.outstanding_acks == 0


async def test_push_frames_carry_the_sealed_event_bytes_verbatim(
    records: Records, make_adapter: Any
) -> None:
    class RawFrames(RecordingServer):
        def __init__(self) -> None:
            super().__init__()
            self.raw: list[str | bytes] = []

        def decode(self, peer: Peer, raw: str | bytes) -> Any:
            self.raw.append(raw)
            return super().decode(peer, raw)

    srv = RawFrames()
    await srv.start()
    try:
        adapter = await make_adapter(srv.realtime_url)
        batch = records.make(3, payload_bytes=10)
        await adapter.send(batch)
        pushes = [r for r in srv.raw if str(r).startswith('{"event":"broadcast"')]
        assert len(pushes) == 1
        frame = pushes[0]
        # A text frame, with each event exactly as sealed (never re-encoded),
        # in sequence order, inside the message the stock client would write.
        assert isinstance(frame, str)
        assert frame.index(batch[0].wire.decode()) < frame.index(batch[2].wire.decode())
        msg = orjson.loads(frame)
        assert set(msg) == {"event", "payload", "topic", "ref", "join_ref"}
        assert msg["event"] == "broadcast" and msg["topic"] == "realtime:events:critical"
        assert msg["payload"] == {
            "type": "broadcast",
            "event": "events",
            "payload": {"events": [r.to_dict() for r in batch]},
        }
    finally:
        await srv.close()


async def test_many_events_become_few_pushes(
    server: RecordingServer, listener: Listener, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url, batch_max=100, batch_ms=5)
    batch = records.make(1000)
    await adapter.send(batch)
    assert server.stats.broadcasts == adapter.pushes
    assert 10 <= adapter.pushes <= 12
    assert max(server.push_sizes) == 100
    await until(lambda: len(listener.events) == 1000)
    assert [e["sequence_id"] for e in listener.events] == [r.sequence_id for r in batch]


async def test_small_sends_within_batch_ms_share_a_push(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url, batch_ms=50)
    await asyncio.gather(*(adapter.send(records.make(1)) for _ in range(20)))
    assert adapter.pushes <= 2


class HeldAcks(RecordingServer):
    """Acks a broadcast only when the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[asyncio.Event] = []

    async def ack_broadcast(self, peer: Peer, msg: Msg) -> None:
        release = asyncio.Event()
        self.held.append(release)

        async def later() -> None:
            await release.wait()
            await LocalRealtimeServer.ack_broadcast(self, peer, msg)

        self.spawn(later())


async def test_an_event_goes_at_once_when_nothing_is_in_flight(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    # A window would hold this lone event 30 s; with no push awaiting its
    # reply there is no one to wait for.
    adapter = await make_adapter(server.realtime_url, batch_ms=30_000)
    async with asyncio.timeout(5):
        await adapter.send(records.make(1))
        await adapter.send(records.make(1))
    assert server.push_sizes == [1, 1]


async def test_events_wait_for_the_reply_in_flight_and_then_share_a_push(
    records: Records, make_adapter: Any
) -> None:
    async with HeldAcks() as srv:
        adapter = await make_adapter(srv.realtime_url, batch_ms=30_000)
        first = asyncio.ensure_future(adapter.send(records.make(1)))
        await until(lambda: len(srv.held) == 1)
        later = [asyncio.ensure_future(adapter.send(records.make(1))) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert srv.push_sizes == [1]  # the three wait: a push awaits its reply
        srv.held[0].set()
        await first
        await until(lambda: len(srv.held) == 2)
        assert srv.push_sizes == [1, 3]
        srv.held[1].set()
        await asyncio.gather(*later)


async def test_batch_ms_bounds_the_wait_for_a_reply(records: Records, make_adapter: Any) -> None:
    async with HeldAcks() as srv:
        adapter = await make_adapter(srv.realtime_url, batch_ms=20)
        sends = [asyncio.ensure_future(adapter.send(records.make(1)))]
        await until(lambda: len(srv.held) == 1)
        sends.append(asyncio.ensure_future(adapter.send(records.make(1))))
        # No reply comes; after batch_ms the second event goes anyway.
        await until(lambda: len(srv.held) == 2)
        assert srv.push_sizes == [1, 1]
        assert adapter.outstanding_acks == 2
        for release in srv.held:
            release.set()
        await asyncio.gather(*sends)


async def test_a_push_that_times_out_gives_its_channel_back_its_in_flight_slot(
    records: Records, make_adapter: Any
) -> None:
    async with HeldAcks() as srv:
        adapter = await make_adapter(srv.realtime_url, ack_timeout_s=0.2, batch_ms=30_000)
        # No reply: the timeout settles it.
        with pytest.raises(AdapterTimeout):
            await adapter.send(records.make(1))
        assert adapter.outstanding_acks == 0
        # The channel has nothing in flight again: the next event goes at once
        # rather than waiting 30 s for company.
        send = asyncio.ensure_future(adapter.send(records.make(1)))
        await until(lambda: len(srv.held) == 2)
        srv.held[1].set()
        async with asyncio.timeout(5):
            await send


async def test_batch_bytes_bounds_every_push(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url, batch_bytes=20_000, batch_max=100)
    batch = records.make(50, payload_bytes=3000)  # ~3.3 kB each -> 5 or 6 per push
    await adapter.send(batch)
    assert max(server.push_sizes) <= 20_000 // 3000
    assert sum(server.push_sizes) == 50
    # One event larger than batch_bytes still goes, alone.
    await adapter.send(records.make(1, payload_bytes=30_000))
    assert server.push_sizes[-1] == 1


async def test_overlapping_sends_keep_sequence_order_per_channel(
    records: Records, make_adapter: Any
) -> None:
    class Jittery(RecordingServer):
        """Acks after a random delay, so acks come back out of order."""

        async def ack_broadcast(self, peer: Peer, msg: Msg) -> None:
            async def later() -> None:
                await asyncio.sleep(random.uniform(0, 0.03))
                await LocalRealtimeServer.ack_broadcast(self, peer, msg)

            self.spawn(later())

    async with Jittery() as srv:
        lis = Listener(srv.realtime_url)
        await lis.start()
        adapter = await make_adapter(srv.realtime_url, batch_max=7, batch_ms=1)
        batches = [records.make(random.randint(1, 15)) for _ in range(40)]
        # Created in order, they start in order; they overlap while awaiting acks.
        await asyncio.gather(*(adapter.send(b) for b in batches))
        expected = [r.sequence_id for b in batches for r in b]
        pushed = [s for _, seqs in srv.pushes for s in seqs]
        assert pushed == expected
        await until(lambda: len(lis.events) == len(expected))
        assert [e["sequence_id"] for e in lis.events] == expected
        await lis.close()


async def test_acks_pipeline_many_outstanding_pushes(records: Records, make_adapter: Any) -> None:
    """A push does not wait for the acks of earlier ones: with the server
    holding every ack back, all 20 batches are pushed and awaiting their acks
    at once (serially, one would be); once released, every send completes."""
    async with HeldAcks() as srv:
        adapter = await make_adapter(srv.realtime_url, batch_max=10, batch_ms=0)
        sends = [adapter.send(records.make(10)) for _ in range(20)]
        tasks = [asyncio.get_running_loop().create_task(s) for s in sends]
        await until(lambda: len(srv.held) == 20)
        assert srv.push_sizes == [10] * 20
        assert adapter.outstanding_acks >= 20
        assert adapter.health().extra["outstanding_acks"] >= 20
        assert not any(task.done() for task in tasks)
        for release in srv.held:
            release.set()
        await asyncio.gather(*tasks)
        assert adapter.outstanding_acks == 0


async def test_rate_cap_paces_pushes(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(
        server.realtime_url, batch_max=1, batch_ms=0, max_messages_per_s=40
    )
    started = time.monotonic()
    await asyncio.gather(*(adapter.send(records.make(1)) for _ in range(13)))
    elapsed = time.monotonic() - started
    assert adapter.pushes == 13
    # A quarter of a second's budget (10) up front, then 40 per second.
    assert elapsed >= 2 / 40 * 0.9


async def test_a_send_that_would_wait_long_behind_the_cap_is_held_back(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    """Pushes queued behind the cap for longer than a send should take: the
    send is throttled at once, nothing of it queued (the lane holds it back and
    tries again), and it is pacing, not a refusal by the server."""
    adapter = await make_adapter(
        server.realtime_url, batch_max=1, batch_ms=0, max_messages_per_s=80
    )
    taken = asyncio.ensure_future(adapter.send(records.make(60)))
    await until(lambda: adapter.pushes >= 1)
    # 60 queued, 20 of them at once: the next push waits about half a second.
    with pytest.raises(AdapterThrottled) as info:
        await adapter.send(records.make(1))
    assert not info.value.refused and 0.1 < info.value.retry_after_s <= 0.52
    await taken
    assert adapter.pushes == 60 and adapter.health().extra["refused"] == {}


async def test_error_reply_raises_adapter_rejected(records: Records, make_adapter: Any) -> None:
    class Refusing(LocalRealtimeServer):
        async def ack_broadcast(self, peer: Peer, msg: Msg) -> None:
            await self.reply(peer, msg, "error", {"reason": "UnableToBroadcast"})

    async with Refusing() as srv:
        adapter = await make_adapter(srv.realtime_url)
        with pytest.raises(AdapterRejected) as info:
            await adapter.send(records.make(3))
        assert info.value.adapter == "realtime"
        assert "UnableToBroadcast" in str(info.value)
        assert adapter.outstanding_acks == 0
        assert adapter.health().connected  # a refusal is not a lost connection


async def test_no_reply_raises_adapter_timeout(records: Records, make_adapter: Any) -> None:
    class Silent(LocalRealtimeServer):
        async def ack_broadcast(self, peer: Peer, msg: Msg) -> None:
            return None  # drop the ack

    async with Silent() as srv:
        adapter = await make_adapter(srv.realtime_url, ack_timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(AdapterTimeout):
            await adapter.send(records.make(2))
        assert 0.25 <= time.monotonic() - started < 2.0
        assert adapter.outstanding_acks == 0


async def test_send_before_start_after_close_and_empty(
    server: RecordingServer, records: Records, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url, start=False)
    with pytest.raises(AdapterUnavailable):
        await adapter.send(records.make(1))
    assert adapter.health().detail == "not started"
    await adapter.start()
    await adapter.start()  # idempotent
    await adapter.send([])
    await adapter.close()
    await adapter.close()  # idempotent
    with pytest.raises(AdapterUnavailable):
        await adapter.send(records.make(1))
    assert not adapter.health().connected


async def test_lost_connection_fails_in_flight_sends_and_new_ones_fast(
    records: Records, make_adapter: Any
) -> None:
    class Silent(LocalRealtimeServer):
        async def ack_broadcast(self, peer: Peer, msg: Msg) -> None:
            return None

    srv = Silent()
    await srv.start()
    adapter = await make_adapter(srv.realtime_url, ack_timeout_s=30)
    pending = asyncio.get_running_loop().create_task(adapter.send(records.make(3)))
    await until(lambda: adapter.outstanding_acks == 1)
    await srv.close()
    started = time.monotonic()
    with pytest.raises(AdapterUnavailable):
        await pending  # not a 30 s timeout: the loss fails what was in flight
    assert time.monotonic() - started < 2
    with pytest.raises(AdapterUnavailable):
        await adapter.send(records.make(1))  # fails fast, nothing buffered
    assert not adapter.health().connected
    assert adapter.health().extra["queued_events"] == 0


async def test_server_restart_on_same_port_reconnects_and_rejoins(
    records: Records, make_adapter: Any
) -> None:
    srv = RecordingServer()
    await srv.start()
    try:
        adapter = await make_adapter(srv.realtime_url)
        await adapter.send(records.make(2))
        await srv.close()
        await until(lambda: not adapter.health().connected)
        # Down for more attempts than the client's own retry budget
        # (max_retries=5): the supervisor keeps going.
        link = adapter.link
        assert link is not None
        await until(lambda: link.attempts > 5)
        await srv.start()
        await until(lambda: adapter.health().connected)
        assert adapter.link.connects == 2
        assert srv.stats.joins == 2 * (len(Category) + 1)  # and the canary
        batch = records.make(4)
        await adapter.send(batch)
        assert srv.pushes[-1] == ("realtime:events:critical", [r.sequence_id for r in batch])
        assert adapter.health().extra["reconnects"] == 1
    finally:
        await srv.close()


async def test_start_while_server_down_raises_then_recovers_in_background(
    records: Records, make_adapter: Any
) -> None:
    srv = RecordingServer()
    await srv.start()
    url = srv.realtime_url
    await srv.close()
    adapter = await make_adapter(url, start=False)
    with pytest.raises(AdapterUnavailable):
        await adapter.start()
    assert "reconnecting" in adapter.health().detail
    with pytest.raises(AdapterUnavailable, match="still connecting"):
        await adapter.start()
    await srv.start()
    try:
        await until(lambda: adapter.health().connected)
        await adapter.send(records.make(1))
    finally:
        await srv.close()
