"""``ReceiptPoster``: receipts posted in batches to the admin API's
``POST /receipts`` over real HTTP, retried with backoff while the API is
unreachable or answers 5xx/429, never blocking the caller (a bounded buffer
that drops the oldest), and not retried for answers no retry can fix
(401/403, 422).

The server is the real admin app of a broadcaster (memory adapters, SQLite
store); where a test needs the API to fail first, a thin ASGI layer in front
of it answers the first requests with the status asked for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.consumer import ReceiptCollector, ReceiptPoster
from broadcaster.core import Broadcaster
from broadcaster.settings import load_settings
from broadcaster.spawn import free_port
from broadcaster.store.base import ConsumerReceipt
from broadcaster.store.sqlite import SQLiteStore

TOKEN = "receipts-consumer-token-0123"
ADMIN = "receipts-admin-token-0123"
READER = "receipts-read-token-012345"
TOKENS = json.dumps(
    {"web": {"token": TOKEN, "scope": "consumer"}, "ro": {"token": READER, "scope": "read"}}
)
FAST: dict[str, Any] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
#: Events the service holds: receipts for 1..EVENTS are "known".
EVENTS = 300


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``within_s``."""
    async with asyncio.timeout(within_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


class Flaky:
    """ASGI layer in front of the admin app: answers the first requests to
    ``POST /receipts`` with ``answers`` (statuses), then lets them through.
    ``requests`` counts every request that reached the path."""

    def __init__(self, app: Any, answers: list[int] | None = None) -> None:
        self.app = app
        self.answers = list(answers or [])
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/receipts":
            self.requests += 1
            if self.answers:
                status = self.answers.pop(0)
                response = JSONResponse({"detail": f"told to answer {status}"}, status)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Service:
    """A broadcaster with EVENTS stored events, and its admin API."""

    def __init__(self, b: Broadcaster, checksums: dict[int, str]) -> None:
        self.b = b
        self.checksums = checksums
        self.url = ""
        self.front: Flaky | None = None

    def receipt(self, seq: int, consumer: str = "c1", ok: bool = True) -> ConsumerReceipt:
        checksum = self.checksums.get(seq, "00ff") if ok else "bad0"
        return ConsumerReceipt(
            sequence_id=seq,
            adapter="websocket",
            event_type="t",
            received_at_ms=1_700_000_000_000 + seq,
            checksum=checksum,
            checksum_ok=ok,
            consumer=consumer,
        )

    async def stored(self, consumer: str = "c1") -> list[int]:
        """Sequence ids with a receipt from ``consumer`` in the store."""
        found = []
        for seq in range(1, EVENTS + 1):
            event = await self.b.store.get(seq)
            assert event is not None
            if any(r.consumer == consumer for r in event.receipts):
                found.append(seq)
        return found

    @asynccontextmanager
    async def serving(
        self, port: int = 0, answers: list[int] | None = None
    ) -> AsyncIterator[Flaky]:
        app = create_app(self.b, self.b.settings.api_tokens())
        self.front = Flaky(app, answers)
        async with AdminServer(self.front, "127.0.0.1", port) as server:  # type: ignore[arg-type]
            self.url = server.url
            yield self.front


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Service]:
    settings = load_settings(
        env_file=None,
        reconcile_interval_s=0,
        broadcaster_admin_token=ADMIN,
        broadcaster_tokens=TOKENS,
    )
    b = Broadcaster(
        settings,
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=SQLiteStore(tmp_path / "receipts.db"),
    )
    async with b:
        receipts = await b.publish_many(
            [{"category": "SYSTEM", "event_type": "t", "payload": {"i": i}} for i in range(EVENTS)]
        )
        yield Service(b, {r.sequence_id: r.checksum.value for r in receipts})


async def test_batches_by_size_then_the_rest_at_close(svc: Service) -> None:
    async with svc.serving() as front:
        poster = ReceiptPoster(svc.url, TOKEN, max_batch=100, interval_s=60)
        async with poster:
            for seq in range(1, 251):
                poster.add(svc.receipt(seq))
            # Two full batches go at once; the rest waits for the interval...
            await until(lambda: poster.stats.batches == 2)
            assert poster.pending == 50
        # ... or, as here, for close.
        assert front.requests == 3
    assert await svc.stored() == list(range(1, 251))
    stats = poster.stats
    assert (stats.posted, stats.batches, stats.retries, stats.dropped) == (250, 3, 0, 0)
    assert (stats.mismatches, stats.unknown) == (0, 0)
    assert stats.last_error is None and poster.pending == 0


async def test_a_small_batch_goes_after_the_interval(svc: Service) -> None:
    async with svc.serving(), ReceiptPoster(svc.url, TOKEN, interval_s=0.05) as poster:
        poster.add(svc.receipt(1))
        poster.add(svc.receipt(2, ok=False))  # a checksum the store disagrees with
        poster.add(svc.receipt(EVENTS + 1))  # an event the store does not have
        await until(lambda: poster.stats.posted == 3)
        assert poster.stats.batches == 1
        # What the API said about them is counted.
        assert (poster.stats.mismatches, poster.stats.unknown) == (1, 1)
    event = await svc.b.store.get(2)
    assert event is not None and [r.checksum_ok for r in event.receipts] == [False]


async def test_received_at_and_the_consumer_name_reach_the_store(svc: Service) -> None:
    async with svc.serving(), ReceiptPoster(svc.url, TOKEN, interval_s=0.01) as poster:
        poster.add(svc.receipt(7, consumer="billing-3"))
        await until(lambda: poster.stats.posted == 1)
    event = await svc.b.store.get(7)
    assert event is not None
    (r,) = event.receipts
    assert (r.consumer, r.adapter, r.received_at_ms, r.checksum_ok) == (
        "billing-3",
        "websocket",
        1_700_000_000_007,
        True,
    )


async def test_a_second_delivery_is_reported_as_such(svc: Service) -> None:
    async with svc.serving(), ReceiptPoster(svc.url, TOKEN, interval_s=0.01) as poster:
        poster.add(svc.receipt(9))
        poster.add(replace(svc.receipt(9), deliveries=2))
        await until(lambda: poster.stats.posted == 2)
    event = await svc.b.store.get(9)
    assert event is not None and [r.deliveries for r in event.receipts] == [2]


async def test_unreachable_api_is_retried_with_backoff_until_it_answers(svc: Service) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with ReceiptPoster(url, TOKEN, interval_s=0.01, **FAST) as poster:
        for seq in range(1, 6):
            poster.add(svc.receipt(seq))
        await until(lambda: poster.stats.retries >= 3)
        assert poster.stats.last_error is not None and "Connect" in poster.stats.last_error
        assert poster.stats.posted == 0
        async with svc.serving(port):
            await until(lambda: poster.stats.posted == 5)
    assert await svc.stored() == [1, 2, 3, 4, 5]
    assert poster.stats.dropped == 0


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_5xx_and_429_are_retried_with_the_same_batch(svc: Service, status: int) -> None:
    async with svc.serving(answers=[status, status]) as front:
        async with ReceiptPoster(svc.url, TOKEN, interval_s=0.01, **FAST) as poster:
            for seq in (1, 2, 3):
                poster.add(svc.receipt(seq))
            await until(lambda: poster.stats.posted == 3)
        assert front.requests == 3 and poster.stats.retries == 2
        assert f"HTTP {status}" in (poster.stats.last_error or "")


async def test_a_batch_posted_twice_is_kept_once(svc: Service) -> None:
    # What a retry after a timeout does: the API is idempotent per receipt.
    async with svc.serving():
        for _ in range(2):
            async with ReceiptPoster(svc.url, TOKEN, interval_s=0.01) as poster:
                for seq in (1, 2, 3):
                    poster.add(svc.receipt(seq))
                await until(lambda p=poster: p.stats.posted == 3)  # type: ignore[misc]
    for seq in (1, 2, 3):
        event = await svc.b.store.get(seq)
        assert event is not None and len(event.receipts) == 1


async def test_a_full_buffer_drops_the_oldest_and_never_blocks(svc: Service) -> None:
    async with svc.serving():
        poster = ReceiptPoster(svc.url, TOKEN, max_batch=5, max_buffer=10, interval_s=0.01)
        for seq in range(1, 26):
            poster.add(svc.receipt(seq))  # returns at once, however many; nothing posts yet
        assert (poster.pending, poster.stats.dropped) == (10, 15)
        async with poster:
            await until(lambda: poster.stats.posted == 10)
    assert await svc.stored() == list(range(16, 26))


async def test_receipts_that_wait_through_retries_drop_oldest_first(svc: Service) -> None:
    port = free_port()
    poster = ReceiptPoster(
        f"http://127.0.0.1:{port}", TOKEN, max_batch=5, max_buffer=10, interval_s=0.01, **FAST
    )
    async with poster:
        for seq in range(1, 6):
            poster.add(svc.receipt(seq))
        await until(lambda: poster.stats.retries >= 1)  # 1..5 are in flight
        for seq in range(6, 16):
            poster.add(svc.receipt(seq))
        # The next failed retry makes room: the waiting batch goes, oldest.
        await until(lambda: poster.stats.dropped == 5)
        async with svc.serving(port):
            await until(lambda: poster.stats.posted == 10)
    # Only the newest ten were kept: the batch that waited went first.
    assert await svc.stored() == list(range(6, 16))
    assert poster.stats.dropped == 5


@pytest.mark.parametrize(("token", "status"), [("not-a-token-0123456789", 401), (READER, 403)])
async def test_a_refused_token_stops_posting(svc: Service, token: str, status: int) -> None:
    async with svc.serving() as front:
        async with ReceiptPoster(svc.url, token, interval_s=0.01, **FAST) as poster:
            for seq in (1, 2, 3):
                poster.add(svc.receipt(seq))
            await until(lambda: poster.stats.rejected == 3)
            poster.add(svc.receipt(4))
            poster.add(svc.receipt(5))
        assert poster.stats.rejected == 5 and poster.stats.retries == 0
        assert f"HTTP {status}" in (poster.stats.last_error or "")
        assert front.requests == 1
    assert await svc.stored() == []


async def test_a_422_drops_that_batch_and_goes_on(svc: Service) -> None:
    async with svc.serving():
        async with ReceiptPoster(svc.url, TOKEN, max_batch=2, interval_s=0.01) as poster:
            poster.add(svc.receipt(1))
            # The API refuses a consumer name it cannot take (422 naming the field).
            poster.add(replace(svc.receipt(2), consumer="x" * 129))
            poster.add(svc.receipt(3))
            poster.add(svc.receipt(4))
            await until(lambda: poster.stats.posted == 2)
        assert poster.stats.rejected == 2 and poster.stats.retries == 0
        assert "HTTP 422" in (poster.stats.last_error or "")
        assert "1.consumer" in (poster.stats.last_error or "")
    assert await svc.stored() == [3, 4]


async def test_close_counts_what_could_not_be_posted_as_dropped(svc: Service) -> None:
    poster = ReceiptPoster(f"http://127.0.0.1:{free_port()}", TOKEN, interval_s=60, **FAST)
    async with poster:
        poster.add(svc.receipt(1))
        poster.add(svc.receipt(2))
    assert poster.stats.dropped == 2 and poster.pending == 0
    await poster.close()  # idempotent


async def test_close_puts_the_batch_being_retried_back_and_counts_it(svc: Service) -> None:
    poster = ReceiptPoster(f"http://127.0.0.1:{free_port()}", TOKEN, interval_s=0.01, **FAST)
    async with poster:
        for seq in (1, 2, 3):
            poster.add(svc.receipt(seq))
        await until(lambda: poster.stats.retries >= 1)  # taken, and failing
        assert poster.pending == 0
    # Not lost silently: counted with whatever else could not go.
    assert poster.stats.dropped == 3 and poster.stats.posted == 0


async def test_a_batch_cut_off_at_close_goes_in_the_last_try(svc: Service) -> None:
    port = free_port()
    poster = ReceiptPoster(f"http://127.0.0.1:{port}", TOKEN, interval_s=0.01, **FAST)
    async with svc.serving(port, answers=[503] * 1000) as front:
        async with poster:
            for seq in (1, 2, 3):
                poster.add(svc.receipt(seq))
            await until(lambda: poster.stats.retries >= 1)
            front.answers.clear()  # the API recovers just as the consumer closes
    assert poster.stats.posted == 3 and poster.stats.dropped == 0
    assert await svc.stored() == [1, 2, 3]


async def test_a_collector_feeds_the_poster(svc: Service) -> None:
    # The way consumers use it (WebSocket and Realtime alike): on_receipt=poster.add.
    objects = [(await svc.b.store.get(seq)) for seq in (1, 2, 3)]
    async with svc.serving(), ReceiptPoster(svc.url, TOKEN, interval_s=0.01) as poster:
        collector = ReceiptCollector("realtime", consumer="browser-7", on_receipt=poster.add)
        for event in objects:
            assert event is not None
            assert collector.handle(event.record.to_dict())
        await until(lambda: poster.stats.posted == 3)
    assert await svc.stored("browser-7") == [1, 2, 3]
    event = await svc.b.store.get(1)
    assert event is not None
    assert [(r.adapter, r.checksum_ok) for r in event.receipts] == [("realtime", True)]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ReceiptPoster("http://x", TOKEN, max_batch=10_001)
    with pytest.raises(ValueError, match="max_buffer"):
        ReceiptPoster("http://x", TOKEN, max_batch=100, max_buffer=99)
