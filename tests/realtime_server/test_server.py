"""The local Realtime-protocol server over real loopback sockets.

Protocol details are checked with a plain WebSocket client speaking Phoenix
JSON frames by hand (so each frame is visible); interoperability with the
official ``realtime`` client is checked with that client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broadcaster.realtime_server import LocalRealtimeServer, Peer, ServerSnapshot
from broadcaster.spawn import RealtimeServerProcess, free_port
from tests._shapes import assert_shape
from tests._wait import until
from tests.realtime_server._clients import TOPIC, RawClient, broadcast_payload, refusal

JOIN_ACK = {"config": {"broadcast": {"ack": True, "self": False}, "presence": {"key": ""}}}


@pytest.fixture
async def server() -> AsyncIterator[LocalRealtimeServer]:
    srv = LocalRealtimeServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


@pytest.fixture
async def raw(server: LocalRealtimeServer) -> AsyncIterator[Any]:
    """Factory of raw clients connected to ``server``; all closed at the end."""
    opened: list[ClientConnection] = []

    async def make(path: str = "/realtime/v1/websocket?apikey=k&vsn=1.0.0") -> RawClient:
        ws = await connect(f"ws://127.0.0.1:{server.port}{path}", compression=None)
        opened.append(ws)
        return RawClient(ws)

    yield make
    for ws in opened:
        await ws.close()


async def test_url_properties_follow_the_bound_port(server: LocalRealtimeServer) -> None:
    with pytest.raises(RuntimeError, match="server not started"):
        _ = LocalRealtimeServer().port
    await server.start()  # already running: nothing changes
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.realtime_url == server.url + "/realtime/v1"


async def test_join_replies_ok_with_empty_postgres_changes(raw: Any) -> None:
    client = await raw()
    ref = await client.push(TOPIC, "phx_join", JOIN_ACK)
    reply = await client.recv()
    assert reply == {
        "topic": TOPIC,
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {"postgres_changes": []}},
        "ref": ref,
    }


async def test_heartbeat_is_answered_and_access_token_ignored(raw: Any) -> None:
    client = await raw()
    ref = await client.push("phoenix", "heartbeat")
    reply = await client.recv()
    assert reply["topic"] == "phoenix" and reply["ref"] == ref
    assert reply["payload"] == {"status": "ok", "response": {}}
    await client.joined()
    await client.push(TOPIC, "access_token", {"access_token": "new"})
    await client.expect_silence()


async def test_broadcast_before_join_is_an_error(raw: Any, server: LocalRealtimeServer) -> None:
    client = await raw()
    ref = await client.push(TOPIC, "broadcast", broadcast_payload(1))
    reply = await client.recv()
    assert reply["ref"] == ref
    assert reply["payload"]["status"] == "error"
    assert reply["payload"]["response"]["reason"] == "unmatched topic"
    assert server.stats.broadcasts == 0


async def test_broadcast_fans_out_to_others_and_acks_the_sender(
    raw: Any, server: LocalRealtimeServer
) -> None:
    sender, other, elsewhere = await raw(), await raw(), await raw()
    await sender.joined(ack=True, self_=False)
    await other.joined(ack=False)
    await elsewhere.joined("realtime:events:system", ack=False)
    ref = await sender.push(TOPIC, "broadcast", broadcast_payload(7))
    ack = await sender.recv()
    assert ack["event"] == "phx_reply" and ack["ref"] == ref
    assert ack["payload"] == {"status": "ok", "response": {}}
    got = await other.recv()
    assert got == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": broadcast_payload(7),
        "ref": None,
    }
    await sender.expect_silence()  # self: false -> no echo
    await elsewhere.expect_silence()  # another topic
    assert server.stats.broadcasts == 1 and server.stats.fanout_frames == 1
    # Counted as Supabase counts messages, with or without limits.
    assert server.stats.messages == 2
    snapshot = server.snapshot()
    assert_shape(snapshot, ServerSnapshot)
    # Every counter, under its own name.
    assert dataclasses.asdict(server.stats).items() <= snapshot.items()
    assert snapshot["limits"] == "none"
    assert snapshot["peak_messages_per_s"] is None  # no plan judges them


async def test_self_true_echoes_before_the_ack_and_ack_false_sends_no_reply(raw: Any) -> None:
    echoing, quiet = await raw(), await raw()
    await echoing.joined(ack=True, self_=True)
    await quiet.joined(ack=False, self_=False)
    ref = await echoing.push(TOPIC, "broadcast", broadcast_payload(1))
    first, second = await echoing.recv(), await echoing.recv()
    # The ack is written after the fan-out frames.
    assert first["event"] == "broadcast" and first["payload"] == broadcast_payload(1)
    assert second["event"] == "phx_reply" and second["ref"] == ref
    assert (await quiet.recv())["event"] == "broadcast"
    await quiet.push(TOPIC, "broadcast", broadcast_payload(2))
    assert (await echoing.recv())["payload"] == broadcast_payload(2)
    await quiet.expect_silence()  # ack: false and self: false -> nothing back


async def test_unsupported_event_on_joined_topic_is_an_error(raw: Any) -> None:
    client = await raw()
    await client.joined()
    ref = await client.push(TOPIC, "presence", {"event": "track", "payload": {}})
    reply = await client.recv()
    assert reply["ref"] == ref and reply["payload"]["status"] == "error"
    assert "presence" in reply["payload"]["response"]["reason"]


async def test_leave_replies_then_closes_and_stops_delivery(
    raw: Any, server: LocalRealtimeServer
) -> None:
    leaver, sender = await raw(), await raw()
    await leaver.joined(ack=False)
    await sender.joined(ack=False)
    assert server.subscribers(TOPIC) == 2
    join_ref = leaver.join_refs[TOPIC]
    ref = await leaver.push(TOPIC, "phx_leave")
    reply, close = await leaver.recv(), await leaver.recv()
    assert reply["event"] == "phx_reply" and reply["ref"] == ref
    assert reply["payload"]["status"] == "ok"
    assert close["event"] == "phx_close" and close["topic"] == TOPIC
    assert close["ref"] == join_ref
    assert server.subscribers(TOPIC) == 1
    await sender.push(TOPIC, "broadcast", broadcast_payload(3))
    await leaver.expect_silence()


async def test_fan_out_reaches_every_subscriber_including_official_clients(
    raw: Any, server: LocalRealtimeServer
) -> None:
    raws = [await raw() for _ in range(3)]
    for client in raws:
        await client.joined(ack=False)
    official = AsyncRealtimeClient(server.realtime_url, "anon-key", auto_reconnect=False)
    await official.connect()
    received: list[dict[str, Any]] = []
    states: list[RealtimeSubscribeStates] = []
    channel = official.channel("events:critical")
    channel.on_broadcast("events", lambda p: received.append(dict(p)))
    await channel.subscribe(lambda state, _err: states.append(state))
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]
    sender = await raw()
    await sender.joined(ack=True)
    for n in range(5):
        await sender.push(TOPIC, "broadcast", broadcast_payload(n))
        assert (await sender.recv())["payload"]["status"] == "ok"
    for client in raws:
        got = [(await client.recv())["payload"]["payload"]["events"][0]["n"] for _ in range(5)]
        assert got == list(range(5))
    await until(lambda: len(received) >= 5)
    assert [p["payload"]["events"][0]["n"] for p in received] == list(range(5))
    assert server.stats.fanout_frames == 5 * 4
    await official.close()


async def test_malformed_frames_are_logged_and_ignored(
    raw: Any, server: LocalRealtimeServer
) -> None:
    client = await raw()
    for frame in (
        "not json",
        "[1, 2, 3]",
        '{"event": "heartbeat"}',
        '{"topic": "phoenix", "event": "heartbeat", "payload": [1]}',
        '{"topic": 5, "event": "x"}',
        '{"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": {"a": 1}}',
    ):
        await client.ws.send(frame)
    await client.ws.send(b"\x00\xff binary garbage")
    # The connection and the server are still fine.
    ref = await client.push("phoenix", "heartbeat")
    reply = await client.recv()
    assert reply["ref"] == ref and reply["payload"]["status"] == "ok"
    assert server.stats.malformed == 7
    other = await raw()
    await other.joined()


async def test_a_raising_handler_costs_one_message_not_the_connection() -> None:
    class Faulty(LocalRealtimeServer):
        async def on_other(self, peer: Peer, msg: dict[str, Any]) -> None:
            raise RuntimeError("injected")

    async with Faulty() as srv:
        async with connect(srv.realtime_url.replace("http", "ws") + "/websocket") as ws:
            client = RawClient(ws)
            await client.joined()
            await client.push(TOPIC, "presence", {})
            await client.joined("realtime:events:debug")


async def test_unknown_path_is_rejected_with_404(server: LocalRealtimeServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(f"ws://127.0.0.1:{server.port}/nope")
    assert info.value.response.status_code == 404
    for path in ("/socket/websocket", "/websocket?vsn=1.0.0"):
        async with connect(f"ws://127.0.0.1:{server.port}{path}") as ws:
            client = RawClient(ws)
            await client.joined()


async def test_restart_binds_the_same_port_and_closes_old_connections(raw: Any) -> None:
    srv = LocalRealtimeServer()
    await srv.start()
    port = srv.port
    async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
        await RawClient(ws).joined()
        await srv.close()
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1001
    assert not srv.running
    await srv.start()
    try:
        assert srv.port == port
        async with connect(f"ws://127.0.0.1:{port}/websocket") as ws:
            await RawClient(ws).joined()
    finally:
        await srv.close()
    await srv.close()  # idempotent


async def test_serve_forever_returns_after_close() -> None:
    srv = LocalRealtimeServer()
    task = asyncio.get_running_loop().create_task(srv.serve_forever())
    await until(lambda: srv.running)
    await srv.close()
    async with asyncio.timeout(2):
        await task


async def test_slow_subscriber_is_closed_and_does_not_hold_back_others() -> None:
    srv = LocalRealtimeServer(max_buffer_bytes=256 * 1024, evict_grace_s=0.3)
    await srv.start()
    url = f"ws://127.0.0.1:{srv.port}/websocket"
    # A subscriber that never reads, with a tiny receive buffer so the
    # server-side backlog builds up fast.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    try:
        async with (
            connect(url, sock=sock, max_queue=1, compression=None, close_timeout=0.2) as stuck_ws,
            connect(url, compression=None) as fast_ws,
            connect(url, compression=None) as sender_ws,
        ):
            stuck, fast, sender = RawClient(stuck_ws), RawClient(fast_ws), RawClient(sender_ws)
            await stuck.joined(ack=False)
            await fast.joined(ack=False)
            await sender.joined(ack=True)
            body = {"type": "broadcast", "event": "events", "payload": {"blob": "x" * 32_768}}
            received = 0
            for _ in range(200):
                await sender.push(TOPIC, "broadcast", body)
                assert (await sender.recv())["payload"]["status"] == "ok"
                assert (await fast.recv())["event"] == "broadcast"
                received += 1
            assert received == 200
            assert srv.stats.evicted == 1
            assert srv.subscribers(TOPIC) == 2
            # Stuck (it reads nothing, not even the 1013 close frame), it is
            # cut after the grace period: its server-side handler ends.
            await until(lambda: len(srv.peers) == 2, within_s=3)
            assert stuck_ws.id not in {p.conn.id for p in srv.peers}
    finally:
        await srv.close()


def test_main_runs_as_a_module_prints_its_url_and_exits_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    with (
        open(tmp_path / "stderr.log", "wb") as err,
        subprocess.Popen(
            [sys.executable, "-m", "broadcaster.realtime_server", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=err,
        ) as proc,
    ):
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        assert line == f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == b""


def test_main_reports_a_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "broadcaster.realtime_server",
                "--port",
                str(s.getsockname()[1]),
            ],
            capture_output=True,
            timeout=30,
        )
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"cannot listen" in done.stderr and b"Errno" not in done.stderr


# -- the apikey --------------------------------------------------------------------


KEY = "the-right-key-0123456789"


@pytest.fixture
async def keyed() -> AsyncIterator[LocalRealtimeServer]:
    srv = LocalRealtimeServer(key=KEY)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def refused_status(url: str, **kwargs: Any) -> int:
    """The HTTP status a raw WebSocket handshake to ``url`` is refused with."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, compression=None, **kwargs):
            pass
    return refused.value.response.status_code


async def test_a_raw_client_needs_the_right_apikey(keyed: LocalRealtimeServer) -> None:
    base = f"ws://127.0.0.1:{keyed.port}/realtime/v1/websocket"
    assert await refused_status(f"{base}?vsn=1.0.0") == 401
    assert await refused_status(f"{base}?apikey=wrong&vsn=1.0.0") == 401
    assert await refused_status(f"{base}?apikey={KEY}x&vsn=1.0.0") == 401
    assert await refused_status(f"{base}?apikey=&vsn=1.0.0") == 401
    # The header wins over the query parameter, as on Supabase.
    assert (
        await refused_status(f"{base}?apikey={KEY}", additional_headers={"x-api-key": "wrong"})
        == 401
    )
    assert keyed.stats.refused == 5
    assert keyed.stats.connections == 0  # refused before the WebSocket opened
    for url, headers in (
        (f"{base}?apikey={KEY}&vsn=1.0.0", {}),
        (f"{base}?vsn=1.0.0", {"x-api-key": KEY}),
    ):
        async with connect(url, compression=None, additional_headers=headers) as ws:
            client = RawClient(ws)
            await client.joined()
            await client.push(TOPIC, "broadcast", broadcast_payload(1))
            reply = await client.recv()
            assert reply["payload"]["status"] == "ok"
    assert keyed.stats.broadcasts == 2


async def test_a_refused_key_gets_realtimes_json_error(keyed: LocalRealtimeServer) -> None:
    base = f"ws://127.0.0.1:{keyed.port}/realtime/v1/websocket"
    assert await refusal(f"{base}?vsn=1.0.0") == (401, b'{"error":"API key is missing"}')
    assert await refusal(f"{base}?apikey=wrong") == (
        401,
        b'{"error":"The token provided is not a valid JWT"}',
    )
    # A project's keys are JWTs: another one fails the signature.
    assert await refusal(f"{base}?apikey=aaa.bbb.ccc") == (
        401,
        b'{"error":"Failed to validate JWT signature"}',
    )


async def test_the_official_client_needs_the_right_apikey(keyed: LocalRealtimeServer) -> None:
    for key in ("wrong-key", None):
        client = AsyncRealtimeClient(keyed.realtime_url, key, auto_reconnect=False)
        with pytest.raises(InvalidStatus) as refused:
            await client.connect()
        assert refused.value.response.status_code == 401
    client = AsyncRealtimeClient(keyed.realtime_url, KEY, auto_reconnect=False)
    await client.connect()
    try:
        states: list[RealtimeSubscribeStates] = []
        channel = client.channel("events:critical")
        await channel.subscribe(lambda state, _err: states.append(state))
        await until(lambda: RealtimeSubscribeStates.SUBSCRIBED in states)
    finally:
        await client.close()
    assert keyed.stats.joins == 1
    assert keyed.stats.refused == 2


async def test_the_embedded_server_accepts_only_the_broadcasters_key() -> None:
    from broadcaster.core import Broadcaster
    from broadcaster.settings import load_settings

    for configured in (None, "configured-key-0123456789"):
        settings = load_settings(
            env_file=None, websocket_port=0, store_url="memory://", supabase_key=configured
        )
        async with Broadcaster(settings) as b:
            url, key = b.local_realtime_url, b.local_realtime_key
            assert url is not None and key
            if configured is not None:
                assert key == configured
            # The broadcaster's own adapter got in with that key.
            assert b.health()["realtime"].connected
            base = url.replace("http://", "ws://") + "/realtime/v1/websocket"
            assert await refused_status(f"{base}?vsn=1.0.0") == 401
            assert await refused_status(f"{base}?apikey=anything&vsn=1.0.0") == 401
            async with connect(f"{base}?apikey={key}&vsn=1.0.0", compression=None) as ws:
                await RawClient(ws).joined()


class ChildServer:
    """``python ARGS --host 127.0.0.1 --port N`` (a Realtime server) as a child
    process, with ``SUPABASE_KEY`` from ``env`` (else none); its stderr is
    read once it has exited."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.server = RealtimeServerProcess(
            key=env.get("SUPABASE_KEY", ""), stderr=asyncio.subprocess.PIPE, command=args
        )
        self.port = self.server.port
        self.base = f"ws://127.0.0.1:{self.port}/realtime/v1/websocket"
        self.stderr = ""

    async def __aenter__(self) -> ChildServer:
        await self.server.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        proc = self.server.proc
        assert proc is not None and proc.stderr is not None
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            self.stderr = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["-m", "broadcaster.realtime_server"], {"SUPABASE_KEY": KEY}),
        (["-m", "broadcaster.realtime_server", "--key", KEY], {}),
        (["-m", "broadcaster", "realtime-server", "--key", KEY], {}),
        (["-m", "broadcaster", "realtime-server"], {"SUPABASE_KEY": KEY}),
    ],
    ids=["module-env", "module-key", "cli-key", "cli-env"],
)
async def test_a_child_server_accepts_only_its_key(args: list[str], env: dict[str, str]) -> None:
    async with ChildServer(args, env) as child:
        assert await refused_status(f"{child.base}?apikey=wrong&vsn=1.0.0") == 401
        assert await refused_status(f"{child.base}?vsn=1.0.0") == 401
        async with connect(f"{child.base}?apikey={KEY}&vsn=1.0.0", compression=None) as ws:
            await RawClient(ws).joined()
        official = AsyncRealtimeClient(
            child.base.replace("/websocket", ""), KEY, auto_reconnect=False
        )
        await official.connect()
        await official.close()
    assert "accepting any apikey" not in child.stderr
    assert KEY not in child.stderr  # the key is never logged


async def test_a_child_server_without_a_key_says_it_accepts_any() -> None:
    async with ChildServer(["-m", "broadcaster", "realtime-server"], {}) as child:
        async with connect(f"{child.base}?apikey=anything&vsn=1.0.0", compression=None) as ws:
            await RawClient(ws).joined()
    assert "accepting any apikey" in child.stderr
