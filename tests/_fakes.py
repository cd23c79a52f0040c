"""Test doubles and builders shared by several test modules."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.events import EventRecord
from broadcaster.store.base import ConsumerReceipt

__all__ = ["GatedAdapter", "receipts_for"]


class GatedAdapter(MemoryAdapter):
    """Holds every send until ``gate`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()

    async def send(self, batch: Sequence[EventRecord]) -> None:
        await self.gate.wait()
        await super().send(batch)


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
