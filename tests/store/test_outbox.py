"""The transactional outbox (SPEC 11): ``publish(..., connection=conn)`` writes
the event inside the caller's open PostgreSQL transaction. The event exists,
and is delivered, if and only if the caller commits; readers never see an id
before a lower one that is still in flight. Real PostgreSQL; a service that
follows the store delivers to in-memory adapters."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from broadcaster import Broadcaster, InvalidEvent, MemoryAdapter, Publisher
from broadcaster.exceptions import StoreUnavailable
from broadcaster.settings import load_settings
from broadcaster.store import PostgresStore

pytestmark = pytest.mark.slow


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


async def _transactions(
    publisher: Publisher, conn: psycopg.AsyncConnection[Any], count: int
) -> list[int]:
    committed: list[int] = []
    for i in range(count):
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1")  # the caller's own work
                receipt = await publisher.publish(
                    "CRITICAL", "outbox", {"i": i}, key=f"order-{i}", connection=conn
                )
                if i % 3 == 2:
                    raise Rollback
            committed.append(receipt.sequence_id)
        except Rollback:
            pass
    return committed


async def _plain(publisher: Publisher, count: int) -> list[int]:
    return [
        (await publisher.publish("CRITICAL", "plain", {"i": i})).sequence_id for i in range(count)
    ]


async def test_exactly_the_committed_events_are_delivered_in_order(pg_url: str) -> None:
    ws, rt = MemoryAdapter("websocket"), MemoryAdapter("realtime")
    service = Broadcaster(
        load_settings(env_file=None),
        adapters=[ws, rt],
        store=PostgresStore(pg_url),
        follow_store=True,
    )
    async with (
        service,
        Publisher(store=PostgresStore(pg_url)) as outbox,
        Publisher(store=PostgresStore(pg_url)) as other,
        await psycopg.AsyncConnection.connect(pg_url) as conn,
    ):
        # Plain appends run alongside, so some wait for an open transaction.
        committed, plain = await asyncio.gather(
            _transactions(outbox, conn, 1000), _plain(other, 300)
        )
        expected = sorted(committed + plain)
        async with asyncio.timeout(60):  # fails instead of hanging
            await ws.wait_for(set(expected))
            await rt.wait_for(set(expected))
        await service.flush(timeout=60)
        stored = await other.store.read_events(after=0, limit=10_000)
    assert len(committed) == 667
    assert [r.sequence_id for r in stored] == expected  # no rolled-back event exists
    for adapter in (ws, rt):
        assert adapter.sequence_ids == expected  # each once, in order
    outboxed = [r for r in ws.events if r.event_type == "outbox"]
    assert [r.to_event().payload["i"] % 3 for r in outboxed].count(2) == 0


async def test_a_connection_without_an_open_transaction_is_refused(pg_url: str) -> None:
    async with (
        Publisher(store=PostgresStore(pg_url)) as publisher,
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn,
    ):
        with pytest.raises(InvalidEvent) as caught:
            await publisher.publish("CRITICAL", "e", {}, connection=conn)
        assert caught.value.field == "connection"
        assert "open transaction" in str(caught.value)
        async with conn.transaction():
            await publisher.publish("CRITICAL", "e", {}, connection=conn)
        assert len(await publisher.store.read_events(after=0, limit=10)) == 1


async def test_a_failed_transaction_is_refused_and_stores_nothing(pg_url: str) -> None:
    async with (
        Publisher(store=PostgresStore(pg_url)) as publisher,
        await psycopg.AsyncConnection.connect(pg_url) as conn,
    ):
        with pytest.raises(psycopg.errors.DivisionByZero):
            await conn.execute("SELECT 1 / 0")
        with pytest.raises(InvalidEvent, match="roll it back"):
            await publisher.publish("CRITICAL", "e", {}, connection=conn)
        await conn.rollback()
        assert await publisher.store.read_events(after=0, limit=10) == []


class SeenSettling(PostgresStore):
    """Tells when a read found a page it may not return as it is and waits
    for the ids it covers to settle."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settling = asyncio.Event()

    async def committed_through(self) -> int:
        self.settling.set()
        return await super().committed_through()


@pytest.mark.parametrize("bounded", [False, True], ids=["open", "through"])
@pytest.mark.parametrize("ending", ["commit", "rollback"])
async def test_an_id_in_flight_holds_readers_back_not_producers(
    pg_url: str, ending: str, bounded: bool
) -> None:
    async with (
        Publisher(store=PostgresStore(pg_url)) as outbox,
        Publisher(store=PostgresStore(pg_url)) as other,
        SeenSettling(pg_url) as reader,
        await psycopg.AsyncConnection.connect(pg_url) as conn,
    ):
        await conn.execute("BEGIN")
        first = await outbox.publish("CRITICAL", "e", {}, connection=conn)
        # Another producer does not wait for the open transaction: it takes
        # id N+1 and commits it while N is in flight.
        second = await other.publish("CRITICAL", "e", {})
        assert second.sequence_id > first.sequence_id
        # A follower's read sees N+1 without N: it may not return N+1 (N
        # could still commit). Unbounded, it returns nothing at once (the
        # follower reads again when woken); bounded by ``through``, it must
        # vouch for every id up to it, so it waits for N's transaction.
        if bounded:
            read = asyncio.create_task(
                reader.read_routed(
                    after=first.sequence_id - 1, limit=10, through=second.sequence_id
                )
            )
            async with asyncio.timeout(60):  # fails instead of hanging
                await reader.settling.wait()
            await conn.execute(ending.upper())
            page = await read
        else:
            assert await reader.read_routed(after=first.sequence_id - 1, limit=10) == []
            await conn.execute(ending.upper())
            page = await reader.read_routed(after=first.sequence_id - 1, limit=10)
        ids = [record.sequence_id for record, _ in page]
        if ending == "commit":
            assert ids == [first.sequence_id, second.sequence_id]
        else:  # N never will be: the read passes it
            assert ids == [second.sequence_id]
            # ... and remembers it: the next read needs no wait.
            reader.settling.clear()
            again = await reader.read_routed(after=first.sequence_id - 1, limit=10)
            assert [record.sequence_id for record, _ in again] == ids
            assert not reader.settling.is_set()


async def test_readers_never_wait_for_transactions_that_do_not_append(pg_url: str) -> None:
    async with (
        Publisher(store=PostgresStore(pg_url)) as publisher,
        await psycopg.AsyncConnection.connect(pg_url) as unrelated,
    ):
        # A long transaction of the application's own, with a transaction
        # id, in the same database: not one the reads wait for.
        await unrelated.execute("BEGIN")
        await unrelated.execute("CREATE TEMP TABLE scratch (v int)")
        await unrelated.execute("INSERT INTO scratch VALUES (1)")
        receipt = await publisher.publish("CRITICAL", "e", {})
        async with asyncio.timeout(60):  # fails instead of hanging
            assert await publisher.store.committed_through() == receipt.sequence_id
            page = await publisher.store.read_events(after=0, limit=10)
        assert [r.sequence_id for r in page] == [receipt.sequence_id]
        await unrelated.execute("ROLLBACK")


async def test_a_read_waits_for_an_open_append_no_longer_than_the_store_timeout(
    pg_url: str,
) -> None:
    async with (
        Publisher(store=PostgresStore(pg_url)) as outbox,
        Publisher(store=PostgresStore(pg_url)) as other,
        PostgresStore(pg_url, op_timeout=1) as reader,
        await psycopg.AsyncConnection.connect(pg_url) as conn,
    ):
        await conn.execute("BEGIN")
        await outbox.publish("CRITICAL", "e", {}, connection=conn)
        await other.publish("CRITICAL", "e", {})
        with pytest.raises(StoreUnavailable, match="append transaction has been open"):
            await reader.read_events(after=0, limit=10)
        await conn.execute("COMMIT")
        assert len(await reader.read_events(after=0, limit=10)) == 2
