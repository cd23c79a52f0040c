"""The threads and connections under the SQLite store: every read or write
of :class:`~broadcaster.store.sqlite.SQLiteStore` is a transaction body
(a function of a connection) that :class:`Engine` runs on the right thread,
commits or rolls back whole, and translates the errors of.

sqlite3 is blocking. Reads and big writes run on one dedicated worker thread
with its own connection; the event loop only awaits futures. Small write
transactions (at most ``loop_write_max`` rows) run on the event loop's
thread instead, on a second connection, when ``synchronous`` is ``NORMAL``
or ``OFF``: such a commit is a WAL append to the page cache (no fsync),
cheaper than the hop to the worker, which under load must win the GIL back
from a busy loop after every statement; ``loop_write_max`` bounds how long
one commit holds the loop (how it was chosen: ``loadtests/HISTORY.md``).
That connection does not wait for a lock: a write that finds the file
locked is handed to the worker, which waits up to ``busy_timeout_ms``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from ...exceptions import StoreError, StoreUnavailable
from ...settings import SQLITE_SYNCHRONOUS_MODES
from ._checkpoints import Checkpointer, passive_pass
from ._files import FileGuard, WriteFailed
from ._outbox import settle_high_mark
from .schema import migrate

__all__ = [
    "LOOP_WRITE_MAX",
    "NOT_NOW",
    "SYNCHRONOUS_MODES",
    "Engine",
    "NotNow",
    "parse_synchronous",
]

_T = TypeVar("_T")

#: Accepted values of the ``synchronous`` pragma.
SYNCHRONOUS_MODES: Final = SQLITE_SYNCHRONOUS_MODES

#: Default largest write (events appended, or ids marked) run on the loop thread.
LOOP_WRITE_MAX: Final = 1024

#: Writes whose success shows the store up again after a failure: an
#: ``append`` is what publishing needs; other writes (an ack deleting a row)
#: can succeed on a full disk where an append cannot.
_UP_ACTIONS: Final = frozenset({"append"})


class NotNow:
    """What :meth:`Engine.loop_write` returns when it wrote nothing."""


NOT_NOW: Final = NotNow()


def parse_synchronous(value: str) -> str:
    mode = value.upper()
    if mode not in SYNCHRONOUS_MODES:
        known = ", ".join(m.lower() for m in SYNCHRONOUS_MODES)
        raise ValueError(f"synchronous={value!r}: expected one of {known}")
    return mode


class Engine:
    """The worker thread and its connection, the loop's connection for small
    writes, and the :class:`Checkpointer` that keeps their WAL short.

    ``files`` refuses writes once the database file is gone and is checked
    after commits; ``failed`` hears of each failed write, ``succeeded`` of
    each successful ``append`` (the store's health).
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str,
        busy_timeout_ms: int,
        loop_write_max: int,
        wal_frames_max: int,
        files: FileGuard,
        failed: WriteFailed,
        succeeded: Callable[[], None],
        log: Any,
    ) -> None:
        self.path = path
        self.synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        # A commit that fsyncs (FULL, EXTRA) would hold the loop for the fsync.
        self._loop_write_max = loop_write_max if synchronous in ("OFF", "NORMAL") else 0
        self._files = files
        self._failed = failed
        self._succeeded = succeeded
        self._executor: ThreadPoolExecutor | None = None
        # Touched only on the worker thread.
        self._conn: sqlite3.Connection | None = None
        # Touched only on the event loop's thread (small writes).
        self._loop_conn: sqlite3.Connection | None = None
        # Rows changed by worker commits not yet counted towards a checkpoint
        # (worker thread adds, loop thread takes: a heuristic, a lost update
        # costs nothing).
        self._worker_rows = 0
        #: Write transactions committed on the event loop's thread.
        self.loop_commits = 0
        self.checkpoints = Checkpointer(
            wal_frames_max,
            connect=lambda: self.connect(busy_timeout_ms=0),
            on_worker=lambda: self.call(lambda: passive_pass(self.connection())),
            log=log,
        )

    @property
    def is_open(self) -> bool:
        return self._executor is not None

    def require_open(self) -> None:
        if self._executor is None:
            raise StoreError(f"sqlite store {self.path} is not open")

    # -- running transactions ---------------------------------------------------

    async def call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(*args)`` on the worker thread (the only thread touching sqlite)."""
        if self._executor is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def translate(self, exc: sqlite3.Error, action: str) -> StoreError:
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        reason = f"sqlite {self.path}: {action}: {exc} ({name})"
        if isinstance(exc, sqlite3.OperationalError):
            return StoreUnavailable(reason)
        return StoreError(reason)

    def connection(self) -> sqlite3.Connection:
        """The worker's connection (on the worker thread only)."""
        if self._conn is None:
            raise StoreError(f"sqlite store {self.path} is not open")
        return self._conn

    def _write(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` in one write transaction on the worker thread: commit, or
        roll back and raise (translated) — never leave a half-written batch."""
        conn = self.connection()
        self._files.refuse_if_lost()
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

    async def worker_write(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run write transaction ``body`` on the worker thread, then count it
        towards the next checkpoint."""
        result: _T = await self.call(self._write, action, body)
        rows, self._worker_rows = self._worker_rows, 0
        self.checkpoints.count(rows)
        return result

    def _commit(
        self, conn: sqlite3.Connection, action: str, body: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        """After ``BEGIN``: run ``body`` and commit, or roll back and raise
        (translated). A commit into a file no longer at the path raises
        :class:`StoreUnavailable` instead of returning."""
        try:
            result = body(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback(conn)
            raise self._write_error(exc, action) from exc
        except BaseException:
            self.rollback(conn)
            raise
        if self._files.due():
            self._files.check()
        if action in _UP_ACTIONS:
            self._succeeded()
        return result

    def _write_error(self, exc: sqlite3.Error, action: str) -> StoreError:
        """A write failed: the store is down (for good if its file is gone:
        checked now, whatever the interval). Returns the error to raise."""
        error = self.translate(exc, action)
        try:
            self._files.check()
        except StoreUnavailable as lost:
            return lost
        self._failed(str(error))
        return error

    async def small_write(
        self, action: str, rows: int, body: Callable[[sqlite3.Connection], _T]
    ) -> _T:
        """Run write transaction ``body`` on the loop's connection when
        :meth:`loop_write` can; otherwise on the worker thread."""
        while (held := self.checkpoints.held) is not None and rows <= self._loop_write_max:
            # Wait here for the checkpoint's short pass, then write on the loop:
            # through the worker each statement would wait for the GIL, which
            # costs a held write several times as much.
            await held.wait()
        result = self.loop_write(action, rows, body)
        if isinstance(result, NotNow):
            return await self.worker_write(action, body)
        return result

    def loop_write(
        self, action: str, rows: int, body: Callable[[sqlite3.Connection], _T]
    ) -> _T | NotNow:
        """Run write transaction ``body`` on the loop's connection if it is
        small (``rows`` at most ``loop_write_max``) and the write lock is free
        right now; else write nothing and return :data:`NOT_NOW`."""
        self._files.refuse_if_lost()
        conn = self._loop_conn
        if conn is None or rows > self._loop_write_max or self.checkpoints.held is not None:
            return NOT_NOW
        try:
            # busy_timeout 0 on this connection: a lock held elsewhere fails
            # here at once, and the worker (which may wait) takes over.
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            # Primary code: extended ones (BUSY_RECOVERY, ...) carry it in the low byte.
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise self._write_error(exc, action) from exc
            return NOT_NOW
        result = self._commit(conn, action, body)
        self.loop_commits += 1
        self.checkpoints.count()
        return result

    def _read(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self.connection()
        try:
            # A read transaction gives multi-statement reads (get) one snapshot.
            conn.execute("BEGIN")
            try:
                return body(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback(conn)
            raise self.translate(exc, action) from exc

    async def read(self, action: str, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``body`` in one read transaction (one snapshot) on the worker thread."""
        return await self.call(self._read, action, body)

    @staticmethod
    def rollback(conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back by itself (e.g. after SQLITE_FULL).
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    async def pragma(self, sql: str, name: str, *, on_both: bool) -> object:
        """Run pragma statement ``sql`` on the worker's connection (and with
        ``on_both`` on the loop's too); the first column of its first row."""

        def run(conn: sqlite3.Connection) -> object:
            try:
                row = conn.execute(sql).fetchone()
            except sqlite3.Error as exc:
                raise self.translate(exc, f"pragma {name}") from exc
            return None if row is None else row[0]

        result = await self.call(lambda: run(self.connection()))
        if on_both and self._loop_conn is not None:
            # Per-connection settings (max_page_count, ...) hold for both.
            run(self._loop_conn)
        return result

    # -- opening and closing ------------------------------------------------------

    async def open(self) -> int:
        """Open (creating if needed) and migrate the database; returns the
        schema version found. Raises as :meth:`SQLiteStore.open` says."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        try:
            version = await self.call(self._open_sync)
            self.checkpoints.start()
            if self._loop_write_max > 0:
                # After the worker created and migrated the schema.
                self._loop_conn = self.connect(busy_timeout_ms=0)
            # The files this store writes to from now on (WAL mode: -wal and
            # -shm exist once the schema transaction committed).
            self._files.remember()
        except BaseException:
            if self._conn is not None:
                await self.call(self._close_sync)
            self.checkpoints.abandon()
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False)
            raise
        return version

    def connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        """A configured connection, for the calling thread only. It never
        checkpoints by itself (the :class:`Checkpointer` does)."""
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a batch is
            # exactly one transaction.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        except sqlite3.Error as exc:
            raise self.translate(exc, "open") from exc
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
            raise self.translate(exc, "open") from exc
        except BaseException:
            conn.close()
            raise

    def _open_sync(self) -> int:
        conn = self.connect(busy_timeout_ms=self._busy_timeout_ms)
        with self._closed_on_error(conn):
            version = migrate(conn)
            conn.execute("BEGIN IMMEDIATE")  # autocommit mode: one transaction
            try:
                settle_high_mark(conn)
                conn.execute("COMMIT")
            except BaseException:
                self.rollback(conn)
                raise
        self._conn = conn
        return version

    async def close(self) -> None:
        """Close the connections and stop the worker (after the checkpointer)."""
        # Checked once more: a file replaced since the last write must not
        # get this store's WAL replayed into it when it is next opened.
        try:
            self._files.check()
        except StoreUnavailable:
            self._files.unlink_own_files()
        loop_conn, self._loop_conn = self._loop_conn, None
        if loop_conn is not None:
            loop_conn.close()
        try:
            await self.call(self._close_sync)
        finally:
            executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing the last connection checkpoints the WAL into the main file.
            conn.close()
