"""``ReceiptPoster``: receipts posted in batches to ``POST /receipts`` over real
HTTP, retried with backoff while the API is unreachable or answers 5xx/429,
never blocking the caller (a bounded buffer that drops the oldest), and not
retried for answers no retry can fix (401/403, 422).

The server here is a small real HTTP app (uvicorn) that implements SPEC 12's
contract and can be told to answer with an error first."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from broadcaster.admin import AdminServer
from broadcaster.consumer import ReceiptCollector, ReceiptPoster
from broadcaster.events import EventFactory, seal
from broadcaster.store.base import ConsumerReceipt

TOKEN = "receipts-token-0123456789"
FAST: dict[str, Any] = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``within_s``."""
    async with asyncio.timeout(within_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def receipt(seq: int, consumer: str = "c1", checksum: str = "00ff") -> ConsumerReceipt:
    return ConsumerReceipt(
        sequence_id=seq,
        adapter="websocket",
        event_type="t",
        received_at_ms=1_700_000_000_000 + seq,
        checksum=checksum,
        checksum_ok=True,
        consumer=consumer,
    )


class ReceiptsAPI:
    """SPEC 12's ``POST /receipts``, as far as a client can tell: a bearer
    token, a JSON list of at most 10 000 receipts; answers 200 with
    accepted / mismatches / unknown. ``answers`` are statuses to give first."""

    def __init__(self, known: range = range(1, 10_000), answers: list[int] | None = None) -> None:
        self.known = known
        self.answers = list(answers or [])
        self.requests: list[list[dict[str, Any]]] = []
        self.accepted: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.post("/receipts")(self._post)

    async def _post(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.requests.append(body)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"detail": "bad token"}, status_code=401)
        if self.answers:
            status = self.answers.pop(0)
            return JSONResponse({"detail": f"told to answer {status}"}, status_code=status)
        assert isinstance(body, list) and len(body) <= 10_000
        for item in body:
            assert set(item) <= {"sequence_id", "adapter", "checksum", "consumer", "received_at"}
            assert isinstance(item["sequence_id"], int) and isinstance(item["received_at"], int)
            assert item["adapter"] in ("websocket", "realtime")
            assert 1 <= len(item["consumer"]) <= 128
        self.accepted.extend(body)
        unknown = [r["sequence_id"] for r in body if r["sequence_id"] not in self.known]
        mismatches = sum(1 for r in body if r["checksum"] == "bad")
        return JSONResponse(
            {"accepted": len(body) - len(unknown), "mismatches": mismatches, "unknown": unknown}
        )

    def seqs(self) -> list[int]:
        return [r["sequence_id"] for r in self.accepted]


@asynccontextmanager
async def serving(api: ReceiptsAPI, port: int = 0) -> AsyncIterator[str]:
    async with AdminServer(api.app, "127.0.0.1", port) as server:
        yield server.url


async def test_batches_by_size_then_the_rest_at_close() -> None:
    api = ReceiptsAPI()
    async with serving(api) as url:
        poster = ReceiptPoster(url, TOKEN, max_batch=100, interval_s=60)
        async with poster:
            for seq in range(1, 251):
                poster.add(receipt(seq))
            await until(lambda: len(api.requests) == 2)
        assert [len(r) for r in api.requests] == [100, 100, 50]
    assert api.seqs() == list(range(1, 251))
    assert api.accepted[0] == {
        "sequence_id": 1,
        "adapter": "websocket",
        "checksum": "00ff",
        "consumer": "c1",
        "received_at": 1_700_000_000_001,
    }
    stats = poster.stats
    assert (stats.posted, stats.batches, stats.retries, stats.dropped) == (250, 3, 0, 0)
    assert stats.last_error is None and poster.pending == 0


async def test_a_small_batch_goes_after_the_interval() -> None:
    api = ReceiptsAPI(known=range(1, 3))
    async with serving(api) as url, ReceiptPoster(url, TOKEN, interval_s=0.05) as poster:
        for seq in (1, 2, 3):
            poster.add(receipt(seq, checksum="bad" if seq == 2 else "00ff"))
        await until(lambda: poster.stats.posted == 3)
        assert [len(r) for r in api.requests] == [3]
        # What the API said about them is counted.
        assert (poster.stats.mismatches, poster.stats.unknown) == (1, 1)


async def test_unreachable_api_is_retried_with_backoff_until_it_answers() -> None:
    port = free_port()
    api = ReceiptsAPI()
    async with ReceiptPoster(f"http://127.0.0.1:{port}", TOKEN, interval_s=0.01, **FAST) as poster:
        for seq in range(1, 6):
            poster.add(receipt(seq))
        await until(lambda: poster.stats.retries >= 3)
        assert poster.stats.last_error is not None and "Connect" in poster.stats.last_error
        assert poster.stats.posted == 0
        async with serving(api, port):
            await until(lambda: poster.stats.posted == 5)
    assert api.seqs() == [1, 2, 3, 4, 5]
    assert poster.stats.last_error is None and poster.stats.dropped == 0


@pytest.mark.parametrize("status", [503, 429, 500])
async def test_5xx_and_429_are_retried_with_the_same_batch(status: int) -> None:
    api = ReceiptsAPI(answers=[status, status])
    async with serving(api) as url:
        async with ReceiptPoster(url, TOKEN, interval_s=0.01, **FAST) as poster:
            for seq in (1, 2, 3):
                poster.add(receipt(seq))
            await until(lambda: poster.stats.posted == 3)
        # Re-posting the same batch is safe: the API is idempotent per receipt.
        assert [[r["sequence_id"] for r in body] for body in api.requests] == [[1, 2, 3]] * 3
        assert poster.stats.retries == 2 and poster.stats.last_error is None


async def test_a_full_buffer_drops_the_oldest_and_never_blocks() -> None:
    api = ReceiptsAPI()
    async with serving(api) as url:
        poster = ReceiptPoster(url, TOKEN, max_batch=5, max_buffer=10, interval_s=0.01)
        for seq in range(1, 26):
            poster.add(receipt(seq))  # returns at once, however many; nothing posts yet
        assert (poster.pending, poster.stats.dropped) == (10, 15)
        async with poster:
            await until(lambda: poster.stats.posted == 10)
    assert api.seqs() == list(range(16, 26))


async def test_receipts_that_wait_through_retries_drop_oldest_first() -> None:
    port = free_port()
    api = ReceiptsAPI()
    poster = ReceiptPoster(
        f"http://127.0.0.1:{port}", TOKEN, max_batch=5, max_buffer=10, interval_s=0.01, **FAST
    )
    async with poster:
        for seq in range(1, 6):
            poster.add(receipt(seq))
        await until(lambda: poster.stats.retries >= 1)  # 1..5 are in flight
        for seq in range(6, 16):
            poster.add(receipt(seq))
        async with serving(api, port):
            await until(lambda: poster.stats.posted == 10)
    # Only the newest ten were kept: the batch that waited went first.
    assert api.seqs() == list(range(6, 16))
    assert poster.stats.dropped == 5


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_token_stops_posting(status: int) -> None:
    api = ReceiptsAPI(answers=[status])
    async with serving(api) as url:
        async with ReceiptPoster(url, TOKEN, interval_s=0.01, **FAST) as poster:
            for seq in (1, 2, 3):
                poster.add(receipt(seq))
            await until(lambda: poster.stats.rejected == 3)
            poster.add(receipt(4))
            poster.add(receipt(5))
        assert poster.stats.rejected == 5 and poster.stats.retries == 0
        assert f"HTTP {status}" in (poster.stats.last_error or "")
        assert len(api.requests) == 1


async def test_a_wrong_token_is_a_401_from_the_api() -> None:
    api = ReceiptsAPI()
    async with serving(api) as url:
        async with ReceiptPoster(url, "not-the-token-0123456789", interval_s=0.01) as poster:
            poster.add(receipt(1))
            await until(lambda: poster.stats.rejected == 1)
    assert api.accepted == [] and "HTTP 401" in (poster.stats.last_error or "")


async def test_a_422_drops_that_batch_and_goes_on() -> None:
    api = ReceiptsAPI(answers=[422])
    async with serving(api) as url:
        async with ReceiptPoster(url, TOKEN, max_batch=2, interval_s=0.01) as poster:
            for seq in (1, 2, 3, 4):
                poster.add(receipt(seq))
            await until(lambda: poster.stats.posted == 2)
    assert poster.stats.rejected == 2 and api.seqs() == [3, 4]


async def test_close_counts_what_could_not_be_posted_as_dropped() -> None:
    poster = ReceiptPoster(f"http://127.0.0.1:{free_port()}", TOKEN, interval_s=60, **FAST)
    async with poster:
        poster.add(receipt(1))
        poster.add(receipt(2))
    assert poster.stats.dropped == 2 and poster.pending == 0
    await poster.close()  # idempotent


async def test_a_collector_feeds_the_poster() -> None:
    # The way consumers use it: on_receipt=poster.add.
    api = ReceiptsAPI()
    factory = EventFactory()
    objects = [
        orjson.loads(seal(factory.draft("CRITICAL", "t", {"i": i}), i + 1).wire) for i in range(3)
    ]
    async with serving(api) as url, ReceiptPoster(url, TOKEN, interval_s=0.01) as poster:
        collector = ReceiptCollector("realtime", consumer="browser-7", on_receipt=poster.add)
        for obj in objects:
            assert collector.handle(obj)
        await until(lambda: poster.stats.posted == 3)
    assert [(r["consumer"], r["adapter"]) for r in api.accepted] == [("browser-7", "realtime")] * 3
    assert [r["checksum"] for r in api.accepted] == [o["checksum"]["value"] for o in objects]
    assert api.seqs() == [1, 2, 3]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        ReceiptPoster("http://x", TOKEN, max_batch=10_001)
    with pytest.raises(ValueError, match="max_buffer"):
        ReceiptPoster("http://x", TOKEN, max_batch=100, max_buffer=99)
