"""MemoryAdapter: records what it is sent, refuses when not running."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.adapters.memory import MemoryAdapter, MemoryHealth
from broadcaster.events import EventFactory, EventRecord, seal
from broadcaster.exceptions import AdapterError, AdapterUnavailable
from tests._shapes import assert_shape


def records(n: int, start: int = 1) -> list[EventRecord]:
    factory = EventFactory()
    return [seal(factory.draft("DEBUG", "t", {"i": i}), start + i) for i in range(n)]


async def test_send_before_start_is_refused() -> None:
    adapter = MemoryAdapter("websocket")
    with pytest.raises(AdapterUnavailable) as info:
        await adapter.send(records(1))
    assert info.value.adapter == "websocket"
    assert isinstance(info.value, AdapterError)
    assert adapter.batches == []


async def test_send_records_batches_in_order() -> None:
    adapter = MemoryAdapter("realtime")
    await adapter.start()
    first, second = records(2), records(3, start=3)
    await adapter.send(first)
    await adapter.send(second)
    assert adapter.batches == [first, second]
    assert adapter.events == first + second
    assert adapter.sequence_ids == [1, 2, 3, 4, 5]


async def test_batch_is_copied() -> None:
    adapter = MemoryAdapter("realtime")
    await adapter.start()
    batch = records(2)
    await adapter.send(batch)
    batch.clear()
    assert adapter.sequence_ids == [1, 2]


async def test_overlapping_sends_keep_call_order() -> None:
    adapter = MemoryAdapter("websocket")
    await adapter.start()
    batches = [records(1, start=i) for i in range(1, 51)]
    await asyncio.gather(*(adapter.send(b) for b in batches))
    assert adapter.sequence_ids == list(range(1, 51))


async def test_close_refuses_further_sends_and_start_reopens() -> None:
    adapter = MemoryAdapter("websocket")
    await adapter.start()
    await adapter.send(records(1))
    await adapter.close()
    await adapter.close()  # idempotent
    with pytest.raises(AdapterUnavailable):
        await adapter.send(records(1, start=2))
    assert adapter.sequence_ids == [1]
    await adapter.start()
    await adapter.send(records(1, start=2))
    assert adapter.sequence_ids == [1, 2]


async def test_health_reports_connection_and_count() -> None:
    adapter = MemoryAdapter("realtime")
    health = adapter.health()
    assert (health.name, health.connected, health.extra) == ("realtime", False, {"events": 0})
    async with adapter:
        assert adapter.started and not adapter.closed
        await adapter.send(records(3))
        await adapter.send(records(2, start=4))
        health = adapter.health()
        assert (health.connected, health.extra) == (True, {"events": 5})
        assert_shape(health.extra, MemoryHealth)
    assert adapter.closed
    assert adapter.health().connected is False
    assert adapter.health().extra == {"events": 5}


async def test_empty_batch_is_recorded() -> None:
    adapter = MemoryAdapter("websocket")
    await adapter.start()
    await adapter.send([])
    assert adapter.batches == [[]]
    assert adapter.events == []


async def test_wait_for_returns_once_every_id_arrived() -> None:
    adapter = MemoryAdapter("websocket")
    await adapter.start()
    waiter = asyncio.create_task(adapter.wait_for({1, 2, 3}))
    await adapter.send(records(2))
    await asyncio.sleep(0)
    assert not waiter.done()
    await adapter.send(records(1, start=3))
    async with asyncio.timeout(1):
        await waiter
    async with asyncio.timeout(1):
        await adapter.wait_for({2})  # already there
