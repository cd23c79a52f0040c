"""A broadcaster that follows its store (``follow_store=True``, what ``serve``
runs) delivers what other processes append as well as its own events: every
event exactly once per routed adapter, in sequence order (SPEC 11).

Here the "other process" is a :class:`~broadcaster.Publisher` with a store
object of its own on the same SQLite file: a separate connection, which is
all SQLite knows of processes. Real separate processes are in
``test_deployment.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broadcaster import Broadcaster, MemoryAdapter, Publisher, StoreUnavailable
from broadcaster.events import EventRecord
from broadcaster.settings import load_settings
from broadcaster.store import SQLiteStore


class FlakyReads(SQLiteStore):
    """The service's store: its first ``failures`` reads of the tail fail
    (the database briefly unreachable)."""

    failures = 3
    error: Exception = StoreUnavailable("disk I/O error")

    async def read_routed(
        self, *, after: int, limit: int, through: int | None = None
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        if self.failures:
            self.failures -= 1
            raise self.error
        return await super().read_routed(after=after, limit=limit, through=through)


def _broadcaster(
    path: Path, store: SQLiteStore | None = None
) -> tuple[Broadcaster, MemoryAdapter, MemoryAdapter]:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    b = Broadcaster(
        load_settings(env_file=None),
        adapters=[ws, rt],
        store=store if store is not None else SQLiteStore(path),
        follow_store=True,
    )
    return b, ws, rt


async def _publish(p: Publisher | Broadcaster, tag: str, count: int) -> list[int]:
    ids = []
    for i in range(count):
        ids.append((await p.publish("CRITICAL", tag, {"i": i})).sequence_id)
    return ids


async def test_events_of_other_writers_and_own_ones_arrive_in_order_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    b, ws, rt = _broadcaster(path)
    async with b, Publisher(store=SQLiteStore(path)) as other:
        own, theirs, batches = await asyncio.gather(
            _publish(b, "own", 300),
            _publish(other, "theirs", 300),
            other.publish_many(
                [
                    {"category": "CRITICAL", "event_type": "many", "payload": {"i": i}}
                    for i in range(200)
                ]
            ),
        )
        every = set(own) | set(theirs) | {r.sequence_id for r in batches}
        async with asyncio.timeout(30):  # fails instead of hanging
            await ws.wait_for(every)
            await rt.wait_for(every)
        await b.flush(timeout=30)
    assert len(every) == 800
    for adapter in (ws, rt):
        assert adapter.sequence_ids == sorted(every)  # in order, each once


async def test_events_stored_while_the_service_was_down_are_delivered_at_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.db"
    async with Publisher(store=SQLiteStore(path)) as other:
        before = await _publish(other, "before", 50)
    b, ws, rt = _broadcaster(path)
    async with b, Publisher(store=SQLiteStore(path)) as other:
        after = await _publish(other, "after", 50)
        async with asyncio.timeout(30):
            await ws.wait_for(set(before + after))
        await b.flush(timeout=30)
    assert ws.sequence_ids == before + after


async def test_flush_waits_for_own_events_queued_behind_other_writers(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    b, ws, _ = _broadcaster(path)
    async with b, Publisher(store=SQLiteStore(path)) as other:
        theirs = await _publish(other, "theirs", 20)
        own = await _publish(b, "own", 20)  # ids after theirs: a hole before them
        await b.flush(timeout=30)
        assert set(theirs + own) <= set(ws.sequence_ids)


@pytest.mark.parametrize(
    "error", [StoreUnavailable("disk I/O error"), RuntimeError("a bug in a store")]
)
async def test_a_failed_read_of_the_store_is_retried_and_skips_nothing(
    tmp_path: Path, error: Exception
) -> None:
    path = tmp_path / "shared.db"
    store = FlakyReads(path)
    store.error = error
    b, ws, rt = _broadcaster(path, store)
    async with b, Publisher(store=SQLiteStore(path)) as other:
        theirs = await _publish(other, "theirs", 30)
        own = await _publish(b, "own", 30)  # behind a hole only the store can fill
        more = await _publish(other, "theirs", 30)
        await b.flush(timeout=30)
        async with asyncio.timeout(30):
            await rt.wait_for(set(theirs + own + more))
    assert store.failures == 0
    assert ws.sequence_ids == rt.sequence_ids == sorted(theirs + own + more)
