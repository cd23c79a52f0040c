"""What every consumer does with a received event object: verify its checksum
(and, given signing keys, its signature), count it, and report a receipt.
Transport-specific subscribers (WebSocket, Realtime) feed decoded event
objects into :class:`ReceiptCollector`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from ..events import (
    SigningKey,
    payload_keys_of,
    slots_builder,
    verify_event_dict,
    verify_signed_event_dict,
)
from ..exceptions import FrameError
from ..store.base import ConsumerReceipt, Store

__all__ = ["ConsumerStats", "ReceiptCollector", "StoreReceiptWriter"]

log = structlog.get_logger("broadcaster.consumer")

_ReceiptBuilder: Final = slots_builder(ConsumerReceipt)


def _keys(payload: object) -> str | None:
    return payload_keys_of(payload) if isinstance(payload, dict) else None


@dataclass
class ConsumerStats:
    """Counts of what one consumer saw on one adapter's path."""

    received: int = 0
    verified: int = 0
    mismatches: int = 0
    #: Events whose checksum matched but whose signature did not prove them
    #: (only counted by a consumer given signing keys).
    bad_signatures: int = 0
    malformed: int = 0
    duplicates: int = 0
    by_category: Counter[str] = field(default_factory=Counter)


class ReceiptCollector:
    """Verifies received event objects and turns them into receipts.

    ``on_event(obj, ok)`` is called for every well-formed event (``ok`` is the
    verdict); ``receipts`` gets a :class:`ConsumerReceipt` each, so a
    :class:`StoreReceiptWriter` can persist them. A checksum mismatch is
    logged and counted, never dropped silently. Sequence ids seen are kept in
    ``seen`` so duplicates are counted.

    ``signing_keys`` (key id -> key, text or bytes; several while keys
    rotate) makes the collector check signatures too (docs/security.md): an event with
    a matching checksum but no signature, an unknown key id or a wrong value
    is counted in ``stats.bad_signatures``, logged, and reported with
    ``checksum_ok=False``, so reconciliation counts it as a mismatch. Without
    keys, signatures are ignored. Raises ``ValueError`` for an empty key.

    ``keys_when_verified=False`` leaves ``payload_keys`` out of the receipts
    of verified events: a matching checksum already proves the payload (and
    so its keys) intact, and working the keys out is a fair share of what a
    receipt costs a busy consumer. Events that fail still carry them.
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
        signing_keys: Mapping[str, str | bytes] | None = None,
        keys_when_verified: bool = True,
    ) -> None:
        self.adapter = adapter
        self._keys_when_verified = keys_when_verified
        self.consumer = consumer
        self.stats = ConsumerStats()
        self.seen: set[int] = set()
        self._repeats: dict[int, int] = {}
        self._track = track_seen
        #: Called for every well-formed event; may be replaced at any time.
        self.on_event = on_event
        self._on_receipt = on_receipt
        self._clock = clock
        # Checked and turned into bytes once, as a SigningKey each.
        self._signing_keys = (
            None
            if signing_keys is None
            else {kid: SigningKey(kid, secret).secret for kid, secret in signing_keys.items()}
        )

    def handle(self, obj: Mapping[str, Any]) -> bool:
        """Verify and count one decoded event object; returns the verdict."""
        stats = self.stats
        stats.received += 1
        keys = self._signing_keys
        try:
            if keys is None:
                ok, expected, actual = verify_event_dict(obj)
                bad_signature = None
            else:
                ok, expected, actual, bad_signature = verify_signed_event_dict(obj, keys)
            seq = obj["sequence_id"]
            category = obj["category"]
            event_type = obj["event_type"]
            if not isinstance(seq, int):
                raise FrameError("sequence_id is not an integer")
        except (FrameError, KeyError) as exc:
            stats.malformed += 1
            log.warning("malformed event", adapter=self.adapter, error=str(exc))
            return False
        deliveries = 1
        if self._track:
            if seq in self.seen:
                stats.duplicates += 1
                # Which delivery this is, so the store counts the duplicate
                # (it keeps one receipt per consumer and event).
                deliveries = self._repeats[seq] = self._repeats.get(seq, 1) + 1
            else:
                self.seen.add(seq)
        stats.by_category[category] += 1
        if ok and bad_signature is None:
            stats.verified += 1
        elif ok:
            # The bytes arrived as sent, but who sent them is not proven.
            ok = False
            stats.bad_signatures += 1
            log.error(
                "bad signature",
                adapter=self.adapter,
                event_id=obj.get("event_id"),
                category=category,
                sequence_id=seq,
                reason=bad_signature,
            )
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
            # One per event: filled as a plain object, then made a
            # ConsumerReceipt (see events.slots_builder); the frozen __init__ costs
            # a busy consumer several times as much.
            receipt = _ReceiptBuilder()
            receipt.sequence_id = seq
            receipt.adapter = self.adapter
            receipt.event_type = event_type
            receipt.received_at_ms = int(self._clock() * 1000)
            receipt.checksum = actual
            receipt.checksum_ok = ok
            receipt.consumer = self.consumer
            receipt.payload_keys = (
                _keys(obj.get("payload")) if self._keys_when_verified or not ok else None
            )
            receipt.deliveries = deliveries
            receipt.__class__ = ConsumerReceipt
            self._on_receipt(receipt)
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
