"""A store that stops accepting writes (SPEC 13): a SQLite file deleted or
replaced under a running broadcaster, a full or read-only database, a dead
PostgreSQL. ``publish()`` raises :class:`StoreUnavailable`, ``GET /health``
reports the store down and ``broadcaster_store_up`` is 0; nothing is
acknowledged that is not in the store the service will find at its next
start. Real stores, real files; the SQLite file check runs on a clock the
test moves."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import create_app
from broadcaster.core import Broadcaster, Receipt
from broadcaster.events import EventFactory
from broadcaster.exceptions import StoreUnavailable
from broadcaster.settings import load_settings
from broadcaster.store import FILE_CHECK_S, PostgresStore, SQLiteStore, Store

from .conftest import PgServer

TOKEN = "health-test-token-0123456789"


class Ticks:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Skewed:
    """The real monotonic clock, plus whatever the test adds: the broadcaster's
    lanes still see time pass, and its store probes can be made due at once."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


class Service:
    def __init__(self, b: Broadcaster, client: httpx.AsyncClient, clock: Skewed) -> None:
        self.b, self.client, self.clock = b, client, clock

    async def health(self) -> dict[str, Any]:
        response = await self.client.get("/health")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def store_up_metric(self) -> float:
        response = await self.client.get("/metrics")
        assert response.status_code == 200
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == "broadcaster_store_up":
                    return sample.value
        raise AssertionError("no broadcaster_store_up")

    async def publish(self, n: int, **payload: Any) -> Receipt:
        return await self.b.publish("SYSTEM", "health.test", {"n": n, **payload})

    async def assert_up(self) -> None:
        body = await self.health()  # first: it may probe a store that was down
        assert body["store"] == {"up": True, "detail": None}
        assert body["status"] == "ok"
        assert self.b.store_health().up
        assert await self.store_up_metric() == 1

    async def assert_down(self, reason: str) -> None:
        body = await self.health()
        assert not self.b.store_health().up
        assert body["status"] == "down"
        assert body["store"]["up"] is False
        assert reason in body["store"]["detail"]
        assert await self.store_up_metric() == 0


@asynccontextmanager
async def service(store: Store) -> AsyncIterator[Service]:
    clock = Skewed()
    b = Broadcaster(
        load_settings(env_file=None, reconcile_interval_s=0),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=store,
        monotonic=clock,
    )
    async with b:
        app = create_app(b, {"ops": TOKEN})
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
            yield Service(b, client, clock)


# -- SQLite: the file deleted or replaced ---------------------------------------


@pytest.mark.parametrize("loop_write_max", [1024, 0], ids=["loop-writes", "worker-writes"])
async def test_deleted_store_directory_refuses_every_publish_after_the_check(
    tmp_path: Path, loop_write_max: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    ticks = Ticks()
    store = SQLiteStore(data / "store.db", monotonic=ticks, loop_write_max=loop_write_max)
    async with service(store) as svc:
        receipts = [await svc.publish(i) for i in range(3)]
        await svc.assert_up()

        shutil.rmtree(data)
        # Within the check interval a commit into the unlinked file may still
        # be acknowledged (the documented window): the check is not per event.
        receipts.append(await svc.publish(3))
        ticks.now += FILE_CHECK_S
        refused = 0
        for i in range(4, 10):
            with pytest.raises(StoreUnavailable, match="deleted"):
                await svc.publish(i)
            refused += 1
        with pytest.raises(StoreUnavailable, match="deleted"):
            await svc.b.publish_many([{"category": "SYSTEM", "event_type": "e", "payload": {}}])
        assert refused == 6
        await svc.assert_down("deleted")
        # Down for good: time passing and probes do not bring it back.
        svc.clock.offset += 60
        ticks.now += 60
        await svc.assert_down("deleted")
        with pytest.raises(StoreUnavailable):
            await svc.publish(99)
    assert [r.sequence_id for r in receipts] == [1, 2, 3, 4]
    assert not data.exists()  # nothing recreated the directory


async def test_replaced_store_file_refuses_publishes_and_leaves_the_new_file_alone(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    ticks = Ticks()
    store = SQLiteStore(path, monotonic=ticks)
    async with service(store) as svc:
        for i in range(5):
            await svc.publish(i)
        # Someone puts another database in its place (a restored backup, say).
        fresh = tmp_path / "fresh.db"
        with sqlite3.connect(fresh) as conn:
            conn.execute("CREATE TABLE other (y)")
            conn.execute("INSERT INTO other VALUES (1)")
        conn.close()
        os.replace(fresh, path)
        ticks.now += FILE_CHECK_S
        with pytest.raises(StoreUnavailable, match="replaced"):
            await svc.publish(5)
        with pytest.raises(StoreUnavailable, match="replaced"):
            await svc.publish(6)
        await svc.assert_down("replaced")
    # This store's WAL was not left beside the new file, to be replayed into it.
    conn = sqlite3.connect(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert tables == {"other"}
        assert conn.execute("SELECT y FROM other").fetchall() == [(1,)]
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


async def test_a_failed_write_checks_the_file_at_once(tmp_path: Path) -> None:
    """The file check runs on every failed write, whatever the interval."""
    data = tmp_path / "data"
    data.mkdir()
    ticks = Ticks()
    store = SQLiteStore(data / "store.db", monotonic=ticks)
    async with service(store) as svc:
        await svc.publish(0)
        shutil.rmtree(data)
        await store.pragma("max_page_count", 1)  # the next page cannot be had
        with pytest.raises(StoreUnavailable, match="deleted"):
            await svc.publish(1, blob="x" * 100_000)
        await svc.assert_down("deleted")
        await store.pragma("max_page_count", 1_073_741_823)
        with pytest.raises(StoreUnavailable, match="deleted"):
            await svc.publish(2)


# -- SQLite: full, read-only; then recovered -------------------------------------


async def test_full_database_is_down_until_an_append_succeeds_again(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    async with service(store) as svc:
        first = await svc.publish(0)
        await svc.assert_up()
        # At its current size, no page more: an event needing new pages fails.
        await store.pragma("max_page_count", 1)
        for i in range(3):
            with pytest.raises(StoreUnavailable, match="full"):
                await svc.publish(i, blob="x" * 100_000)
        await svc.assert_down("full")
        svc.clock.offset += 10  # probes are due: they do not hide the failure
        await svc.assert_down("full")

        await store.pragma("max_page_count", 1_073_741_823)  # room again
        again = await svc.publish(4, blob="x" * 100_000)
        await svc.assert_up()
    # No id was consumed by the failed appends.
    assert again.sequence_id == first.sequence_id + 1


async def test_read_only_database_is_down_until_writable_again(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    async with service(store) as svc:
        await svc.publish(0)
        await store.pragma("query_only", 1)  # every write refused, as on a read-only file
        with pytest.raises(StoreUnavailable, match="readonly"):
            await svc.publish(1)
        await svc.assert_down("readonly")
        await store.pragma("query_only", 0)
        await svc.publish(2)
        await svc.assert_up()


# -- PostgreSQL: the server dies and comes back ------------------------------------


async def test_dead_postgres_is_down_then_up_again_without_traffic(
    pg_url: str, pg_server: PgServer
) -> None:
    store = PostgresStore(pg_url, connect_timeout=2, op_timeout=10)
    async with service(store) as svc:
        await svc.publish(0)
        await svc.assert_up()
        pg_server.crash()
        try:
            with pytest.raises(StoreUnavailable):
                await svc.publish(1)
            body = await svc.health()
            assert body["status"] == "down" and body["store"]["up"] is False
            assert body["store"]["detail"]
            assert await svc.store_up_metric() == 0
        finally:
            pg_server.start()
        # No publish: the next due probe finds the server back.
        svc.clock.offset += 10
        await svc.assert_up()
        receipt = await svc.publish(2)
        assert receipt.sequence_id >= 2


async def test_killed_postgres_connection_is_down_then_up_again(
    pg_url: str, pg_server: PgServer
) -> None:
    store = PostgresStore(pg_url, connect_timeout=2, op_timeout=10)
    async with service(store) as svc:
        await svc.publish(0)
        with pg_server.admin() as admin:
            # Every connection of the test database but this one.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = 'store_tests' AND pid <> pg_backend_pid()"
            )
        with pytest.raises(StoreUnavailable):
            await svc.publish(1)
        assert not svc.b.store_health().up
        # The next publish reconnects, and its success is the store up again.
        await svc.publish(2)
        await svc.assert_up()


async def test_a_file_replaced_after_the_last_write_is_left_alone_at_close(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    store = SQLiteStore(path, monotonic=Ticks())
    await store.open()
    try:
        factory = EventFactory()
        await store.append(
            [(factory.draft("SYSTEM", "e", {"i": i}), ("websocket",)) for i in range(3)]
        )
        fresh = tmp_path / "fresh.db"
        conn = sqlite3.connect(fresh)
        conn.execute("CREATE TABLE other (y)")
        conn.commit()
        conn.close()
        os.replace(fresh, path)
    finally:
        await store.close()  # no write in between: the close checks the file
    assert not store.health().up
    assert "replaced" in (store.health().detail or "")
    conn = sqlite3.connect(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert tables == {"other"}
    finally:
        conn.close()
