"""How the service hears of events other processes appended to the SQLite
file (producers publishing from their own processes): a cheap look at the
WAL index after each write to the ``-wal`` file, instead of reading the
events table over and over.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from asyncinotify import Inotify

_inotify: ModuleType | None
try:  # Linux only (see AppendWatcher.wait)
    import asyncinotify as _inotify
except ImportError:  # pragma: no cover - other platforms poll
    _inotify = None

__all__ = ["WATCH_INTERVAL_S", "AppendWatcher"]

#: Default seconds between two looks of :meth:`AppendWatcher.wait` for other
#: processes' commits: the most it adds to their events' latency.
WATCH_INTERVAL_S: Final = 0.005


class AppendWatcher:
    """Waits for commits to one SQLite file, on the loop's thread, with a
    connection of its own (``connect`` opens it at the first wait).
    :attr:`interval_s`: how often it looks for other writers' commits."""

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection]) -> None:
        self._path = path
        self._connect = connect
        #: How often :meth:`wait` looks for other writers' commits.
        self.interval_s = WATCH_INTERVAL_S
        # The connection, the data_version it last saw and when wait() last
        # returned (loop thread only).
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None
        self._returned = float("-inf")
        self._inotify: Inotify | None = None

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 (a bound, not a deadline)
        """Return once another connection committed, or after ``timeout``.

        Looks at ``PRAGMA data_version`` (which changes when another
        connection commits): the WAL index in shared memory, no disk read.
        It looks again when the ``-wal`` file is written to (inotify, on
        Linux) or, without inotify, every :attr:`interval_s`; and never
        returns twice within :attr:`interval_s`, so a stream of commits costs
        the caller one read per interval, not one per commit."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._conn
        if conn is None:
            conn = self._conn = self._connect()
            self._version = None
        # Woken within the interval of the last return: coalesce.
        rest = self._returned + self.interval_s - loop.time()
        if rest > 0:
            await asyncio.sleep(min(rest, max(0.0, deadline - loop.time())))
        while True:
            try:
                (version,) = conn.execute("PRAGMA data_version").fetchone()
            except sqlite3.Error:
                version = None  # busy or broken: let the caller read and find out
            if version is None or (self._version is not None and version != self._version):
                self._version = version
                self._returned = loop.time()
                return
            self._version = version
            left = deadline - loop.time()
            if left <= 0:
                return
            watcher = self._wal_watcher()
            if watcher is None:
                await asyncio.sleep(min(self.interval_s, left))
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
                Path(f"{self._path}-wal"),
                _inotify.Mask.MODIFY | _inotify.Mask.DELETE_SELF | _inotify.Mask.MOVE_SELF,
            )
        except OSError:
            return None
        return watcher

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        watcher, self._inotify = self._inotify, None
        if watcher is not None:
            watcher.close()
