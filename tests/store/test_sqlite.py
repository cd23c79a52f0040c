"""SQLite backend specifics: WAL, schema versions, faults, crash safety, loop latency."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest

from broadcaster.events import EventDraft, EventFactory, EventRecord, seal
from broadcaster.exceptions import StoreError, StoreUnavailable
from broadcaster.store import (
    ConsumerReceipt,
    DeliveryState,
    MemoryStore,
    PlainPage,
    PostgresStore,
    SQLiteStore,
    store_from_url,
)
from broadcaster.store.sqlite import MIGRATIONS, SCHEMA_VERSION, migrate

__all__: list[str] = []

REPO = Path(__file__).resolve().parents[2]
BOTH = ("websocket", "realtime")


def wal_file_exists(path: Path) -> bool:
    return Path(f"{path}-wal").exists()


def items(n: int, payload_bytes: int = 0) -> list[tuple[EventDraft, tuple[str, ...]]]:
    factory = EventFactory()
    pad = "x" * payload_bytes
    return [(factory.draft("SYSTEM", "disk.test", {"i": i, "pad": pad}), BOTH) for i in range(n)]


async def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    async with SQLiteStore(path) as store:
        assert await store.pragma("journal_mode") == "wal"
        assert await store.pragma("synchronous") == 1  # NORMAL
        await store.append(items(3))
        assert wal_file_exists(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (SCHEMA_VERSION,)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meta", "events", "deliveries", "receipts"} <= tables
    conn.close()


async def test_synchronous_full_from_url(tmp_path: Path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path}/f.db?synchronous=full")
    assert isinstance(store, SQLiteStore)
    async with store:
        assert await store.pragma("synchronous") == 2  # FULL


async def test_undelivered_is_a_range_scan_of_the_outbox_key(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "i.db"):
        pass
    conn = sqlite3.connect(tmp_path / "i.db")
    from broadcaster.store.sqlite._reads import UNDELIVERED  # noqa: PLC0415

    plan = " ".join(str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {UNDELIVERED}", ("a", 0, 1)))
    conn.close()
    assert "SEARCH o USING PRIMARY KEY (adapter=? AND sequence_id>?)" in plan, plan
    assert "SCAN" not in plan, plan


def file_of_version(
    path: Path, version: int, routed_json: str
) -> tuple[sqlite3.Connection, EventRecord]:
    """A file at schema ``version`` (3 or later) holding event 1, routed as
    ``routed_json``, queued for the WebSocket path; the connection is left open."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, MIGRATIONS[:version]) == 0
    old = seal(EventFactory().draft("CRITICAL", "old.event", {"v": 1}), 1)
    conn.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (1, old.event_id, "CRITICAL", "old.event", 1, routed_json, old.wire,
         old.checksum, old.payload_keys),
    )  # fmt: skip
    conn.execute("INSERT INTO outbox VALUES ('websocket', 1, 'queued', NULL, 1)")
    conn.execute("UPDATE meta SET value = 1 WHERE key IN ('last_sequence_id', 'event_count')")
    return conn, old


def outbox_state(path: Path) -> tuple[int, int, list[tuple[int, str, str]]]:
    """Outbox rows, meta.outbox_through and the delivery_state view's pairs."""
    conn = sqlite3.connect(path)
    try:
        (rows,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        (through,) = conn.execute("SELECT value FROM meta WHERE key = 'outbox_through'").fetchone()
        view = conn.execute(
            "SELECT sequence_id, adapter, state FROM delivery_state ORDER BY 1, 2"
        ).fetchall()
    finally:
        conn.close()
    return rows, through, view


async def reads(store: SQLiteStore, last: int) -> list[object]:
    """Everything a caller can read of delivery states (minus stats' timestamps)."""
    stats = await store.stats()
    return [
        await store.undelivered("websocket"),
        await store.undelivered("realtime", after=1, limit=2),
        stats.states,
        stats.oldest_undelivered_ms,
        [await store.get(seq) for seq in range(1, last + 1)],
        await store.scan(),
    ]


async def test_append_commits_the_event_rows_alone_and_reads_add_the_tail(
    tmp_path: Path,
) -> None:
    """A publish() waits for its append's commit: the outbox rows (one per path)
    are written by the next mark instead. Before and after, every read agrees."""
    path = tmp_path / "tail.db"
    async with SQLiteStore(path, mark_linger_ms=0) as store:
        first = await store.append(items(3))
        (dup,) = await store.append(
            [(EventFactory().draft("SYSTEM", "dup", {}), ("websocket", "websocket"))]
        )
        rows, through, view = outbox_state(path)
        assert (rows, through) == (0, 0)  # nothing but the events was written
        assert view == [
            *((r.sequence_id, a, "queued") for r in first for a in sorted(BOTH)),
            (dup.sequence_id, "websocket", "queued"),  # named twice: one pair
        ]
        before = await reads(store, 4)
        stats = await store.stats()
        assert stats.states == {"websocket": {"queued": 4}, "realtime": {"queued": 3}}
        assert set(stats.oldest_undelivered_ms) == {"websocket", "realtime"}
        assert None not in stats.oldest_undelivered_ms.values()
        stored = await store.get(1)
        assert stored is not None
        assert stored.states == dict.fromkeys(BOTH, DeliveryState.QUEUED)
        assert await store.undelivered("websocket") == [*first, dup]
        assert await store.undelivered("realtime", after=1, limit=1) == [first[1]]

        # A mark of nothing known writes the tail's rows and changes no state.
        await store.mark("nobody", [99], DeliveryState.ACKED)
        assert outbox_state(path) == (7, 4, view)
        assert await reads(store, 4) == before

        await store.mark("websocket", [1, 4], DeliveryState.ACKED)
        await store.append(items(1))  # a new tail beside written rows
        rows, through, view = outbox_state(path)
        assert (rows, through) == (5, 4)
        assert (1, "websocket", "acked") in view and (5, "realtime", "queued") in view
        assert len(view) == 9
        assert [r.sequence_id for r in await store.undelivered("websocket")] == [2, 3, 5]
        assert (await store.stats()).states == {
            "websocket": {"queued": 3, "acked": 2},
            "realtime": {"queued": 4},
        }


def log_outbox_inserts(path: Path) -> None:
    """Record every outbox row ever inserted (the store's own connection fires
    the trigger; an ack deletes the rows, the log keeps them)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            "CREATE TABLE inserted (adapter TEXT, sequence_id INTEGER);"
            "CREATE TRIGGER log_insert AFTER INSERT ON outbox"
            " BEGIN INSERT INTO inserted VALUES (new.adapter, new.sequence_id); END;"
        )
    finally:
        conn.close()


async def test_acks_reaching_into_the_tail_write_no_row_for_the_pairs_they_acknowledge(
    tmp_path: Path,
) -> None:
    """Acks come in order under steady traffic: a transaction of plain acks
    writes the tail only up to the highest id it acknowledges, and no row for
    an acknowledged pair (it would be deleted in the same transaction). Pairs
    still owed get their rows; every read says the same as with rows."""
    path = tmp_path / "skip.db"
    async with SQLiteStore(path, mark_linger_ms=0) as store:
        await store.append(items(6))  # 1-6 to both
        await store.append([(EventFactory().draft("SYSTEM", "one", {}), ("websocket",))])  # 7
        log_outbox_inserts(path)
        await store.mark("websocket", [1, 2], DeliveryState.ACKED)
        # Through 2 only; realtime still owes 1 and 2: rows; websocket: none.
        assert rows_of(path, "inserted") == [("realtime", 1), ("realtime", 2)]
        assert outbox_state(path)[:2] == (2, 2)
        # Both adapters' acks in one transaction: nothing written for them.
        await asyncio.gather(
            store.mark("websocket", [3, 4], DeliveryState.ACKED),
            store.mark("realtime", [1, 3, 4], DeliveryState.ACKED),
        )
        assert rows_of(path, "inserted") == [("realtime", 1), ("realtime", 2)]
        rows, through, view = outbox_state(path)
        assert (rows, through) == (1, 4)  # realtime 2 is still owed
        assert [p for p in view if p[2] == "queued"] == [
            (2, "realtime", "queued"),
            *((seq, a, "queued") for seq in (5, 6) for a in ("realtime", "websocket")),
            (7, "websocket", "queued"),
        ]
        assert (await store.stats()).states == {
            "websocket": {"acked": 4, "queued": 3},
            "realtime": {"acked": 3, "queued": 3},
        }
        # An ack of 7 alone writes out 5 and 6 for both, then acks 7 unwritten.
        await store.mark("websocket", [7], DeliveryState.ACKED)
        assert rows_of(path, "inserted")[2:] == [
            ("realtime", 5),
            ("realtime", 6),
            ("websocket", 5),
            ("websocket", 6),
        ]
        assert outbox_state(path)[:2] == (5, 7)
        assert [r.sequence_id for r in await store.undelivered("websocket")] == [5, 6]
        assert [r.sequence_id for r in await store.undelivered("realtime")] == [2, 5, 6]
        # Any other state in the transaction: the whole tail is written, as before.
        await store.append(items(2))  # 8, 9
        await asyncio.gather(
            store.mark("websocket", [8], DeliveryState.ACKED),
            store.mark("realtime", [8], DeliveryState.FAILED, "timeout"),
        )
        assert ("websocket", 8) in rows_of(path, "inserted")
        # realtime 2, 5, 6, 8 (failed), 9; websocket 5, 6, 9
        assert outbox_state(path)[:2] == (8, 9)
        assert (await store.stats()).states == {
            "websocket": {"acked": 6, "queued": 3},
            "realtime": {"acked": 3, "queued": 4, "failed": 1},
        }


def rows_of(path: Path, table: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    finally:
        conn.close()


async def test_an_ack_deletes_the_outbox_row_and_writes_nothing(tmp_path: Path) -> None:
    """ACKED is implied by a routed pair having no row (schema 7); every read
    still says ACKED, and the rarer states keep explicit rows."""
    path = tmp_path / "acked.db"
    async with SQLiteStore(path, mark_linger_ms=0) as store:
        await store.append(items(4))
        await store.mark("websocket", [1, 2, 3, 4], DeliveryState.ACKED)
        assert rows_of(path, "deliveries") == []
        assert [r[:2] for r in rows_of(path, "outbox")] == [("realtime", s) for s in (1, 2, 3, 4)]
        stored = await store.get(1)
        assert stored is not None and stored.states["websocket"] is DeliveryState.ACKED
        (row, *_) = await store.scan(limit=1)
        assert row.states == {"websocket": "acked", "realtime": "queued"}
        assert (await store.stats()).states == {
            "websocket": {"acked": 4},
            "realtime": {"queued": 4},
        }
        assert (1, "websocket", "acked") in outbox_state(path)[2]

        # An error seen before the ack is kept, in an explicit ACKED row.
        await store.mark("realtime", [1], DeliveryState.FAILED, "timeout")
        await store.mark("realtime", [1, 2], DeliveryState.ACKED)
        assert [r[:4] for r in rows_of(path, "deliveries")] == [(1, "realtime", "acked", "timeout")]
        # Implied ACKED -> REPAIRED (a row appears) and -> FAILED (back to the outbox).
        await store.mark("websocket", [2], DeliveryState.REPAIRED)
        await store.mark("websocket", [3], DeliveryState.FAILED, "missing at consumer")
        await store.mark("websocket", [2, 9], DeliveryState.ACKED)  # 9: unknown
        assert [r[:3] for r in rows_of(path, "deliveries")] == [
            (1, "realtime", "acked"),
            (2, "websocket", "acked"),
        ]
        assert [r.sequence_id for r in await store.undelivered("websocket")] == [3]
        by_seq = {seq: await store.get(seq) for seq in (1, 2, 3, 4)}
        assert {seq: s.states if s else None for seq, s in by_seq.items()} == {
            1: {"websocket": "acked", "realtime": "acked"},
            2: {"websocket": "acked", "realtime": "acked"},
            3: {"websocket": "failed", "realtime": "queued"},
            4: {"websocket": "acked", "realtime": "queued"},
        }
        assert (await store.stats()).states == {
            "websocket": {"acked": 3, "failed": 1},
            "realtime": {"acked": 2, "queued": 2},
        }
        # Pruning an implicitly acknowledged event takes its pairs off the counters.
        await store.mark("realtime", [3, 4], DeliveryState.ACKED)
        assert await store.prune(through=4, older_than_ms=2**62) == 3
        assert (await store.stats()).states == {
            "websocket": {"failed": 1},
            "realtime": {"acked": 1},
        }
        assert rows_of(path, "deliveries") == []


async def test_undelivered_tail_is_a_range_scan_of_the_events_key(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "i.db"):
        pass
    conn = sqlite3.connect(tmp_path / "i.db")
    from broadcaster.store.sqlite._reads import UNDELIVERED_TAIL  # noqa: PLC0415

    plan = " ".join(
        str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {UNDELIVERED_TAIL}", (0, "a", 1))
    )
    conn.close()
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan


async def test_an_append_past_the_tail_bound_writes_the_outbox_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While no mark comes (acks lag, adapters down), reads must not add up an
    ever longer tail: the append that takes it past TAIL_MAX writes the rows."""
    from broadcaster.store.sqlite import _writes  # noqa: PLC0415

    monkeypatch.setattr(_writes, "TAIL_MAX", 4)
    path = tmp_path / "bound.db"
    async with SQLiteStore(path) as store:
        await store.append(items(3))
        assert outbox_state(path)[:2] == (0, 0)
        await store.append(items(2))
        assert outbox_state(path)[:2] == (10, 5)
        await store.append(items(1))
        assert outbox_state(path)[:2] == (10, 5)
        assert len(await store.undelivered("realtime")) == 6


async def test_prune_writes_the_tail_before_it_judges(tmp_path: Path) -> None:
    """An event of the tail is undelivered: prune must see its rows."""
    path = tmp_path / "prune.db"
    async with SQLiteStore(path) as store:
        await store.append(items(2))
        assert await store.prune(through=2, older_than_ms=2**62) == 0
        assert outbox_state(path)[:2] == (4, 2)
        assert len(await store.undelivered("websocket")) == 2


async def test_migrates_from_version_1(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, MIGRATIONS[:1]) == 0
    record = seal(EventFactory().draft("CRITICAL", "old.event", {"v": 1}), 7)
    conn.execute(
        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
        (7, record.event_id, "CRITICAL", "old.event", 1, '["websocket"]', record.wire),
    )
    conn.execute("INSERT INTO outbox VALUES ('websocket', 7, 'queued', NULL, 1)")
    conn.execute("UPDATE meta SET value = 7 WHERE key = 'last_sequence_id'")
    conn.close()

    async with SQLiteStore(path) as store:
        assert await store.undelivered("websocket") == [record]
        assert await store.last_sequence_id() == 7
        (new,) = await store.append([(EventFactory().draft("CRITICAL", "e", {}), ("websocket",))])
        assert new.sequence_id == 8
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
        SCHEMA_VERSION,
    )
    conn.close()


async def test_migrates_from_version_2_with_backfill(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, MIGRATIONS[:2]) == 0
    factory = EventFactory()
    payloads = [{"order": 1, "Zoë": 2, "a": {"z": 1}}, {}, {"é": "\u0000", "e": 2, "ß": [1]}]
    records = [
        seal(factory.draft("CRITICAL", "old.event", payload), seq)
        for seq, payload in enumerate(payloads, start=1)
    ]
    for r in records:
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (r.sequence_id, r.event_id, "CRITICAL", "old.event", 1000 + r.sequence_id,
             '["websocket","realtime"]', r.wire),
        )  # fmt: skip
    conn.executemany(
        "INSERT INTO deliveries VALUES (?, ?, ?, NULL, 1)",
        [(1, "websocket", "acked"), (1, "realtime", "repaired"), (2, "websocket", "acked")],
    )
    conn.executemany(
        "INSERT INTO outbox VALUES (?, ?, ?, NULL, 1)",
        [("realtime", 2, "failed"), ("websocket", 3, "queued"), ("realtime", 3, "queued")],
    )
    conn.execute(
        "INSERT INTO receipts (sequence_id, adapter, event_type, received_at_ms, checksum,"
        " checksum_ok, consumer) VALUES (1, 'websocket', 'old.event', 5, ?, 1, 'c')",
        (records[0].checksum,),
    )
    conn.execute("UPDATE meta SET value = 3 WHERE key = 'last_sequence_id'")
    conn.close()

    async with SQLiteStore(path) as store:
        rows = await store.scan()
        assert [(r.checksum, r.payload_keys) for r in rows] == [
            (r.checksum, r.payload_keys) for r in records
        ]
        assert rows[0].payload_keys == '["Zoë","a","order"]'
        assert rows[1].payload_keys == "[]"
        assert rows[0].receipts[0].payload_keys is None  # not known for old receipts
        assert rows[0].states == {
            "websocket": DeliveryState.ACKED,
            "realtime": DeliveryState.REPAIRED,
        }
        stats = await store.stats()
        assert (stats.events, stats.receipts, stats.last_sequence_id) == (3, 1, 3)
        assert stats.states == {
            "websocket": {"acked": 2, "queued": 1},
            "realtime": {"repaired": 1, "failed": 1, "queued": 1},
        }
        assert stats.oldest_undelivered_ms == {"websocket": 1003, "realtime": 1002}
        assert await store.get_watermark("reconciled_through") == 0
        (new,) = await store.append([(factory.draft("DEBUG", "new", {"k": 1}), ("websocket",))])
        assert new.sequence_id == 4
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        SCHEMA_VERSION,
    )
    # Backfilled in the migration, not computed on every scan.
    assert conn.execute("SELECT count(*) FROM events WHERE checksum IS NULL").fetchone() == (0,)
    # A row without them (as an older version would write) is read from the wire.
    conn.execute("UPDATE events SET checksum = NULL, payload_keys = NULL WHERE sequence_id = 1")
    conn.close()
    async with SQLiteStore(path) as store:
        (row,) = await store.scan(limit=1)
        assert (row.checksum, row.payload_keys) == (records[0].checksum, records[0].payload_keys)


async def test_migrates_from_version_3_to_runtime_config(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    # The file as version 3 of this code left it: one event, a watermark.
    conn, old = file_of_version(path, 3, '["websocket"]')
    conn.execute("INSERT INTO watermarks VALUES ('reconciled_through', 1)")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not {"audit", "runtime_config"} & tables
    conn.close()

    async with SQLiteStore(path) as store:
        assert await store.runtime_config() is None
        assert await store.audit_log() == []
        entry = await store.save_runtime_config(
            {"flags": {"x": True}}, actor="ops", path="PUT /config", before=None, after=True
        )
        assert entry.id == 1
        stored = await store.get(old.sequence_id)
        assert stored is not None and stored.record == old
        assert await store.get_watermark("reconciled_through") == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
        SCHEMA_VERSION,
    )
    assert conn.execute("SELECT id, doc_json FROM runtime_config").fetchall() == [
        (1, '{"flags":{"x":true}}')
    ]
    assert conn.execute("SELECT id, actor, before_json, after_json FROM audit").fetchall() == [
        (1, "ops", "null", "true")
    ]
    conn.close()


async def test_migrates_from_version_4_flagging_duplicate_receipts(tmp_path: Path) -> None:
    """Version 5 keeps, per receipt, whether it repeats an earlier one of the
    same (event, adapter): the migration works it out for receipts already
    stored, so plain_page() does not take a duplicated pair for a plain one."""
    path = tmp_path / "v4.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, MIGRATIONS[:4]) == 0
    records = [seal(EventFactory().draft("CRITICAL", "old", {"v": i}), i + 1) for i in range(2)]
    for r in records:
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.sequence_id, r.event_id, "CRITICAL", "old", 1, '["websocket"]', r.wire,
             r.checksum, r.payload_keys),
        )  # fmt: skip
    conn.execute("UPDATE meta SET value = 2 WHERE key IN ('last_sequence_id', 'event_count')")
    # Event 1: the same receipt twice; event 2: none. Two receipts for two pairs.
    for _ in range(2):
        conn.execute(
            "INSERT INTO receipts (sequence_id, adapter, event_type, received_at_ms, checksum,"
            " checksum_ok, consumer) VALUES (1, 'websocket', 'old', 2, ?, 1, 'c')",
            (records[0].checksum,),
        )
    conn.close()
    async with SQLiteStore(path) as store:
        page = await store.plain_page(after=0, limit=10, judged_before_ms=1, window_ms=10)
        assert page == PlainPage(2, None)
        # Version 9 folds one consumer's repeats into one receipt of two deliveries.
        stored = await store.get(1)
        assert stored is not None and [r.deliveries for r in stored.receipts] == [2]
        assert (await store.stats()).receipts == 1
        [consumer] = await store.consumers()
        assert (consumer.consumer, consumer.from_sequence_id, consumer.receipts) == ("c", 1, 2)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT dup, deliveries FROM receipts").fetchall() == [(0, 2)]
    conn.close()


async def test_migrates_from_version_5_with_an_empty_tail(tmp_path: Path) -> None:
    """Version 6 writes outbox rows after the append: events stored before it
    have theirs already, so the tail starts after them (nothing counted twice)."""
    path = tmp_path / "v5.db"
    conn, r = file_of_version(path, 5, '["websocket", "realtime"]')
    conn.execute("INSERT INTO deliveries VALUES (1, 'realtime', 'acked', NULL, 1)")
    conn.close()
    async with SQLiteStore(path) as store:
        assert await store.undelivered("websocket") == [r]
        assert await store.undelivered("realtime") == []
        stored = await store.get(1)
        assert stored is not None
        assert stored.states == {"websocket": DeliveryState.QUEUED, "realtime": "acked"}
    assert outbox_state(path) == (1, 1, [(1, "realtime", "acked"), (1, "websocket", "queued")])


async def test_migrates_from_version_6_implying_plain_acks(tmp_path: Path) -> None:
    """Version 7 keeps no row for a plain ACKED pair: the migration deletes
    them, keeps an ACKED row that carries an error, and the counters stand."""
    path = tmp_path / "v6.db"
    conn, r = file_of_version(path, 6, '["websocket", "realtime"]')
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'outbox_through'")
    conn.execute("DELETE FROM outbox")
    conn.execute(
        "INSERT INTO deliveries VALUES (1, 'websocket', 'acked', NULL, 1),"
        " (1, 'realtime', 'acked', 'timeout', 1)"
    )
    conn.execute(
        "INSERT INTO delivered_counts VALUES ('websocket', 'acked', 1), ('realtime', 'acked', 1)"
    )
    conn.close()
    async with SQLiteStore(path) as store:
        stored = await store.get(1)
        assert stored is not None
        assert stored.states == {"websocket": "acked", "realtime": "acked"}
        assert stored.errors == {"realtime": "timeout"}
        assert (await store.stats()).states == {
            "websocket": {"acked": 1},
            "realtime": {"acked": 1},
        }
        assert await store.undelivered("websocket") == []
    assert rows_of(path, "deliveries") == [(1, "realtime", "acked", "timeout", 1)]


async def test_plain_page_leaves_rows_of_an_older_version_to_the_judge(tmp_path: Path) -> None:
    """Rows written before checksum/payload_keys existed have them NULL: the
    SQL cannot compare receipts with them, so the page is judged row by row
    (scan() reads those from the wire)."""
    async with SQLiteStore(tmp_path / "old.db", clock=lambda: 1.0) as store:
        (record,) = await store.append([(EventFactory().draft("SYSTEM", "t", {}), ("websocket",))])
        await store.record_receipts(
            [ConsumerReceipt(1, "websocket", "t", 1000, record.checksum, True)]
        )
        args = {"after": 0, "limit": 10, "judged_before_ms": 1000, "window_ms": 10}
        assert await store.plain_page(**args) == PlainPage(1, {("SYSTEM", "websocket"): 1})
        conn = sqlite3.connect(tmp_path / "old.db")
        conn.execute("UPDATE events SET checksum = NULL")
        conn.commit()
        conn.close()
        assert await store.plain_page(**args) == PlainPage(1, None)


async def test_runtime_config_survives_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "cfg.db"
    async with SQLiteStore(path, clock=lambda: 1_700_000_000.25) as store:
        first = await store.save_runtime_config(
            {"a": 1}, actor="ops", path="PUT /config", before=None, after={"a": 1}
        )
        assert first.at_ms == 1_700_000_000_250  # the store's clock
    async with SQLiteStore(path) as store:
        assert await store.runtime_config() == {"a": 1}
        assert await store.audit_log() == [first]
        second = await store.save_runtime_config(
            {"a": 2}, actor="ops", path="PUT /config", before={"a": 1}, after={"a": 2}
        )
        assert second.id == first.id + 1


async def test_audit_ids_never_reused_after_rows_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "ids.db"
    async with SQLiteStore(path) as store:
        for i in range(3):
            await store.save_runtime_config({"i": i}, actor="a", path="p", before=None, after=i)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM audit WHERE id > 1")  # e.g. an operator trimming the log
    conn.close()
    async with SQLiteStore(path) as store:
        entry = await store.save_runtime_config({}, actor="a", path="p", before=None, after=None)
        assert entry.id == 4
        assert [e.id for e in await store.audit_log()] == [1, 4]


async def test_failed_audit_insert_rolls_back_the_config(tmp_path: Path) -> None:
    path = tmp_path / "atomic.db"
    async with SQLiteStore(path) as store:
        kept = await store.save_runtime_config({"v": 1}, actor="a", path="p", before=None, after=1)
        # The audit insert fails after the config row was already replaced.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit"
            " BEGIN SELECT RAISE(ABORT, 'audit refused'); END"
        )
        with pytest.raises(StoreError, match="save_runtime_config.*audit refused"):
            await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
        assert await store.runtime_config() == {"v": 1}
        assert await store.audit_log() == [kept]
        other.execute("DROP TRIGGER refuse_audit")
        other.close()
        again = await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
        assert again.id == kept.id + 1
        assert await store.runtime_config() == {"v": 2}


async def test_runtime_config_on_a_full_disk_writes_nothing(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "cfgfull.db") as store:
        kept = await store.save_runtime_config({"v": 1}, actor="a", path="p", before=None, after=1)
        pages = await store.pragma("page_count")
        await store.pragma("max_page_count", str(pages))
        big = {"blob": "x" * 200_000}
        with pytest.raises(StoreUnavailable, match=r"save_runtime_config.*SQLITE_FULL"):
            await store.save_runtime_config(big, actor="a", path="p", before=None, after=big)
        assert await store.runtime_config() == {"v": 1}
        assert await store.audit_log() == [kept]
        await store.pragma("max_page_count", "1073741823")
        entry = await store.save_runtime_config(big, actor="a", path="p", before=None, after=big)
        assert entry.id == kept.id + 1
        assert await store.runtime_config() == big


async def test_runtime_config_on_a_locked_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "cfglock.db"
    async with SQLiteStore(path, busy_timeout_ms=50) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.save_runtime_config({"v": 1}, actor="a", path="p", before=None, after=1)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await store.runtime_config() is None
        assert await store.audit_log() == []


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with SQLiteStore(path):
        pass
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.close()
    store = SQLiteStore(path)
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        await store.open()
    await store.close()  # harmless after a failed open


async def test_unopenable_file_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "no-such-dir" / "x.db")
    with pytest.raises(StoreUnavailable, match="no-such-dir.*unable to open"):
        await store.open()


async def test_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StoreError, match="not a database") as info:
        await SQLiteStore(path).open()
    assert not isinstance(info.value, StoreUnavailable)


async def test_disk_full_is_unavailable_then_recovers(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "full.db") as store:
        before = await store.append(items(10))
        last = before[-1].sequence_id
        # Simulate a full disk: the file may not grow beyond its current size.
        pages = await store.pragma("page_count")
        assert await store.pragma("max_page_count", str(pages)) == pages
        with pytest.raises(StoreUnavailable, match=r"full.*SQLITE_FULL"):
            await store.append(items(300, payload_bytes=2000))
        # Nothing half-written, no id consumed.
        assert await store.last_sequence_id() == last
        assert await store.get(last + 1) is None
        assert len(await store.undelivered("websocket")) == 10

        await store.pragma("max_page_count", "1073741823")  # space again
        after = await store.append(items(300, payload_bytes=2000))
        assert after[0].sequence_id == last + 1
        assert len(await store.undelivered("realtime")) == 310


async def test_locked_file_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with SQLiteStore(path, busy_timeout_ms=50) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.append(items(5))
        finally:
            other.execute("ROLLBACK")
            other.close()
        (first, *_) = await store.append(items(5))
        assert first.sequence_id == 1


async def test_small_write_finding_the_file_locked_waits_on_the_worker(tmp_path: Path) -> None:
    """A small append runs on the loop's connection, which never waits for a
    lock: held elsewhere, the append goes to the worker, which waits (up to
    busy_timeout_ms) and commits once the lock is free."""
    path = tmp_path / "busy.db"
    async with SQLiteStore(path) as store:
        await store.append(items(1))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, other.execute, "ROLLBACK")
        started = time.perf_counter()
        try:
            (record,) = await store.append(items(1))
            waited = time.perf_counter() - started
        finally:
            other.close()
        assert record.sequence_id == 2
        assert waited >= 0.15
        await store.mark("websocket", [2], DeliveryState.ACKED)  # the loop's connection again
        assert [r.sequence_id for r in await store.undelivered("websocket")] == [1]


async def test_loop_write_max_weighs_an_append_row_as_four_marked_ids(tmp_path: Path) -> None:
    """Appends of up to loop_write_max events and marks of up to four times as
    many ids commit on the loop's connection; bigger ones go to the worker."""
    async with SQLiteStore(tmp_path / "w.db", loop_write_max=10, mark_linger_ms=0) as store:
        records = await store.append(items(10))
        assert store.loop_commits == 1
        records += await store.append(items(40))
        assert store.loop_commits == 1  # the worker's
        ids = [r.sequence_id for r in records]
        await store.mark("websocket", ids[:40], DeliveryState.ACKED)
        assert store.loop_commits == 2
        await store.mark("realtime", ids[:41], DeliveryState.ACKED)
        assert store.loop_commits == 2
        assert len(await store.undelivered("websocket")) == 10
        assert len(await store.undelivered("realtime")) == 9


async def test_append_now_writes_on_the_loop_or_writes_nothing(tmp_path: Path) -> None:
    """append_now commits a small append at once on the loop's connection;
    when it cannot (too big, write lock taken, a checkpoint holding writes,
    no loop connection) it returns None and consumes no sequence id."""
    path = tmp_path / "now.db"
    async with SQLiteStore(path, loop_write_max=10) as store:
        assert store.append_now([]) == []
        records = store.append_now(items(3))
        assert records is not None and [r.sequence_id for r in records] == [1, 2, 3]
        stored = await store.get(2)
        assert stored is not None and stored.record == records[1]
        assert store.append_now(items(11)) is None  # over loop_write_max
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        assert store.append_now(items(1)) is None
        other.execute("ROLLBACK")
        other.close()
        with store._engine.checkpoints.holding_writes():  # a checkpoint pass
            assert store.append_now(items(1)) is None
        (later,) = await store.append(items(1))
        assert later.sequence_id == 4  # nothing was consumed by the refusals
    async with SQLiteStore(path, synchronous="FULL") as store:  # commits fsync: never on the loop
        assert store.append_now(items(1)) is None
    with pytest.raises(StoreError, match="not open"):
        store.append_now(items(1))


async def test_append_now_on_a_full_disk_raises_and_writes_nothing(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "full.db") as store:
        await store.append(items(1))
        await store.pragma("max_page_count", await store.pragma("page_count"))
        with pytest.raises(StoreUnavailable, match="full"):
            store.append_now(items(50, payload_bytes=2000))
        assert await store.last_sequence_id() == 1


async def test_wal_stays_bounded_under_many_small_writes(tmp_path: Path) -> None:
    """The loop's connection never checkpoints; the worker does, every few
    hundred loop commits, and once the WAL holds ``wal_frames_max`` frames it
    holds writes for one short pass so the WAL is reused instead of growing."""
    path = tmp_path / "wal.db"
    # No mark linger: 2 000 awaited marks would each wait for company in vain.
    async with SQLiteStore(path, mark_linger_ms=0, wal_frames_max=512) as store:
        for _ in range(2000):
            (record,) = await store.append(items(1))
            await store.mark("websocket", [record.sequence_id], DeliveryState.ACKED)
        wal = path.with_name(path.name + "-wal").stat().st_size
        # 4000 commits of a few 4 KiB pages each would be tens of MiB unchecked.
        assert wal < 8 * 2**20, wal
        assert store.checkpoints_quiesced >= 2
        assert len(await store.undelivered("realtime", limit=5000)) == 2000


async def test_big_writes_on_the_worker_count_towards_checkpoints(tmp_path: Path) -> None:
    """No connection checkpoints by itself: the worker's big transactions
    (receipt batches here) count by the rows they change, so the WAL stays
    bounded though these are a hundred commits, not hundreds."""
    path = tmp_path / "wal.db"
    async with SQLiteStore(path, wal_frames_max=256) as store:
        for _ in range(100):
            records = await store.append(items(200))
            reports = [
                (r.sequence_id, adapter, r.checksum, consumer, 1, 1, True)
                for r in records
                for adapter in ("websocket", "realtime")
                for consumer in ("web-1", "web-2", "probe")
            ]
            assert (await store.record_reports(reports)).accepted == 1200
        wal = path.with_name(path.name + "-wal").stat().st_size
        # 120 000 receipts and 20 000 events: tens of MiB of WAL unchecked.
        assert wal < 8 * 2**20, wal
        assert store.checkpoints_quiesced >= 1
        assert (await store.stats()).receipts == 120_000


async def test_checkpoints_hold_writes_only_once_the_wal_is_long(tmp_path: Path) -> None:
    """Below ``wal_frames_max`` checkpoints copy pages back with writes going on."""
    path = tmp_path / "wal.db"
    async with SQLiteStore(path, mark_linger_ms=0) as store:
        for _ in range(300):  # 600 loop commits: three checkpoints, ~2 000 frames
            (record,) = await store.append(items(1))
            await store.mark("websocket", [record.sequence_id], DeliveryState.ACKED)
        await asyncio.sleep(0.05)  # the last checkpoint ran
        assert store.checkpoints_quiesced == 0
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < 8192 * 4096, wal


def meta_floor(path: Path) -> tuple[int, int]:
    """meta's last_sequence_id and event_count as stored."""
    conn = sqlite3.connect(path)
    try:
        rows = dict(
            conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('last_sequence_id', 'event_count')"
            ).fetchall()
        )
    finally:
        conn.close()
    return rows["last_sequence_id"], rows["event_count"]


async def test_an_append_writes_no_meta_row_and_deletes_keep_the_mark(tmp_path: Path) -> None:
    """A commit a publish() waits for writes the event rows alone (schema 8):
    meta's mark and count are a floor, brought up before a delete takes an
    event above it — by prune or by hand — so ids are never handed out again
    and the counts stay exact."""
    path = tmp_path / "mark.db"
    async with SQLiteStore(path, mark_linger_ms=0) as store:
        await store.append(items(5))
        assert meta_floor(path) == (0, 0)  # no meta row written by the appends
        stats = await store.stats()
        assert (await store.last_sequence_id(), stats.last_sequence_id, stats.events) == (5, 5, 5)
        for adapter in BOTH:
            await store.mark(adapter, [1, 2, 3, 4, 5], DeliveryState.ACKED)
        assert await store.prune(through=5, older_than_ms=2**62) == 5
        assert meta_floor(path) == (5, 0)  # settled before the newest went
        stats = await store.stats()
        assert (await store.last_sequence_id(), stats.last_sequence_id, stats.events) == (5, 5, 0)
        (new,) = await store.append(items(1))
        assert new.sequence_id == 6
        assert ((await store.stats()).events, meta_floor(path)) == (1, (5, 0))
    async with SQLiteStore(path) as store:  # opening settles the floor
        assert meta_floor(path) == (6, 1)
        stats = await store.stats()
        assert (stats.last_sequence_id, stats.events) == (6, 1)


async def test_ids_never_reused_after_pruning(tmp_path: Path) -> None:
    path = tmp_path / "prune.db"
    async with SQLiteStore(path) as store:
        records = await store.append(items(20))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DELETE FROM events")  # what a future pruning job would do
    conn.execute("DELETE FROM deliveries")
    conn.close()
    async with SQLiteStore(path) as store:
        assert await store.last_sequence_id() == records[-1].sequence_id
        (new, *_) = await store.append(items(1))
        assert new.sequence_id == records[-1].sequence_id + 1


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from broadcaster.events import EventFactory
    from broadcaster.store import SQLiteStore

    async def main():
        factory = EventFactory()
        async with SQLiteStore(sys.argv[1]) as store:
            while True:
                batch = [(factory.draft("CRITICAL", "crash.test", {"i": i}), ("websocket",))
                         for i in range(50)]
                records = await store.append(batch)
                # Printed only after append returned: the promise under test.
                print("APPENDED", records[0].sequence_id, records[-1].sequence_id, flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.slow
async def test_sigkill_mid_stream_loses_no_returned_append(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert child.stdout is not None
    lines: list[bytes] = []
    async with asyncio.timeout(30):
        while len(lines) < 40:
            line = await child.stdout.readline()
            assert line, "the child stopped before appending"
            if line.startswith(b"APPENDED "):  # (structlog also writes to stdout)
                lines.append(line)
    child.send_signal(signal.SIGKILL)  # mid-stream: appends are in flight
    rest = await child.stdout.read()
    await child.wait()
    lines += rest.splitlines(keepends=True)
    assert len(lines) >= 40
    # A line cut by the kill has no end of line; every complete one is a returned append.
    returned = [
        (int(first), int(last))
        for _, first, last in (
            line.split() for line in lines if line.startswith(b"APPENDED ") and line.endswith(b"\n")
        )
    ]
    assert len(returned) >= 40
    highest = max(last for _, last in returned)

    async with SQLiteStore(path) as store:
        for first, last in returned:
            assert await store.get(first) is not None
            assert await store.get(last) is not None
        assert await store.last_sequence_id() >= highest
        (new, *_) = await store.append(items(1))
        assert new.sequence_id > highest
        assert await store.pragma("integrity_check") == "ok"
        ids = [r.sequence_id for r in await store.undelivered("websocket", limit=1_000_000)]
        assert ids == list(range(1, len(ids) + 1))  # no holes, no duplicates


async def test_big_append_does_not_block_the_loop(tmp_path: Path) -> None:
    batch = items(20_000)
    async with SQLiteStore(tmp_path / "lat.db") as store:
        gaps: list[float] = []
        stop = False

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        # Objects of earlier tests are not this test's business: keep the
        # collector from walking them (a full-suite GC pass can take 100+ ms).
        gc.collect()
        gc.freeze()
        try:
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0.01)
            gaps.clear()
            started = time.perf_counter()
            await store.append(batch)
            took = time.perf_counter() - started
            stop = True
            await task
        finally:
            gc.unfreeze()
    # Sealing and inserting 20 000 events takes a good fraction of a second on
    # the worker thread; meanwhile the loop keeps ticking (GIL hand-offs every
    # few ms). Run on the loop, the append would be one gap as long as itself.
    assert took > 0.1
    assert len(gaps) >= 10, (len(gaps), took)
    assert max(gaps) < took / 3, (max(gaps), took)


def test_store_from_url() -> None:
    assert isinstance(store_from_url("memory://"), MemoryStore)
    default = store_from_url("sqlite:///./broadcaster.db")
    assert isinstance(default, SQLiteStore)
    assert default.path == Path("./broadcaster.db")
    assert default.synchronous == "NORMAL"
    relative = store_from_url("sqlite:///data/events.db")
    assert isinstance(relative, SQLiteStore) and relative.path == Path("data/events.db")
    absolute = store_from_url("sqlite:////var/lib/b.db?synchronous=full")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == Path("/var/lib/b.db") and absolute.synchronous == "FULL"
    assert isinstance(store_from_url("postgresql://u@localhost/db"), PostgresStore)
    assert isinstance(store_from_url("postgres://u@localhost/db"), PostgresStore)
    for bad in ("mysql://x/y", "broadcaster.db", "sqlite:///x.db?synchronous=sometimes"):
        with pytest.raises(ValueError, match="unsupported STORE_URL") as info:
            store_from_url(bad)
        assert bad in str(info.value)
    with pytest.raises(ValueError, match="cache"):
        store_from_url("sqlite:///x.db?cache=shared")
    small = store_from_url("sqlite:///x.db?wal_frames_max=1024&busy_timeout_ms=50")
    assert isinstance(small, SQLiteStore) and small.wal_frames_max == 1024
    for bad_number in ("wal_frames_max=0", "wal_frames_max=lots", "busy_timeout_ms=soon"):
        with pytest.raises(ValueError, match=bad_number.partition("=")[0]):
            store_from_url(f"sqlite:///x.db?{bad_number}")
    with pytest.raises(ValueError, match="no database path"):
        store_from_url("sqlite:///")


async def test_busy_timeout_ms_in_the_store_url_is_how_long_writes_wait_for_a_lock(
    tmp_path: Path,
) -> None:
    store = store_from_url(f"sqlite:///{tmp_path / 'b.db'}?busy_timeout_ms=50")
    async with store:
        assert await store.pragma("busy_timeout") == 50


async def test_closed_store_refuses_calls_and_pragma_checks_input(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db")
    with pytest.raises(StoreError, match="not open"):
        await store.append(items(1))
    with pytest.raises(StoreError, match="not open"):
        await store.mark("websocket", [1], DeliveryState.ACKED)
    with pytest.raises(StoreError, match="not open"):
        await store.save_runtime_config({}, actor="a", path="p", before=None, after=None)
    with pytest.raises(StoreError, match="not open"):
        await store.runtime_config()
    with pytest.raises(StoreError, match="not open"):
        await store.audit_log()
    async with store:
        with pytest.raises(ValueError, match="pragma name"):
            await store.pragma("user_version; DROP TABLE events")
        with pytest.raises(ValueError, match="pragma value"):
            await store.pragma("user_version", "1; DROP TABLE events")
        assert await store.pragma("user_version", 3) is None  # setters return nothing
        assert await store.pragma("user_version") == 3
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "d.db", synchronous="sometimes")
    with pytest.raises(ValueError, match="wal_frames_max"):
        SQLiteStore(tmp_path / "d.db", wal_frames_max=0)


async def test_reading_history_is_a_range_read_of_the_events_key(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "h.db"):
        pass
    conn = sqlite3.connect(tmp_path / "h.db")
    from broadcaster.store.sqlite._reads import FIRST_SEQUENCE_ID, READ_EVENTS  # noqa: PLC0415

    for params in ((0, None, None, 10), (0, '["CRITICAL"]', "websocket", 10)):
        plan = " ".join(str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {READ_EVENTS}", params))
        assert "SEARCH events USING INTEGER PRIMARY KEY (rowid>?)" in plan, plan
        assert "SCAN events" not in plan and "TEMP B-TREE" not in plan, plan  # no sort
    plan = " ".join(str(r) for r in conn.execute(f"EXPLAIN QUERY PLAN {FIRST_SEQUENCE_ID}"))
    conn.close()
    assert "SCAN" not in plan, plan


@pytest.mark.parametrize(("stored", "pruned"), [((5, 6), 4), ((), 6), ((1,), 0)])
async def test_migrates_from_version_10_taking_what_was_pruned_from_the_gap(
    tmp_path: Path, stored: tuple[int, ...], pruned: int
) -> None:
    """Version 11 keeps the highest pruned id (what resume is refused by):
    in a store pruned before it, every id below the first stored event, and
    every id handed out where none is left, counts as pruned."""
    path = tmp_path / "v10.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert migrate(conn, MIGRATIONS[:10]) == 0
    for seq in stored:
        r = seal(EventFactory().draft("CRITICAL", "old", {"v": seq}), seq)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r.sequence_id, r.event_id, "CRITICAL", "old", 1, '["websocket"]', r.wire,
             r.checksum, r.payload_keys),
        )  # fmt: skip
    conn.execute("UPDATE meta SET value = 6 WHERE key = 'last_sequence_id'")
    conn.close()
    async with SQLiteStore(path) as store:
        assert await store.pruned_through() == pruned
