"""WebSocket fan-out adapter against real loopback sockets, real clients and,
where a peer must stall or vanish, a real client process that is stopped or
killed. No mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson
import pytest
import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.protocol import State
from websockets.server import ServerProtocol

from broadcaster.adapters.websocket import (
    SLOW_CLOSE_CODE,
    SLOW_CLOSE_REASON,
    WebSocketAdapter,
    WebSocketHealth,
    parse_categories,
    text_frames,
)
from broadcaster.consumer import ReceiptCollector
from broadcaster.consumer.websocket import WebSocketSubscriber
from broadcaster.events import Category, EventFactory, EventRecord, seal, verify_event_dict
from broadcaster.exceptions import AdapterUnavailable
from broadcaster.settings import Settings
from tests._shapes import assert_shape
from tests._wait import until

CATEGORIES = list(Category)


def make_records(
    n: int,
    *,
    start: int = 1,
    categories: Sequence[Category] = CATEGORIES,
    pad: int = 0,
) -> list[EventRecord]:
    factory = EventFactory()
    return [
        seal(
            factory.draft(
                categories[i % len(categories)],
                "order.created",
                {"i": i, "name": "Zoë ✓", "pad": "x" * pad},
                key=f"k{i}",
            ),
            start + i,
        )
        for i in range(n)
    ]


def send_now(adapter: WebSocketAdapter, batch: Sequence[EventRecord]) -> None:
    """Run ``adapter.send(batch)`` and prove it completed without suspending:
    a send that waited on any subscriber would not finish in one step."""
    coro = adapter.send(batch)
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("send() suspended")


@pytest.fixture
async def adapter() -> AsyncIterator[WebSocketAdapter]:
    async with WebSocketAdapter(port=0) as server:
        yield server


def subscriber(url: str, categories: Sequence[str] | None = None) -> WebSocketSubscriber:
    return WebSocketSubscriber(
        url, categories=categories, collector=ReceiptCollector("websocket"), reconnect=False
    )


# A subscriber in its own process, so the test can stop (SIGSTOP) or kill
# (SIGKILL) it like a real stalled or crashed peer. A small receive buffer
# bounds how much the kernel absorbs for it, so the test needs fewer bytes.
_CHILD = """
import socket, sys
from websockets.sync.client import connect
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
sock.connect((host, port))
with connect(f"ws://{host}:{port}{path}", sock=sock, compression=None) as ws:
    for _ in ws:
        pass
"""


async def spawn_child(adapter: WebSocketAdapter, path: str = "/events") -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        adapter.host,
        str(adapter.port),
        path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
    )
    return proc


async def reap(proc: Any) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


class RawClient:
    """A client that completes the handshake and then never reads a byte."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def open(cls, adapter: WebSocketAdapter) -> RawClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        # A small receive window: the kernel holds little on our behalf, so the
        # server's own buffer fills after a few hundred KiB.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await loop.sock_connect(sock, (adapter.host, adapter.port))
        request = (
            f"GET /events HTTP/1.1\r\nHost: {adapter.host}:{adapter.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += await loop.sock_recv(sock, 1)  # byte by byte: read no frame
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(sock)

    async def read_until_closed(self) -> int:
        """Read everything; return the byte count once the server closed or reset."""
        loop = asyncio.get_running_loop()
        total = 0
        try:
            while chunk := await loop.sock_recv(self.sock, 1 << 20):
                total += len(chunk)
        except ConnectionResetError:
            pass
        return total

    def close(self) -> None:
        self.sock.close()


# -- paths, filters, lifecycle ------------------------------------------------


async def test_port_url_and_health(adapter: WebSocketAdapter) -> None:
    assert adapter.port != 0
    assert adapter.url == f"ws://127.0.0.1:{adapter.port}/events"
    health = adapter.health()
    assert health.name == "websocket"
    assert health.connected
    assert health.extra["subscribers"] == 0
    assert_shape(health.extra, WebSocketHealth)
    await adapter.close()
    await adapter.close()  # idempotent
    assert not adapter.health().connected


def test_from_settings() -> None:
    settings = Settings(_env_file=None, websocket_host="127.0.0.1", websocket_port=9999)
    ws = WebSocketAdapter.from_settings(settings)
    assert (ws.host, ws.port, ws.url) == ("127.0.0.1", 9999, "ws://127.0.0.1:9999/events")


def test_parse_categories() -> None:
    assert parse_categories(None) is None
    assert parse_categories(" critical, System ,") == frozenset(
        {Category.CRITICAL, Category.SYSTEM}
    )
    with pytest.raises(ValueError, match="unknown category 'NOPE'"):
        parse_categories("CRITICAL,nope")
    with pytest.raises(ValueError, match="empty"):
        parse_categories(" , ")


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/", 404, "no such path '/'"),
        ("/event", 404, "no such path '/event'"),
        ("/events/x?categories=CRITICAL", 404, "no such path '/events/x'"),
        ("/events?categories=BOGUS", 400, "unknown category 'BOGUS'"),
        ("/events?categories=CRITICAL,bogus", 400, "unknown category 'BOGUS'"),
        ("/events?categories=", 400, "categories is empty"),
        ("/events?category=CRITICAL", 400, "unknown query parameter 'category'"),
    ],
)
async def test_bad_path_or_filter_refused_at_handshake(
    adapter: WebSocketAdapter, path: str, status: int, reason: str
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{adapter.port}{path}"):
            pass  # pragma: no cover
    response = info.value.response
    assert response.status_code == status
    assert reason in bytes(response.body or b"").decode()
    assert adapter.subscriber_count == 0


async def test_send_before_start_and_without_subscribers() -> None:
    ws = WebSocketAdapter(port=0)
    with pytest.raises(AdapterUnavailable, match="not started"):
        await ws.send(make_records(1))
    async with ws:
        send_now(ws, make_records(10))
        send_now(ws, [])
        assert ws.health().extra["frames_sent"] == 0
    with pytest.raises(AdapterUnavailable):
        await ws.send(make_records(1))


async def test_start_on_busy_port_raises_adapter_unavailable(adapter: WebSocketAdapter) -> None:
    second = WebSocketAdapter("127.0.0.1", adapter.port)
    with pytest.raises(AdapterUnavailable) as info:
        await second.start()
    assert f"127.0.0.1:{adapter.port}" in str(info.value)
    assert info.value.adapter == "websocket"
    assert isinstance(info.value.__cause__, OSError)
    await second.close()  # nothing to release, still fine


# -- delivery -----------------------------------------------------------------


async def test_frames_are_exactly_the_wire_bytes_as_text(adapter: WebSocketAdapter) -> None:
    records = make_records(20)
    async with connect(adapter.url) as ws:
        await adapter.wait_for_subscribers(1)
        await adapter.send(records[:7])
        await adapter.send(records[7:])
        for record in records:
            frame = await ws.recv()
            assert isinstance(frame, str)  # a text frame
            assert frame.encode() == record.wire
            ok, _, _ = verify_event_dict(orjson.loads(frame))
            assert ok
    assert adapter.health().extra["frames_sent"] == 20


async def test_filters_deliver_only_matching_categories(adapter: WebSocketAdapter) -> None:
    records = make_records(500)
    async with (
        connect(adapter.url + "?categories=critical,System") as two,
        connect(adapter.url + "?categories=DEBUG") as debug,
        connect(adapter.url + "?categories=DEBUG&categories=critical") as repeated,
    ):
        await adapter.wait_for_subscribers(3)
        filters = sorted(str(info.categories) for info in adapter.subscribers())
        assert filters == [
            "('CRITICAL', 'DEBUG')",
            "('CRITICAL', 'SYSTEM')",
            "('DEBUG',)",
        ]
        for i in range(0, 500, 100):
            await adapter.send(records[i : i + 100])

        async def receive(ws: Any, wanted: set[Category]) -> None:
            expected = [r.wire for r in records if r.category in wanted]
            got = [(await ws.recv(decode=False)) for _ in expected]
            assert got == expected

        await receive(two, {Category.CRITICAL, Category.SYSTEM})
        await receive(debug, {Category.DEBUG})
        await receive(repeated, {Category.DEBUG, Category.CRITICAL})
        sent = {info.categories: info.frames_sent for info in adapter.subscribers()}
        assert sent == {("CRITICAL", "SYSTEM"): 200, ("DEBUG",): 100, ("CRITICAL", "DEBUG"): 200}


async def test_several_subscribers_get_every_event_in_sequence_order(
    adapter: WebSocketAdapter,
) -> None:
    n = 10_000
    records = make_records(n)
    orders: list[list[int]] = [[], [], []]

    def recorder(seen: list[int]) -> Callable[[Mapping[str, Any], bool], None]:
        return lambda obj, ok: seen.append(obj["sequence_id"])

    subs = [
        WebSocketSubscriber(
            adapter.url,
            categories=cats,
            collector=ReceiptCollector("websocket", on_event=recorder(seen)),
        )
        for seen, cats in zip(orders, [None, None, ["PERFORMANCE", "USER_ACTIVITY"]], strict=True)
    ]
    for sub in subs:
        await sub.start()
    try:
        await adapter.wait_for_subscribers(3)
        for i in range(0, n, 250):
            send_now(adapter, records[i : i + 250])
            await asyncio.sleep(0)  # let the in-process subscribers read
        await subs[0].wait_for(n, 20)
        await subs[1].wait_for(n, 20)
        filtered = [
            r.sequence_id for r in records if r.category in ("PERFORMANCE", "USER_ACTIVITY")
        ]
        await subs[2].wait_for(len(filtered), 20)
    finally:
        for sub in subs:
            await sub.close()
    assert orders[0] == orders[1] == list(range(1, n + 1))
    assert orders[2] == filtered
    for sub in subs:
        assert sub.stats.mismatches == sub.stats.malformed == sub.stats.duplicates == 0
        assert sub.stats.verified == sub.stats.received
    assert adapter.health().extra["frames_sent"] == 2 * n + len(filtered)


async def test_connect_and_disconnect_are_logged_with_filter(adapter: WebSocketAdapter) -> None:
    with structlog.testing.capture_logs() as logs:
        async with connect(adapter.url + "?categories=SYSTEM"):
            await adapter.wait_for_subscribers(1)
            await adapter.send(make_records(5))
        await adapter.wait_for_subscribers(0)
        # The handler logs once the TCP close completes.
        await until(lambda: any(e["event"] == "subscriber disconnected" for e in logs))
    connected = [e for e in logs if e["event"] == "subscriber connected"]
    gone = [e for e in logs if e["event"] == "subscriber disconnected"]
    assert connected[0]["adapter"] == "websocket"
    assert connected[0]["categories"] == ("SYSTEM",)
    assert gone[0]["categories"] == ("SYSTEM",)
    assert gone[0]["frames_sent"] == 1
    assert gone[0]["close_code_received"] == 1000


# -- slow and vanished subscribers ----------------------------------------------


async def _flood_until_dropped(
    adapter: WebSocketAdapter, fast: WebSocketSubscriber, expected_subscribers: int
) -> int:
    """Send 8 KiB events until a subscriber is dropped (pacing on the fast
    in-process subscriber only); return how many events were sent."""
    sent = 0
    seq = 1
    for _ in range(400):  # at most ~32 MiB: far above any kernel buffering
        batch = make_records(25, start=seq, pad=8192)
        seq += len(batch)
        send_now(adapter, batch)
        sent += len(batch)
        await fast.wait_for(sent, 10)
        if adapter.subscriber_count < expected_subscribers:
            break
    assert adapter.subscriber_count == expected_subscribers - 1, "slow subscriber not dropped"
    # The fast subscriber keeps getting everything after the drop.
    send_now(adapter, make_records(25, start=seq, pad=8192))
    sent += 25
    await fast.wait_for(sent, 10)
    return sent


async def test_subscriber_that_never_reads_is_dropped_fast_one_unaffected() -> None:
    async with WebSocketAdapter(port=0, max_buffer_bytes=256 * 1024, close_timeout=0.5) as ws:
        raw = await RawClient.open(ws)
        try:
            async with subscriber(ws.url) as fast:
                await ws.wait_for_subscribers(2)
                with structlog.testing.capture_logs() as logs:
                    sent = await _flood_until_dropped(ws, fast, 2)
                assert fast.stats.verified == sent
                assert fast.stats.malformed == fast.stats.mismatches == 0
                slow = [e for e in logs if e["event"] == "subscriber too slow; closing"]
                assert len(slow) == 1
                assert slow[0]["backlog_bytes"] > 256 * 1024
                assert ws.health().extra["dropped_slow"] == 1
                # After the grace period the server aborts the stalled
                # connection, freeing its backlog: the client sees the end.
                async with asyncio.timeout(5):
                    await raw.read_until_closed()
        finally:
            raw.close()


async def test_slow_reader_that_wakes_up_sees_close_code_1013() -> None:
    async with WebSocketAdapter(port=0, max_buffer_bytes=256 * 1024, close_timeout=10) as ws:
        # max_queue=1: websockets stops reading the socket once one message is
        # waiting, so this client is slow until it starts calling recv().
        async with connect(ws.url, max_queue=1, compression=None) as slow:
            async with subscriber(ws.url) as fast:
                await ws.wait_for_subscribers(2)
                await _flood_until_dropped(ws, fast, 2)
            seqs: list[int] = []
            with pytest.raises(ConnectionClosedError) as info:
                while True:
                    seqs.append(orjson.loads(await slow.recv())["sequence_id"])
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == SLOW_CLOSE_CODE
            assert int(SLOW_CLOSE_CODE) == 1013
            assert info.value.rcvd.reason == SLOW_CLOSE_REASON
            # What it did get is an unbroken prefix of the stream.
            assert seqs == list(range(1, len(seqs) + 1))


async def test_stopped_subscriber_process_is_dropped_send_never_blocks() -> None:
    async with WebSocketAdapter(port=0, max_buffer_bytes=256 * 1024, close_timeout=0.5) as ws:
        proc = await spawn_child(ws)
        try:
            async with asyncio.timeout(10):
                await ws.wait_for_subscribers(1)
            os.kill(proc.pid, signal.SIGSTOP)
            async with subscriber(ws.url) as fast:
                await ws.wait_for_subscribers(2)
                sent = await _flood_until_dropped(ws, fast, 2)
                assert fast.stats.verified == sent
            async with asyncio.timeout(5):
                await ws.wait_for_subscribers(0)
        finally:
            await reap(proc)


async def test_killed_subscriber_process_is_removed() -> None:
    async with WebSocketAdapter(port=0) as ws:
        procs = [await spawn_child(ws), await spawn_child(ws, "/events?categories=DEBUG")]
        try:
            async with asyncio.timeout(10):
                await ws.wait_for_subscribers(2)
            procs[0].send_signal(signal.SIGKILL)
            await procs[0].wait()
            async with asyncio.timeout(5):
                await ws.wait_for_subscribers(1)
            assert [info.categories for info in ws.subscribers()] == [("DEBUG",)]
            send_now(ws, make_records(50))
            assert ws.subscribers()[0].frames_sent == 10
        finally:
            for proc in procs:
                await reap(proc)


async def test_keepalive_detects_a_stalled_peer_without_traffic() -> None:
    async with WebSocketAdapter(
        port=0, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.3
    ) as ws:
        proc = await spawn_child(ws)
        try:
            async with asyncio.timeout(10):
                await ws.wait_for_subscribers(1)
            os.kill(proc.pid, signal.SIGSTOP)
            # No events flow, so only a missing pong can reveal it.
            async with asyncio.timeout(5):
                await ws.wait_for_subscribers(0)
        finally:
            await reap(proc)


async def test_close_does_not_hang_on_a_stalled_subscriber() -> None:
    ws = WebSocketAdapter(port=0, close_timeout=0.3)
    await ws.start()
    raw = await RawClient.open(ws)
    try:
        await ws.wait_for_subscribers(1)
        for seq in range(1, 4000, 100):
            send_now(ws, make_records(100, start=seq, pad=1024))  # ~4 MiB, below the limit
        assert ws.subscriber_count == 1
        async with asyncio.timeout(5):
            await ws.close()
        assert not ws.health().connected
    finally:
        raw.close()


async def test_subscriber_closing_mid_stream_is_skipped(adapter: WebSocketAdapter) -> None:
    async with connect(adapter.url) as leaving, connect(adapter.url) as staying:
        await adapter.wait_for_subscribers(2)
        await leaving.close()
        # Whether or not the server has noticed yet, send() must not fail.
        send_now(adapter, make_records(10))
        for _ in range(10):
            await staying.recv()
        await adapter.wait_for_subscribers(1)
        with pytest.raises(ConnectionClosed):
            await leaving.recv()


def test_text_frames_are_the_bytes_websockets_would_send() -> None:
    protocol = ServerProtocol()
    protocol.state = State.OPEN
    payloads = [b"", b"{}", b"x" * 125, b"y" * 126, "\u00e9".encode() * 40_000, b"z" * 65_535]
    payloads.append(b"w" * 65_536)
    for payload in payloads:
        protocol.send_text(payload)
    expected = b"".join(protocol.data_to_send())
    assert text_frames(payloads) == (expected, len(payloads))
    assert text_frames([]) == (b"", 0)
