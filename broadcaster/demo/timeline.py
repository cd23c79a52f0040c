"""The demo's shared state and timeline: its timings, when each phase starts,
and how it narrates (the base of the script and its phases)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TextIO

from ..consumer import ReceiptCollector
from ..consumer.realtime import RealtimeSubscriber
from ..settings import Settings
from ..spawn import RealtimeServerProcess
from .console import Progress
from .summary import DemoSummary

__all__ = [
    "CATCH_UP_TIMEOUT_S",
    "RAMP_STEP_S",
    "RECONCILE",
    "RECOVERY_S",
    "RECOVERY_TIMEOUT_S",
    "REMOTE_DOWN_S",
    "REPAIR_TIMEOUT_S",
    "STALL_S",
    "START_TIMEOUT_S",
    "DemoBase",
    "until",
]

# Demo-only timings: the production defaults (30 s recovery, 10 s ramp steps,
# 30 s reconcile buffer, 5 min max delay) would not fit in a short demo.
RECOVERY_S = 1.0
RAMP_STEP_S = 0.5
RECONCILE = {"reconcile_window_s": 1.0, "reconcile_buffer_s": 0.5, "reconcile_max_delay_s": 2.0}
# Bounded waits: generous, so a slow or loaded machine still finishes.
START_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 20.0
REPAIR_TIMEOUT_S = 60.0
# Closed at full share, events pending and no backfill progress for this long:
# the backfill has stopped.
STALL_S = 5.0
# How long the remote subscriber stays dead before it resumes.
REMOTE_DOWN_S = 0.5


async def until(predicate: Callable[[], bool], within_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds (True) or ``within_s`` passes (False)."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


class DemoBase:
    """What every phase of the demo shares: its settings and summary, the
    clock its narration is stamped with, and when each phase starts."""

    def __init__(
        self, settings: Settings, seconds: float, rate: float, out: TextIO, seed: int, outage: bool
    ) -> None:
        self.settings = settings
        self.seconds = seconds
        self.rate = rate
        self.out = out
        self.seed = seed
        self.outage = outage
        self.progress = Progress(out)
        self.summary = DemoSummary()
        self.began = time.monotonic()
        self.started = self.began  # reset when publishing starts
        self.kill_at: float | None = None
        self.rt_offline = False
        # Last sequence id published before the realtime consumer came back.
        self.rejoined_after = 0

    def note(self, text: str) -> None:
        self.progress.note(text)

    def t(self) -> str:
        return f"[{time.monotonic() - self.started:4.1f}s]"

    def _rt_subscriber(
        self, child: RealtimeServerProcess, settings: Settings, collector: ReceiptCollector
    ) -> RealtimeSubscriber:
        return RealtimeSubscriber(
            child.url,
            child.key,
            channel_prefix=settings.realtime_channel_prefix,
            collector=collector,
            reconnect_max_s=0.5,
            poll_s=0.1,
        )

    def _flip_at(self) -> float:
        return 0.2 * self.seconds

    def _kill_at(self) -> float:
        return 0.4 * self.seconds

    def _outage_s(self) -> float:
        """From the kill to the restart (the server then takes a moment to start)."""
        return min(3.0, max(1.0, 0.15 * self.seconds))

    async def _sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))
