"""Both protocol versions on one server, over real loopback sockets: each
client is answered in its own framing, and a broadcast reaches every
subscriber in theirs (realtime-js itself: tests/clients/test_realtime_js.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from broadcaster.realtime_server import LocalRealtimeServer
from tests.realtime_server._clients import (
    TOPIC,
    Connect,
    broadcast_payload,
    clients,
    refusal,
)


@pytest.fixture
async def server() -> AsyncIterator[LocalRealtimeServer]:
    async with LocalRealtimeServer() as srv:
        yield srv


@pytest.fixture
async def make(server: LocalRealtimeServer) -> AsyncIterator[Connect]:
    async with clients(server) as factory:
        yield factory


async def test_a_2_0_0_client_is_answered_in_arrays(make: Connect) -> None:
    client = await make(vsn="2.0.0")
    ref = await client.push("phoenix", "heartbeat")
    assert await client.recv() == {
        "topic": "phoenix",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {}},
        "ref": ref,
        "join_ref": None,
    }
    ref = await client.push(TOPIC, "phx_join", {"config": {"broadcast": {"ack": True}}})
    assert await client.recv() == {
        "topic": TOPIC,
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {"postgres_changes": []}},
        "ref": ref,
        "join_ref": ref,
    }
    leave = await client.push(TOPIC, "phx_leave")
    reply, close = await client.recv(), await client.recv()
    assert (reply["ref"], reply["join_ref"], reply["payload"]["status"]) == (leave, ref, "ok")
    assert close == {
        "topic": TOPIC,
        "event": "phx_close",
        "payload": {},
        "ref": ref,
        "join_ref": ref,
    }


async def test_a_json_broadcast_reaches_each_version_in_its_framing(
    make: Connect, server: LocalRealtimeServer
) -> None:
    sender, old, new = await make(), await make(), await make(vsn="2.0.0")
    await sender.joined(ack=True)
    await old.joined(ack=False)
    await new.joined(ack=False)
    ref = await sender.push(TOPIC, "broadcast", broadcast_payload(1))
    assert (await sender.recv())["ref"] == ref
    assert await old.recv() == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": broadcast_payload(1),
        "ref": None,
    }
    assert await new.recv() == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": broadcast_payload(1),
        "ref": None,
        "join_ref": None,
    }
    assert server.stats.fanout_frames == 2


async def test_a_binary_broadcast_reaches_2_0_0_in_binary_and_1_0_0_as_json(
    make: Connect, server: LocalRealtimeServer
) -> None:
    sender, old, new = await make(vsn="2.0.0"), await make(), await make(vsn="2.0.0")
    await sender.joined(ack=True)
    await old.joined(ack=False)
    await new.joined(ack=False)
    body = b'{"events":[{"amount":1.0,"note":"\xc3\xa9"}]}'
    ref = await sender.push_user_broadcast(TOPIC, "events", body)
    ack = await sender.recv()
    assert (ack["event"], ack["ref"], ack["payload"]) == (
        "phx_reply",
        ref,
        {"status": "ok", "response": {}},
    )
    got = await new.recv()
    assert got["binary"] and got["payload"]["event"] == "events"
    assert got["payload"]["payload"] == orjson.loads(body)
    raw_old = await old.ws.recv()
    # 1.0.0 gets the bytes as they were sent, inside a JSON broadcast.
    assert isinstance(raw_old, str) and '"payload":{"events":[{"amount":1.0,' in raw_old
    assert orjson.loads(raw_old)["payload"] == {
        "event": "events",
        "payload": orjson.loads(body),
        "type": "broadcast",
    }
    # Opaque bytes: 1.0.0 clients cannot receive them, 2.0.0 ones can.
    await sender.push_user_broadcast(TOPIC, "blob", b"\x00\xff", json=False)
    await sender.recv()
    blob = await new.recv()
    assert blob["payload"] == {"type": "broadcast", "event": "blob", "payload": b"\x00\xff"}
    await old.expect_silence()
    assert server.stats.broadcasts == 2 and server.stats.fanout_frames == 3


async def test_self_broadcast_echoes_in_the_senders_framing(make: Connect) -> None:
    sender = await make(vsn="2.0.0")
    await sender.joined(ack=False, self_=True)
    await sender.push_user_broadcast(TOPIC, "events", b'{"events":[]}')
    echo = await sender.recv()
    assert echo["binary"] and echo["payload"]["payload"] == {"events": []}
    await sender.expect_silence()  # ack: false


async def test_topics_phoenix_does_not_route_are_unmatched(make: Connect) -> None:
    client = await make(vsn="2.0.0")
    for topic, event in (("room:1", "phx_join"), (TOPIC, "broadcast"), ("phoenix", "other")):
        ref = await client.push(topic, event, {})
        reply = await client.recv()
        assert (reply["ref"], reply["join_ref"], reply["payload"]) == (
            ref,
            None,
            {"status": "error", "response": {"reason": "unmatched topic"}},
        )
    result = await client.join("realtime:")
    assert result == {
        "status": "error",
        "response": {"reason": "TopicNameRequired: You must provide a topic name"},
    }


async def test_malformed_2_0_0_frames_are_ignored(
    make: Connect, server: LocalRealtimeServer
) -> None:
    client = await make(vsn="2.0.0")
    await client.ws.send('{"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"}')
    await client.ws.send(b"\x00\x01\x01\x01\x01x")
    await client.ws.send(b"\x03\x09")
    ref = await client.push("phoenix", "heartbeat")
    assert (await client.recv())["ref"] == ref
    assert server.stats.malformed == 3


async def test_a_version_without_a_serializer_is_refused_with_403(
    server: LocalRealtimeServer,
) -> None:
    base = f"ws://127.0.0.1:{server.port}/realtime/v1/websocket?apikey=k"
    assert await refusal(f"{base}&vsn=3.0.0") == (403, b"")
    assert await refusal(f"{base}&vsn=banana") == (403, b"")
    assert server.stats.bad_version == 2 and server.stats.connections == 0


async def test_other_events_on_a_joined_channel_are_ignored_as_on_supabase(make: Connect) -> None:
    client = await make(vsn="2.0.0")
    await client.joined()
    await client.push(TOPIC, "typing", {"user": 1})
    await client.expect_silence()
    # Presence is not implemented, and says so.
    ref = await client.push(TOPIC, "presence", {"event": "track", "payload": {}})
    reply = await client.recv()
    assert (reply["ref"], reply["payload"]["status"]) == (ref, "error")
