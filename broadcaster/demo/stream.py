"""The demo's event stream: a mix of categories published at a steady rate,
keeping what was routed where."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import Any

from ..core import Broadcaster
from ..events import Category

__all__ = ["FLIP_CATEGORY", "Publisher", "make_event"]

# Share of the demo stream per category.
MIX: tuple[tuple[Category, float], ...] = (
    (Category.CRITICAL, 0.10),
    (Category.PERFORMANCE, 0.40),
    (Category.USER_ACTIVITY, 0.20),
    (Category.SYSTEM, 0.20),
    (Category.DEBUG, 0.10),
)
TYPES = {
    Category.CRITICAL: ("order.created", "payment.captured"),
    Category.PERFORMANCE: ("cpu.sample", "latency.p99"),
    Category.USER_ACTIVITY: ("user.login", "page.view"),
    Category.SYSTEM: ("deploy.finished", "node.joined"),
    Category.DEBUG: ("trace.span",),
}
# The flag the demo flips through the admin API.
FLIP_CATEGORY = Category.USER_ACTIVITY


def make_event(rng: random.Random, i: int) -> dict[str, Any]:
    category = rng.choices([c for c, _ in MIX], weights=[w for _, w in MIX])[0]
    user = f"user-{rng.randrange(500)}"
    return {
        "category": category.value,
        "event_type": rng.choice(TYPES[category]),
        "payload": {"n": i, "user": user, "value": round(rng.random() * 100, 3), "note": "héllo"},
        "key": user,
        "source": "demo",
    }


class Publisher:
    """Publishes the mixed stream at ``rate`` until stopped; keeps what was
    routed where, and USER_ACTIVITY's routing before and after the flip."""

    def __init__(self, b: Broadcaster, rng: random.Random, rate: float) -> None:
        self.b = b
        self.rng = rng
        self.rate = rate
        self.count = 0
        self.last_sequence_id = 0
        self.last_at = 0.0  # wall clock of the last publish
        self.routed: dict[str, set[int]] = defaultdict(set)
        self.flip: dict[str, list[int]] = {"before": [0, 0], "after": [0, 0]}
        self.stopping = False

    async def run(self) -> None:
        started = time.monotonic()
        per_tick = max(1, round(self.rate * 0.01))
        initial = self.b.routing
        while not self.stopping:
            batch = [make_event(self.rng, self.count + k) for k in range(per_tick)]
            # publish_many routes with the table in force when it is called (a
            # flag change swaps the table whole): the phase is exact.
            phase = self.flip["before" if self.b.routing is initial else "after"]
            receipts = await self.b.publish_many(batch)
            self.count += len(batch)
            for receipt in receipts:
                for name in receipt.routed_to:
                    self.routed[name].add(receipt.sequence_id)
                if receipt.category is FLIP_CATEGORY:
                    phase[0] += 1
                    phase[1] += "realtime" in receipt.routed_to
            self.last_sequence_id = receipts[-1].sequence_id
            self.last_at = time.time()
            await asyncio.sleep(max(0.0, started + self.count / self.rate - time.monotonic()))
