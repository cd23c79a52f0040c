"""WebSocketSubscriber's resume cursor (SPEC 12), against real servers."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.consumer import ReceiptCollector, WebSocketSubscriber
from broadcaster.consumer.websocket import resume_url
from broadcaster.events import Category, EventFactory, EventRecord, seal
from broadcaster.store import MemoryStore


def records(n: int, start: int = 1) -> list[EventRecord]:
    factory = EventFactory()
    return [seal(factory.draft(Category.CRITICAL, "t", {"i": i}), start + i) for i in range(n)]


def test_resume_url_sets_or_replaces_since_and_keeps_the_rest() -> None:
    url = "ws://h:1/events?categories=CRITICAL,SYSTEM&access_token=t"
    assert resume_url(url, 41) == url + "&since=41"
    assert resume_url(url + "&since=3", 41) == url + "&since=41"
    assert resume_url(url + "&since=3", None) == url
    assert resume_url("ws://h:1/events", 0) == "ws://h:1/events?since=0"


def test_since_comes_from_the_argument_or_the_url() -> None:
    collector = ReceiptCollector("websocket")
    assert WebSocketSubscriber("ws://h:1/events", collector=collector).last_sequence_id is None
    given = WebSocketSubscriber("ws://h:1/events", collector=collector, since=7)
    assert given.last_sequence_id == 7
    in_url = WebSocketSubscriber("ws://h:1/events?since=9", collector=collector)
    assert in_url.last_sequence_id == 9
    with pytest.raises(ValueError, match="since"):
        WebSocketSubscriber("ws://h:1/events", collector=collector, since=-1)


async def test_the_cursor_follows_what_arrived_and_reconnects_carry_it() -> None:
    async with MemoryStore() as store:
        factory = EventFactory()
        stored = await store.append(
            [(factory.draft(Category.CRITICAL, "t", {"i": i}), ("websocket",)) for i in range(5)]
        )
        first = WebSocketAdapter(port=0, replay=store)
        await first.start()
        port = first.port
        attempts: list[tuple[str, int]] = []
        sub = WebSocketSubscriber(
            first.url,
            collector=ReceiptCollector("websocket"),
            since=2,
            backoff_initial=0.01,
            on_connect=lambda url, attempt: attempts.append((url, attempt)),
        )
        await sub.start()
        try:
            await sub.wait_for(3, 10)  # 3, 4, 5 replayed
            assert sub.last_sequence_id == stored[-1].sequence_id == 5
            await first.close()
            more = await store.append(
                [(factory.draft(Category.CRITICAL, "t", {}), ("websocket",)) for _ in range(2)]
            )
            async with WebSocketAdapter(port=port, replay=store) as second:
                await sub.wait_for(5, 10)  # 6, 7 replayed on reconnect
                assert sub.collector.seen == {3, 4, 5, 6, 7}
                assert sub.stats.duplicates == 0
                assert sub.last_sequence_id == more[-1].sequence_id
                assert second.subscribers()[0].since == 5
        finally:
            await sub.close()
    url = f"ws://127.0.0.1:{port}/events"
    assert attempts[0] == (f"{url}?since=2", 0)
    # The first reconnect carries the cursor (later ones, e.g. as the second
    # server closes before the subscriber does, carry whatever came since).
    assert attempts[1][0] == f"{url}?since=5" and attempts[1][1] >= 1


async def test_a_reconnect_to_a_server_without_history_goes_on_live() -> None:
    """A server with no store refuses since (400): the subscriber connects
    without it rather than not at all (the gap shows in reconciliation)."""
    first = WebSocketAdapter(port=0)
    await first.start()
    port = first.port
    sub = WebSocketSubscriber(
        first.url, collector=ReceiptCollector("websocket"), backoff_initial=0.01
    )
    await sub.start()
    try:
        await first.send(records(3))
        await sub.wait_for(3, 10)
        await first.close()
        async with WebSocketAdapter(port=port) as second:
            async with asyncio.timeout(10):
                await second.wait_for_subscribers(1)
            await second.send(records(2, start=4))
            await sub.wait_for(5, 10)
            assert second.subscribers()[0].since is None
    finally:
        await sub.close()
    assert sub.error is None
