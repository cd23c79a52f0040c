"""PostgreSQL backend specifics: several processes on one database, server crashes."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from broadcaster.events import EventDraft, EventFactory, seal
from broadcaster.exceptions import StoreError, StoreUnavailable
from broadcaster.store import DeliveryState, PostgresStore
from broadcaster.store.postgres import MIGRATIONS, SCHEMA_VERSION
from broadcaster.store.postgres.sql import FIRST_SEQUENCE_ID, INDEX_ORDER, READ_EVENTS

from .conftest import PgServer

__all__: list[str] = []

WS = ("websocket",)


def items(n: int) -> list[tuple[EventDraft, tuple[str, ...]]]:
    factory = EventFactory()
    return [(factory.draft("CRITICAL", "pg.test", {"i": i}), WS) for i in range(n)]


async def test_two_stores_interleave_with_unique_increasing_ids(pg_url: str) -> None:
    # Two instances stand for two broadcaster processes sharing the database;
    # each has its own connection, so the sequence arbitrates.
    async with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:

        async def writer(store: PostgresStore) -> list[int]:
            got: list[int] = []
            for _ in range(15):
                records = await store.append(items(20))
                ids = [r.sequence_id for r in records]
                # Strictly increasing; not always contiguous: appends run
                # side by side and take their ids from one sequence.
                assert ids == sorted(set(ids)) and len(ids) == 20
                assert not got or ids[0] > got[-1]  # each writer sees increasing ids
                got += ids
            return got

        ids_a, ids_b = await asyncio.gather(writer(a), writer(b))
        assert not set(ids_a) & set(ids_b)
        every = sorted(ids_a + ids_b)
        assert every == list(range(1, 601))
        assert await a.last_sequence_id() == await b.last_sequence_id() == 600
        # One store sees (and can mark) what the other wrote.
        await a.mark("websocket", ids_b, DeliveryState.ACKED)
        left = [r.sequence_id for r in await b.undelivered("websocket", limit=1000)]
        assert left == ids_a


async def test_an_acknowledged_pair_leaves_no_row_and_the_view_shows_it(pg_url: str) -> None:
    """Schema 9: a plain acknowledgement deletes the pair's outbox row and
    writes none in deliveries; the delivery_state view still lists every
    routed pair, and an error recorded before the ack stays on an explicit row."""
    both = ("websocket", "realtime")
    factory = EventFactory()
    async with PostgresStore(pg_url) as store:
        records = await store.append([(factory.draft("CRITICAL", "e", {}), both)] * 2)
        first, second = (r.sequence_id for r in records)
        await store.mark("realtime", [second], DeliveryState.FAILED, "timeout")
        await store.mark("websocket", [first, second], DeliveryState.ACKED)
        await store.mark("realtime", [first, second], DeliveryState.ACKED)
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT sequence_id, adapter, error FROM deliveries")
        assert await cur.fetchall() == [(second, "realtime", "timeout")]
        cur = await conn.execute("SELECT count(*) FROM outbox")
        assert await cur.fetchone() == (0,)
        cur = await conn.execute(
            "SELECT sequence_id, adapter, state FROM delivery_state ORDER BY 1, 2"
        )
        assert await cur.fetchall() == [
            (first, "realtime", "acked"),
            (first, "websocket", "acked"),
            (second, "realtime", "acked"),
            (second, "websocket", "acked"),
        ]


async def test_schema_version_and_concurrent_open(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))  # migrations serialised
    for s in stores:
        await s.close()
    async with await psycopg.AsyncConnection.connect(pg_url) as conn:
        cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert await cur.fetchone() == (SCHEMA_VERSION,)
        await conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await PostgresStore(pg_url).open()


async def test_migrates_from_version_2_with_backfill(pg_url: str) -> None:
    factory = EventFactory()
    payloads = [{"order": 1, "Zoë": 2, "a": {"z": 1}}, {}, {"é": "\u0000", "e": 2, "ß": [1]}]
    records = [
        seal(factory.draft("CRITICAL", "old.event", payload), seq)
        for seq, payload in enumerate(payloads, start=1)
    ]
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        # The schema as version 2 of this code left it.
        await conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)")
        for migration in MIGRATIONS[:2]:
            for statement in migration:
                await conn.execute(statement)
        await conn.execute("INSERT INTO meta VALUES ('schema_version', 2)")
        for r in records:
            await conn.execute(
                "INSERT INTO events VALUES (%s, %s, 'CRITICAL', 'old.event', %s,"
                ' \'["websocket","realtime"]\', %s)',
                (r.sequence_id, r.event_id, 1000 + r.sequence_id, r.wire),
            )
        await conn.execute("SELECT setval('event_sequence_id', 3)")
        await conn.execute(
            "INSERT INTO deliveries VALUES (1, 'websocket', 'acked', NULL, 1),"
            " (1, 'realtime', 'repaired', NULL, 1), (2, 'websocket', 'acked', NULL, 1)"
        )
        await conn.execute(
            "INSERT INTO outbox VALUES ('realtime', 2, 'failed', NULL, 1),"
            " ('websocket', 3, 'queued', NULL, 1), ('realtime', 3, 'queued', NULL, 1)"
        )
        await conn.execute(
            "INSERT INTO receipts (sequence_id, adapter, event_type, received_at_ms, checksum,"
            " checksum_ok, consumer) VALUES (1, 'websocket', 'old.event', 5, %s, true, 'c')",
            (records[0].checksum,),
        )

    async with PostgresStore(pg_url) as store:
        rows = await store.scan()
        assert [(r.checksum, r.payload_keys) for r in rows] == [
            (r.checksum, r.payload_keys) for r in records
        ]
        assert rows[0].payload_keys == '["Zoë","a","order"]'
        assert rows[1].payload_keys == "[]"
        assert rows[0].receipts[0].payload_keys is None
        stats = await store.stats()
        assert (stats.events, stats.receipts, stats.last_sequence_id) == (3, 1, 3)
        assert stats.states == {
            "websocket": {"acked": 2, "queued": 1},
            "realtime": {"repaired": 1, "failed": 1, "queued": 1},
        }
        assert stats.oldest_undelivered_ms == {"websocket": 1003, "realtime": 1002}
        (new,) = await store.append([(factory.draft("DEBUG", "new", {"k": 1}), WS)])
        assert new.sequence_id == 4

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT sequence_id FROM events WHERE payload_keys IS NULL")
        # Backfilled by the migration, but for the wire PostgreSQL cannot parse.
        assert await cur.fetchall() == [(3,)]
        # A row an old-version process writes during a rolling upgrade: from the wire.
        await conn.execute("UPDATE events SET checksum = NULL WHERE sequence_id = 3")
    async with PostgresStore(pg_url) as store:
        (row,) = await store.scan(after=2, limit=1)
        assert (row.checksum, row.payload_keys) == (records[2].checksum, records[2].payload_keys)


async def test_migrates_from_version_3_to_runtime_config(pg_url: str) -> None:
    old = seal(EventFactory().draft("CRITICAL", "old.event", {"v": 1}), 1)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        # The schema as version 3 of this code left it: one event, a watermark.
        await conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)")
        for migration in MIGRATIONS[:3]:
            for statement in migration:
                await conn.execute(statement)
        await conn.execute("UPDATE meta SET value = 1 WHERE key = 'event_count'")
        await conn.execute("INSERT INTO meta VALUES ('schema_version', 3)")
        await conn.execute(
            "INSERT INTO events VALUES (1, %s, 'CRITICAL', 'old.event', 1, '[\"websocket\"]',"
            " %s, %s, %s)",
            (old.event_id, old.wire, old.checksum, old.payload_keys),
        )
        await conn.execute("INSERT INTO outbox VALUES ('websocket', 1, 'queued', NULL, 1)")
        await conn.execute("SELECT setval('event_sequence_id', 1)")
        await conn.execute("INSERT INTO watermarks VALUES ('reconciled_through', 1)")
        cur = await conn.execute("SELECT to_regclass('audit'), to_regclass('runtime_config')")
        assert await cur.fetchone() == (None, None)

    async with PostgresStore(pg_url) as store:
        assert await store.runtime_config() is None
        assert await store.audit_log() == []
        entry = await store.save_runtime_config(
            {"flags": {"x": True}}, actor="ops", path="PUT /config", before=None, after=True
        )
        assert entry.id == 1
        assert await store.undelivered("websocket") == [old]
        assert await store.get_watermark("reconciled_through") == 1
        (new,) = await store.append(items(1))
        assert new.sequence_id == 2

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert await cur.fetchone() == (SCHEMA_VERSION,)
        cur = await conn.execute("SELECT id, doc_json FROM runtime_config")
        assert await cur.fetchall() == [(1, '{"flags":{"x":true}}')]
        cur = await conn.execute("SELECT id, actor, before_json, after_json FROM audit")
        assert await cur.fetchall() == [(1, "ops", "null", "true")]


async def test_two_stores_share_runtime_config_and_audit(pg_url: str) -> None:
    # Two broadcaster processes behind one admin API each: both see every change.
    async with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        first = await a.save_runtime_config(
            {"by": "a"}, actor="alice", path="PUT /config", before=None, after={"by": "a"}
        )
        assert await b.runtime_config() == {"by": "a"}
        assert await b.audit_log() == [first]
        second = await b.save_runtime_config(
            {"by": "b"}, actor="bob", path="PUT /config", before={"by": "a"}, after={"by": "b"}
        )
        assert second.id > first.id
        assert await a.runtime_config() == {"by": "b"}
        assert await a.audit_log(after=first.id) == [second]

        async def writer(store: PostgresStore, name: str) -> list[int]:
            ids = []
            for i in range(15):
                entry = await store.save_runtime_config(
                    {"by": name, "i": i}, actor=name, path="PUT /config", before=None, after=i
                )
                assert not ids or entry.id > ids[-1]
                ids.append(entry.id)
            return ids

        # A reader paging while both write never skips an entry: ids become
        # visible in increasing order.
        seen: list[int] = []
        stop = asyncio.Event()

        async def reader() -> None:
            async with PostgresStore(pg_url) as c:
                while True:
                    done = stop.is_set()  # before the read: the last pages see all
                    page = await c.audit_log(after=seen[-1] if seen else 0, limit=7)
                    seen.extend(entry.id for entry in page)
                    if done and len(page) < 7:
                        break
                    await asyncio.sleep(0)

        read = asyncio.create_task(reader())
        ids_a, ids_b = await asyncio.gather(writer(a, "a"), writer(b, "b"))
        stop.set()
        await read
        assert not set(ids_a) & set(ids_b)
        log_a, log_b = await a.audit_log(), await b.audit_log()
        assert log_a == log_b
        assert [e.id for e in log_a] == sorted([first.id, second.id, *ids_a, *ids_b])
        assert seen == [e.id for e in log_a]
        last = log_a[-1]
        assert (
            await a.runtime_config()
            == await b.runtime_config()
            == {
                "by": last.actor,
                "i": last.after,
            }
        )


async def test_a_config_change_on_one_store_wakes_a_listener_on_another(pg_url: str) -> None:
    async with PostgresStore(pg_url) as a, PostgresStore(pg_url) as b:
        assert b.notifies_config_changes
        # The first wait opens the listening connection and returns at once:
        # whatever changed before it listened, the caller reads now.
        async with asyncio.timeout(30):
            await b.wait_for_config_change(3600)
        # The connection listens from here on: a change is heard even before
        # the wait reads the socket.
        woken = asyncio.create_task(b.wait_for_config_change(3600))
        await a.save_runtime_config({"v": 1}, actor="a", path="PATCH", before=None, after=1)
        # Far sooner than the hour it would otherwise wait.
        async with asyncio.timeout(30):
            await woken
        assert await b.runtime_config() == {"v": 1}


async def test_waiting_for_config_changes_on_a_closed_store_is_refused(pg_url: str) -> None:
    with pytest.raises(StoreError, match="not open"):
        await PostgresStore(pg_url).wait_for_config_change(1)


async def test_runtime_config_survives_a_new_store_on_the_database(pg_url: str) -> None:
    async with PostgresStore(pg_url, clock=lambda: 1_700_000_000.25) as store:
        first = await store.save_runtime_config(
            {"a": 1}, actor="ops", path="PUT /config", before=None, after={"a": 1}
        )
        assert first.at_ms == 1_700_000_000_250  # the store's clock
    async with PostgresStore(pg_url) as store:
        assert await store.runtime_config() == {"a": 1}
        assert await store.audit_log() == [first]
        second = await store.save_runtime_config(
            {"a": 2}, actor="ops", path="PUT /config", before={"a": 1}, after={"a": 2}
        )
        assert second.id > first.id


async def test_failed_audit_insert_rolls_back_the_config(pg_url: str) -> None:
    async with PostgresStore(pg_url) as store:
        kept = await store.save_runtime_config({"v": 1}, actor="a", path="p", before=None, after=1)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            # The audit insert fails after the config row was already replaced.
            await conn.execute(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'audit refused'; END $$"
            )
            await conn.execute(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit"
                " FOR EACH ROW EXECUTE FUNCTION refuse_audit()"
            )
            with pytest.raises(StoreError, match="save_runtime_config.*audit refused") as info:
                await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
            assert not isinstance(info.value, StoreUnavailable)
            assert await store.runtime_config() == {"v": 1}
            assert await store.audit_log() == [kept]
            await conn.execute("DROP TRIGGER refuse_audit ON audit")
        again = await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
        assert again.id > kept.id
        assert await store.runtime_config() == {"v": 2}
        assert await store.audit_log() == [kept, again]


async def test_runtime_config_calls_on_a_closed_store_are_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    with pytest.raises(StoreError, match="not open"):
        await store.save_runtime_config({}, actor="a", path="p", before=None, after=None)
    with pytest.raises(StoreError, match="not open"):
        await store.runtime_config()
    with pytest.raises(StoreError, match="not open"):
        await store.audit_log()


@pytest.mark.slow
async def test_server_crash_during_config_change_writes_nothing_then_recovers(
    pg_url: str, pg_server: PgServer
) -> None:
    async with PostgresStore(pg_url) as store:
        kept = await store.save_runtime_config({"v": 1}, actor="a", path="p", before=None, after=1)
        await asyncio.to_thread(pg_server.crash)
        try:
            with pytest.raises(StoreUnavailable, match="save_runtime_config"):
                await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
            with pytest.raises(StoreUnavailable, match="runtime_config"):
                await store.runtime_config()
            with pytest.raises(StoreUnavailable, match="audit_log"):
                await store.audit_log()
        finally:
            await asyncio.to_thread(pg_server.start)
        assert await store.runtime_config() == {"v": 1}
        assert await store.audit_log() == [kept]
        again = await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
        assert again.id > kept.id
        assert await store.runtime_config() == {"v": 2}


async def test_unreachable_server_is_unavailable() -> None:
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none", connect_timeout=2)
    with pytest.raises(StoreUnavailable, match="postgres: open"):
        await store.open()
    await store.close()


@pytest.mark.slow
async def test_server_crash_is_unavailable_then_reconnects(
    pg_url: str, pg_server: PgServer
) -> None:
    async with PostgresStore(pg_url) as store:
        before = await store.append(items(10))
        await asyncio.to_thread(pg_server.crash)
        try:
            # The open connection is dead: the next call says so...
            with pytest.raises(StoreUnavailable):
                await store.append(items(5))
            # ...and while the server is down, reconnecting is refused.
            with pytest.raises(StoreUnavailable):
                await store.mark("websocket", [before[0].sequence_id], DeliveryState.ACKED)
            with pytest.raises(StoreUnavailable):
                await store.last_sequence_id()
        finally:
            await asyncio.to_thread(pg_server.start)
        # Back up: the same store instance reconnects on its own.
        after = await store.append(items(5))
        assert after[0].sequence_id > before[-1].sequence_id
        await store.mark("websocket", [before[0].sequence_id], DeliveryState.ACKED)
        pending = [r.sequence_id for r in await store.undelivered("websocket")]
        assert pending == [r.sequence_id for r in before[1:] + after]


def test_bad_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid PostgreSQL URL"):
        PostgresStore("postgresql://x/y?nonsense_option=1")


async def test_the_service_shows_no_store_password(pg_url: str) -> None:
    """SPEC 13: the start-up banner and the logs mask the password in STORE_URL
    (the test server trusts local connections, so any password connects)."""
    import io

    from structlog.testing import capture_logs

    from broadcaster.service import run_service
    from broadcaster.settings import load_settings

    assert pg_url.startswith(("postgresql://postgres:@", "postgresql://postgres@"))
    secret_url = pg_url.replace("postgres:@", "postgres@", 1).replace(
        "postgresql://postgres@", "postgresql://postgres:pg-pass-word-42@", 1
    )
    settings = load_settings(
        env_file=None, store_url=secret_url, websocket_port=0, admin_port=0, reconcile_interval_s=0
    )
    out = io.StringIO()
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(
            run_service(settings, out=out, stop=stop, on_ready=lambda b, a: stop.set())
        )
        await asyncio.wait_for(task, 60)
    assert "postgres:********@" in out.getvalue()
    assert "pg-pass-word-42" not in out.getvalue() and "pg-pass-word-42" not in repr(logs)


async def test_reading_history_is_a_range_read_of_the_primary_key(pg_url: str) -> None:
    """read_events() and first_sequence_id() on a large table: the plan walks
    events_pkey from the cursor (and stops at the limit), never a whole-table
    scan and sort, also as a generic plan (what a prepared statement gets)."""
    async with PostgresStore(pg_url):
        pass  # creates the schema
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO events (sequence_id, event_id, category, event_type, created_at_ms,"
            " routed_to, wire, checksum, payload_keys)"
            " SELECT i, 'e' || i, (ARRAY['CRITICAL','SYSTEM','DEBUG'])[1 + i % 3], 't', 0,"
            " '[\"websocket\",\"realtime\"]', '\\x7b7d', 'c', '[]'"
            " FROM generate_series(1, 200000) AS i"
        )
        await conn.execute("ANALYZE events")
        for mode in ("auto", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            for categories, adapter in ((None, None), (["SYSTEM"], "websocket")):
                params = {"after": 1000, "categories": categories, "adapter": adapter}
                params["through"] = 2**63 - 1
                params["limit"] = 1000
                async with conn.transaction():  # as read_events() runs it
                    await conn.execute(INDEX_ORDER)
                    cur = await conn.execute(f"EXPLAIN {READ_EVENTS}", params)
                    plan = " ".join(str(row[0]) for row in await cur.fetchall())
                assert "Index Scan using events_pkey" in plan, plan
                assert "Sort" not in plan and "Seq Scan" not in plan, plan
        cur = await conn.execute(f"EXPLAIN {FIRST_SEQUENCE_ID}")
        plan = " ".join(str(row[0]) for row in await cur.fetchall())
        assert "events_pkey" in plan and "Seq Scan" not in plan, plan
