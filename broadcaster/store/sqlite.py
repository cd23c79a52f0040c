"""The embedded event store: one SQLite file in WAL mode (``sqlite:///./broadcaster.db``).

What a caller must know:

* **Durability.** ``append`` returns once its transaction is committed. With the
  default ``synchronous="NORMAL"`` in WAL mode a committed transaction survives
  a crash of the process (even ``SIGKILL``): the WAL frames are in the operating
  system's page cache and are replayed when the file is next opened. It does
  *not* survive a power loss or kernel crash, which can drop the last
  transactions (never corrupt the file). ``synchronous="FULL"``
  (``sqlite:///path?synchronous=full``) fsyncs the WAL on every commit and
  survives power loss too, at the price of one fsync per ``append``/``mark``.
* **Threads.** sqlite3 is blocking. Reads and big writes run on one
  dedicated worker thread with its own connection; the event loop only
  awaits futures. Small write transactions (an ``append`` or group-committed
  ``mark`` of at most ``loop_write_max`` rows) run on the event loop's thread
  instead, on a second connection, when ``synchronous`` is ``NORMAL`` or
  ``OFF``: such a commit is a WAL append to the page cache (no fsync), cheaper
  than the hop to the worker, which under load must win the GIL back from a
  busy loop after every statement. A marked id weighs a quarter of an
  appended event; the limit bounds how long one commit holds the loop. That
  connection does not wait for a lock either: a write that finds the file
  locked is handed to the worker, which waits up to ``busy_timeout_ms``.
  ``loop_write_max=0`` keeps every write on the worker. (How these limits
  were chosen: ``loadtests/HISTORY.md``.)
* **Checkpoints.** No writing connection checkpoints by itself, or some
  writer's commit would copy the WAL back into the file while every other
  write waits. Every ``_CHECKPOINT_EVERY`` commits (big ones count more) a
  ``PASSIVE`` pass runs on a third thread with its own connection, alongside
  the writes; once the WAL holds ``wal_frames_max`` frames, a second, short
  pass runs on the worker with writes held, so that the WAL restarts from
  its beginning instead of growing.
* **Batching.** One transaction per ``append`` call (all or nothing); concurrent
  ``mark`` calls are coalesced into one transaction (group commit).
* **Sequence ids** come from the high-water mark, read inside the write
  transaction: the newest event row, or ``meta.last_sequence_id`` if that is
  higher. An append writes its event rows alone; a trigger brings the meta
  value up to the newest event before any delete takes an event above it.
  So ids are strictly increasing and never reused: not after a crash, not
  after old rows are pruned. A failed ``append`` consumes no id.
* **Errors.** ``sqlite3.OperationalError`` (disk full, file locked, unwritable,
  unopenable) is raised as :class:`~broadcaster.exceptions.StoreUnavailable`;
  other sqlite errors (corrupt file, schema newer than this code) as
  :class:`~broadcaster.exceptions.StoreError`. Nothing of a failed call is kept.
* **A file deleted or replaced under the store.** SQLite keeps writing to
  the file it opened even after it was unlinked (its directory deleted) or
  renamed over: commits succeed and vanish at the next start, and sequence
  ids begin again. So the store remembers the (device, inode) of the file it
  opened and compares it with what is at the path: right after a commit
  whenever the last comparison is :data:`FILE_CHECK_S` old or older (one
  ``os.stat`` per interval, not per event), on every failed write, and on
  :meth:`SQLiteStore.probe`. Once they differ, that commit's callers get
  :class:`~broadcaster.exceptions.StoreUnavailable` instead of their
  records, and so does every write after it, until the process restarts:
  the store never reopens a fresh file by itself. **Guarantee:** a write
  acknowledged more than :data:`FILE_CHECK_S` after the file was deleted or
  replaced was not acknowledged; writes committed within that interval
  after the change (before the next comparison) may have been, and are
  lost with the file. Reads keep answering from the file that was opened.
  At close, this file's ``-wal`` and ``-shm`` are unlinked if they are
  still at the path (compared by inode too): SQLite would otherwise replay
  this WAL into whatever file is at the path when it is next opened.
* **Health.** :meth:`~broadcaster.store.base.Store.health` goes down on any
  failed write (disk full, read-only, locked past ``busy_timeout_ms``) and
  up again on the next successful ``append``; for a deleted or replaced
  file it stays down. :meth:`~SQLiteStore.probe` only compares the file.
* **Runtime config.** ``save_runtime_config`` replaces the ``runtime_config``
  row and appends to ``audit`` in one write transaction: both or neither.
* **One writer process.** Several processes may open the file (ids stay unique
  because the high-water mark is read inside the write transaction), but SQLite
  serialises their writes; use PostgreSQL for several broadcaster processes.

The schema and its migrations: :mod:`broadcaster.store.sqlite_schema`.

``meta.receipt_count`` and ``delivered_counts`` are kept in the transactions
that change what they count, and ``meta.event_count`` counts the events up
to ``meta.last_sequence_id`` (every id above it is a stored event), so
:meth:`SQLiteStore.stats` reads a few rows instead of counting millions; the
outbox (small: what is still to deliver) is counted live. Why appends leave
meta alone: its page was the second page of every one-event commit, a
large part of a small append's cost.

**The tail.** An ``append`` writes the event rows only: the outbox rows of
events after ``meta.outbox_through`` are implied by their ``routed_to`` (all
queued) and written by the next ``mark`` or ``prune`` transaction, before it
changes any state, or by the ``append`` that takes the tail past
``_TAIL_MAX`` events. Reads add the tail's queued pairs. Why: a ``publish()``
waits for its commit, and each outbox row in it made a one-event append
markedly slower, so every path written to made ``publish()`` slower; the
rows now cost a transaction the producer does not wait for.

**Implied acknowledgements.** An ack deletes the pair's outbox row and writes
nothing (an ACKED row is kept only when it carries an error): a routed pair
written out (up to ``outbox_through``) with no row was acknowledged, and reads
say so. Other states keep their rows. Why: moving every acked row to
``deliveries`` was most of an ack's cost, and at full rate a visible share
of dual-write's CPU per event.

Why one module of this size: the store class is one unit — the loop's
connection, the worker thread, the checkpointer and the transactions they
share — and each SQL statement sits beside the code that relies on its
shape. The schema and migrations live apart (:mod:`.sqlite_schema`);
splitting the class by method group would scatter one transaction's
invariants over several files.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
import structlog

if TYPE_CHECKING:
    from asyncinotify import Inotify

from ..events import Category, EventDraft, EventRecord, record_from_wire, seal
from ..exceptions import StoreError, StoreUnavailable
from ..settings import SQLITE_SYNCHRONOUS_MODES
from . import sqlite_rollouts as rollout_sql
from ._batching import (
    GroupCommit,
    MarkRequest,
    assemble_scan,
    coalesce_marks,
    parse_routed,
    routed_pairs,
)
from .base import (
    SETTLED_STATES,
    AuditEntry,
    ConfigChange,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    InstanceInfo,
    LeaseState,
    PlainPage,
    Report,
    ReportOutcome,
    RolloutRow,
    RolloutWrite,
    ScanRow,
    Store,
    StoredEvent,
    StoreHealth,
    StoreStats,
    audit_entry,
    config_json_of,
    consumer_infos,
    report_infos,
    rollout_json_of,
)
from .sqlite_schema import MIGRATIONS, SCHEMA_VERSION, migrate

_inotify: ModuleType | None
try:  # Linux only (see wait_for_appends)
    import asyncinotify as _inotify
except ImportError:  # pragma: no cover - other platforms poll
    _inotify = None

__all__ = [
    "FILE_CHECK_S",
    "MIGRATIONS",
    "PRUNE_CHUNK",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_MODES",
    "SQLiteStore",
    "WATCH_INTERVAL_S",
    "migrate",
]

_T = TypeVar("_T")


class _NotNow:
    """What :meth:`SQLiteStore._loop_write` returns when it wrote nothing."""


_NOT_NOW: Final = _NotNow()

# Row shapes as sqlite3 returns them.
_EventRow = tuple[bytes, str, int]  # wire, routed_to, created_at_ms
_DeliveryRow = tuple[str, str, str | None]  # adapter, state, error
_ReceiptRow = tuple[int, str, str, int, str, int, str, str | None]

# Loggers stay lazy proxies (no .bind() here or in __init__): a bound logger
# captures the output stream of the moment it is built, which may be closed later.
_LOGGER_NAME: Final = "broadcaster.store.sqlite"

#: Accepted values of the ``synchronous`` pragma (see the module docstring).
SYNCHRONOUS_MODES: Final = SQLITE_SYNCHRONOUS_MODES

#: Default largest write (events appended, or ids marked) run on the loop thread.
LOOP_WRITE_MAX: Final = 1024

#: Ids marked that weigh as much as one event appended (see ``_flush_marks``).
_MARK_IDS_PER_ROW: Final = 4

#: Default wait of a ``mark`` after a quiet spell, for other marks to share its
#: transaction. At moderate rates an event otherwise costs three commits (the
#: append and one ack per adapter); sharing them lowers both the CPU per
#: event and publish() latency, at the price of acknowledgements (and so
#: ``flush()``) being recorded up to this much later.
MARK_LINGER_MS: Final = 5.0

#: Commits between two WAL checkpoints. A commit of the worker thread counts
#: once more for every ``_ROWS_PER_COMMIT`` rows it changed: its writes are
#: the big ones (receipt batches, appends too big for the loop), and rows
#: spread over an index dirty up to a page each.
_CHECKPOINT_EVERY: Final = 200
_ROWS_PER_COMMIT: Final = 25

#: Default WAL length (4 KiB frames) beyond which a checkpoint holds writes
#: for a moment so that the WAL restarts (8192 frames: a 32 MiB file).
WAL_FRAMES_MAX: Final = 8192

#: Most seconds between two comparisons of the database file's identity with
#: what is at its path, made right after a commit (see the module doc).
FILE_CHECK_S: Final = 1.0

#: Default seconds between two looks of :meth:`SQLiteStore.wait_for_appends`
#: for other processes' commits: the most it adds to their events' latency.
WATCH_INTERVAL_S: Final = 0.005

#: Writes whose success shows the store up again after a failure: an
#: ``append`` is what publishing needs; other writes (an ack deleting a row)
#: can succeed on a full disk where an append cannot.
_UP_ACTIONS: Final = frozenset({"append"})

#: Events deleted per ``prune`` transaction: the write lock is released between
#: chunks, so appends and marks interleave with a long prune.
PRUNE_CHUNK: Final = 5000


_INSERT_EVENT: Final = (
    "INSERT INTO events (sequence_id, event_id, category, event_type, created_at_ms,"
    " routed_to, wire, checksum, payload_keys) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Events appended since ``meta.outbox_through`` beyond which an append writes
#: their outbox rows itself (see the module doc): bounds what reads add up.
_TAIL_MAX: Final = 4096
# The high-water mark: the newest event, or meta's floor if pruning took it
# (schema 8: appends do not write meta; see _settle_high_mark).
_HIGH_MARK: Final = (
    "max((SELECT value FROM meta WHERE key = 'last_sequence_id'),"
    " coalesce((SELECT max(sequence_id) FROM events), 0))"
)
_HIGH_MARKS: Final = f"SELECT {_HIGH_MARK}, (SELECT value FROM meta WHERE key = 'outbox_through')"
_OUTBOX_THROUGH: Final = "SELECT value FROM meta WHERE key = 'outbox_through'"
# The tail's outbox rows: one statement per distinct routing (a tail has one or
# two), its adapters expanded once rather than json_each() on every event row
# (a visible share of the loop thread at full rate). updated_at_ms is
# when the event was appended. An append stores routed_to without repeats.
_TAIL_ROUTINGS: Final = "SELECT DISTINCT routed_to FROM events WHERE sequence_id > ?"
_WRITE_TAIL: Final = (
    "INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT a.value, e.sequence_id, 'queued', e.created_at_ms"
    " FROM json_each(?1) AS a CROSS JOIN events AS e"
    " WHERE e.sequence_id > ?2 AND e.routed_to = ?1"
)
_SET_OUTBOX_THROUGH: Final = "UPDATE meta SET value = ? WHERE key = 'outbox_through'"
# The tail up to a bound, for a transaction of plain acks (see _write_tail):
# events per routing, then one adapter's rows at a time, less the pairs the
# transaction acknowledges (an acknowledged pair has no row).
_TAIL_ROUTING_COUNTS: Final = (
    "SELECT routed_to, count(*) FROM events"
    " WHERE sequence_id > ? AND sequence_id <= ? GROUP BY routed_to"
)
_WRITE_TAIL_UNACKED: Final = (
    "INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT ?1, e.sequence_id, 'queued', e.created_at_ms FROM events AS e"
    " WHERE e.sequence_id > ?2 AND e.sequence_id <= ?3 AND e.routed_to = ?4"
    " AND e.sequence_id NOT IN (SELECT value FROM json_each(?5))"
)


def _mark_statements(source: str, target: str) -> tuple[str, str, str]:
    """A state change as SQL: update rows already in ``target``, then move the
    rows of ``source`` there. Ids travel as one JSON array (one bind, not one
    statement per id). COALESCE keeps the last error when a state has none."""
    where = "adapter = :adapter AND sequence_id IN (SELECT value FROM json_each(:ids))"
    return (
        f"UPDATE {target} SET state = :state, error = COALESCE(:error, error),"
        f" updated_at_ms = :now WHERE {where}",
        f"INSERT INTO {target} (sequence_id, adapter, state, error, updated_at_ms)"
        f" SELECT sequence_id, adapter, :state, COALESCE(:error, error), :now"
        f" FROM {source} WHERE {where}",
        f"DELETE FROM {source} WHERE {where}",
    )


_MARK_DELIVERED: Final = _mark_statements("outbox", "deliveries")
_MARK_UNDELIVERED: Final = _mark_statements("deliveries", "outbox")
# An ack (no error given) deletes the outbox rows: ACKED is implied (schema 7).
_ACK_PLAIN: Final = (
    "DELETE FROM outbox WHERE adapter = :adapter"
    " AND sequence_id IN (SELECT value FROM json_each(:ids)) AND error IS NULL"
)
# A row that carries an error keeps it, as an explicit ACKED row in deliveries.
_ACK_KEEPING_ERRORS: Final = (
    "INSERT INTO deliveries (sequence_id, adapter, state, error, updated_at_ms)"
    " SELECT sequence_id, adapter, :state, error, :now FROM outbox"
    " WHERE adapter = :adapter AND sequence_id IN (SELECT value FROM json_each(:ids))"
    " AND error IS NOT NULL"
)
# Pairs of these ids acknowledged implicitly (routed to the adapter, outbox rows
# written, no row anywhere) get an explicit row in {table} with the new state.
_IMPLIED_TO: Final = (
    "INSERT INTO {table} (sequence_id, adapter, state, error, updated_at_ms)"
    " SELECT e.sequence_id, :adapter, :state, :error, :now FROM events AS e"
    " WHERE e.sequence_id IN (SELECT value FROM json_each(:ids))"
    " AND e.sequence_id <= (SELECT value FROM meta WHERE key = 'outbox_through')"
    " AND EXISTS (SELECT 1 FROM json_each(e.routed_to) WHERE value = :adapter)"
    " AND NOT EXISTS (SELECT 1 FROM outbox AS o"
    "  WHERE o.adapter = :adapter AND o.sequence_id = e.sequence_id)"
    " AND NOT EXISTS (SELECT 1 FROM deliveries AS d"
    "  WHERE d.sequence_id = e.sequence_id AND d.adapter = :adapter)"
)
_IMPLIED_TO_DELIVERIES: Final = _IMPLIED_TO.format(table="deliveries")
_IMPLIED_TO_OUTBOX: Final = _IMPLIED_TO.format(table="outbox")
_UNDELIVERED: Final = (
    "SELECT e.wire FROM outbox AS o JOIN events AS e ON e.sequence_id = o.sequence_id"
    " WHERE o.adapter = ? AND o.sequence_id > ? ORDER BY o.sequence_id LIMIT ?"
)
# The tail's events routed to an adapter (all come after every outbox row).
_UNDELIVERED_TAIL: Final = (
    "SELECT e.wire FROM events AS e WHERE e.sequence_id > ?"
    " AND EXISTS (SELECT 1 FROM json_each(e.routed_to) WHERE value = ?)"
    " ORDER BY e.sequence_id LIMIT ?"
)
# Per adapter: the tail's queued events and the oldest one's append time.
_TAIL_COUNTS: Final = (
    "SELECT a.value, count(DISTINCT e.sequence_id), min(e.created_at_ms)"
    " FROM events AS e, json_each(e.routed_to) AS a WHERE e.sequence_id > ? GROUP BY a.value"
)
_STATES_OF: Final = (
    "SELECT adapter, state, error FROM {table} WHERE sequence_id = ?1"
    " AND adapter IN (SELECT value FROM json_each(?2))"
)
# What a group-committed mark is about to change in deliveries, for the counters.
_DELIVERED_BEFORE: Final = (
    "SELECT state, count(*) FROM deliveries WHERE adapter = :adapter"
    " AND sequence_id IN (SELECT value FROM json_each(:ids)) GROUP BY state"
)
_ADD_DELIVERED_COUNT: Final = (
    "INSERT INTO delivered_counts (adapter, state, n) VALUES (?, ?, ?)"
    " ON CONFLICT (adapter, state) DO UPDATE SET n = n + excluded.n"
)
_ADD_META: Final = "UPDATE meta SET value = value + ? WHERE key = ?"
# read_events(): a range read of the events key. The filters are parameters
# that may be NULL, so one statement (and one cached plan) serves every call.
_READ_EVENTS: Final = (
    "SELECT wire FROM events WHERE sequence_id > ?1"
    " AND (?2 IS NULL OR category IN (SELECT value FROM json_each(?2)))"
    " AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(routed_to) WHERE value = ?3))"
    " ORDER BY sequence_id LIMIT ?4"
)
_FIRST_SEQUENCE_ID: Final = "SELECT coalesce(min(sequence_id), 0) FROM events"
# scan(): one page is four range reads. CASE: the wire only for rows written
# before migration 3 filled checksum and payload_keys.
_SCAN_EVENTS: Final = (
    "SELECT sequence_id, category, event_type, created_at_ms, checksum, payload_keys,"
    " routed_to, CASE WHEN checksum IS NULL OR payload_keys IS NULL THEN wire END"
    " FROM events WHERE sequence_id > ? ORDER BY sequence_id LIMIT ?"
)
_SCAN_DELIVERED: Final = (
    "SELECT sequence_id, adapter, state FROM deliveries WHERE sequence_id BETWEEN ? AND ?"
)
# The outbox key is (adapter, sequence_id): name the adapters, so each is a range read.
_SCAN_OUTBOX: Final = (
    "SELECT sequence_id, adapter, state FROM outbox"
    " WHERE adapter IN (SELECT value FROM json_each(?)) AND sequence_id BETWEEN ? AND ?"
)
_SCAN_RECEIPTS: Final = (
    "SELECT sequence_id, adapter, event_type, received_at_ms, checksum, checksum_ok,"
    " consumer, payload_keys, deliveries FROM receipts WHERE sequence_id BETWEEN ? AND ?"
    " ORDER BY sequence_id, id"
)
# plain_page(): the page's bounds, then three set-based checks, cheapest first.
# None of them sorts or groups the receipts: a 1M-event run reads each row once.
_PAGE_LAST: Final = (
    "SELECT max(sequence_id) FROM"
    " (SELECT sequence_id FROM events WHERE sequence_id > ? ORDER BY sequence_id LIMIT ?)"
)
# The counters first: while nothing was ever repaired, no page needs the range read.
_ANY_REPAIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM delivered_counts WHERE state = 'repaired' AND n > 0)"
)
_PAGE_REPAIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE sequence_id BETWEEN ? AND ?"
    " AND state = 'repaired')"
)
# Per (category, routing): events, and whether any is too young to judge or
# lacks the columns the receipts are compared with (rows of an old version).
_PAGE_ROUTED: Final = (
    "SELECT category, routed_to, count(*), max(created_at_ms),"
    " count(*) - min(count(checksum), count(payload_keys))"
    " FROM events WHERE sequence_id BETWEEN ? AND ? GROUP BY category, routed_to"
)
# Receipts of the page's events: how many, how many plainly match their event
# and name an adapter it was routed to, how many are not the first of their
# pair (another consumer's), and deliveries beyond the first (duplicates). The
# routing test is a CASE over the page's few distinct routings, built per page
# (see _routed_test): far cheaper than json_each() on every receipt.
_PAGE_RECEIPTS: Final = (
    "SELECT count(*), coalesce(sum(r.event_type = e.event_type AND r.checksum_ok"
    " AND r.checksum = e.checksum"
    " AND (r.payload_keys IS NULL OR r.payload_keys = e.payload_keys)"
    " AND r.received_at_ms - e.created_at_ms <= ? AND {routed}), 0),"
    " coalesce(sum(r.dup), 0), coalesce(sum(r.deliveries - 1), 0)"
    " FROM receipts AS r JOIN events AS e ON e.sequence_id = r.sequence_id"
    " WHERE r.sequence_id BETWEEN ? AND ?"
)


def _consumer_row(c: ConsumerInfo) -> tuple[str, str, int, int, int, int, int]:
    return (
        c.adapter,
        c.consumer,
        c.from_sequence_id,
        c.through_sequence_id,
        c.first_seen_ms,
        c.last_seen_ms,
        c.receipts,
    )


def _consumer_info(row: Sequence[Any]) -> ConsumerInfo:
    adapter, consumer, start, through, first, last, n = row
    return ConsumerInfo(consumer, adapter, start, through, first, last, n)


def _ids_where(wanted: set[int]) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause (and its parameters) on ``sequence_id`` that takes at
    least the ids in ``wanted`` (callers skip the others). Receipts come in
    runs of nearby ids: a range read beats a lookup per id unless the range
    is mostly ids nobody asked for."""
    low, high = min(wanted), max(wanted)
    if high - low < 4 * len(wanted):
        return "sequence_id BETWEEN ? AND ?", (low, high)
    return _IN_IDS, (orjson.dumps(sorted(wanted)).decode(),)


def _routed_test(routings: dict[str, tuple[str, ...]]) -> tuple[str, list[str]]:
    """SQL (and its parameters) true iff receipt ``r``'s adapter is one its
    event ``e`` was routed to, for events whose ``routed_to`` is among ``routings``."""
    parts: list[str] = []
    params: list[str] = []
    for routed_json, adapters in routings.items():
        marks = ", ".join("?" * len(adapters))
        parts.append(f"WHEN ? THEN r.adapter IN ({marks})" if adapters else "WHEN ? THEN 0")
        params += [routed_json, *adapters]
    return f"CASE e.routed_to {' '.join(parts)} ELSE 0 END", params


_INSERT_RECEIPT: Final = (
    "INSERT INTO receipts (sequence_id, adapter, event_type, received_at_ms,"
    " checksum, checksum_ok, consumer, payload_keys, deliveries, dup)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
    " EXISTS (SELECT 1 FROM receipts WHERE sequence_id = ?1 AND adapter = ?2))"
    " ON CONFLICT (sequence_id, adapter, consumer) DO NOTHING"
)
_RAISE_DELIVERIES: Final = (
    "UPDATE receipts SET deliveries = ?4"
    " WHERE sequence_id = ?1 AND adapter = ?2 AND consumer = ?3 AND deliveries < ?4"
)
_MERGE_CONSUMER: Final = (
    "INSERT INTO consumers (adapter, consumer, from_sequence_id, through_sequence_id,"
    " first_seen_ms, last_seen_ms, receipts) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (adapter, consumer) DO UPDATE SET"
    " from_sequence_id = min(from_sequence_id, excluded.from_sequence_id),"
    " through_sequence_id = max(through_sequence_id, excluded.through_sequence_id),"
    " first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),"
    " last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),"
    " receipts = receipts + excluded.receipts"
)
_READ_ROUTED: Final = (
    "SELECT wire, routed_to, payload_keys FROM events"
    " WHERE sequence_id > ? AND sequence_id <= ? ORDER BY sequence_id LIMIT ?"
)
_CONSUMERS: Final = (
    "SELECT adapter, consumer, from_sequence_id, through_sequence_id, first_seen_ms,"
    " last_seen_ms, receipts FROM consumers"
)
_PRUNE_CANDIDATES: Final = (
    "SELECT sequence_id, routed_to FROM events WHERE sequence_id > ? AND sequence_id <= ?"
    " AND created_at_ms < ? ORDER BY sequence_id LIMIT ?"
)
_IN_IDS: Final = "sequence_id IN (SELECT value FROM json_each(?))"
_RAISE_PRUNED: Final = (
    "INSERT INTO watermarks (name, value) VALUES ('pruned_through', ?)"
    " ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)"
)


def _add_counts(conn: sqlite3.Connection, counts: dict[tuple[str, str], int]) -> None:
    """Apply per (adapter, state) changes to ``delivered_counts``, in the caller's
    transaction (so the counters change iff the rows they count do)."""
    rows = [(adapter, state, n) for (adapter, state), n in sorted(counts.items()) if n]
    if rows:
        conn.executemany(_ADD_DELIVERED_COUNT, rows)


def _settle_high_mark(conn: sqlite3.Connection) -> None:
    """In a write transaction: bring meta's ``last_sequence_id`` up to the
    high-water mark and ``event_count`` with it, before events are deleted.

    An append writes its event rows alone (without the two meta updates a
    one-event commit writes one page less to the WAL: see the module doc), so meta
    holds a floor: ``event_count`` counts the events up to ``last_sequence_id``,
    and every id above it is a stored event (ids are handed out in order and
    only pruning deletes). A trigger (schema 8) settles the floor before a
    delete takes an event above it, so deleting the newest events never
    lowers the mark (ids are never reused) and the count stays exact; opening
    the store settles it too."""
    floor, high = conn.execute(
        f"SELECT (SELECT value FROM meta WHERE key = 'last_sequence_id'), {_HIGH_MARK}"
    ).fetchone()
    if high > floor:
        conn.execute(_ADD_META, (high - floor, "event_count"))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_sequence_id'", (high,))


def _write_tail(
    conn: sqlite3.Connection, marks: Sequence[MarkRequest] = ()
) -> tuple[dict[str, int], int]:
    """In a write transaction: write the outbox rows of the tail (see the module
    doc), so that every routed pair has its row before a state changes.

    ``marks`` (coalesced) are the transaction's state changes. When all of them
    are plain acks (ACKED, no error: one request per adapter), only the tail
    up to the highest id they name is written out, and without the pairs they
    acknowledge: such a pair's row would be inserted and deleted in the same
    transaction, and no row is what ACKED is. Why: under steady traffic acks
    come in order, so the tail a transaction writes is mostly the pairs it
    acknowledges, and writing and deleting their rows was most of an ack's
    cost.

    Returns, per adapter, how many of its pairs were acknowledged so (the
    ack counts them as moved out of the outbox), and the highest id whose
    pairs of the acknowledging adapters may have outbox rows now (an ack of
    higher ids only has no rows to delete).
    """
    last, through = conn.execute(_HIGH_MARKS).fetchone()
    if last <= through:
        return {}, through
    acked = {m.adapter: m.sequence_ids for m in marks}
    if (
        not marks
        or len(acked) < len(marks)
        or any(m.state is not DeliveryState.ACKED or m.error is not None for m in marks)
    ):
        _write_tail_after(conn, through, last)
        return {}, last
    upto = min(last, max(max(ids) for ids in acked.values()))
    if upto <= through:
        return {}, through  # no ack reaches into the tail: it can wait
    skipped: dict[str, int] = {}
    routed_cache: dict[str, tuple[str, ...]] = {}
    for routed_json, events in conn.execute(_TAIL_ROUTING_COUNTS, (through, upto)).fetchall():
        for adapter in dict.fromkeys(parse_routed(routed_json, routed_cache)):
            ids = acked.get(adapter)
            written = conn.execute(
                _WRITE_TAIL_UNACKED,
                (adapter, through, upto, routed_json, orjson.dumps(ids) if ids else b"[]"),
            ).rowcount
            if ids:
                skipped[adapter] = skipped.get(adapter, 0) + events - written
    conn.execute(_SET_OUTBOX_THROUGH, (upto,))
    return skipped, through


def _write_tail_after(conn: sqlite3.Connection, through: int, last: int) -> None:
    for (routed_json,) in conn.execute(_TAIL_ROUTINGS, (through,)).fetchall():
        conn.execute(_WRITE_TAIL, (routed_json, through))
    conn.execute(_SET_OUTBOX_THROUGH, (last,))


def _implied_pairs(
    events: Sequence[Sequence[Any]],
    through: int,
    rows: Iterable[Sequence[Any]],
    routed_cache: dict[str, tuple[str, ...]],
) -> list[tuple[int, str, str]]:
    """``(sequence_id, adapter, state)`` for the routed pairs of ``events``
    (rows of ``(sequence_id, routed_to)``) that have no row among ``rows``
    (``(sequence_id, adapter, ...)`` of outbox and deliveries): queued in the
    tail (after ``through``), acknowledged before it (see the module doc)."""
    explicit = {(row[0], row[1]) for row in rows}
    queued, acked = DeliveryState.QUEUED.value, DeliveryState.ACKED.value
    return [
        (seq, adapter, queued if seq > through else acked)
        for seq, routed_json in events
        for adapter in dict.fromkeys(parse_routed(routed_json, routed_cache))
        if (seq, adapter) not in explicit
    ]


def _parse_synchronous(value: str) -> str:
    mode = value.upper()
    if mode not in SYNCHRONOUS_MODES:
        known = ", ".join(m.lower() for m in SYNCHRONOUS_MODES)
        raise ValueError(f"synchronous={value!r}: expected one of {known}")
    return mode


class SQLiteStore(Store):
    """Event store in one SQLite file (WAL mode), for a single broadcaster process.

    ``path``: the database file (created with its schema if missing; its
    directory must exist). ``synchronous``: ``"NORMAL"`` (default: survives a
    process crash) or ``"FULL"`` (survives power loss); see the module docstring.
    ``busy_timeout_ms``: how long a write waits for a lock held by another
    process before raising :class:`StoreUnavailable`. ``clock``: wall time in
    seconds, for ``created_at_ms``/``updated_at_ms``. ``loop_write_max``: the
    largest write run on the event loop's thread (0: none; see the module doc).
    ``mark_linger_ms``: how long a ``mark`` after a quiet spell waits for others
    to share its transaction (group commit; 0: none). ``wal_frames_max``: the
    WAL length (4 KiB pages) at which a checkpoint briefly holds writes so
    that the WAL file is reused from its start (bounds the file's size).
    ``monotonic``: the clock of the file identity check, every ``file_check_s``
    seconds at most (see the module doc).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 5000,
        loop_write_max: int = LOOP_WRITE_MAX,
        mark_linger_ms: float = MARK_LINGER_MS,
        wal_frames_max: int = WAL_FRAMES_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        file_check_s: float = FILE_CHECK_S,
    ) -> None:
        if wal_frames_max < 1:
            raise ValueError(f"wal_frames_max must be >= 1, not {wal_frames_max}")
        self.path = Path(path)
        self._monotonic = monotonic
        self._file_check_s = file_check_s
        # (st_dev, st_ino) of the database, -wal and -shm files opened (None:
        # not there at open), and when the database's was last compared.
        self._file_ids: dict[str, tuple[int, int] | None] = {}
        self._file_checked = 0.0
        # Why writes are refused for good (the file was deleted or replaced).
        self._lost: str | None = None
        self._wal_frames_max = wal_frames_max
        self.synchronous = _parse_synchronous(synchronous)
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        # A commit that fsyncs (FULL, EXTRA) would hold the loop for the fsync.
        self._loop_write_max = loop_write_max if self.synchronous in ("OFF", "NORMAL") else 0
        self._executor: ThreadPoolExecutor | None = None
        # Touched only on the worker thread.
        self._conn: sqlite3.Connection | None = None
        # Touched only on the event loop's thread (small writes; see the module doc).
        self._loop_conn: sqlite3.Connection | None = None
        # Commits (weighted, see _CHECKPOINT_EVERY) since the last checkpoint,
        # and rows changed by worker commits not yet counted (worker thread
        # adds, loop thread takes: a heuristic, a lost update costs nothing).
        self._commits = 0
        self._worker_rows = 0
        # The thread and connection of ordinary checkpoint passes.
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_conn: sqlite3.Connection | None = None
        # wait_for_appends()'s connection and the data_version it last saw
        # (loop thread only).
        self._watch_conn: sqlite3.Connection | None = None
        self._watch_version: int | None = None
        self._watch_returned = float("-inf")
        self._inotify: Inotify | None = None
        #: How often :meth:`wait_for_appends` looks for other writers' commits.
        self.watch_interval_s = WATCH_INTERVAL_S
        #: Checkpoints that had to hold writes to complete (see ``_run_checkpoint``).
        self.checkpoints_quiesced = 0
        #: Write transactions committed on the event loop's thread.
        self.loop_commits = 0
        self._checkpoint: asyncio.Future[None] | None = None
        # Set while a checkpoint pass runs with writes held (see _run_checkpoint).
        self._held: asyncio.Event | None = None
        self._marks = GroupCommit(self._flush_marks, linger_s=mark_linger_ms / 1000)
        self._log = structlog.get_logger(_LOGGER_NAME, store="sqlite", path=str(self.path))

    @property
    def wal_frames_max(self) -> int:
        """The WAL length (4 KiB pages) at which a checkpoint holds writes."""
        return self._wal_frames_max

    # -- plumbing ---------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(*args)`` on the worker thread (the only thread touching sqlite)."""
        if self._executor is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _translate(self, exc: sqlite3.Error, action: str) -> StoreError:
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        reason = f"sqlite {self.path}: {action}: {exc} ({name})"
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailable(reason)
        return StoreError(reason)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        return self._conn

    def _write(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` in one write transaction on the worker thread: commit, or
        roll back and raise (translated) — never leave a half-written batch."""
        conn = self._connection()
        self._refuse_if_lost()
        try:
            # IMMEDIATE takes the write lock up front, so a lock held by another
            # process fails here (after busy_timeout) rather than mid-batch.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc, action) from exc
        before = conn.total_changes
        result = self._commit(conn, action, body)
        self._worker_rows += conn.total_changes - before
        return result

    async def _worker_write(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """:meth:`_write` on the worker thread, then count it towards the next
        checkpoint."""
        result: _T = await self._call(self._write, action, body)
        rows, self._worker_rows = self._worker_rows, 0
        self._after_commit(1 + rows // _ROWS_PER_COMMIT)
        return result

    def _commit(
        self, conn: sqlite3.Connection, action: str, body: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        """After ``BEGIN``: run ``body`` and commit, or roll back and raise
        (translated). A commit into a file no longer at the path raises
        :class:`StoreUnavailable` instead of returning (see the module doc)."""
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._write_error(exc, action) from exc
        except BaseException:
            self._rollback(conn)
            raise
        if self._monotonic() - self._file_checked >= self._file_check_s:
            self._check_file()
        if action in _UP_ACTIONS:
            self._write_succeeded()
        return result

    # -- the file under the store ---------------------------------------------

    def _file_id(self, suffix: str = "") -> tuple[int, int] | None:
        """(st_dev, st_ino) of the database file (or its ``suffix`` file) at the
        path now; None if there is none."""
        try:
            st = os.stat(f"{self.path}{suffix}")
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _remember_files(self) -> None:
        self._file_ids = {suffix: self._file_id(suffix) for suffix in ("", "-wal", "-shm")}
        self._file_checked = self._monotonic()

    def _check_file(self) -> None:
        """Compare the opened file with what is at the path now; if it was
        deleted or replaced, refuse writes for good and raise."""
        self._file_checked = self._monotonic()
        if self._lost is None and "" in self._file_ids:
            try:
                now = self._file_id()
            except OSError as exc:  # e.g. a directory made unreadable
                now = None
                self._log.warning("store file check failed", error=str(exc))
            if now != self._file_ids.get(""):
                what = "deleted" if now is None else "replaced"
                self._lost = (
                    f"sqlite {self.path}: the database file was {what} while open;"
                    " writes are refused until the service restarts"
                )
                self._write_failed(self._lost, permanent=True)
                self._log.error("store file lost", reason=what)
        self._refuse_if_lost()

    def _refuse_if_lost(self) -> None:
        if self._lost is not None:
            raise StoreUnavailable(self._lost)

    def _write_error(self, exc: sqlite3.Error, action: str) -> StoreError:
        """A write failed: the store is down (for good if its file is gone:
        checked now, whatever the interval). Returns the error to raise."""
        error = self._translate(exc, action)
        try:
            self._check_file()
        except StoreUnavailable as lost:
            return lost
        self._write_failed(str(error))
        return error

    def _unlink_own_files(self) -> None:
        """After the file was lost: remove this store's -wal and -shm if they
        are still at the path, so that they are not replayed into the file
        that is there now (or created there) when it is next opened."""
        for suffix in ("-wal", "-shm"):
            mine = self._file_ids.get(suffix)
            if mine is not None and self._file_id(suffix) == mine:
                try:
                    os.unlink(f"{self.path}{suffix}")
                except OSError as exc:
                    self._log.warning("stale file not removed", suffix=suffix, error=str(exc))

    async def _small_write(
        self, action: str, rows: int, body: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        """Run write transaction ``body`` on the loop's connection when
        :meth:`_loop_write` can; otherwise on the worker thread, as :meth:`_write`."""
        while (held := self._held) is not None and rows <= self._loop_write_max:
            # Wait here for the checkpoint's short pass, then write on the loop:
            # through the worker each statement would wait for the GIL, which
            # costs a held write several times as much.
            await held.wait()
        result = self._loop_write(action, rows, body)
        if isinstance(result, _NotNow):
            return await self._worker_write(action, body)
        return result

    def _loop_write(
        self, action: str, rows: int, body: Callable[[sqlite3.Connection], _T]
    ) -> _T | _NotNow:
        """Run write transaction ``body`` on the loop's connection if it is
        small (``rows`` at most ``loop_write_max``) and the write lock is free
        right now; else write nothing and return ``_NOT_NOW``."""
        self._refuse_if_lost()
        conn = self._loop_conn
        if conn is None or rows > self._loop_write_max or self._held is not None:
            return _NOT_NOW
        try:
            # busy_timeout 0 on this connection: a lock held elsewhere fails
            # here at once, and the worker (which may wait) takes over.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # Primary code: extended ones (BUSY_RECOVERY, ...) carry it in the low byte.
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise self._write_error(exc, action) from exc
            return _NOT_NOW
        result = self._commit(conn, action, body)
        self.loop_commits += 1
        self._after_commit(1)
        return result

    def _after_commit(self, weight: int) -> None:
        # No writing connection checkpoints by itself: SQLite's autocheckpoint
        # would copy pages back inside some unlucky writer's commit, holding
        # every write behind it. Every so often a pass runs on a thread of its
        # own instead, alongside the writes.
        self._commits += weight
        if self._commits >= _CHECKPOINT_EVERY and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._commits = 0
            self._checkpoint = asyncio.ensure_future(self._run_checkpoint())
            self._checkpoint.add_done_callback(self._checkpoint_done)

    async def _run_checkpoint(self) -> None:
        # A pass with writes going on copies nearly every frame back to the
        # database. The WAL file is reused from its start only by a write that
        # begins after a pass copied everything; loop writes keep beginning
        # during passes (a hop to the worker and back takes a few ms here), so
        # the WAL grows until a pass runs with writes held (the next write then
        # restarts it). Held writes wait a few ms: done on every checkpoint,
        # that dominated publish()'s tail latency, so it is done only once the
        # WAL holds ``wal_frames_max`` frames.
        checkpointer = self._checkpointer
        if checkpointer is None:
            return
        frames = await asyncio.get_running_loop().run_in_executor(
            checkpointer, self._checkpoint_pass
        )
        if frames < self._wal_frames_max:
            return
        # On the worker, so that its writes wait too.
        held = self._held = asyncio.Event()
        self.checkpoints_quiesced += 1
        try:
            await self._call(self._checkpoint_sync)
        finally:
            self._held = None
            held.set()

    def _checkpoint_sync(self, conn: sqlite3.Connection | None = None) -> int:
        """One PASSIVE pass on ``conn`` (default: the worker's); returns the
        frames in the WAL (since its last restart)."""
        conn = conn or self._connection()
        # fetchall: a statement left unfinished would keep a read lock on the
        # WAL, and the WAL restarts only when no reader is left in it.
        ((_, frames, _),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return int(frames)

    def _checkpoint_pass(self) -> int:
        """:meth:`_checkpoint_sync` on the checkpointer's thread and connection
        (opened at the first pass, after the worker's)."""
        if self._checkpoint_conn is None:
            self._checkpoint_conn = self._connect(busy_timeout_ms=0)
        return self._checkpoint_sync(self._checkpoint_conn)

    def _close_checkpointer_sync(self) -> None:
        conn, self._checkpoint_conn = self._checkpoint_conn, None
        if conn is not None:
            conn.close()

    def _checkpoint_done(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._log.warning("wal checkpoint failed", error=str(future.exception()))

    def _read(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._connection()
        try:
            # A read transaction gives multi-statement reads (get) one snapshot.
            conn.execute("BEGIN")
            try:
                return body(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            raise self._translate(exc, action) from exc

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Open (creating if needed) and migrate the database. Idempotent.

        Raises :class:`StoreUnavailable` if the file cannot be opened or written,
        :class:`StoreError` if it is not a database or its schema is newer.
        """
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            version = await self._call(self._open_sync)
            self._checkpointer = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sqlite-checkpoint"
            )
            if self._loop_write_max > 0:
                # After the worker created and migrated the schema.
                self._loop_conn = self._connect(busy_timeout_ms=0)
            # The files this store writes to from now on (WAL mode: -wal and
            # -shm exist once the schema transaction committed).
            self._remember_files()
        except BaseException:
            if self._conn is not None:
                await self._call(self._close_sync)
            if self._checkpointer is not None:
                self._checkpointer.shutdown(wait=False)
                self._checkpointer = None
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)
            raise
        self._log.info(
            "store opened",
            schema_version=SCHEMA_VERSION,
            migrated_from=version,
            synchronous=self.synchronous,
        )

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        """A configured connection, for the calling thread only. It never
        checkpoints by itself (see :meth:`_after_commit`)."""
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is
            # exactly one transaction.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        except sqlite3.Error as exc:
            raise self._translate(exc, "open") from exc
        with self._closed_on_error(conn):
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite {self.path}: WAL mode refused (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            conn.execute("PRAGMA temp_store = MEMORY")
            conn.execute("PRAGMA cache_size = -32768")  # 32 MiB page cache
            conn.execute("PRAGMA wal_autocheckpoint = 0")
        return conn

    @contextmanager
    def _closed_on_error(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Opening ``conn`` failed part way: close it, and raise sqlite errors translated."""
        try:
            yield
        except sqlite3.Error as exc:
            conn.close()
            raise self._translate(exc, "open") from exc
        except BaseException:
            conn.close()
            raise

    def _open_sync(self) -> int:
        conn = self._connect(busy_timeout_ms=self._busy_timeout_ms)
        with self._closed_on_error(conn):
            version = migrate(conn)
            conn.execute("BEGIN IMMEDIATE")  # autocommit mode: one transaction
            try:
                _settle_high_mark(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        self._conn = conn
        return version

    async def close(self) -> None:
        """Flush queued marks, close the connection and stop the worker. Idempotent."""
        if self._executor is None:
            return
        try:
            await self._marks.wait_idle()
            if self._checkpoint is not None:
                await asyncio.gather(self._checkpoint, return_exceptions=True)
            checkpointer, self._checkpointer = self._checkpointer, None
            if checkpointer is not None:
                await asyncio.get_running_loop().run_in_executor(
                    checkpointer, self._close_checkpointer_sync
                )
                checkpointer.shutdown(wait=False)
        finally:
            # Checked once more: a file replaced since the last write must not
            # get this store's WAL replayed into it when it is next opened.
            try:
                self._check_file()
            except StoreUnavailable:
                self._unlink_own_files()
            loop_conn, self._loop_conn = self._loop_conn, None
            if loop_conn is not None:
                loop_conn.close()
            watch_conn, self._watch_conn = self._watch_conn, None
            if watch_conn is not None:
                watch_conn.close()
            watcher, self._inotify = self._inotify, None
            if watcher is not None:
                watcher.close()
            try:
                await self._call(self._close_sync)
            finally:
                executor, self._executor = self._executor, None
                executor.shutdown(wait=False)
            self._log.info("store closed")

    async def probe(self) -> StoreHealth:
        """Compare the file with what is at the path (one ``os.stat``) and
        return :meth:`health`. Writes nothing: SQLite has no connection to
        re-establish, and a write that fits where an append does not (a
        database at ``max_page_count``) would show up a store that cannot
        take events. A store down for a failed write is up again at the next
        successful ``append``."""
        if self._executor is not None and self._lost is None:
            try:
                self._check_file()
            except StoreUnavailable:
                pass
        return self.health()

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing the last connection checkpoints the WAL into the main file.
            conn.close()

    # -- writes -----------------------------------------------------------

    async def append(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord]:
        """Seal and store ``items`` in one transaction; see :meth:`Store.append`.

        Raises :class:`StoreUnavailable` (disk full, locked) with nothing stored
        and no sequence id consumed.
        """
        if not items:
            return []
        items = list(items)
        return await self._small_write("append", len(items), self._append_body(items))

    def append_now(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord] | None:
        """:meth:`append` on the loop's connection, if it can take it now (see
        :meth:`Store.append_now` and the module doc); None otherwise."""
        if not items:
            return []
        items = list(items)
        result = self._loop_write("append", len(items), self._append_body(items))
        return None if isinstance(result, _NotNow) else result

    def _append_body(
        self, items: list[tuple[EventDraft, tuple[str, ...]]]
    ) -> Callable[[sqlite3.Connection], list[EventRecord]]:
        if self._executor is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        now_ms = int(self._clock() * 1000)

        def body(conn: sqlite3.Connection) -> list[EventRecord]:
            # Read the high-water mark inside the write transaction: it is the
            # single source of ids, and holding the write lock makes it ours.
            last, through = conn.execute(_HIGH_MARKS).fetchone()
            records: list[EventRecord] = []
            rows: list[tuple[int, str, str, str, int, str, bytes, str, str]] = []
            # A batch has one or two distinct routings: encode each once.
            routed_json: dict[tuple[str, ...], str] = {}
            seq = int(last)
            for draft, routed in items:
                seq += 1
                record = seal(draft, seq)
                records.append(record)
                routing = routed_json.get(routed)
                if routing is None:
                    # Without repeats: each (event, adapter) is one pair.
                    routing = orjson.dumps(tuple(dict.fromkeys(routed))).decode()
                    routed_json[routed] = routing
                rows.append(
                    (
                        seq,
                        record.event_id,
                        record.category.value,
                        record.event_type,
                        now_ms,
                        routing,
                        record.wire,
                        record.checksum,
                        record.payload_keys,
                    )
                )
            conn.executemany(_INSERT_EVENT, rows)
            if seq - through > _TAIL_MAX:
                # Acks lag far behind (or none come): write the tail's outbox
                # rows here, so that reads never add up a long tail.
                _write_tail_after(conn, through, seq)
            # The ids are consumed iff the event rows exist: the high-water mark
            # is the newest row (meta is a floor; see _settle_high_mark).
            return records

        return body

    async def mark(
        self,
        adapter: str,
        sequence_ids: Sequence[int],
        state: DeliveryState,
        error: str | None = None,
    ) -> None:
        """Set ``adapter``'s state on ``sequence_ids`` (unknown ids/adapters are
        ignored). ``error=None`` keeps the last recorded error. Concurrent calls
        share one transaction; returns once it committed."""
        if not sequence_ids:
            return
        if self._executor is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        await self._marks.submit(MarkRequest(adapter, sequence_ids, DeliveryState(state), error))

    async def _flush_marks(self, requests: list[MarkRequest]) -> None:
        now_ms = int(self._clock() * 1000)

        def body(conn: sqlite3.Connection) -> None:
            marks = coalesce_marks(requests)
            unwritten, rows_through = _write_tail(conn, marks)
            counts: dict[tuple[str, str], int] = {}
            for request in marks:
                adapter, state = request.adapter, request.state.value
                params = {
                    "state": state,
                    "error": request.error,
                    "now": now_ms,
                    "adapter": adapter,
                    "ids": orjson.dumps(request.sequence_ids),
                }
                implied = 0
                if request.state in SETTLED_STATES:
                    update, move, delete = _MARK_DELIVERED
                    distinct = len(set(request.sequence_ids))
                    if request.state is DeliveryState.ACKED and request.error is None:
                        # The usual ack: the outbox rows go, nothing is written
                        # (cheaper than moving them to deliveries). Rows with
                        # no error first, in one statement; only if ids are left
                        # look for rows whose error must be kept (a separate
                        # pass over every id cost the loop at full rate).
                        # Pairs of the tail acknowledged by not writing them,
                        # then the rows of earlier ones (if any can have one).
                        moved = unwritten.get(adapter, 0)
                        if min(request.sequence_ids) <= rows_through:
                            moved += conn.execute(_ACK_PLAIN, params).rowcount
                        if moved < distinct:
                            conn.execute(_ACK_KEEPING_ERRORS, params)
                            moved += conn.execute(delete, params).rowcount
                    else:
                        conn.execute(move, params)
                        moved = conn.execute(delete, params).rowcount
                    counts[adapter, state] = counts.get((adapter, state), 0) + moved
                    # Every id came out of the outbox: none had another row, so
                    # skip the lookups per id. Otherwise (a re-ack, a repair,
                    # unknown ids) rows already delivered change state (the ones
                    # just moved count as state -> state), and implicitly
                    # acknowledged pairs get a row unless the state is ACKED.
                    if moved < distinct:
                        for old, n in conn.execute(_DELIVERED_BEFORE, params).fetchall():
                            counts[adapter, old] = counts.get((adapter, old), 0) - n
                            counts[adapter, state] = counts.get((adapter, state), 0) + n
                        conn.execute(update, params)
                        if request.state is not DeliveryState.ACKED or request.error:
                            implied = conn.execute(_IMPLIED_TO_DELIVERIES, params).rowcount
                else:
                    # Rows of these ids in deliveries go back to the outbox, and
                    # implicitly acknowledged pairs get an outbox row.
                    for old, n in conn.execute(_DELIVERED_BEFORE, params).fetchall():
                        counts[adapter, old] = counts.get((adapter, old), 0) - n
                    implied = conn.execute(_IMPLIED_TO_OUTBOX, params).rowcount
                    for statement in _MARK_UNDELIVERED:
                        conn.execute(statement, params)
                if implied:
                    acked = (adapter, DeliveryState.ACKED.value)
                    counts[acked] = counts.get(acked, 0) - implied
                    if request.state in SETTLED_STATES:
                        counts[adapter, state] = counts.get((adapter, state), 0) + implied
            _add_counts(conn, counts)

        # An id marked costs about a quarter of an event appended (set-based
        # statements, no sealing): weigh it so, against loop_write_max.
        ids = sum(len(r.sequence_ids) for r in requests)
        await self._small_write("mark", -(-ids // _MARK_IDS_PER_ROW), body)

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        """Store consumer receipts in one transaction, idempotently per
        (event, adapter, consumer); see :meth:`Store.record_receipts`."""
        if not receipts:
            return
        rows = [
            (
                r.sequence_id,
                r.adapter,
                r.event_type,
                r.received_at_ms,
                r.checksum,
                r.checksum_ok,
                r.consumer,
                r.payload_keys,
                max(r.deliveries, 1),
            )
            for r in receipts
        ]
        infos = [_consumer_row(c) for c in consumer_infos(receipts)]

        def body(conn: sqlite3.Connection) -> None:
            self._insert_receipts(conn, rows)
            conn.executemany(_MERGE_CONSUMER, infos)

        await self._worker_write("record_receipts", body)

    @staticmethod
    def _insert_receipts(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        """Write receipt rows (the columns of :data:`_INSERT_RECEIPT`, with
        the delivery number last) and count the new ones."""
        # One statement per row (executemany): each sees the rows before
        # it, so a second consumer's receipt within the batch is flagged
        # dup, and a key repeated within the batch is kept once.
        added = conn.executemany(_INSERT_RECEIPT, rows).rowcount
        raised = [(r[0], r[1], r[6], r[8]) for r in rows if r[8] > 1]
        if raised:
            conn.executemany(_RAISE_DELIVERIES, raised)
        conn.execute(_ADD_META, (added, "receipt_count"))

    async def record_reports(self, reports: Sequence[Report]) -> ReportOutcome:
        """See :meth:`Store.record_reports`: the stored events are read and the
        receipts written in one transaction on the writer's thread, from the
        reports as they came (no receipt objects on the event loop)."""
        if not reports:
            return ReportOutcome(0, 0, [])
        wanted = {r[0] for r in reports}
        where, params = _ids_where(wanted)

        def body(conn: sqlite3.Connection) -> ReportOutcome:
            facts: dict[int, tuple[str, str]] = {}
            for seq, event_type, checksum, wire in conn.execute(
                "SELECT sequence_id, event_type, checksum,"
                f" CASE WHEN checksum IS NULL THEN wire END FROM events WHERE {where}",
                params,
            ):
                if checksum is None:  # a row of a version before the column
                    checksum = record_from_wire(bytes(wire)).checksum
                facts[seq] = (event_type, checksum)
            rows = []
            known = []
            unknown: set[int] = set()
            mismatches = 0
            for report in reports:
                seq, adapter, checksum, consumer, received_ms, times, verified = report
                fact = facts.get(seq)
                if fact is None:
                    unknown.add(seq)
                    continue
                ok = verified and checksum == fact[1]
                mismatches += not ok
                rows.append(
                    (seq, adapter, fact[0], received_ms, checksum, ok, consumer, None, times)
                )
                known.append(report)
            self._insert_receipts(conn, rows)
            conn.executemany(_MERGE_CONSUMER, [_consumer_row(c) for c in report_infos(known)])
            return ReportOutcome(len(rows), mismatches, sorted(unknown))

        return await self._worker_write("record_reports", body)

    async def register_consumer(self, consumer: str, adapter: str, at_ms: int) -> ConsumerInfo:
        """See :meth:`Store.register_consumer`: the next id is read inside the
        write transaction, so no event committed before it counts."""

        def body(conn: sqlite3.Connection) -> ConsumerInfo:
            (high,) = conn.execute(f"SELECT {_HIGH_MARK}").fetchone()
            row = ConsumerInfo(consumer, adapter, int(high) + 1, 0, at_ms, at_ms, 0)
            conn.execute(_MERGE_CONSUMER, _consumer_row(row))
            return _consumer_info(
                conn.execute(
                    _CONSUMERS + " WHERE adapter = ? AND consumer = ?", (adapter, consumer)
                ).fetchone()
            )

        return await self._worker_write("register_consumer", body)

    async def consumers(self) -> list[ConsumerInfo]:
        """See :meth:`Store.consumers`."""

        def body(conn: sqlite3.Connection) -> list[ConsumerInfo]:
            return [
                _consumer_info(row)
                for row in conn.execute(_CONSUMERS + " ORDER BY adapter, consumer")
            ]

        return await self._call(self._read, "consumers", body)

    async def event_facts(self, sequence_ids: Sequence[int]) -> dict[int, EventFacts]:
        """See :meth:`Store.event_facts`: one indexed read for the batch."""
        wanted = set(sequence_ids)
        if not wanted:
            return {}
        where, params = _ids_where(wanted)

        def body(conn: sqlite3.Connection) -> dict[int, EventFacts]:
            facts: dict[int, EventFacts] = {}
            routings: dict[str, tuple[str, ...]] = {}
            for seq, event_type, checksum, routed_json, wire in conn.execute(
                "SELECT sequence_id, event_type, checksum, routed_to,"
                f" CASE WHEN checksum IS NULL THEN wire END FROM events WHERE {where}",
                params,
            ):
                if seq not in wanted:
                    continue
                routed = routings.get(routed_json)
                if routed is None:
                    routed = routings[routed_json] = tuple(orjson.loads(routed_json))
                if checksum is None:  # a row of a version before the column
                    checksum = record_from_wire(bytes(wire)).checksum
                facts[seq] = EventFacts(event_type, checksum, routed)
            return facts

        return await self._call(self._read, "event_facts", body)

    # -- reads ------------------------------------------------------------

    async def undelivered(
        self, adapter: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Events still to deliver to ``adapter`` (queued, failed, pending) with
        sequence id > ``after``, in order, at most ``limit``. A range scan of the
        ``outbox`` key, then of the tail's events (at most ``_TAIL_MAX``), so the
        cost follows the result, not the table size."""

        def body(conn: sqlite3.Connection) -> list[bytes]:
            wires = [row[0] for row in conn.execute(_UNDELIVERED, (adapter, after, limit))]
            if len(wires) < limit:
                (through,) = conn.execute(_OUTBOX_THROUGH).fetchone()
                tail = (max(after, through), adapter, limit - len(wires))
                wires += [row[0] for row in conn.execute(_UNDELIVERED_TAIL, tail)]
            return wires

        wires = await self._call(self._read, "undelivered", body)
        return [record_from_wire(wire) for wire in wires]

    async def get(self, sequence_id: int) -> StoredEvent | None:
        """One event with routing, per-adapter states, errors and receipts."""

        def body(
            conn: sqlite3.Connection,
        ) -> tuple[_EventRow, list[_DeliveryRow], list[_ReceiptRow]] | None:
            row = conn.execute(
                "SELECT wire, routed_to, created_at_ms FROM events WHERE sequence_id = ?",
                (sequence_id,),
            ).fetchone()
            if row is None:
                return None
            deliveries: list[_DeliveryRow] = [
                *conn.execute(_STATES_OF.format(table="outbox"), (sequence_id, row[1])),
                *conn.execute(_STATES_OF.format(table="deliveries"), (sequence_id, row[1])),
            ]
            (through,) = conn.execute(_OUTBOX_THROUGH).fetchone()
            explicit = [(sequence_id, adapter) for adapter, _, _ in deliveries]
            deliveries += [
                (adapter, state, None)
                for _, adapter, state in _implied_pairs(
                    [(sequence_id, row[1])], through, explicit, {}
                )
            ]
            receipts = conn.execute(
                "SELECT sequence_id, adapter, event_type, received_at_ms, checksum,"
                " checksum_ok, consumer, payload_keys, deliveries FROM receipts"
                " WHERE sequence_id = ? ORDER BY id",
                (sequence_id,),
            ).fetchall()
            return row, deliveries, receipts

        found = await self._call(self._read, "get", body)
        if found is None:
            return None
        (wire, routed_json, created_ms), deliveries, receipt_rows = found
        routed = tuple(orjson.loads(routed_json))
        by_adapter = {adapter: (state, error) for adapter, state, error in deliveries}
        return StoredEvent(
            record=record_from_wire(wire),
            routed_to=routed,
            created_at_ms=created_ms,
            states={a: DeliveryState(by_adapter[a][0]) for a in routed if a in by_adapter},
            errors={a: e for a, (_, e) in by_adapter.items() if e is not None},
            receipts=tuple(
                ConsumerReceipt(
                    sequence_id=seq,
                    adapter=adapter,
                    event_type=event_type,
                    received_at_ms=received,
                    checksum=checksum,
                    checksum_ok=bool(ok),
                    consumer=consumer,
                    payload_keys=keys,
                    deliveries=int(n),
                )
                for seq, adapter, event_type, received, checksum, ok, consumer, keys, n in (
                    receipt_rows
                )
            ),
        )

    async def pragma(self, name: str, value: int | str | None = None) -> object:
        """Read (or with ``value``, set) a pragma on the store's connections
        (a value is set on both), e.g. ``page_count``, ``journal_mode``,
        ``max_page_count`` (operators, tests). Returns the first column of the
        first row (of the worker's connection), or ``None``."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a pragma name: {name!r}")
        if value is not None and not str(value).replace("_", "").isalnum():
            raise ValueError(f"not a pragma value: {value!r}")
        sql = f"PRAGMA {name}" if value is None else f"PRAGMA {name} = {value}"

        def run(conn: sqlite3.Connection) -> object:
            try:
                row = conn.execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise self._translate(exc, f"pragma {name}") from exc
            return None if row is None else row[0]

        result = await self._call(lambda: run(self._connection()))
        if value is not None and self._loop_conn is not None:
            # Per-connection settings (max_page_count, ...) hold for both.
            run(self._loop_conn)
        return result

    async def last_sequence_id(self) -> int:
        """The highest sequence id ever handed out (persisted; survives pruning)."""

        def body(conn: sqlite3.Connection) -> int:
            (value,) = conn.execute(f"SELECT {_HIGH_MARK}").fetchone()
            return int(value)

        return await self._call(self._read, "last_sequence_id", body)

    async def committed_through(self) -> int:
        """See :meth:`Store.committed_through`: ids are handed out inside the
        write transaction, so the high-water mark is always committed."""
        return await self.last_sequence_id()

    async def read_routed(
        self, *, after: int, limit: int, through: int | None = None
    ) -> list[tuple[EventRecord, tuple[str, ...]]]:
        """See :meth:`Store.read_routed`: one range read on the worker thread
        (one writer at a time: ids commit in order, no id is ever in flight
        below a committed one)."""
        if limit <= 0:
            return []
        high = 2**63 - 1 if through is None else through

        def body(conn: sqlite3.Connection) -> list[tuple[bytes, str, str | None]]:
            return conn.execute(_READ_ROUTED, (after, high, limit)).fetchall()

        rows = await self._call(self._read, "read_routed", body)
        cache: dict[str, tuple[str, ...]] = {}
        return [
            (record_from_wire(wire, keys), parse_routed(routed, cache))
            for wire, routed, keys in rows
        ]

    async def wait_for_appends(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """See :meth:`Store.wait_for_appends`: looks at ``PRAGMA data_version``
        (which changes when another connection commits) on a connection of its
        own, on the loop's thread: the WAL index in shared memory, no disk
        read. It looks again when the ``-wal`` file is written to (inotify,
        on Linux) or, without inotify, every ``watch_interval_s``; and never
        returns twice within ``watch_interval_s``, so a stream of commits
        costs the caller one read per interval, not one per commit. This
        store's own commits count as changes too; callers read to see."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._watch_conn
        if conn is None:
            if self._executor is None:
                raise StoreError(f"sqlite store {self.path} is not open")
            conn = self._watch_conn = self._connect(busy_timeout_ms=0)
            self._watch_version = None
        # Woken within the interval of the last return: coalesce.
        rest = self._watch_returned + self.watch_interval_s - loop.time()
        if rest > 0:
            await asyncio.sleep(min(rest, max(0.0, deadline - loop.time())))
        while True:
            try:
                (version,) = conn.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error:
                version = None  # busy or broken: let the caller read and find out
            if version is None or (
                self._watch_version is not None and version != self._watch_version
            ):
                self._watch_version = version
                self._watch_returned = loop.time()
                return
            self._watch_version = version
            left = deadline - loop.time()
            if left <= 0:
                return
            watcher = self._wal_watcher()
            if watcher is None:
                await asyncio.sleep(min(self.watch_interval_s, left))
                continue
            try:
                async with asyncio.timeout(left):
                    await watcher.get()
            except TimeoutError:
                return

    def _wal_watcher(self) -> Inotify | None:
        """An inotify watch on this store's ``-wal`` file (None: not Linux, or
        the file is not there: then the caller polls). Re-made after the
        file was deleted or moved."""
        if _inotify is None:
            return None
        watcher = self._inotify
        if watcher is not None and watcher.watches:
            return watcher
        if watcher is None:
            watcher = self._inotify = _inotify.Inotify()
        try:
            watcher.add_watch(
                Path(f"{self.path}-wal"),
                _inotify.Mask.MODIFY | _inotify.Mask.DELETE_SELF | _inotify.Mask.MOVE_SELF,
            )
        except OSError:
            return None
        return watcher

    async def read_events(
        self,
        *,
        after: int,
        limit: int,
        categories: Collection[Category] | None = None,
        adapter: str | None = None,
    ) -> list[EventRecord]:
        """See :meth:`Store.read_events`: one range read of the events key on
        the worker thread; rows the filters refuse are skipped in SQL."""
        if limit <= 0:
            return []
        cats = None if categories is None else orjson.dumps(sorted(c.value for c in categories))

        def body(conn: sqlite3.Connection) -> list[bytes]:
            return [row[0] for row in conn.execute(_READ_EVENTS, (after, cats, adapter, limit))]

        wires = await self._call(self._read, "read_events", body)
        return [record_from_wire(wire) for wire in wires]

    async def first_sequence_id(self) -> int:
        """The lowest stored sequence id (0: none), from the key's first entry."""

        def body(conn: sqlite3.Connection) -> int:
            (value,) = conn.execute(_FIRST_SEQUENCE_ID).fetchone()
            return int(value)

        return await self._call(self._read, "first_sequence_id", body)

    async def scan(self, *, after: int = 0, limit: int = 1000) -> list[ScanRow]:
        """Events with sequence id > ``after``, in order, at most ``limit``, with
        states and receipts; see :meth:`Store.scan`. One page is four range
        reads in one read transaction (one snapshot); the wire is not parsed."""
        if limit <= 0:
            return []

        def body(conn: sqlite3.Connection) -> list[ScanRow]:
            events = conn.execute(_SCAN_EVENTS, (after, limit)).fetchall()
            if not events:
                return []
            low, high = events[0][0], events[-1][0]
            routed_cache: dict[str, tuple[str, ...]] = {}
            adapters: dict[str, None] = {}
            for routed_json in {row[6] for row in events}:
                adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
            states: list[Any] = conn.execute(_SCAN_DELIVERED, (low, high)).fetchall()
            if adapters:
                states += conn.execute(
                    _SCAN_OUTBOX, (orjson.dumps(list(adapters)), low, high)
                ).fetchall()
                (through,) = conn.execute(_OUTBOX_THROUGH).fetchone()
                states += _implied_pairs(
                    [(row[0], row[6]) for row in events], through, states, routed_cache
                )
            receipts = conn.execute(_SCAN_RECEIPTS, (low, high)).fetchall()
            # Built on the worker thread: the loop only receives the finished page.
            return assemble_scan(events, states, receipts, routed_cache)

        return await self._call(self._read, "scan", body)

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        """See :meth:`Store.plain_page`. A few aggregate queries in one read
        transaction; no row of the page is handed to Python. Pairs are proven
        covered by receipts from totals: every receipt plainly matches a pair
        routed to its adapter and is a first delivery, and the receipts that
        are the first of their pair (``dup`` is 0, set at write time) are as
        many as the routed pairs."""

        def body(conn: sqlite3.Connection) -> PlainPage:
            (last,) = conn.execute(_PAGE_LAST, (after, limit)).fetchone()
            if last is None:
                return PlainPage(0, {})
            low, high = after + 1, int(last)
            (repaired,) = conn.execute(_ANY_REPAIRED).fetchone()
            if repaired:
                (repaired,) = conn.execute(_PAGE_REPAIRED, (low, high)).fetchone()
            if repaired:
                return PlainPage(high, None)
            routings: dict[str, tuple[str, ...]] = {}
            expected = routed_pairs(
                conn.execute(_PAGE_ROUTED, (low, high)), judged_before_ms, routings
            )
            if expected is None:
                return PlainPage(high, None)
            counts, pairs = expected
            test, params = _routed_test(routings)
            received, plain, others, duplicates = conn.execute(
                _PAGE_RECEIPTS.format(routed=test), (window_ms, *params, low, high)
            ).fetchone()
            if duplicates or received - others != pairs or plain != received:
                return PlainPage(high, None)
            return PlainPage(high, counts)

        return await self._call(self._read, "plain_page", body)

    async def stats(self) -> StoreStats:
        """Counts per adapter and state, oldest undelivered event per adapter;
        see :meth:`Store.stats`. Reads counters kept by the writes plus the
        (small) outbox and tail, so the cost does not grow with the number of events."""

        def body(conn: sqlite3.Connection) -> StoreStats:
            meta = dict(
                conn.execute(
                    "SELECT key, value FROM meta"
                    " WHERE key IN ('last_sequence_id', 'event_count', 'receipt_count')"
                ).fetchall()
            )
            (high,) = conn.execute(f"SELECT {_HIGH_MARK}").fetchone()
            states: dict[str, dict[str, int]] = {}
            for adapter, state, n in [
                *conn.execute("SELECT adapter, state, n FROM delivered_counts WHERE n != 0"),
                *conn.execute(
                    "SELECT adapter, state, count(*) FROM outbox GROUP BY adapter, state"
                ),
            ]:
                states.setdefault(adapter, {})[state] = n
            oldest: dict[str, int | None] = dict.fromkeys(states)
            # min(sequence_id) per adapter reads the outbox key in order; its
            # created_at_ms is one lookup by primary key.
            for adapter, created in conn.execute(
                "SELECT o.adapter, e.created_at_ms FROM (SELECT adapter, min(sequence_id)"
                " AS sequence_id FROM outbox GROUP BY adapter) AS o"
                " JOIN events AS e ON e.sequence_id = o.sequence_id"
            ):
                oldest[adapter] = created
            # The tail (queued, and younger than every outbox row).
            (through,) = conn.execute(_OUTBOX_THROUGH).fetchone()
            for adapter, n, created in conn.execute(_TAIL_COUNTS, (through,)):
                per = states.setdefault(adapter, {})
                per["queued"] = per.get("queued", 0) + n
                if oldest.get(adapter) is None:
                    oldest[adapter] = created
            return StoreStats(
                last_sequence_id=int(high),
                # Every id above the floor is a stored event.
                events=int(meta["event_count"]) + int(high) - int(meta["last_sequence_id"]),
                receipts=int(meta["receipt_count"]),
                states=states,
                oldest_undelivered_ms=oldest,
            )

        return await self._call(self._read, "stats", body)

    async def prune(self, *, through: int, older_than_ms: int) -> int:
        """Delete fully delivered events with sequence id <= ``through`` created
        before ``older_than_ms``, with their delivery rows and receipts; see
        :meth:`Store.prune`. Works in transactions of :data:`PRUNE_CHUNK`
        events so the write lock is never held for long; the sequence
        high-water mark lives in ``meta`` and is not touched."""
        deleted = 0
        cursor = 0
        while True:
            chunk: tuple[int, int, bool] = await self._worker_write(
                "prune", self._prune_chunk(cursor, through, older_than_ms)
            )
            count, cursor, done = chunk
            deleted += count
            if done:
                break
        if deleted:
            self._log.info("events pruned", count=deleted, through=through)
        return deleted

    @staticmethod
    def _prune_chunk(
        cursor: int, through: int, older_than_ms: int
    ) -> Callable[[sqlite3.Connection], tuple[int, int, bool]]:
        def body(conn: sqlite3.Connection) -> tuple[int, int, bool]:
            _write_tail(conn)
            candidates = conn.execute(
                _PRUNE_CANDIDATES, (cursor, through, older_than_ms, PRUNE_CHUNK)
            ).fetchall()
            if not candidates:
                return 0, cursor, True
            low, high = candidates[0][0], candidates[-1][0]
            routed_cache: dict[str, tuple[str, ...]] = {}
            adapters: dict[str, None] = {}
            for routed_json in {row[1] for row in candidates}:
                adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
            # Checked in the same write transaction as the deletes: an event
            # still in the outbox for any adapter is never deleted.
            undelivered = {
                seq
                for seq, _, _ in conn.execute(
                    _SCAN_OUTBOX, (orjson.dumps(list(adapters)), low, high)
                ).fetchall()
            }
            doomed = [seq for seq, _ in candidates if seq not in undelivered]
            finished = len(candidates) < PRUNE_CHUNK
            if not doomed:
                return 0, high, finished
            ids = (orjson.dumps(doomed),)
            counts: dict[tuple[str, str], int] = {}
            # Pairs without a row were acknowledged (implied): routed pairs
            # of the doomed events, less those with a row in deliveries.
            implied: dict[str, int] = {}
            routed_of = dict(candidates)
            for seq in doomed:
                for adapter in dict.fromkeys(parse_routed(routed_of[seq], routed_cache)):
                    implied[adapter] = implied.get(adapter, 0) + 1
            for adapter, state, n in conn.execute(
                f"SELECT adapter, state, count(*) FROM deliveries WHERE {_IN_IDS}"
                " GROUP BY adapter, state",
                ids,
            ):
                counts[adapter, state] = -n
                if adapter in implied:  # (a row always names a routed adapter)
                    implied[adapter] -= n
            for adapter, n in implied.items():
                acked = (adapter, DeliveryState.ACKED.value)
                counts[acked] = counts.get(acked, 0) - n
            conn.execute(f"DELETE FROM deliveries WHERE {_IN_IDS}", ids)
            receipts = conn.execute(f"DELETE FROM receipts WHERE {_IN_IDS}", ids).rowcount
            events = conn.execute(f"DELETE FROM events WHERE {_IN_IDS}", ids).rowcount
            conn.execute(_RAISE_PRUNED, (max(doomed),))
            _add_counts(conn, counts)
            conn.executemany(_ADD_META, [(-events, "event_count"), (-receipts, "receipt_count")])
            return events, high, finished

        return body

    async def get_watermark(self, name: str) -> int:
        """A persisted counter (``watermarks`` table); 0 if never set."""

        def body(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT value FROM watermarks WHERE name = ?", (name,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._call(self._read, "get_watermark", body)

    async def set_watermark(self, name: str, value: int) -> None:
        """Persist a counter (committed before this returns)."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO watermarks (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, int(value)),
            )

        await self._worker_write("set_watermark", body)

    # -- runtime config and audit trail -------------------------------------

    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        """Replace the ``runtime_config`` row and append to ``audit`` in one write
        transaction; see :meth:`Store.save_runtime_config`. Values are serialised
        before the transaction starts; a failed call leaves both tables as they were."""
        doc, before_json, after_json = config_json_of(config, before, after)
        now_ms = int(self._clock() * 1000)

        def body(conn: sqlite3.Connection) -> AuditEntry:
            texts = (doc, path, before_json, after_json)
            return rollout_sql.write_config(conn, texts, actor, now_ms)

        return await self._worker_write("save_runtime_config", body)

    # -- several service instances ---------------------------------------------

    async def heartbeat(
        self, instance_id: str, info: Mapping[str, Any], *, expire_after_s: float
    ) -> None:
        """See :meth:`Store.heartbeat`."""
        now_ms = int(self._clock() * 1000)
        info_json = orjson.dumps(dict(info)).decode()

        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO instances VALUES (?1, ?2, ?2, ?3) ON CONFLICT (instance_id)"
                " DO UPDATE SET heartbeat_at_ms = ?2, info_json = ?3",
                (instance_id, now_ms, info_json),
            )
            conn.execute(
                "DELETE FROM instances WHERE heartbeat_at_ms < ?",
                (now_ms - int(expire_after_s * 1000),),
            )

        await self._worker_write("heartbeat", body)

    async def instances(self, *, expire_after_s: float) -> list[InstanceInfo]:
        """See :meth:`Store.instances`."""
        since_ms = int(self._clock() * 1000) - int(expire_after_s * 1000)

        def body(conn: sqlite3.Connection) -> list[InstanceInfo]:
            rows = conn.execute(
                "SELECT instance_id, started_at_ms, heartbeat_at_ms, info_json FROM instances"
                " WHERE heartbeat_at_ms >= ? ORDER BY instance_id",
                (since_ms,),
            ).fetchall()
            return [InstanceInfo(i, s, h, orjson.loads(j)) for i, s, h, j in rows]

        return await self._call(self._read, "instances", body)

    async def claim_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        """See :meth:`Store.claim_lease`: one write transaction decides."""
        now_ms = int(self._clock() * 1000)
        expires = now_ms + int(ttl_s * 1000)

        def body(conn: sqlite3.Connection) -> LeaseState:
            conn.execute(
                "INSERT INTO leases VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE"
                " SET holder = ?2, expires_at_ms = ?3 WHERE holder = ?2 OR expires_at_ms < ?4",
                (name, holder, expires, now_ms),
            )
            (current, until) = conn.execute(
                "SELECT holder, expires_at_ms FROM leases WHERE name = ?", (name,)
            ).fetchone()
            return LeaseState(name, current, until, current == holder and until == expires)

        return await self._worker_write("claim_lease", body)

    async def release_lease(self, name: str, holder: str) -> None:
        """See :meth:`Store.release_lease`."""

        def body(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._worker_write("release_lease", body)

    async def runtime_config(self) -> dict[str, Any] | None:
        """The ``runtime_config`` document, or ``None`` if never saved."""

        def body(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute("SELECT doc_json FROM runtime_config WHERE id = 1").fetchone()
            if row is None:
                return None
            doc: dict[str, Any] = json.loads(row[0])
            return doc

        return await self._call(self._read, "runtime_config", body)

    async def audit_log(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with id > ``after``, oldest first, at most ``limit``
        (a range read of the ``audit`` primary key)."""
        if limit <= 0:
            return []

        def body(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute(rollout_sql.AUDIT_PAGE, (after, limit))
            return [audit_entry(*row) for row in rows]

        return await self._call(self._read, "audit_log", body)

    # -- progressive rollouts ---------------------------------------------------

    async def create_rollout(
        self, category: str, doc: Mapping[str, Any], *, change: ConfigChange | None = None
    ) -> RolloutWrite:
        """See :meth:`Store.create_rollout`: one write transaction."""
        doc_json, texts = rollout_json_of(doc, change)
        now_ms = int(self._clock() * 1000)

        def body(conn: sqlite3.Connection) -> tuple[RolloutRow, AuditEntry | None]:
            return rollout_sql.create_rollout(conn, category, doc_json, texts, now_ms)

        return RolloutWrite(*await self._worker_write("create_rollout", body))

    async def save_rollout(
        self,
        rollout_id: int,
        doc: Mapping[str, Any],
        *,
        state: str,
        version: int,
        change: ConfigChange | None = None,
    ) -> RolloutWrite:
        """See :meth:`Store.save_rollout`: one write transaction."""
        doc_json, texts = rollout_json_of(doc, change)
        now_ms = int(self._clock() * 1000)

        def body(conn: sqlite3.Connection) -> tuple[RolloutRow, AuditEntry | None]:
            return rollout_sql.save_rollout(
                conn, rollout_id, doc_json, state, version, texts, now_ms
            )

        return RolloutWrite(*await self._worker_write("save_rollout", body))

    async def rollout(self, rollout_id: int) -> RolloutRow | None:
        """See :meth:`Store.rollout`."""

        def body(conn: sqlite3.Connection) -> RolloutRow | None:
            return rollout_sql.read_rollout(conn, rollout_id)

        return await self._call(self._read, "rollout", body)

    async def rollouts(self, *, active_only: bool = False) -> list[RolloutRow]:
        """See :meth:`Store.rollouts`."""

        def body(conn: sqlite3.Connection) -> list[RolloutRow]:
            return rollout_sql.read_rollouts(conn, active_only)

        return await self._call(self._read, "rollouts", body)
