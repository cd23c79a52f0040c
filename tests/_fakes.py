"""Test doubles and builders shared by several test modules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.events import EventDraft, EventRecord
from broadcaster.exceptions import AdapterTimeout, AdapterUnavailable, StoreUnavailable
from broadcaster.store.base import AuditEntry, ConsumerReceipt
from broadcaster.store.memory import MemoryStore

__all__ = ["FaultyAdapter", "FlakyStore", "GatedAdapter", "WriteNowStore", "receipts_for"]


class GatedAdapter(MemoryAdapter):
    """Holds every send until ``gate`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()

    async def send(self, batch: Sequence[EventRecord]) -> None:
        await self.gate.wait()
        await super().send(batch)


class FaultyAdapter(MemoryAdapter):
    """An in-memory adapter with a fault chosen by ``mode``: ``ok``; ``down``
    (AdapterUnavailable at once); ``stalled`` (AdapterTimeout after
    ``delay_s``: the far side never answers); ``slow`` (acks after
    ``delay_s``); ``hold`` (each send waits for ``gate``).

    ``calls`` counts sends, for :meth:`wait_calls`; ``wait_for`` (of
    MemoryAdapter) waits for deliveries."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.mode = "ok"
        self.delay_s = 0.0
        self.gate = asyncio.Event()
        self.calls = 0
        self._called = asyncio.Event()

    async def send(self, batch: Sequence[EventRecord]) -> None:
        self.calls += 1
        self._called.set()
        if self.mode == "down":
            raise AdapterUnavailable(self.name, "connection refused")
        if self.mode == "stalled":
            await asyncio.sleep(self.delay_s)  # the fault: the far side never answers
            raise AdapterTimeout(self.name, "no ack")
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)  # the fault: a slow ack
        if self.mode == "hold":
            await self.gate.wait()
        await super().send(batch)

    async def wait_calls(self, n: int) -> None:
        """Wait until :meth:`send` was called ``n`` times."""
        while self.calls < n:
            self._called.clear()
            await self._called.wait()


class FlakyStore(MemoryStore):
    """A MemoryStore whose writes of runtime config and of consumer receipts
    fail (StoreUnavailable) while ``down``: a dead database.
    ``receipt_writes`` counts finished calls of ``record_receipts`` (failed
    ones too)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.receipt_writes = 0
        self._wrote = asyncio.Event()

    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        if self.down:
            raise StoreUnavailable("database is unreachable")
        return await super().save_runtime_config(
            config, actor=actor, path=path, before=before, after=after
        )

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        try:
            if self.down:
                raise StoreUnavailable("database down")
            await super().record_receipts(receipts)
        finally:
            self.receipt_writes += 1
            self._wrote.set()

    async def wait_receipt_writes(self, n: int) -> None:
        """Wait until ``n`` calls of ``record_receipts`` have returned or raised."""
        while self.receipt_writes < n:
            self._wrote.clear()
            await self._wrote.wait()


class WriteNowStore(MemoryStore):
    """A MemoryStore that can also append without waiting (``append_now``, as
    SQLite's writes on the loop's thread), each such write taking ``write_s``
    of the loop's time. It records the batch sizes of both kinds of append:
    ``now`` (in the caller's step) and ``later`` (through the writer task).

    Faults: ``refuse_now`` (append_now declines: e.g. SQLite's write lock is
    taken), ``broken`` (StoreUnavailable: the disk is full), ``bug`` (an
    unexpected exception)."""

    def __init__(self, write_s: float = 0.0) -> None:
        super().__init__()
        self.write_s = write_s
        self.now: list[int] = []
        self.later: list[int] = []
        self.refuse_now = False
        self.broken = False
        self.bug = False

    def append_now(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord] | None:
        if self.refuse_now:
            return None
        if self.broken:
            raise StoreUnavailable("database or disk is full")
        if self.bug:
            raise KeyError("a bug in the store")
        self.now.append(len(items))
        if self.write_s:  # the behaviour under test: a commit's time on the loop's thread
            time.sleep(self.write_s)
        return self._append(items)

    async def append(
        self, items: Sequence[tuple[EventDraft, tuple[str, ...]]]
    ) -> list[EventRecord]:
        self.later.append(len(items))
        return await super().append(items)


def receipts_for(
    records: Sequence[EventRecord], adapter: str, at_ms: int, *, checksum: str | None = None
) -> list[ConsumerReceipt]:
    """What a consumer of ``adapter`` reports for ``records`` received at ``at_ms``:
    good receipts, or with ``checksum`` a wrong checksum it flagged."""
    return [
        ConsumerReceipt(
            sequence_id=r.sequence_id,
            adapter=adapter,
            event_type=r.event_type,
            received_at_ms=at_ms,
            checksum=checksum if checksum is not None else r.checksum,
            checksum_ok=checksum is None,
            payload_keys=r.payload_keys,
        )
        for r in records
    ]
