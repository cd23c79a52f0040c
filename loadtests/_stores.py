"""Stores for the load tests: a store filled with acknowledged events, a
throwaway PostgreSQL, and adapters that acknowledge at once (shared by the
store, reconcile, receipts and producers scenarios)."""

from __future__ import annotations

import asyncio
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.events import EventFactory, EventRecord
from broadcaster.store import ConsumerReceipt, DeliveryState, Store

__all__ = ["BOTH", "NullAdapter", "fill", "postgres_server"]

BOTH = ("websocket", "realtime")


class NullAdapter(MemoryAdapter):
    """Acknowledges at once and keeps nothing: measures everything but I/O."""

    async def send(self, batch: Sequence[EventRecord]) -> None:
        return None


def _drafts(n: int) -> list[Any]:
    factory = EventFactory()
    return [
        factory.draft("SYSTEM", "bench.tick", {"i": i, "host": "h1", "v": 0.5}, key=f"k{i % 1000}")
        for i in range(n)
    ]


async def fill(store: Store, n: int, batch: int, receipts: bool) -> tuple[float, float]:
    drafts = _drafts(n)
    append_s = mark_s = 0.0
    for start in range(0, n, batch):
        chunk = drafts[start : start + batch]
        t0 = time.perf_counter()
        records = await store.append([(d, BOTH) for d in chunk])
        t1 = time.perf_counter()
        ids = [r.sequence_id for r in records]
        await asyncio.gather(*(store.mark(a, ids, DeliveryState.ACKED) for a in BOTH))
        t2 = time.perf_counter()
        append_s += t1 - t0
        mark_s += t2 - t1
        if receipts:
            now_ms = int(time.time() * 1000)
            await store.record_receipts(
                [
                    ConsumerReceipt(
                        r.sequence_id,
                        a,
                        r.event_type,
                        now_ms,
                        r.checksum,
                        True,
                        payload_keys=r.payload_keys,
                    )
                    for r in records
                    for a in BOTH
                ]
            )
    return append_s, mark_s


def postgres_server() -> Any | None:
    """A throwaway PostgreSQL (pgserver), or None if pgserver is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns without XDG_RUNTIME_DIR
            import pgserver  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    # Not under a 0700 directory: as root, pgserver runs the server as another user.
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    base.chmod(0o755)
    return pgserver.get_server(base / "data", cleanup_mode="delete")
