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


async def test_an_id_in_flight_holds_back_the_next_until_it_commits(pg_url: str) -> None:
    async with (
        Publisher(store=PostgresStore(pg_url)) as outbox,
        Publisher(store=PostgresStore(pg_url)) as other,
        await psycopg.AsyncConnection.connect(pg_url) as conn,
    ):
        async with conn.transaction():
            first = await outbox.publish("CRITICAL", "e", {}, connection=conn)
            # Another producer appends meanwhile: it waits for the append
            # lock, so it cannot take id N+1, let alone commit it, while N is
            # in flight.
            later = asyncio.create_task(other.publish("CRITICAL", "e", {}))
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as watch:
                async with asyncio.timeout(60):  # fails instead of hanging
                    while True:
                        cur = await watch.execute(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND NOT granted"
                        )
                        row = await cur.fetchone()
                        if row is not None and row[0] == 1:
                            break
                        await asyncio.sleep(0.01)
            assert not later.done()
            # (other's store connection is the one waiting: read through another)
            assert await outbox.store.read_events(after=0, limit=10) == []
        second = await later
    assert second.sequence_id > first.sequence_id
