"""``broadcaster.Publisher``: the producer side alone (SPEC 11). It validates,
routes, seals and appends to the shared store and returns the receipt once
the event is durable; it binds no port and starts no adapter."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from broadcaster import (
    BroadcasterClosed,
    Category,
    InvalidEvent,
    Publisher,
    Receipt,
    StoreUnavailable,
)
from broadcaster.events import EventDraft, EventRecord
from broadcaster.settings import load_settings
from broadcaster.store import MemoryStore, SQLiteStore


async def test_publish_returns_once_the_event_is_in_the_store(tmp_path: Path) -> None:
    async with Publisher(
        load_settings(env_file=None, store_url=f"sqlite:///{tmp_path / 's.db'}")
    ) as p:
        receipt = await p.publish("CRITICAL", "order.created", {"order": 42}, key="order-42")
    assert isinstance(receipt, Receipt)
    assert receipt.sequence_id == 1
    assert receipt.routed_to == ("websocket", "realtime")
    # Another connection to the file (another process, as far as SQLite
    # knows) finds it, sealed with the checksum the receipt names.
    async with SQLiteStore(tmp_path / "s.db") as store:
        [record] = await store.read_events(after=0, limit=10)
    assert record.sequence_id == 1
    assert record.checksum == receipt.checksum.value
    assert record.to_event().payload == {"order": 42}


async def test_publish_many_is_one_transaction_and_validates_everything_first(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Publisher(load_settings(env_file=None, store_url=url)) as p:
        receipts = await p.publish_many(
            [{"category": "SYSTEM", "event_type": "e", "payload": {"i": i}} for i in range(3)]
        )
        with pytest.raises(InvalidEvent) as caught:
            await p.publish_many(
                [
                    {"category": "SYSTEM", "event_type": "e", "payload": {}},
                    {"category": "NOPE", "event_type": "e", "payload": {}},
                ]
            )
        assert await p.publish_many([]) == []
        stored = await p.store.read_events(after=0, limit=10)
    assert [r.sequence_id for r in receipts] == [1, 2, 3]
    assert caught.value.index == 1
    assert caught.value.field == "category"
    assert [r.sequence_id for r in stored] == [1, 2, 3]


async def test_an_invalid_event_names_its_field_and_stores_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Publisher(load_settings(env_file=None, store_url=url)) as p:
        with pytest.raises(InvalidEvent) as caught:
            await p.publish("CRITICAL", "", {"a": 1})
        assert caught.value.field == "event_type"
        with pytest.raises(InvalidEvent) as caught:
            await p.publish("CRITICAL", "e", {"\ud800": 1})
        assert caught.value.field.startswith("payload")
        assert await p.store.read_events(after=0, limit=10) == []


async def test_concurrent_callers_share_commits_and_ids_follow_commit_order(
    tmp_path: Path,
) -> None:
    commits: list[int] = []

    class CountingStore(SQLiteStore):
        async def append(
            self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
        ) -> list[EventRecord]:
            commits.append(len(items))
            return await super().append(items)

    store = CountingStore(tmp_path / "s.db")
    async with Publisher(store=store) as p:
        receipts = await asyncio.gather(*(p.publish("DEBUG", "e", {"i": i}) for i in range(300)))
    assert sorted(r.sequence_id for r in receipts) == list(range(1, 301))
    assert sum(commits) == 300
    assert len(commits) < 300  # callers arriving during a commit shared the next


async def test_a_store_that_cannot_accept_raises_store_unavailable(tmp_path: Path) -> None:
    class FullDisk(MemoryStore):
        async def append(
            self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
        ) -> list[EventRecord]:
            raise StoreUnavailable("disk full")

    async with Publisher(store=FullDisk()) as p:
        with pytest.raises(StoreUnavailable, match="disk full"):
            await p.publish("CRITICAL", "e", {})
        # The publisher keeps working once the store does.
        await p.flush(timeout=5)


async def test_backpressure_waits_instead_of_dropping(tmp_path: Path) -> None:
    gate = asyncio.Event()
    batches: list[int] = []

    class SlowStore(MemoryStore):
        async def append(
            self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
        ) -> list[EventRecord]:
            batches.append(len(items))
            await gate.wait()
            return await super().append(items)

    async with Publisher(store=SlowStore(), max_pending=2) as p:
        calls = [asyncio.create_task(p.publish("DEBUG", "e", {"i": i})) for i in range(6)]
        while not batches:  # noqa: ASYNC110 (the first commit has begun and is held)
            await asyncio.sleep(0)
        gate.set()
        receipts = await asyncio.gather(*calls)
    # Every call got its event stored; no commit ever held more than the
    # bound, because callers beyond it waited instead of queueing.
    assert sorted(r.sequence_id for r in receipts) == [1, 2, 3, 4, 5, 6]
    assert sum(batches) == 6
    assert max(batches) <= 2


async def test_routing_follows_the_flags_the_service_saves(tmp_path: Path) -> None:
    now = [0.0]
    url = f"sqlite:///{tmp_path / 's.db'}"
    settings = load_settings(env_file=None, store_url=url)
    async with Publisher(settings, refresh_s=1.0, monotonic=lambda: now[0]) as p:
        assert (await p.publish("CRITICAL", "e", {})).routed_to == ("websocket", "realtime")
        # The service (another process) turns the category off through its admin API.
        async with SQLiteStore(tmp_path / "s.db") as service_store:
            doc = {
                "categories": {
                    "CRITICAL": {
                        "enabled": False,
                        "percentage": 100,
                        "adapters": ["websocket", "realtime"],
                    }
                },
                "override": None,
            }
            await service_store.save_runtime_config(
                doc, actor="admin", path="/config", before=None, after=doc
            )
        # Not re-read before refresh_s has passed ...
        assert (await p.publish("CRITICAL", "e", {})).routed_to == ("websocket", "realtime")
        now[0] = 1.5
        await p.publish("SYSTEM", "e", {})  # starts the re-read in the background
        await p.flush()
        async with asyncio.timeout(30):  # fails instead of hanging
            while p.routing.categories[Category.CRITICAL].enabled:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # ... and in force once it has.
        assert (await p.publish("CRITICAL", "e", {})).routed_to == ("websocket",)


async def test_a_caller_transaction_needs_a_postgresql_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    async with Publisher(load_settings(env_file=None, store_url=url)) as p:
        with pytest.raises(InvalidEvent) as caught:
            await p.publish("CRITICAL", "e", {}, connection=object())  # type: ignore[arg-type]
    assert caught.value.field == "connection"


async def test_a_closed_publisher_refuses(tmp_path: Path) -> None:
    p = Publisher(store=MemoryStore())
    with pytest.raises(BroadcasterClosed):
        await p.publish("CRITICAL", "e", {})
    async with p:
        assert p.running
    assert not p.running
    with pytest.raises(BroadcasterClosed):
        await p.publish_many([{"category": "CRITICAL", "event_type": "e", "payload": {}}])
    await p.close()  # idempotent
