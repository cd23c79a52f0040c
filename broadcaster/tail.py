"""Following the store: deliver what other processes appended (docs/deploying.md).

A service (``broadcaster serve``) delivers every event in the store, not
only those published through it: producer processes append with
:class:`~broadcaster.Publisher` and never touch an adapter. The
:class:`Tail` keeps one cursor, ``handed``: every event up to it has gone to
the lanes (or was found delivered at start). Events reach the lanes in
sequence order from two sources:

* the service's own commits, handed over at once as before, but only while
  they continue the cursor without a hole;
* the store, read from the cursor whenever a hole appears before the
  service's own next event, or the store says another process appended
  (:meth:`~broadcaster.store.base.Store.wait_for_appends`: SQLite's
  ``data_version``, PostgreSQL's ``LISTEN``), and at least every
  ``idle_s`` as the safety net.

Why a read never skips an event: what
:meth:`~broadcaster.store.base.Store.read_routed` returns is a prefix of all
that will ever be stored after the cursor (SQLite commits appends in id
order, one writer at a time; PostgreSQL's appends commit side by side, and
its reads stop before, or wait for, an id that may still commit); and given
the service's own committed event as the bound, every lower id is read or
never will be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import structlog

from .events import EventRecord
from .exceptions import StoreError
from .store import Store

__all__ = ["Tail"]

log = structlog.get_logger("broadcaster.tail")

#: Events read from the store per page.
PAGE: Final = 1000

Routed = tuple[EventRecord, tuple[str, ...]]


class Tail:
    """The cursor of a service following its store; see the module doc.

    ``hand`` gives records (in sequence order) to the lanes. ``own_first``
    returns the sequence id of the first of the service's own committed
    records not yet handed (None: none waits), and ``release_own`` hands
    those that now continue the cursor. ``wait_space`` returns once the lanes
    can take more (the broadcaster's backpressure bound)."""

    def __init__(
        self,
        store: Store,
        *,
        hand: Callable[[Sequence[Routed]], None],
        own_first: Callable[[], int | None],
        release_own: Callable[[], None],
        wait_space: Callable[[], Awaitable[None]],
        idle_s: float = 1.0,
        page: int = PAGE,
    ) -> None:
        self._store = store
        self._hand = hand
        self._own_first = own_first
        self._release_own = release_own
        self._wait_space = wait_space
        self._idle_s = idle_s
        self._page = page
        #: Every event up to this id has been handed to the lanes.
        self.handed = 0
        self._wake = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, handed: int) -> None:
        """Follow from ``handed`` (events up to it are the lanes' already)."""
        self.handed = handed
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow(), name="broadcaster-tail"),
            loop.create_task(self._watch(), name="broadcaster-tail-watch"),
        ]
        self.wake()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def split(self, count: int, seqs: Callable[[int], int]) -> tuple[int, int]:
        """Of ``count`` own records waiting (``seqs(i)``: the i-th one's id,
        ascending), how many to drop (handed already, read from the store)
        and how many after those continue the cursor."""
        drop = 0
        while drop < count and seqs(drop) <= self.handed:
            drop += 1
        take = 0
        expected = self.handed + 1
        while drop + take < count and seqs(drop + take) == expected:
            take += 1
            expected += 1
        if drop + take < count:
            self.wake()  # a hole before the next own record: read it
        return drop, take

    def wake(self) -> None:
        self._caught_up.clear()
        self._wake.set()

    async def wait_caught_up(self) -> None:
        """Wait until the tail has read up to the service's own records."""
        await self._caught_up.wait()

    async def _watch(self) -> None:
        while True:
            try:
                await self._store.wait_for_appends(self._idle_s)
            except StoreError as exc:
                log.warning("cannot watch the store for appends", error=str(exc))
                await asyncio.sleep(self._idle_s)
            self.wake()

    async def _follow(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._catch_up()
            except Exception as exc:
                # Nothing is skipped: the cursor stays, the next wake retries.
                # (Anything else than a store error is a bug, but a tail that
                # died would deliver nothing more, silently.)
                if isinstance(exc, StoreError):
                    log.warning("cannot read the store to follow it", error=str(exc))
                else:
                    log.exception("following the store failed", error=repr(exc))
                await asyncio.sleep(min(self._idle_s, 0.5))
                self._wake.set()
                continue
            if not self._wake.is_set():
                self._caught_up.set()

    async def _catch_up(self) -> None:
        while True:
            await self._wait_space()
            bound = self._own_first()
            if bound is not None and bound - 1 <= self.handed:
                self._release_own()
                if self._own_first() is None or self._own_first() == bound:
                    return
                continue
            limit = self._page if bound is None else min(self._page, bound - 1 - self.handed)
            rows = await self._store.read_routed(
                after=self.handed, limit=limit, through=None if bound is None else bound - 1
            )
            fresh = [
                row
                for row in rows
                if row[0].sequence_id > self.handed
                and (bound is None or row[0].sequence_id < bound)
            ]
            if fresh:
                self._hand(fresh)
                self.handed = fresh[-1][0].sequence_id
            if bound is not None and len(rows) < limit:
                # The own record at ``bound`` committed: every lower id is
                # stored (and now read) or never will be.
                self.handed = max(self.handed, bound - 1)
                self._release_own()
                continue
            if len(rows) < limit:
                return
