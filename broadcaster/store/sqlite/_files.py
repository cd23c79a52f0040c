"""The SQLite store's guard on its own file: SQLite keeps writing to the file
it opened even after that file was deleted or renamed over, so commits would
succeed and vanish at the next start, with sequence ids beginning again.

:class:`FileGuard` remembers the (device, inode) of the database, ``-wal``
and ``-shm`` files the store opened and compares the database's with what is
at the path: right after a commit once the last comparison is old enough,
on every failed write, on a probe and at close. Once they differ, writes
are refused until the process restarts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ...exceptions import StoreUnavailable

__all__ = ["FileGuard", "WriteFailed"]


class WriteFailed(Protocol):
    """How a part of the store reports a failed write to its health
    (:meth:`~broadcaster.store.base.Store._write_failed`)."""

    def __call__(self, detail: str, *, permanent: bool = False) -> None: ...


class FileGuard:
    """The identity of the files one store opened, compared with what is at
    their path every ``check_s`` seconds at most (``monotonic``'s clock).
    ``failed`` hears of the loss once; :attr:`lost` says why writes are
    refused from then on."""

    def __init__(
        self,
        path: Path,
        *,
        monotonic: Callable[[], float],
        check_s: float,
        failed: WriteFailed,
        log: Any,
    ) -> None:
        self._path = path
        self._monotonic = monotonic
        self._check_s = check_s
        self._failed = failed
        self._log = log
        # (st_dev, st_ino) of the database, -wal and -shm files opened (None:
        # not there at open), and when the database's was last compared.
        self._ids: dict[str, tuple[int, int] | None] = {}
        self._checked = 0.0
        #: Why writes are refused for good (the file was deleted or replaced).
        self.lost: str | None = None

    def _id(self, suffix: str = "") -> tuple[int, int] | None:
        """(st_dev, st_ino) of the database file (or its ``suffix`` file) at the
        path now; None if there is none."""
        try:
            st = os.stat(f"{self._path}{suffix}")
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def remember(self) -> None:
        """Take the files at the path now as this store's (after open)."""
        self._ids = {suffix: self._id(suffix) for suffix in ("", "-wal", "-shm")}
        self._checked = self._monotonic()

    def due(self) -> bool:
        """Whether the last comparison is ``check_s`` old or older."""
        return self._monotonic() - self._checked >= self._check_s

    def check(self) -> None:
        """Compare the opened file with what is at the path now; if it was
        deleted or replaced, refuse writes for good and raise."""
        self._checked = self._monotonic()
        if self.lost is None and "" in self._ids:
            try:
                now = self._id()
            except OSError as exc:  # e.g. a directory made unreadable
                now = None
                self._log.warning("store file check failed", error=str(exc))
            if now != self._ids.get(""):
                what = "deleted" if now is None else "replaced"
                self.lost = (
                    f"sqlite {self._path}: the database file was {what} while open;"
                    " writes are refused until the service restarts"
                )
                self._failed(self.lost, permanent=True)
                self._log.error("store file lost", reason=what)
        self.refuse_if_lost()

    def refuse_if_lost(self) -> None:
        if self.lost is not None:
            raise StoreUnavailable(self.lost)

    def unlink_own_files(self) -> None:
        """After the file was lost: remove this store's -wal and -shm if they
        are still at the path, so that they are not replayed into the file
        that is there now (or created there) when it is next opened."""
        for suffix in ("-wal", "-shm"):
            mine = self._ids.get(suffix)
            if mine is not None and self._id(suffix) == mine:
                try:
                    os.unlink(f"{self._path}{suffix}")
                except OSError as exc:
                    self._log.warning("stale file not removed", suffix=suffix, error=str(exc))
