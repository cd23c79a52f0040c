""":class:`SQLiteStore`, the façade of the SQLite package: each method of the
store contract picks its transaction — a small write (on the loop's thread
when it can), a write on the worker thread, or a read — and hands the body,
from the module of its role, to the :class:`~._engine.Engine`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Final

import orjson
import structlog

from ...events import Category, EventDraft, EventRecord, record_from_wire
from ...exceptions import StoreUnavailable
from .._batching import GroupCommit, MarkRequest, parse_routed
from ..base import (
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    PlainPage,
    Report,
    ReportOutcome,
    ScanRow,
    Store,
    StoredEvent,
    StoreHealth,
    StoreStats,
    consumer_infos,
)
from ..shared import receipt_rows
from . import _reads, _receipts, _reconcile, _retention, _writes
from ._checkpoints import WAL_FRAMES_MAX
from ._engine import LOOP_WRITE_MAX, Engine, NotNow, parse_synchronous
from ._files import FileGuard
from ._outbox import high_mark
from ._tables import ServiceTables
from ._watch import AppendWatcher
from .schema import SCHEMA_VERSION

__all__ = ["FILE_CHECK_S", "MARK_LINGER_MS", "SQLiteStore"]

# Loggers stay lazy proxies (no .bind() here or in __init__): a bound logger
# captures the output stream of the moment it is built, which may be closed later.
_LOGGER_NAME: Final = "broadcaster.store.sqlite"

#: Default wait of a ``mark`` after a quiet spell, for other marks to share its
#: transaction. At moderate rates an event otherwise costs three commits (the
#: append and one ack per adapter); sharing them lowers both the CPU per
#: event and publish() latency, at the price of acknowledgements (and so
#: ``flush()``) being recorded up to this much later.
MARK_LINGER_MS: Final = 5.0

#: Most seconds between two comparisons of the database file's identity with
#: what is at its path, made right after a commit.
FILE_CHECK_S: Final = 1.0


class SQLiteStore(ServiceTables, Store):
    """Event store in one SQLite file (WAL mode), for a single broadcaster process.

    ``path``: the database file (created with its schema if missing; its
    directory must exist). ``synchronous``: ``"NORMAL"`` (default: survives a
    process crash) or ``"FULL"`` (survives power loss).
    ``busy_timeout_ms``: how long a write waits for a lock held by another
    process before raising :class:`StoreUnavailable`. ``clock``: wall time in
    seconds, for ``created_at_ms``/``updated_at_ms``. ``loop_write_max``: the
    largest write run on the event loop's thread (0: none); a marked id
    weighs a quarter of an appended event. ``mark_linger_ms``: how long a
    ``mark`` after a quiet spell waits for others to share its transaction
    (group commit; 0: none). ``wal_frames_max``: the WAL length (4 KiB
    pages) at which a checkpoint briefly holds writes so that the WAL file
    is reused from its start (bounds the file's size). ``monotonic``: the
    clock of the file identity check, every ``file_check_s`` seconds at most.
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
        self.synchronous = parse_synchronous(synchronous)
        self._clock = clock
        self._log = structlog.get_logger(_LOGGER_NAME, store="sqlite", path=str(self.path))
        self._files = FileGuard(
            self.path,
            monotonic=monotonic,
            check_s=file_check_s,
            failed=self._write_failed,
            log=self._log,
        )
        self._engine = Engine(
            self.path,
            synchronous=self.synchronous,
            busy_timeout_ms=busy_timeout_ms,
            loop_write_max=loop_write_max,
            wal_frames_max=wal_frames_max,
            files=self._files,
            failed=self._write_failed,
            succeeded=self._write_succeeded,
            log=self._log,
        )
        self._watcher = AppendWatcher(self.path, self._watch_connection)
        self._marks = GroupCommit(self._flush_marks, linger_s=mark_linger_ms / 1000)

    @property
    def wal_frames_max(self) -> int:
        """The WAL length (4 KiB pages) at which a checkpoint holds writes."""
        return self._engine.checkpoints.wal_frames_max

    @property
    def checkpoints_quiesced(self) -> int:
        """Checkpoints that had to hold writes to complete."""
        return self._engine.checkpoints.quiesced

    @property
    def loop_commits(self) -> int:
        """Write transactions committed on the event loop's thread."""
        return self._engine.loop_commits

    @property
    def watch_interval_s(self) -> float:
        """How often :meth:`wait_for_appends` looks for other writers' commits."""
        return self._watcher.interval_s

    @watch_interval_s.setter
    def watch_interval_s(self, value: float) -> None:
        self._watcher.interval_s = value

    # -- lifecycle --------------------------------------------------------

    async def open(self) -> None:
        """Open (creating if needed) and migrate the database. Idempotent.

        Raises :class:`StoreUnavailable` if the file cannot be opened or written,
        :class:`StoreError` if it is not a database or its schema is newer.
        """
        if self._engine.is_open:
            return
        version = await self._engine.open()
        self._log.info(
            "store opened",
            schema_version=SCHEMA_VERSION,
            migrated_from=version,
            synchronous=self.synchronous,
        )

    async def close(self) -> None:
        """Flush queued marks, close the connections and stop the threads. Idempotent."""
        if not self._engine.is_open:
            return
        try:
            await self._marks.wait_idle()
            await self._engine.checkpoints.close()
        finally:
            self._watcher.close()
            await self._engine.close()
        self._log.info("store closed")

    async def probe(self) -> StoreHealth:
        """Compare the file with what is at the path (one ``os.stat``) and
        return :meth:`health`. Writes nothing: SQLite has no connection to
        re-establish, and a write that fits where an append does not (a
        database at ``max_page_count``) would show up a store that cannot
        take events. A store down for a failed write is up again at the next
        successful ``append``."""
        if self._engine.is_open and self._files.lost is None:
            try:
                self._files.check()
            except StoreUnavailable:
                pass
        return self.health()

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
        return await self._engine.pragma(sql, name, on_both=value is not None)

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
        body = self._append_body(list(items))
        return await self._engine.small_write("append", len(items), body)

    def append_now(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord] | None:
        """:meth:`append` on the loop's connection, if it can take it now (see
        :meth:`Store.append_now`); None otherwise."""
        if not items:
            return []
        result = self._engine.loop_write("append", len(items), self._append_body(list(items)))
        return None if isinstance(result, NotNow) else result

    def _append_body(
        self, items: list[tuple[EventDraft, tuple[str, ...]]]
    ) -> Callable[[sqlite3.Connection], list[EventRecord]]:
        self._engine.require_open()
        now_ms = self._now_ms()
        return lambda conn: _writes.append_events(conn, items, now_ms)

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
        self._engine.require_open()
        await self._marks.submit(MarkRequest(adapter, sequence_ids, DeliveryState(state), error))

    async def _flush_marks(self, requests: list[MarkRequest]) -> None:
        now_ms = self._now_ms()
        await self._engine.small_write(
            "mark",
            _writes.mark_rows(requests),
            lambda conn: _writes.write_marks(conn, requests, now_ms),
        )

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        """Store consumer receipts in one transaction, idempotently per
        (event, adapter, consumer); see :meth:`Store.record_receipts`."""
        if not receipts:
            return
        rows = receipt_rows(receipts)
        infos = [_receipts.consumer_row(c) for c in consumer_infos(receipts)]

        def body(conn: sqlite3.Connection) -> None:
            _receipts.insert_receipts(conn, rows)
            _receipts.merge_consumers(conn, infos)

        await self._engine.worker_write("record_receipts", body)

    async def record_reports(self, reports: Sequence[Report]) -> ReportOutcome:
        """See :meth:`Store.record_reports`: the stored events are read and the
        receipts written in one transaction on the writer's thread, from the
        reports as they came (no receipt objects on the event loop)."""
        if not reports:
            return ReportOutcome(0, 0, [])
        where = _receipts.ids_where({r[0] for r in reports})
        return await self._engine.worker_write(
            "record_reports", lambda conn: _receipts.record_reports(conn, reports, where)
        )

    async def register_consumer(self, consumer: str, adapter: str, at_ms: int) -> ConsumerInfo:
        """See :meth:`Store.register_consumer`: the next id is read inside the
        write transaction, so no event committed before it counts."""
        return await self._engine.worker_write(
            "register_consumer",
            lambda conn: _receipts.register_consumer(conn, consumer, adapter, at_ms),
        )

    async def consumers(self) -> list[ConsumerInfo]:
        """See :meth:`Store.consumers`."""
        return await self._engine.read("consumers", _receipts.consumers)

    async def event_facts(self, sequence_ids: Sequence[int]) -> dict[int, EventFacts]:
        """See :meth:`Store.event_facts`: one indexed read for the batch."""
        wanted = set(sequence_ids)
        if not wanted:
            return {}
        where = _receipts.ids_where(wanted)
        return await self._engine.read(
            "event_facts", lambda conn: _receipts.event_facts(conn, wanted, where)
        )

    # -- reads ------------------------------------------------------------

    async def undelivered(
        self, adapter: str, *, after: int = 0, limit: int = 1000
    ) -> list[EventRecord]:
        """Events still to deliver to ``adapter`` (queued, failed, pending) with
        sequence id > ``after``, in order, at most ``limit``. A range scan of the
        ``outbox`` key, then of the tail's events (at most ``TAIL_MAX``), so the
        cost follows the result, not the table size."""
        wires = await self._engine.read(
            "undelivered", lambda conn: _reads.undelivered(conn, adapter, after, limit)
        )
        return [record_from_wire(wire) for wire in wires]

    async def get(self, sequence_id: int) -> StoredEvent | None:
        """One event with routing, per-adapter states, errors and receipts."""
        found = await self._engine.read("get", lambda conn: _reads.event_rows(conn, sequence_id))
        return None if found is None else _reads.stored_event(found)

    async def last_sequence_id(self) -> int:
        """The highest sequence id ever handed out (persisted; survives pruning)."""
        return await self._engine.read("last_sequence_id", high_mark)

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
        rows = await self._engine.read(
            "read_routed", lambda conn: _reads.read_routed(conn, after, high, limit)
        )
        cache: dict[str, tuple[str, ...]] = {}
        return [
            (record_from_wire(wire, keys), parse_routed(routed, cache))
            for wire, routed, keys in rows
        ]

    async def wait_for_appends(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """See :meth:`Store.wait_for_appends`: looks at ``PRAGMA data_version``
        on a connection of its own, on the loop's thread, when the ``-wal``
        file is written to (or every ``watch_interval_s`` without inotify),
        and never returns twice within ``watch_interval_s``. This store's own
        commits count as changes too; callers read to see."""
        await self._watcher.wait(timeout)

    def _watch_connection(self) -> sqlite3.Connection:
        self._engine.require_open()
        return self._engine.connect(busy_timeout_ms=0)

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
        wires = await self._engine.read(
            "read_events", lambda conn: _reads.read_events(conn, after, cats, adapter, limit)
        )
        return [record_from_wire(wire) for wire in wires]

    async def first_sequence_id(self) -> int:
        """The lowest stored sequence id (0: none), from the key's first entry."""
        return await self._engine.read("first_sequence_id", _reads.first_sequence_id)

    async def scan(self, *, after: int = 0, limit: int = 1000) -> list[ScanRow]:
        """Events with sequence id > ``after``, in order, at most ``limit``, with
        states and receipts; see :meth:`Store.scan`. One page is four range
        reads in one read transaction (one snapshot); the wire is not parsed."""
        if limit <= 0:
            return []
        return await self._engine.read("scan", lambda conn: _reconcile.scan(conn, after, limit))

    async def plain_page(
        self, *, after: int, limit: int, judged_before_ms: int, window_ms: int
    ) -> PlainPage:
        """See :meth:`Store.plain_page`: a few aggregate queries in one read
        transaction; no row of the page is handed to Python."""
        return await self._engine.read(
            "plain_page",
            lambda conn: _reconcile.plain_page(conn, after, limit, judged_before_ms, window_ms),
        )

    async def stats(self) -> StoreStats:
        """Counts per adapter and state, oldest undelivered event per adapter;
        see :meth:`Store.stats`. Reads counters kept by the writes plus the
        (small) outbox and tail, so the cost does not grow with the number of events."""
        return await self._engine.read("stats", _reads.stats)

    # -- retention and watermarks -------------------------------------------

    async def prune(self, *, through: int, older_than_ms: int) -> int:
        """Delete fully delivered events with sequence id <= ``through`` created
        before ``older_than_ms``, with their delivery rows and receipts; see
        :meth:`Store.prune`. Works in transactions of ``PRUNE_CHUNK``
        events so the write lock is never held for long; the sequence
        high-water mark lives in ``meta`` and is not touched."""
        deleted = 0
        cursor = 0
        while True:
            chunk: tuple[int, int, bool] = await self._engine.worker_write(
                "prune", _retention.prune_chunk(cursor, through, older_than_ms)
            )
            count, cursor, done = chunk
            deleted += count
            if done:
                break
        if deleted:
            self._log.info("events pruned", count=deleted, through=through)
        return deleted

    async def get_watermark(self, name: str) -> int:
        """A persisted counter (``watermarks`` table); 0 if never set."""
        return await self._engine.read(
            "get_watermark", lambda conn: _retention.get_watermark(conn, name)
        )

    async def set_watermark(self, name: str, value: int) -> None:
        """Persist a counter (committed before this returns)."""
        await self._engine.worker_write(
            "set_watermark", lambda conn: _retention.set_watermark(conn, name, value)
        )
