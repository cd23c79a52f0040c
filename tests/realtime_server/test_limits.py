"""A plan's quotas, enforced over real sockets with Supabase's replies and
disconnects. Small made-up plans keep the counts low, and the server's clock
is the test's, so that a rate is judged without waiting for it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from broadcaster.realtime_server import PLANS, LocalRealtimeServer, Plan, ServerSnapshot
from tests._shapes import assert_shape
from tests._wait import until
from tests.realtime_server._clients import (
    TOPIC,
    Connect,
    FakeClock,
    broadcast_payload,
    clients,
    refusal,
)

#: Generous everywhere: each test tightens the quota it is about.
ROOMY = Plan(
    "roomy",
    messages_per_second=10_000,
    joins_per_second=10_000,
    channels_per_connection=100,
    concurrent_connections=100,
    payload_kb=1,
)


@asynccontextmanager
async def limited(plan: Plan) -> AsyncIterator[tuple[LocalRealtimeServer, Connect, FakeClock]]:
    clock = FakeClock()
    async with LocalRealtimeServer(limits=plan, clock=clock) as server, clients(server) as make:
        yield server, make, clock


def url(server: LocalRealtimeServer) -> str:
    return f"ws://127.0.0.1:{server.port}/realtime/v1/websocket?apikey=k&vsn=1.0.0"


async def test_a_payload_over_the_plan_is_refused_to_its_sender_and_reaches_no_one() -> None:
    async with limited(ROOMY) as (server, make, _):
        acked, quiet, reader = await make(), await make(vsn="2.0.0"), await make()
        await acked.joined(ack=True)
        await quiet.joined(ack=False)
        await reader.joined(ack=False)
        fits = {"type": "broadcast", "event": "events", "payload": {"blob": "x" * 1400}}
        too_large = {**fits, "payload": {"blob": "x" * 1500}}
        assert server.payload_size({"payload": fits}) <= 1500
        assert server.payload_size({"payload": too_large}) > 1500
        ref = await acked.push(TOPIC, "broadcast", too_large)
        assert await acked.recv() == {
            "topic": TOPIC,
            "event": "phx_reply",
            "payload": {"status": "error", "response": "payload_size_exceeded"},
            "ref": ref,
        }
        # Without ack, a refusal is silent, as on Supabase; in binary, the same.
        await quiet.push_user_broadcast(TOPIC, "events", b'{"blob":"' + b"x" * 1500 + b'"}')
        await quiet.expect_silence()
        await reader.expect_silence()
        assert server.stats.payload_too_large == 2 and server.stats.fanout_frames == 0
        ref = await acked.push(TOPIC, "broadcast", fits)
        assert (await acked.recv())["payload"] == {"status": "ok", "response": {}}
        assert (await reader.recv())["payload"] == fits


async def test_a_free_plan_refuses_a_300_kb_event() -> None:
    async with limited(PLANS["free"]) as (server, make, _):
        sender = await make()
        await sender.joined(ack=True)
        event = {"sequence_id": 1, "payload": {"blob": "x" * 300_000}}
        await sender.push(
            TOPIC,
            "broadcast",
            {"type": "broadcast", "event": "events", "payload": {"events": [event]}},
        )
        assert (await sender.recv())["payload"]["response"] == "payload_size_exceeded"
        # A frame past Supabase's largest is not read at all: the connection closes.
        assert server.max_message_bytes == 5_000_000
        await sender.ws.send(orjson.dumps({"blob": "x" * 5_000_001}).decode())
        with pytest.raises(ConnectionClosed):
            await sender.recv()
        assert sender.ws.close_code == 1009


async def test_joins_beyond_the_channels_of_a_connection_are_refused() -> None:
    async with limited(dataclasses.replace(ROOMY, channels_per_connection=2)) as (server, make, _):
        client = await make(vsn="2.0.0")
        await client.joined("realtime:a")
        await client.joined("realtime:b")
        await client.joined("realtime:b")  # a re-join is no new channel
        assert await client.join("realtime:c") == {
            "status": "error",
            "response": {"reason": "ChannelRateLimitReached: Too many channels"},
        }
        # The connection stays; leaving makes room.
        await client.push("realtime:a", "phx_leave")
        await client.recv(), await client.recv()
        await client.joined("realtime:c")
        assert server.stats.too_many_channels == 1


async def test_over_the_join_rate_a_join_is_refused_and_its_connection_closed() -> None:
    plan = dataclasses.replace(ROOMY, joins_per_second=2)
    async with limited(plan) as (server, make, clock):
        client = await make()
        for n in range(20):
            await client.joined(f"realtime:room-{n}")
        clock.now += 5  # the tick: (0 + 20 joins) / 2 ticks / 5 s = 2 per second
        assert await client.join("realtime:one-more") == {
            "status": "error",
            "response": {"reason": "ClientJoinRateLimitReached: Too many joins per second"},
        }
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.ws.close_code == 1000
        assert await refusal(url(server)) == (429, b'{"error":"Too many joins per second"}')
        clock.now += 5  # 20 / 3 / 5 < 2: under again
        await (await make()).joined()
        assert server.stats.too_many_joins == 2


async def test_connections_count_from_their_first_join_up_to_the_plan() -> None:
    plan = dataclasses.replace(ROOMY, concurrent_connections=2)
    async with limited(plan) as (server, make, _):
        first, idle = await make(), await make()
        await first.joined()
        late = await make()  # only one counts yet: the handshake passes
        await idle.joined()
        assert await late.join() == {
            "status": "error",
            "response": {"reason": "ConnectionRateLimitReached: Too many connected users"},
        }
        status, body = await refusal(url(server))
        assert (status, body) == (429, b'{"error":"Too many connected users"}')
        await first.ws.close()
        await until(lambda: len(server.peers) == 2)
        await late.joined()
        assert server.stats.too_many_connections == 2


async def test_over_the_message_rate_each_receiving_channel_is_shut_down() -> None:
    plan = dataclasses.replace(ROOMY, messages_per_second=10)
    async with limited(plan) as (server, make, clock):
        sender, old, new = await make(), await make(), await make(vsn="2.0.0")
        await sender.joined(ack=True)
        await old.joined(ack=False)
        await new.joined(ack=False)
        for n in range(34):  # 34 sent + 68 delivered: 102 messages
            await sender.push(TOPIC, "broadcast", broadcast_payload(n))
            await sender.recv()
            await old.recv(), await new.recv()
        clock.now += 5  # the tick: 102 / 2 ticks / 5 s > 10 per second
        assert server.stats.messages == 102
        counted = server.snapshot()
        assert_shape(counted, ServerSnapshot)
        assert counted["judged_messages_per_s"] == counted["peak_messages_per_s"] == 10.2
        ref = await sender.push(TOPIC, "broadcast", broadcast_payload(34))
        # The sender is never refused; each receiving channel gets the
        # message, then a system error and phx_close.
        assert (await sender.recv())["payload"] == {"status": "ok", "response": {}}
        system = {
            "extension": "system",
            "status": "error",
            "message": "Too many messages per second",
            "channel": "events:critical",
        }
        for client in (old, new):
            got = [await client.recv() for _ in range(3)]
            assert [m["event"] for m in got] == ["broadcast", "system", "phx_close"]
            assert got[0]["payload"] == broadcast_payload(34)
            assert got[1]["payload"] == system
            assert got[2]["ref"] == client.join_refs[TOPIC]
        assert new.vsn == "2.0.0" and got[1]["join_ref"] == new.join_refs[TOPIC]
        assert server.stats.too_many_messages == 2 and server.subscribers(TOPIC) == 1
        ref = await sender.push(TOPIC, "broadcast", broadcast_payload(35))
        assert (await sender.recv())["ref"] == ref
        await old.expect_silence()  # its channel is gone
        # A channel may join again; once the rate is down, messages flow.
        await old.joined(ack=False)
        clock.now += 60
        await sender.push(TOPIC, "broadcast", broadcast_payload(36))
        await sender.recv()
        assert (await old.recv())["payload"] == broadcast_payload(36)
        await old.expect_silence()
        assert server.stats.too_many_messages == 2 == server.stats.quota_refusals


async def test_messages_of_any_kind_on_a_channel_count() -> None:
    plan = dataclasses.replace(ROOMY, messages_per_second=1)
    async with limited(plan) as (server, make, clock):
        chatty, reader = await make(), await make()
        await chatty.joined(ack=False)
        await reader.joined(ack=False)
        for _ in range(10):  # no broadcasts, yet ten messages: 10 / 2 / 5 = 1
            await chatty.push(TOPIC, "typing", {})
        # Frames are handled in order: once the heartbeat is answered, so are they.
        ref = await chatty.push("phoenix", "heartbeat")
        assert (await chatty.recv())["ref"] == ref
        clock.now += 5
        await chatty.push(TOPIC, "broadcast", broadcast_payload(1))
        got = [(await reader.recv())["event"] for _ in range(3)]
        assert got == ["broadcast", "system", "phx_close"]
        assert server.stats.too_many_messages == 1
