"""The reconcile schedule: reconcile every ``RECONCILE_INTERVAL_S`` and then
prune what is reconciled and older than ``RETENTION_S``.

A service's job (``broadcaster serve`` runs one), not the library's: a
:class:`~broadcaster.Broadcaster` or :class:`~broadcaster.Publisher`
embedded in an application runs no schedule of its own, and one store needs
one schedule however many processes publish into it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, Self

import structlog

from ..exceptions import StoreError
from ..settings import Settings

__all__ = ["ReconcileSchedule"]

log = structlog.get_logger("broadcaster.reconcile")


class Reconciling(Protocol):
    """What the schedule drives (a :class:`~broadcaster.Broadcaster`)."""

    async def reconcile(self) -> Any: ...

    async def prune(self, older_than_s: float) -> int: ...


class ReconcileSchedule:
    """Run :meth:`run_once` every ``interval_s`` seconds in a task of its own
    (``async with``, or :meth:`start` and :meth:`stop`). ``retention_s``
    None: never prune. A failed round (the store unavailable) is logged and
    the next one tries again."""

    def __init__(
        self,
        target: Reconciling,
        *,
        interval_s: float,
        retention_s: float | None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self._target = target
        self.interval_s = interval_s
        self.retention_s = retention_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, target: Reconciling, settings: Settings) -> ReconcileSchedule | None:
        """The schedule ``RECONCILE_INTERVAL_S`` and ``RETENTION_S`` ask for;
        None when the interval is 0 (no background reconciliation); a
        retention of 0 keeps every event."""
        if not settings.reconcile_interval_s:
            return None
        return cls(
            target,
            interval_s=settings.reconcile_interval_s,
            retention_s=settings.retention_s or None,
        )

    async def run_once(self) -> int:
        """Reconcile, then prune; returns how many events were pruned."""
        await self._target.reconcile()
        if self.retention_s is None:
            return 0
        pruned = await self._target.prune(self.retention_s)
        if pruned:
            log.info("pruned reconciled events", count=pruned)
        return pruned

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="broadcaster-reconcile"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._sleep(self.interval_s)
            try:
                await self.run_once()
            except StoreError as exc:
                log.error("background reconciliation failed", error=str(exc))

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
