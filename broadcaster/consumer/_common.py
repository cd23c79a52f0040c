"""What every consumer does with a received event object: verify its checksum,
count it, and report a receipt. Transport-specific subscribers (WebSocket,
Realtime) feed decoded event objects into :class:`ReceiptCollector`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..events import payload_keys_of, verify_event_dict
from ..exceptions import FrameError
from ..store.base import ConsumerReceipt, Store

__all__ = ["ConsumerStats", "ReceiptCollector", "StoreReceiptWriter"]

log = structlog.get_logger("broadcaster.consumer")


def _keys(payload: object) -> str | None:
    return payload_keys_of(payload) if isinstance(payload, dict) else None


@dataclass
class ConsumerStats:
    """Counts of what one consumer saw on one adapter's path."""

    received: int = 0
    verified: int = 0
    mismatches: int = 0
    malformed: int = 0
    duplicates: int = 0
    by_category: Counter[str] = field(default_factory=Counter)


class ReceiptCollector:
    """Verifies received event objects and turns them into receipts.

    ``on_event(obj, ok)`` is called for every well-formed event (``ok`` is the
    checksum verdict); ``receipts`` gets a :class:`ConsumerReceipt` each, so a
    :class:`StoreReceiptWriter` can persist them. A checksum mismatch is
    logged and counted, never dropped silently. Sequence ids seen are kept in
    ``seen`` so duplicates are counted.
    """

    def __init__(
        self,
        adapter: str,
        *,
        consumer: str = "default",
        on_event: Callable[[Mapping[str, Any], bool], None] | None = None,
        on_receipt: Callable[[ConsumerReceipt], None] | None = None,
        clock: Callable[[], float] = time.time,
        track_seen: bool = True,
    ) -> None:
        self.adapter = adapter
        self.consumer = consumer
        self.stats = ConsumerStats()
        self.seen: set[int] = set()
        self._track = track_seen
        #: Called for every well-formed event; may be replaced at any time.
        self.on_event = on_event
        self._on_receipt = on_receipt
        self._clock = clock

    def handle(self, obj: Mapping[str, Any]) -> bool:
        """Verify and count one decoded event object; returns the verdict."""
        stats = self.stats
        stats.received += 1
        try:
            ok, expected, actual = verify_event_dict(obj)
            seq = obj["sequence_id"]
            category = obj["category"]
            event_type = obj["event_type"]
            if not isinstance(seq, int):
                raise FrameError("sequence_id is not an integer")
        except (FrameError, KeyError) as exc:
            stats.malformed += 1
            log.warning("malformed event", adapter=self.adapter, error=str(exc))
            return False
        if self._track:
            if seq in self.seen:
                stats.duplicates += 1
            else:
                self.seen.add(seq)
        stats.by_category[category] += 1
        if ok:
            stats.verified += 1
        else:
            stats.mismatches += 1
            log.error(
                "checksum mismatch",
                adapter=self.adapter,
                event_id=obj.get("event_id"),
                category=category,
                sequence_id=seq,
                expected=expected,
                actual=actual,
            )
        if self._on_receipt is not None:
            self._on_receipt(
                ConsumerReceipt(
                    sequence_id=seq,
                    adapter=self.adapter,
                    event_type=event_type,
                    received_at_ms=int(self._clock() * 1000),
                    checksum=actual,
                    checksum_ok=ok,
                    consumer=self.consumer,
                    payload_keys=_keys(obj.get("payload")),
                )
            )
        if self.on_event is not None:
            self.on_event(obj, ok)
        return ok


class StoreReceiptWriter:
    """Buffers receipts and writes them to a store in batches, off the hot path.

    Use ``writer.add`` as a collector's ``on_receipt``; ``await writer.flush()``
    writes what is buffered; ``start()``/``close()`` run a periodic flusher.
    """

    def __init__(self, store: Store, *, interval_s: float = 0.2) -> None:
        self._store = store
        self._interval = interval_s
        self._buffer: list[ConsumerReceipt] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, receipt: ConsumerReceipt) -> None:
        self._buffer.append(receipt)

    async def flush(self) -> None:
        if self._buffer:
            batch, self._buffer = self._buffer, []
            try:
                await self._store.record_receipts(batch)
            except BaseException:
                # Keep them for the next flush: a receipt is evidence of delivery.
                self._buffer[:0] = batch
                raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:  # receipts stay buffered; try again next tick
                log.error("receipt flush failed", error=str(exc))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()
