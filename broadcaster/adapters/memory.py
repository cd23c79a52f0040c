"""An adapter that keeps what it is sent in memory: for unit tests and examples.

Subclass it to inject faults (delay, drop, raise) in tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TypedDict

from ..events import EventRecord
from ..exceptions import AdapterUnavailable
from .base import Adapter, AdapterHealth

__all__ = ["MemoryAdapter", "MemoryHealth"]


class MemoryHealth(TypedDict):
    """:meth:`MemoryAdapter.health`'s ``extra``."""

    #: Events it has been sent, all batches together.
    events: int


class MemoryAdapter(Adapter):
    """Records every batch it is sent in ``batches`` and ``events``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.batches: list[list[EventRecord]] = []
        self.started = False
        self.closed = False
        self._lock = asyncio.Lock()
        self._received = asyncio.Condition(self._lock)

    @property
    def events(self) -> list[EventRecord]:
        return [event for batch in self.batches for event in batch]

    @property
    def sequence_ids(self) -> list[int]:
        return [event.sequence_id for event in self.events]

    async def start(self) -> None:
        self.started = True
        self.closed = False

    async def send(self, batch: Sequence[EventRecord]) -> None:
        if not self.started or self.closed:
            raise AdapterUnavailable(self.name, "not started")
        async with self._received:
            self.batches.append(list(batch))
            self._received.notify_all()

    async def wait_for(self, sequence_ids: set[int]) -> None:
        """Wait until every one of ``sequence_ids`` has been sent here (wrap in
        ``asyncio.timeout``)."""
        async with self._received:
            await self._received.wait_for(lambda: sequence_ids <= set(self.sequence_ids))

    async def close(self) -> None:
        self.closed = True

    def health(self) -> AdapterHealth[MemoryHealth]:
        return AdapterHealth(
            name=self.name,
            connected=self.started and not self.closed,
            extra=MemoryHealth(events=sum(len(b) for b in self.batches)),
        )
