"""Where a ``publish()`` call's commit happens: in the caller's own step, or
through the group-commit writer task (:mod:`broadcaster.group_commit`).

Between the producer and the store: a commit in the caller's step saves the
call two turns of the event loop, each behind whatever else is ready (in
dual-write: the other lane, its pushes and acknowledgements); a commit
shared through the writer task saves commits once calls arrive faster than
the loop gets through its turns. The :class:`CommitScheduler` watches the
loop and tells which one pays now.
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["CommitScheduler"]

#: Time per turn of the event loop that publish() calls may spend committing
#: their own writes; later callers in the same turn share one commit through
#: the writer task.
_INLINE_BUDGET_S = 0.001

#: Most events (queued ones included) such a write takes: bigger batches gain
#: little from skipping the writer task (their commit dominates), and large
#: commits in callers' steps take turns from the lanes (Realtime sends got
#: slow enough to trip the breaker under a flood of publish_many).
_INLINE_MAX_EVENTS = 32

#: ... and only while the event loop keeps up: once it takes longer than this
#: to get through what is ready (a moving average), calls arrive faster than
#: commits and the writer task's shared commits are worth their two turns (at
#: high rates in small calls, commits in callers' steps multiplied the
#: commits and raised the end-to-end latency) — if the loop's thread is also
#: saturated (``_SATURATED_SHARE``).
_INLINE_MAX_LAG_S = 0.0006

#: The loop's thread counts as saturated while it used at least this share of
#: a CPU over the last ``_SHARE_WINDOW_S``. Only then do lagging turns send
#: commits to the writer task. A loop with idle time gains nothing from shared
#: commits, and its turns can be long for other reasons (the Realtime client's
#: pushes, on a slow VM): there the lag bound alone sent calls to the writer
#: task, whose commits lengthen the turns further, and raised dual-write
#: publish() latency.
_SATURATED_SHARE = 0.9
_SHARE_WINDOW_S = 0.02


class CommitScheduler:
    """The commit-batching heuristic: whether the next ``publish()`` may
    commit in its caller's step.

    Such commits get ``_INLINE_BUDGET_S`` per loop turn and
    ``_INLINE_MAX_EVENTS`` each, and happen only while the loop keeps up
    (``_INLINE_MAX_LAG_S``) or has idle time (``_SATURATED_SHARE``): a caller
    publishing in a tight loop still lets the loop run, and callers beyond
    that queue for one shared commit. It measures the loop itself: the
    turn's lag (how long the loop takes to get through what is ready when a
    call arrives) and the share of a CPU its thread uses.
    """

    def __init__(self) -> None:
        # Seconds spent on writes in publish()'s own step since the loop last
        # ran other callbacks.
        self._inline_spent = 0.0
        # When the loop turn of the last publish() began and (a moving average
        # of) how long the loop then took to get through what was ready.
        self._turn_mark: float | None = None
        self._loop_lag = 0.0
        # Wall and loop-thread CPU time at the start of the current share
        # window, and whether the last full window was saturated.
        self._share_mark: tuple[float, float] | None = None
        self._saturated = False

    def note_call(self) -> None:
        """A ``publish()`` call arrived: measure this loop turn, if no call
        in it did yet."""
        if self._turn_mark is None:
            # Measure how long until the loop gets through what is ready now.
            self._turn_mark = time.perf_counter()
            asyncio.get_running_loop().call_soon(self._turned)

    def allows(self, events: int) -> bool:
        """Whether a write of ``events`` (queued ones included) may commit in
        the caller's step now."""
        return (
            self._inline_spent < _INLINE_BUDGET_S
            and events <= _INLINE_MAX_EVENTS
            and (self._loop_lag < _INLINE_MAX_LAG_S or not self._saturated)
        )

    def spent(self, seconds: float) -> None:
        """A write in the caller's step took ``seconds`` of this turn."""
        self._inline_spent += seconds

    def _turned(self) -> None:
        if self._turn_mark is not None:
            now = time.perf_counter()
            self._loop_lag += (now - self._turn_mark - self._loop_lag) * 0.25
            self._turn_mark = None
            mark = self._share_mark
            if mark is None:
                self._share_mark = (now, time.thread_time())
            elif now - mark[0] >= _SHARE_WINDOW_S:
                cpu = time.thread_time()
                self._saturated = cpu - mark[1] >= _SATURATED_SHARE * (now - mark[0])
                self._share_mark = (now, cpu)
        self._inline_spent = 0.0
