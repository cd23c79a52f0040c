"""The client glue: every private or undocumented attribute of the ``realtime``
and ``supabase`` clients it uses is still there (a release that drops one
fails here, naming it, and stops a connection from starting); the project
client is made with ``acreate_client`` without a request; and the fast paths
settle pushes and report losses as the clients would, against real sockets."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import realtime
import supabase
from websockets.asyncio.server import ServerConnection, serve

from broadcaster.adapters.realtime import PreEncodedPushClient, RealtimeLink
from broadcaster.adapters.realtime.client_glue import (
    INTERNALS,
    Internal,
    create_project_client,
    discard_client,
    ensure_supported_clients,
    install_connection,
    missing_internals,
    project_url,
    push_broadcast,
)
from broadcaster.exceptions import AdapterUnavailable, ConfigError
from broadcaster.realtime_server import Peer
from broadcaster.realtime_server.protocol import encode_push
from tests._wait import until
from tests.adapters.realtime._support import KEY, Msg, RecordingServer


@pytest.mark.parametrize("internal", INTERNALS, ids=str)
def test_every_internal_the_glue_relies_on_is_still_there(internal: Internal) -> None:
    assert internal not in missing_internals(), (
        f"realtime {realtime.__version__} / supabase {supabase.__version__} no longer have"
        f" {internal}, which broadcaster/adapters/realtime/client_glue.py uses ({internal.use});"
        " adapt client_glue.py to the new release before widening the pin in pyproject.toml"
    )


def _gone(self: object) -> Any:
    raise AttributeError("removed in this release")


class ClientWithoutItsReader(PreEncodedPushClient):
    """A client release that no longer has the reader the glue overrides."""

    _listen = property(_gone)  # type: ignore[assignment]


async def test_a_connection_does_not_start_on_a_client_lacking_an_internal() -> None:
    assert [str(m) for m in missing_internals(ClientWithoutItsReader)] == [
        "AsyncRealtimeClient._listen"
    ]
    link = RealtimeLink(
        "http://127.0.0.1:9", KEY, ["events:critical"], ack=True,
        client_factory=ClientWithoutItsReader,
    )  # fmt: skip
    with pytest.raises(AdapterUnavailable) as info:
        await link.start()
    assert "AsyncRealtimeClient._listen" in str(info.value)
    assert "pinned in pyproject.toml" in str(info.value)
    await link.close()
    ensure_supported_clients()  # the installed clients have everything


def test_project_url_takes_a_project_url_or_its_realtime_endpoint() -> None:
    assert project_url("https://x.supabase.co") == "https://x.supabase.co"
    assert project_url("http://h:1/realtime/v1/") == "http://h:1"
    assert project_url("ws://h:1/realtime/v1") == "http://h:1"
    assert project_url("wss://h/base/realtime/v1") == "https://h/base"
    assert project_url(" http://h:1/ ") == "http://h:1"


@pytest.fixture
async def trap() -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback port that counts every connection made to it."""
    connections: list[int] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(count, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        await server.wait_closed()


async def test_the_project_client_is_made_without_a_request(
    trap: tuple[str, list[int]],
) -> None:
    url, connections = trap
    project = await create_project_client(url + "/realtime/v1", KEY, hb_interval_s=25)
    try:
        assert str(project.realtime_url) == url.replace("http", "ws") + "/realtime/v1"
        assert connections == []
        # Each connection is a client of ours, built as supabase builds its own,
        # installed as the project's realtime and keeping its access token.
        await project.realtime.set_auth("refreshed-token")
        first = install_connection(
            project, PreEncodedPushClient, KEY, hb_interval_s=25, timeout_s=2
        )
        assert project.realtime is first and first.access_token == "refreshed-token"
        assert first.url.startswith(url.replace("http", "ws") + "/realtime/v1/websocket?")
        second = install_connection(
            project, PreEncodedPushClient, KEY, hb_interval_s=25, timeout_s=2
        )
        assert project.realtime is second and second.access_token == "refreshed-token"
    finally:
        await project.auth.close()
    assert connections == []


async def test_a_url_or_key_the_client_refuses_names_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        await create_project_client("ftp://h:1", KEY, hb_interval_s=25)
    assert info.value.variable == "SUPABASE_URL"
    with pytest.raises(ConfigError) as info:
        RealtimeLink("http://h:1", None, [], ack=True)
    assert info.value.variable == "SUPABASE_KEY"


class Replying(RecordingServer):
    """Answers each broadcast with ``self.answer`` (a phx_reply payload)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Msg = {"status": "ok", "response": {}}

    async def ack_broadcast(self, peer: Peer, msg: Msg) -> None:
        await self.reply(peer, msg, self.answer["status"], self.answer["response"])


async def _joined(url: str) -> tuple[PreEncodedPushClient, Any]:
    client = PreEncodedPushClient(url, KEY, auto_reconnect=False)
    await client.connect()
    channel = client.channel("events:critical", {"config": {"broadcast": {"ack": True}}})
    await channel.subscribe()
    assert channel.is_joined
    return client, channel


async def test_replies_to_broadcasts_settle_their_push_even_a_bare_string_error() -> None:
    async with Replying() as srv:
        client, channel = await _joined(srv.realtime_url)
        outcomes: list[object] = []

        async def push() -> None:
            await push_broadcast(
                channel,
                {"type": "broadcast", "event": "events", "payload": {"events": []}},
                5.0,
                on_ok=lambda: outcomes.append("ok"),
                on_error=outcomes.append,
                on_timeout=lambda: outcomes.append("timeout"),
            )

        await push()
        await until(lambda: outcomes == ["ok"])
        # Supabase's answer to a payload over its limit: the stock reader
        # cannot parse it (the response is no object) and the push would time out.
        srv.answer = {"status": "error", "response": "payload_size_exceeded"}
        await push()
        await until(lambda: len(outcomes) == 2)
        assert outcomes[1] == {"reason": "payload_size_exceeded"}
        srv.answer = {"status": "error", "response": {"reason": "ClientJoinRateLimitReached"}}
        await push()
        await until(lambda: len(outcomes) == 3)
        assert outcomes[2] == {"reason": "ClientJoinRateLimitReached"}
        assert channel.is_joined
        await discard_client(client)


async def test_a_system_error_is_reported_before_the_channel_errors() -> None:
    async with RecordingServer() as srv:
        client, channel = await _joined(srv.realtime_url)
        seen: list[tuple[str, str, bool]] = []
        client.on_channel_refused = lambda topic, message: seen.append(
            (topic, message, channel.is_joined)
        )
        peer = next(iter(srv.peers))
        system = {
            "channel": "events:critical",
            "extension": "system",
            "status": "error",
            "message": "Too many messages per second",
        }
        topic = "realtime:events:critical"
        await srv.send_wire(peer, encode_push(peer.vsn, topic, "system", system, join_ref=None))
        await until(lambda: channel.is_errored)
        assert seen == [("realtime:events:critical", "Too many messages per second", True)]
        await discard_client(client)


@pytest.mark.parametrize("heard", [True, False], ids=["heard", "not-heard"])
async def test_broadcasts_on_a_topic_not_heard_are_dropped_unparsed(heard: bool) -> None:
    """A publisher's client hears only the topics a callback listens on (its
    canary): another publisher's broadcasts on its channels never reach the
    stock reader, whose pydantic validation and debug formatting per frame
    took most of a standby instance's CPU."""
    async with RecordingServer() as srv:
        client, channel = await _joined(srv.realtime_url)
        topic = "realtime:events:critical"
        client.heard_topics = frozenset({topic} if heard else ())
        got: list[Any] = []
        channel.on_broadcast("events", got.append)
        peer = next(iter(srv.peers))
        frame = {"event": "events", "payload": {"events": [1]}, "type": "broadcast"}
        await srv.send_wire(peer, encode_push(peer.vsn, topic, "broadcast", frame, join_ref=None))
        # A frame sent after it, which every client handles: once its effect
        # shows, the broadcast before it has been read (or dropped).
        system = {
            "channel": "events:critical",
            "extension": "system",
            "status": "error",
            "message": "marker",
        }
        seen: list[str] = []
        client.on_channel_refused = lambda _topic, message: seen.append(message)
        await srv.send_wire(peer, encode_push(peer.vsn, topic, "system", system, join_ref=None))
        await until(lambda: seen == ["marker"])
        assert len(got) == (1 if heard else 0)
        await discard_client(client)


async def test_a_connection_the_server_breaks_is_reported_lost_once() -> None:
    # The stock reader reads the deprecated ConnectionClosed.code here: with
    # warnings as errors its task would die without reporting anything.
    async def break_it(conn: ServerConnection) -> None:
        await conn.close(code=1011, reason="boom")

    async with serve(break_it, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = PreEncodedPushClient(f"ws://127.0.0.1:{port}/realtime/v1", KEY)
        lost: list[str] = []
        client.on_connection_lost = lost.append
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            await client.connect()
            await until(lambda: bool(lost) and not client.reading)
        assert len(lost) == 1 and "1011" in lost[0]
        assert not client.is_connected and not client.socket_open
        await discard_client(client)
