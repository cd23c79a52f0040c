"""Pacing for the lanes: a token bucket for the backfill's rate, and a
pulse that wakes every task waiting on a lane's progress.

Inside the lanes (between the hand-off and the adapters): small primitives
with no knowledge of events, used by :mod:`broadcaster.lanes.lane` and
:mod:`broadcaster.lanes.failover`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["Pulse", "TokenBucket"]


class TokenBucket:
    """Paces work to ``rate`` units per second with bursts of up to ``burst``.

    ``clock`` must be monotonic seconds. :meth:`take` waits (``asyncio.sleep``)
    until ``n`` units are available; ``n`` larger than ``burst`` is allowed and
    simply waits longer.
    """

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be > 0")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    async def take(self, n: float) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            # Pay the debt by waiting; the next take() starts from zero.
            await asyncio.sleep(-self._tokens / self.rate)


class Pulse:
    """Wakes every task waiting at the moment it fires (unlike an
    ``asyncio.Event``, no waiter can clear it under another's feet)."""

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    async def wait(self) -> None:
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        # Shielded: a waiter that times out must not cancel the others' wait.
        await asyncio.shield(self._future)
