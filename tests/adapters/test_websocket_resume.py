"""Resume on the WebSocket path (SPEC 12): ``?since=N`` replays the stored
events after N, then continues live with no gap and no duplicate at the seam,
also while events are published at full rate during the replay. Real
sockets, real stores, real clients; no mocks and no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.adapters.websocket import (
    AHEAD_CLOSE_CODE,
    PRUNED_CLOSE_CODE,
    WebSocketAdapter,
)
from broadcaster.consumer import ReceiptCollector, WebSocketSubscriber
from broadcaster.core import Broadcaster
from broadcaster.events import Category, EventFactory, EventRecord, seal
from broadcaster.exceptions import HistoryPruned
from broadcaster.settings import load_settings
from broadcaster.store import MemoryStore, SQLiteStore, Store
from broadcaster.store.base import DeliveryState

WS = ("websocket",)


async def append(
    store: Store, n: int, category: Category = Category.CRITICAL, routed: tuple[str, ...] = WS
) -> list[EventRecord]:
    factory = EventFactory()
    return await store.append(
        [(factory.draft(category, "order.created", {"i": i}), routed) for i in range(n)]
    )


async def receive(ws: ClientConnection, n: int) -> list[int]:
    """The sequence ids of the next ``n`` frames."""
    ids = []
    async with asyncio.timeout(30):
        for _ in range(n):
            ids.append(orjson.loads(await ws.recv())["sequence_id"])
    return ids


async def nothing_more(ws: ClientConnection, adapter: WebSocketAdapter) -> None:
    """Prove nothing else is on its way: a marker event sent now is the very
    next frame (frames to one connection follow send order)."""
    marker = (await append_marker(adapter))[0]
    assert orjson.loads(await ws.recv())["sequence_id"] == marker.sequence_id


_marker_ids = iter(range(10**12, 10**13))


async def append_marker(adapter: WebSocketAdapter) -> list[EventRecord]:
    # Far above any test's ids, so never taken for a replayed one.
    marker = seal(EventFactory().draft(Category.CRITICAL, "marker", {}), next(_marker_ids))
    await adapter.send([marker])
    return [marker]


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as backend:
        yield backend


@pytest.fixture
async def server(store: MemoryStore) -> AsyncIterator[WebSocketAdapter]:
    async with WebSocketAdapter(port=0, replay=store, replay_page=7) as adapter:
        yield adapter


async def test_since_replays_what_is_stored_then_goes_live(
    server: WebSocketAdapter, store: MemoryStore
) -> None:
    records = await append(store, 30)
    async with connect(f"{server.url}?since=12") as ws:
        assert await receive(ws, 18) == list(range(13, 31))
        live = await append(store, 5)
        await server.send(live)
        assert await receive(ws, 5) == list(range(31, 36))
        await nothing_more(ws, server)
    # since=0: everything; since at the newest id: nothing before live.
    async with connect(f"{server.url}?since=0") as ws:
        assert await receive(ws, 35) == list(range(1, 36))
    async with connect(f"{server.url}?since=35") as ws:
        await nothing_more(ws, server)
    assert records[0].sequence_id == 1


async def test_since_with_a_filter_replays_only_matching_events_of_this_adapter(
    server: WebSocketAdapter, store: MemoryStore
) -> None:
    await append(store, 3, Category.CRITICAL)  # 1-3
    await append(store, 3, Category.SYSTEM)  # 4-6
    await append(store, 3, Category.CRITICAL, routed=("realtime",))  # 7-9: not this path
    await append(store, 3, Category.DEBUG)  # 10-12
    await append(store, 2, Category.CRITICAL, routed=("realtime", "websocket"))  # 13-14
    url = f"{server.url}?categories=critical,DEBUG&since=2"
    async with connect(url) as ws:
        assert await receive(ws, 6) == [3, 10, 11, 12, 13, 14]
        await server.send(await append(store, 2, Category.SYSTEM))  # 15-16: filtered out
        await server.send(await append(store, 1, Category.DEBUG))  # 17
        assert await receive(ws, 1) == [17]
        await nothing_more(ws, server)


async def test_a_resumed_connection_never_gets_a_replayed_event_twice(
    server: WebSocketAdapter, store: MemoryStore
) -> None:
    """A backfill or a repair re-sends old events live: those after ``since``
    were replayed to this connection and are not sent again; those at or
    before it were not, and are."""
    records = await append(store, 10)
    async with connect(f"{server.url}?since=5") as ws, connect(server.url) as plain:
        assert await receive(ws, 5) == [6, 7, 8, 9, 10]
        async with asyncio.timeout(10):
            await server.wait_for_subscribers(2)
        await server.send(records[2:8])  # ids 3-8, as a backfill would
        assert await receive(ws, 3) == [3, 4, 5]
        assert await receive(plain, 6) == [3, 4, 5, 6, 7, 8]
        await nothing_more(ws, server)


async def test_pruned_history_closes_with_4410_naming_the_oldest_stored(
    server: WebSocketAdapter, store: MemoryStore
) -> None:
    records = await append(store, 20)
    ids = [r.sequence_id for r in records]
    await store.mark("websocket", ids, DeliveryState.ACKED)
    assert await store.prune(through=10, older_than_ms=2**62) == 10
    for since in (0, 3, 9):
        async with connect(f"{server.url}?since={since}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == PRUNED_CLOSE_CODE
        assert closed.value.rcvd.reason == (
            f"events after {since} were pruned; the oldest stored is 11"
        )
    async with connect(f"{server.url}?since=10") as ws:  # nothing missing: fine
        assert await receive(ws, 10) == list(range(11, 21))
    # Everything pruned: a cursor behind the newest id has lost events too.
    assert await store.prune(through=20, older_than_ms=2**62) == 10
    async with connect(f"{server.url}?since=19") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == PRUNED_CLOSE_CODE
    assert closed.value.rcvd.reason == "events after 19 were pruned; no event is stored"
    async with connect(f"{server.url}?since=20") as ws:
        await nothing_more(ws, server)


class InFlightStore(MemoryStore):
    """Ids handed out to appends not committed (in flight in another
    process, or rolled back) count in the high-water mark, as a PostgreSQL
    sequence's do, while no event of theirs is stored."""

    in_flight = 0

    async def last_sequence_id(self) -> int:
        return await super().last_sequence_id() + self.in_flight


async def test_ids_not_committed_are_not_pruned_history() -> None:
    """It refused a subscriber (4410, "pruned") when a producer had taken ids
    it had not committed yet: a gap is not lost history, only pruning is."""
    store = InFlightStore()
    store.in_flight = 3
    async with WebSocketAdapter(port=0, replay=store) as server:
        async with connect(f"{server.url}?since=0") as ws:
            await nothing_more(ws, server)
            records = await append(store, 2)
            await server.send(records)
            assert await receive(ws, 2) == [1, 2]
        async with connect(f"{server.url}?since=0") as ws:
            assert await receive(ws, 2) == [1, 2]


async def test_the_subscriber_ends_with_history_pruned(
    server: WebSocketAdapter, store: MemoryStore
) -> None:
    records = await append(store, 5)
    await store.mark("websocket", [r.sequence_id for r in records], DeliveryState.ACKED)
    await store.prune(through=3, older_than_ms=2**62)
    sub = WebSocketSubscriber(server.url, collector=ReceiptCollector("websocket"), since=1)
    await sub.start()
    try:
        async with asyncio.timeout(10):
            error = await sub.wait_ended()
    finally:
        await sub.close()
    assert error is sub.error
    assert isinstance(sub.error, HistoryPruned)
    assert (sub.error.since, sub.error.oldest) == (1, 4)
    assert sub.connections == 1  # not retried


async def test_a_cursor_beyond_the_store_closes_with_4416(
    server: WebSocketAdapter, store: MemoryStore
) -> None:
    await append(store, 3)
    async with connect(f"{server.url}?since=4") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == AHEAD_CLOSE_CODE
    assert "newest sequence id is 3" in closed.value.rcvd.reason


@pytest.mark.parametrize(
    "query",
    [
        "since=-1",
        "since=abc",
        "since=1.5",
        "since=",
        "since=%C2%B2",  # a superscript two: a digit to str.isdigit, not a number
        "since=9223372036854775808",
        "since=1&since=2",
        "sinc=1",
    ],
)
async def test_a_bad_since_is_refused_with_400(server: WebSocketAdapter, query: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{server.url}?{query}"):
            pass
    assert refused.value.response.status_code == 400
    assert server.subscriber_count == 0


async def test_since_without_history_is_refused_with_400() -> None:
    async with WebSocketAdapter(port=0) as bare:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{bare.url}?since=0"):
                pass
        assert refused.value.response.status_code == 400
        assert b"no history" in (refused.value.response.body or b"")


# -- under load, through a broadcaster --------------------------------------------


class Producer:
    """Publishes batches back to back, yielding to the loop between them,
    until stopped: the seam is crossed while this runs."""

    def __init__(self, b: Broadcaster, batch: int = 50) -> None:
        self.b = b
        self.batch = batch
        self.published: list[int] = []
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            receipts = await self.b.publish_many(
                [
                    {"category": "CRITICAL", "event_type": "load", "payload": {"i": i + k}}
                    for k in range(self.batch)
                ]
            )
            self.published += [r.sequence_id for r in receipts]
            self._progress.set()
            i += self.batch
            await asyncio.sleep(0)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_for(self, n: int) -> None:
        async with asyncio.timeout(60):
            while len(self.published) < n:
                self._progress.clear()
                await self._progress.wait()

    async def stop(self) -> list[int]:
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.published


@contextlib.asynccontextmanager
async def broadcaster(tmp_path: Path, *, replay_page: int) -> AsyncIterator[Broadcaster]:
    store = SQLiteStore(tmp_path / "resume.db")
    ws = WebSocketAdapter(port=0, replay=store, replay_page=replay_page)
    settings = load_settings(env_file=None, reconcile_interval_s=0)
    b = Broadcaster(settings, adapters=[ws, MemoryAdapter("realtime")], store=store)
    async with b:
        yield b


def websocket_of(b: Broadcaster) -> WebSocketAdapter:
    adapter = b.adapters["websocket"]
    assert isinstance(adapter, WebSocketAdapter)
    return adapter


def collecting(url: str, **kwargs: object) -> tuple[WebSocketSubscriber, list[int]]:
    seen: list[int] = []
    collector = ReceiptCollector(
        "websocket", on_event=lambda obj, ok: seen.append(obj["sequence_id"])
    )
    return WebSocketSubscriber(url, collector=collector, **kwargs), seen  # type: ignore[arg-type]


def assert_complete(seen: Sequence[int], expected: Sequence[int]) -> None:
    gaps = sorted(set(expected) - set(seen))
    dups = len(seen) - len(set(seen))
    assert list(seen) == list(expected), f"missing {gaps[:10]}, duplicates {dups}"


async def test_the_seam_holds_while_events_are_published_at_full_rate(tmp_path: Path) -> None:
    async with broadcaster(tmp_path, replay_page=100) as b:
        producer = Producer(b)
        producer.start()
        await producer.wait_for(3000)
        # Resume from early on: the replay pages through thousands of events
        # (small pages, many store reads) while the producer keeps publishing.
        sub, seen = collecting(websocket_of(b).url, since=500)
        await sub.start()
        try:
            await producer.wait_for(len(producer.published) + 3000)
            published = await producer.stop()
            await b.flush(timeout=30)
            expected = [seq for seq in published if seq > 500]
            await sub.wait_for(len(expected), 60)
        finally:
            await sub.close()
    assert_complete(seen, expected)
    assert sub.connections == 1


class Cutter:
    """A TCP proxy between subscriber and server that can cut every
    connection through it at once: a network drop, as the client sees one."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_subscriber_resumes_across_drops_with_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    async with broadcaster(tmp_path, replay_page=200) as b:
        cutter = Cutter(websocket_of(b).port)
        await cutter.start()
        sub, seen = collecting(
            f"ws://127.0.0.1:{cutter.port}/events", backoff_initial=0.01, backoff_max=0.05
        )
        await sub.start()
        producer = Producer(b)
        try:
            producer.start()
            for _ in range(3):
                # Drop the connection mid-stream, a while after it (re)opened.
                count = len(seen)
                await sub.wait_for(count + 1000, 60)
                cutter.cut()
            await producer.wait_for(len(producer.published) + 2000)
            published = await producer.stop()
            await b.flush(timeout=30)
            await sub.wait_for(len(published), 60)
        finally:
            await sub.close()
            await cutter.close()
    assert_complete(seen, published)
    assert sub.connections >= 4
    assert sub.last_sequence_id == published[-1]
