"""WebSocket consumer against a real fan-out server on loopback. Faults are
injected with a small adapter subclass that puts chosen bytes on the wire."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import io
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest
import structlog

from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.consumer import ReceiptCollector
from broadcaster.consumer.websocket import WebSocketSubscriber, subscription_url, tail
from broadcaster.events import Category, EventFactory, EventRecord, SigningKey, seal
from broadcaster.exceptions import AdapterRejected, AdapterUnavailable
from broadcaster.spawn import free_port


def make_records(
    n: int, *, start: int = 1, signing_key: SigningKey | None = None
) -> list[EventRecord]:
    factory = EventFactory(signing_key=signing_key)
    cats = list(Category)
    return [
        seal(
            factory.draft(cats[i % len(cats)], "user.login", {"i": i, "city": "Kraków"}), start + i
        )
        for i in range(n)
    ]


def tampered(record: EventRecord, wire: bytes) -> EventRecord:
    """The same record with other bytes on the wire (what a broken path delivers)."""
    return dataclasses.replace(record, wire=wire)


class RewritingAdapter(WebSocketAdapter):
    """Fault injection: sends ``rewrite(record)`` instead of each record's wire."""

    def __init__(self, rewrite: dict[int, bytes]) -> None:
        super().__init__(port=0)
        self.rewrite = rewrite

    async def send(self, batch: Sequence[EventRecord]) -> None:
        await super().send(
            [
                tampered(r, self.rewrite[r.sequence_id]) if r.sequence_id in self.rewrite else r
                for r in batch
            ]
        )


@pytest.fixture
async def adapter() -> AsyncIterator[WebSocketAdapter]:
    async with WebSocketAdapter(port=0) as server:
        yield server


def test_subscription_url() -> None:
    base = "ws://127.0.0.1:1/events"
    assert subscription_url(base, None) == base
    assert subscription_url(base, []) == base
    assert subscription_url(base, ["critical", " System"]) == base + "?categories=CRITICAL,SYSTEM"


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:8765/events", ""])
def test_a_url_that_is_not_websocket_fails_at_construction(url: str) -> None:
    # It crashed the receive task (websockets' InvalidURI) on first connect,
    # and `broadcaster subscribe --url notaurl` printed a traceback.
    with pytest.raises(ValueError, match="not a WebSocket URL") as info:
        WebSocketSubscriber(url, collector=ReceiptCollector("websocket"))
    assert repr(url) in str(info.value)


async def test_receives_and_verifies_every_event(adapter: WebSocketAdapter) -> None:
    records = make_records(1000)
    async with WebSocketSubscriber(adapter.url, collector=ReceiptCollector("websocket")) as sub:
        assert sub.connected
        for i in range(0, 1000, 100):
            await adapter.send(records[i : i + 100])
        stats = await sub.wait_for(1000, 10)
    assert not sub.connected
    assert stats.received == stats.verified == 1000
    assert stats.mismatches == stats.malformed == stats.duplicates == 0
    assert stats.by_category == {c.value: 200 for c in Category}
    assert sub.collector.seen == set(range(1, 1001))


async def test_category_filter(adapter: WebSocketAdapter) -> None:
    records = make_records(100)
    collector = ReceiptCollector("websocket")
    async with WebSocketSubscriber(
        adapter.url, categories=["critical", "DEBUG"], collector=collector
    ) as sub:
        await adapter.send(records)
        await sub.wait_for(40, 10)
        await adapter.send(make_records(5, start=101))  # one more CRITICAL and DEBUG each
        await sub.wait_for(42, 10)
    assert collector.stats.by_category == {"CRITICAL": 21, "DEBUG": 21}


@pytest.mark.parametrize(
    ("categories", "path", "match"),
    [
        (["nope"], "/events", r"HTTP 400: unknown category 'NOPE'"),
        (None, "/other", r"HTTP 404: no such path '/other'"),
    ],
)
async def test_refused_subscription_raises_adapter_rejected(
    adapter: WebSocketAdapter, categories: list[str] | None, path: str, match: str
) -> None:
    url = f"ws://127.0.0.1:{adapter.port}{path}"
    sub = WebSocketSubscriber(url, categories=categories, collector=ReceiptCollector("websocket"))
    with pytest.raises(AdapterRejected, match=match):
        await sub.start()
    assert not sub.connected
    await sub.close()


async def test_unreachable_server() -> None:
    url = f"ws://127.0.0.1:{free_port()}/events"
    once = WebSocketSubscriber(url, collector=ReceiptCollector("websocket"), reconnect=False)
    with pytest.raises(AdapterUnavailable, match="cannot connect"):
        await once.start()
    retrying = WebSocketSubscriber(
        url, collector=ReceiptCollector("websocket"), connect_timeout=0.3, backoff_initial=0.02
    )
    with pytest.raises(
        # asyncio says "Connect call failed", uvloop "Connection refused".
        AdapterUnavailable,
        match=r"within 0.3s \(last error: .*(Connect call failed|Connection refused)",
    ):
        await retrying.start()


async def test_malformed_frames_are_counted_and_the_loop_survives() -> None:
    records = make_records(7)
    good = orjson.loads(records[3].wire)
    bad_checksum = {**good, "payload": {"i": 999}}
    odd_checksum = {**good, "checksum": {"algorithm": ["sha256"], "value": "00"}}
    rewrite = {
        1: b"not json",
        2: b"[1, 2, 3]",
        3: b'{"sequence_id": 3}',  # missing fields
        5: orjson.dumps(bad_checksum),  # well-formed, checksum does not match
        6: orjson.dumps(odd_checksum),  # unhashable algorithm
    }
    async with RewritingAdapter(rewrite) as server:
        collector = ReceiptCollector("websocket")
        async with WebSocketSubscriber(server.url, collector=collector) as sub:
            with structlog.testing.capture_logs() as logs:
                await server.send(records)
                stats = await sub.wait_for(7, 10)
            assert sub.connected and sub.connections == 1
    assert stats.received == 7
    assert stats.malformed == 4
    assert stats.mismatches == 1
    assert stats.verified == 2  # sequence ids 4 and 7
    events = [e["event"] for e in logs]
    assert events.count("malformed frame") == 2
    assert "checksum mismatch" in events


async def test_reconnects_after_server_restart() -> None:
    first = WebSocketAdapter(port=0)
    await first.start()
    port = first.port
    collector = ReceiptCollector("websocket")
    sub = WebSocketSubscriber(first.url, collector=collector, backoff_initial=0.02, backoff_max=0.1)
    await sub.start()
    try:
        await first.send(make_records(10))
        await sub.wait_for(10, 5)
        await first.close()
        async with WebSocketAdapter(port=port) as second:
            async with asyncio.timeout(5):
                await second.wait_for_subscribers(1)
            await second.send(make_records(10, start=11))
            await sub.wait_for(20, 5)
            assert sub.connections == 2
    finally:
        await sub.close()
    assert collector.seen == set(range(1, 21))
    assert collector.stats.verified == 20


async def test_without_reconnect_a_drop_ends_the_subscription(adapter: WebSocketAdapter) -> None:
    sub = WebSocketSubscriber(adapter.url, collector=ReceiptCollector("websocket"), reconnect=False)
    await sub.start()
    await adapter.close()
    for _ in range(200):
        if not sub.connected:
            break
        await asyncio.sleep(0.01)
    assert not sub.connected
    assert sub.connections == 1
    await sub.close()
    await sub.close()  # idempotent


async def test_wait_for_timeout_says_how_many_arrived(adapter: WebSocketAdapter) -> None:
    async with WebSocketSubscriber(adapter.url, collector=ReceiptCollector("websocket")) as sub:
        await adapter.send(make_records(2))
        await sub.wait_for(2, 5)
        with pytest.raises(TimeoutError, match="received 2 of 5 events"):
            await sub.wait_for(5, 0.05)


async def test_tail_prints_one_line_per_event_and_stops_at_limit() -> None:
    records = make_records(6)
    bad = orjson.loads(records[1].wire)
    bad["payload"] = {"i": -1}
    async with RewritingAdapter({2: orjson.dumps(bad)}) as server:
        out = io.StringIO()
        task = asyncio.create_task(tail(server.url, ["user_activity", "CRITICAL"], out, limit=2))
        async with asyncio.timeout(5):
            await server.wait_for_subscribers(1)
        await server.send(records)
        stats = await asyncio.wait_for(task, 5)
    lines = out.getvalue().splitlines()
    assert lines == [
        "1 CRITICAL user.login OK",
        "3 USER_ACTIVITY user.login OK",
    ]
    assert stats.received == 2
    assert stats.verified == 2


async def test_tail_reports_mismatch_and_returns_stats_when_cancelled() -> None:
    records = make_records(5)
    bad = orjson.loads(records[1].wire)
    bad["payload"] = {"i": -1}
    async with RewritingAdapter({2: orjson.dumps(bad)}) as server:
        out = io.StringIO()
        task = asyncio.create_task(tail(server.url, None, out))
        async with asyncio.timeout(5):
            await server.wait_for_subscribers(1)
        await server.send(records)
        for _ in range(500):
            if out.getvalue().count("\n") == 5:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        stats = await task
    lines = out.getvalue().splitlines()
    assert lines[1] == "2 PERFORMANCE user.login MISMATCH"
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4", "5"]
    assert stats.received == 5
    assert stats.mismatches == 1


async def test_tail_bad_filter_raises(adapter: WebSocketAdapter) -> None:
    with pytest.raises(AdapterRejected, match="unknown category 'NOPE'"):
        await tail(adapter.url, ["nope"], io.StringIO())


async def test_tail_with_signing_keys_prints_bad_signatures_apart_from_mismatches() -> None:
    key = SigningKey("k1", "the-signing-key")
    records = make_records(5, signing_key=key)
    tampered_payload = orjson.loads(records[1].wire)
    tampered_payload["payload"] = {"i": -1}
    resigned = orjson.loads(records[2].wire)  # the same event, signed with another key
    resigned["signature"]["value"] = hmac.new(
        b"a-wrong-key", records[2].canonical, hashlib.sha256
    ).hexdigest()
    unsigned = orjson.loads(records[3].wire)
    del unsigned["signature"]
    rewrite = {
        2: orjson.dumps(tampered_payload),
        3: orjson.dumps(resigned),
        4: orjson.dumps(unsigned),
    }
    async with RewritingAdapter(rewrite) as server:
        out = io.StringIO()
        task = asyncio.create_task(
            tail(server.url, None, out, limit=5, signing_keys={"k1": "the-signing-key"})
        )
        async with asyncio.timeout(5):
            await server.wait_for_subscribers(1)
        await server.send(records)
        stats = await asyncio.wait_for(task, 5)
    verdicts = [line.split()[-1] for line in out.getvalue().splitlines()]
    assert verdicts == ["OK", "MISMATCH", "BAD_SIGNATURE", "BAD_SIGNATURE", "OK"]
    assert (stats.verified, stats.mismatches, stats.bad_signatures) == (2, 1, 2)
