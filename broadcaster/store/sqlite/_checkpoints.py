"""WAL checkpoints of the SQLite store, run beside the writes rather than
inside them: no writing connection checkpoints by itself, or some writer's
commit would copy the WAL back into the file while every other write waits.

Every so many commits (big ones count more) a ``PASSIVE`` pass runs on a
thread of its own, with its own connection; once the WAL holds
``wal_frames_max`` frames, a second, short pass runs on the store's worker
with writes held, so that the WAL restarts from its beginning instead of
growing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Final

__all__ = ["WAL_FRAMES_MAX", "Checkpointer", "passive_pass"]

#: Commits between two WAL checkpoints. A commit of the worker thread counts
#: once more for every ``_ROWS_PER_COMMIT`` rows it changed: its writes are
#: the big ones (receipt batches, appends too big for the loop), and rows
#: spread over an index dirty up to a page each.
_CHECKPOINT_EVERY: Final = 200
_ROWS_PER_COMMIT: Final = 25

#: Default WAL length (4 KiB frames) beyond which a checkpoint holds writes
#: for a moment so that the WAL restarts (8192 frames: a 32 MiB file).
WAL_FRAMES_MAX: Final = 8192


def passive_pass(conn: sqlite3.Connection) -> int:
    """One PASSIVE pass on ``conn``; returns the frames in the WAL (since its
    last restart)."""
    # fetchall: a statement left unfinished would keep a read lock on the
    # WAL, and the WAL restarts only when no reader is left in it.
    ((_, frames, _),) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return int(frames)


class Checkpointer:
    """Counts the store's commits and runs the checkpoint passes.

    ``connect`` opens the checkpoint thread's connection (at its first pass,
    after the worker's); ``on_worker`` runs one :func:`passive_pass` on the
    store's worker, whose writes wait for it. While that pass runs,
    :attr:`held` is set: the store's loop writes wait for it instead of
    hopping to the worker.
    """

    def __init__(
        self,
        wal_frames_max: int,
        *,
        connect: Callable[[], sqlite3.Connection],
        on_worker: Callable[[], Awaitable[object]],
        log: Any,
    ) -> None:
        self.wal_frames_max = wal_frames_max
        self._connect = connect
        self._on_worker = on_worker
        self._log = log
        # Commits (weighted) since the last checkpoint (a heuristic: a lost
        # update costs nothing).
        self._commits = 0
        # The thread and connection of ordinary passes.
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Future[None] | None = None
        #: Set while a pass runs with writes held (see :meth:`holding_writes`).
        self.held: asyncio.Event | None = None
        #: Checkpoints that had to hold writes to complete.
        self.quiesced = 0

    def start(self) -> None:
        """Start the checkpoint thread (once the store is open)."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")

    def abandon(self) -> None:
        """Opening the store failed: stop the thread without a pass."""
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None

    def count(self, rows: int = 0) -> None:
        """A commit (of ``rows`` changed rows, counted for worker commits)
        happened; start a pass once enough did."""
        # No writing connection checkpoints by itself: SQLite's autocheckpoint
        # would copy pages back inside some unlucky writer's commit, holding
        # every write behind it. Every so often a pass runs on a thread of its
        # own instead, alongside the writes.
        self._commits += 1 + rows // _ROWS_PER_COMMIT
        if self._commits >= _CHECKPOINT_EVERY and (self._task is None or self._task.done()):
            self._commits = 0
            self._task = asyncio.ensure_future(self._run())
            self._task.add_done_callback(self._done)

    @contextmanager
    def holding_writes(self) -> Iterator[None]:
        """Loop writes wait while the block runs (see :attr:`held`)."""
        held = self.held = asyncio.Event()
        try:
            yield
        finally:
            self.held = None
            held.set()

    async def _run(self) -> None:
        # A pass with writes going on copies nearly every frame back to the
        # database. The WAL file is reused from its start only by a write that
        # begins after a pass copied everything; loop writes keep beginning
        # during passes (a hop to the worker and back takes a while), so the
        # WAL grows until a pass runs with writes held (the next write then
        # restarts it). Held writes wait a moment: done on every
        # checkpoint, that dominated publish()'s tail latency, so it is done
        # only once the WAL holds ``wal_frames_max`` frames.
        thread = self._thread
        if thread is None:
            return
        frames = await asyncio.get_running_loop().run_in_executor(thread, self._pass)
        if frames < self.wal_frames_max:
            return
        # On the worker, so that its writes wait too.
        with self.holding_writes():
            self.quiesced += 1
            await self._on_worker()

    def _pass(self) -> int:
        """:func:`passive_pass` on the checkpoint thread and its connection."""
        if self._conn is None:
            self._conn = self._connect()
        return passive_pass(self._conn)

    def _close_sync(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _done(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._log.warning("wal checkpoint failed", error=str(future.exception()))

    async def close(self) -> None:
        """Wait for a pass under way, then close the thread and its connection."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._close_sync)
            thread.shutdown(wait=False)
