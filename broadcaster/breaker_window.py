"""The breaker's memory: how recent calls ended, in a fixed-size time window.

Pure code; times are passed in. :class:`~broadcaster.breaker_policy.BreakerPolicy`
records every finished call of a closed breaker here as a
:class:`CallOutcome` and reads the failure rate back to decide whether to
open.
"""

from __future__ import annotations

import enum
import math

__all__ = ["CallOutcome", "SlidingWindow"]


class CallOutcome(enum.Enum):
    """How one finished call is counted."""

    SUCCESS = "success"
    FAILURE = "failure"
    SLOW = "slow"


class SlidingWindow:
    """Call outcomes of the last ``window_s`` seconds, in per-bucket counters.

    Memory is fixed: ``ceil(window_s / bucket_s)`` buckets of three counters,
    however many calls are recorded. The window at time ``now`` is the bucket
    holding ``now`` plus the buckets before it, so it spans between
    ``window_s - bucket_s`` and ``window_s`` seconds of history. A timestamp
    older than the newest bucket seen (a clock that stepped back) is counted
    in the newest bucket.
    """

    __slots__ = ("_bucket_s", "_calls", "_epochs", "_failures", "_head", "_size", "_slow", "_tot")

    def __init__(self, window_s: float, bucket_s: float = 1.0) -> None:
        if not bucket_s > 0 or not window_s >= bucket_s:
            raise ValueError(f"need 0 < bucket_s ({bucket_s}) <= window_s ({window_s})")
        self._bucket_s = bucket_s
        self._size = math.ceil(window_s / bucket_s)
        self._epochs: list[int | None] = [None] * self._size
        self._calls = [0] * self._size
        self._failures = [0] * self._size
        self._slow = [0] * self._size
        self._tot = [0, 0, 0]  # calls, failures, slow
        self._head: int | None = None

    @property
    def buckets(self) -> int:
        """Number of buckets (the memory bound)."""
        return self._size

    def _advance(self, now: float) -> int:
        """Move the window to ``now``: drop buckets that left it. Returns the
        index of the bucket holding ``now``."""
        index = math.floor(now / self._bucket_s)
        head = self._head
        if head is None:
            self._head = index
            return index
        if index <= head:
            return head
        for step in range(head + 1, min(index, head + self._size) + 1):
            slot = step % self._size
            if self._epochs[slot] is not None:
                self._tot[0] -= self._calls[slot]
                self._tot[1] -= self._failures[slot]
                self._tot[2] -= self._slow[slot]
                self._calls[slot] = self._failures[slot] = self._slow[slot] = 0
                self._epochs[slot] = None
        self._head = index
        return index

    def record(self, now: float, outcome: CallOutcome) -> None:
        """Count one finished call at time ``now``."""
        index = self._advance(now)
        slot = index % self._size
        self._epochs[slot] = index
        self._calls[slot] += 1
        self._tot[0] += 1
        if outcome is CallOutcome.FAILURE:
            self._failures[slot] += 1
            self._tot[1] += 1
        elif outcome is CallOutcome.SLOW:
            self._slow[slot] += 1
            self._tot[2] += 1

    def calls(self, now: float) -> int:
        """Calls recorded in the window at ``now``."""
        self._advance(now)
        return self._tot[0]

    def failures(self, now: float) -> int:
        """Failed calls (not counting slow ones) in the window at ``now``."""
        self._advance(now)
        return self._tot[1]

    def slow(self, now: float) -> int:
        """Slow (but successful) calls in the window at ``now``."""
        self._advance(now)
        return self._tot[2]

    def failure_rate(self, now: float) -> float:
        """``(failures + slow) / calls`` in the window at ``now``; 0.0 when empty."""
        self._advance(now)
        calls, failures, slow = self._tot
        return (failures + slow) / calls if calls else 0.0

    def clear(self) -> None:
        """Forget every recorded call."""
        self._epochs = [None] * self._size
        self._calls = [0] * self._size
        self._failures = [0] * self._size
        self._slow = [0] * self._size
        self._tot = [0, 0, 0]
        self._head = None
