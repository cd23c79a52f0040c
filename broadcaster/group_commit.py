"""Committing published events to the store, in call order.

Between the producer and the store: when nothing else is being written and
the store can commit without waiting (SQLite's small writes), the caller's
own step commits, taking along whatever is queued ahead of it, as far as
the :class:`~broadcaster.commit_scheduler.CommitScheduler` allows.
Otherwise the events queue for a writer task that takes everything
submitted since its last commit into one transaction. Either way sequence
ids follow the order of the calls, and committed records go to the
:class:`~broadcaster.handoff.Handoff` for the lanes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .commit_scheduler import CommitScheduler
from .events import EventDraft, EventRecord
from .handoff import Handoff
from .producer import Submission, store_error
from .store import Store

__all__ = ["GroupCommit"]


class GroupCommit:
    """The broadcaster's writer: commits each call's events in its own step
    or in the writer task's shared commit.

    ``on_failure`` runs after a failed commit has woken its callers (their
    events left the backlog).
    """

    def __init__(self, store: Store, handoff: Handoff, on_failure: Callable[[], None]) -> None:
        self._store = store
        self._handoff = handoff
        self._on_failure = on_failure
        self._scheduler = CommitScheduler()
        self._submissions: list[Submission] = []
        #: Events submitted and not committed (or failed) yet.
        self.pending = 0
        self._has_work = asyncio.Event()
        #: Set while nothing waits for the writer task.
        self.idle = asyncio.Event()
        self.idle.set()
        # The writer task is between taking submissions and dispatching them.
        self._writing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._write_loop(), name="broadcaster-writer"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def commit(self, items: list[tuple[EventDraft, tuple[str, ...]]]) -> list[EventRecord]:
        """Commit ``items`` (drafts with their routing); return their records
        once durable. Raises :class:`~broadcaster.exceptions.StoreError`."""
        self._scheduler.note_call()
        if not self._writing and self._scheduler.allows(self.pending + len(items)):
            records = self._write_now(items)
            if records is not None:
                return records
        future: asyncio.Future[list[EventRecord]] = asyncio.get_running_loop().create_future()
        self._submissions.append(Submission(items, future))
        self.pending += len(items)
        self.idle.clear()
        self._has_work.set()
        return await future

    def _write_now(
        self, items: list[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord] | None:
        """Commit what is queued and then ``items`` in one transaction, in this
        step, if the store can without waiting; None if it cannot (nothing written).

        Through the writer task a publish waits two loop turns, each behind
        whatever else is ready (in dual-write: the other lane, its pushes and
        acks). Callers the scheduler turns away queue for one shared commit —
        taken by the writer task, or swept up by the next such write, ahead of
        its own events (sequence ids follow call order).
        """
        queued = self._submissions
        batch = [item for sub in queued for item in sub.items] + items if queued else items
        started = time.perf_counter()
        try:
            records = self._store.append_now(batch)
        except Exception as exc:
            error = store_error(exc)
            if queued:
                self._submissions = []
                self._settle(queued, error)
            if error is exc:
                raise
            raise error from exc
        if records is None:
            return None
        self._handoff.dispatch(records, batch)
        if queued:
            self._submissions = []
            self._settle(queued, records)
        self._scheduler.spent(time.perf_counter() - started)
        return records[len(records) - len(items) :]

    def _settle(
        self, submissions: list[Submission], outcome: list[EventRecord] | Exception
    ) -> None:
        """Wake the callers of ``submissions``: their slices of ``outcome`` (the
        records of all of them, in order) or its error."""
        self.pending -= sum(len(sub.items) for sub in submissions)
        if isinstance(outcome, Exception):
            for sub in submissions:
                if not sub.future.done():
                    sub.future.set_exception(outcome)
            self._on_failure()
            return
        start = 0
        for sub in submissions:
            end = start + len(sub.items)
            if not sub.future.done():
                sub.future.set_result(outcome[start:end])
            start = end

    async def _write_loop(self) -> None:
        while True:
            if not self._submissions:
                self.idle.set()
                self._has_work.clear()
                await self._has_work.wait()
                continue
            submissions, self._submissions = self._submissions, []
            items = [item for sub in submissions for item in sub.items]
            self._writing = True
            try:
                records = await self._store.append(items)
            except Exception as exc:
                self._settle(submissions, store_error(exc))
                continue
            finally:
                self._writing = False
            self._handoff.dispatch(records, items)
            self._settle(submissions, records)
