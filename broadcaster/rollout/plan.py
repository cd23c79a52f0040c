"""What a progressive rollout is asked for and judged on (docs/rollouts.md):
its plan (steps, hold, gates, cutover), the health of a stage, and the
gates' verdict on it. Pure values, no I/O; :mod:`.policy` is the state
machine that moves a rollout by them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Final, TypedDict

__all__ = [
    "MAX_STEPS",
    "GateLimits",
    "Gates",
    "Plan",
    "Stage",
    "StageHealth",
    "latency_bucket",
    "percentile",
    "steps_problem",
]

#: The most steps one plan may have.
MAX_STEPS: Final = 20


def steps_problem(steps: tuple[int, ...] | list[int], cutover: bool) -> str | None:
    """Why ``steps`` (with ``cutover``) is not a plan, or None: one to
    :data:`MAX_STEPS` percentages from 1 to 100, each above the one before,
    and a cutover only after a step of 100."""
    if not steps:
        return "give at least one step"
    if len(steps) > MAX_STEPS:
        return f"at most {MAX_STEPS} steps"
    for before, step in zip((0, *steps), steps, strict=False):
        if not 1 <= step <= 100:
            return f"a step is a percentage from 1 to 100, not {step}"
        if step <= before:
            return "each step must be above the one before"
    if cutover and steps[-1] != 100:
        return "a cutover needs a last step of 100"
    return None


@dataclass(frozen=True, slots=True)
class StageHealth:
    """What happened during the current stage, on the rollout's adapter.

    ``judged`` counts events with a final verdict (matched, late, mismatch,
    missing, repaired); ``unobserved`` those no consumer of the adapter was
    watching for. ``complete_through_ms``: every event of the stage stored at
    or before this time has a final verdict."""

    judged: int = 0
    mismatches: int = 0
    missing: int = 0
    unobserved: int = 0
    breaker_trips: int = 0
    p99_ms: int | None = None
    complete_through_ms: int = 0


class GateLimits(TypedDict):
    """:class:`Gates` as JSON-able data (a rollout's document, ``GET /rollouts/{id}``)."""

    #: Highest share of a stage's judged events that may mismatch, 0 to 1.
    max_mismatch_rate: float
    #: Most events of a stage that may be missing on the new adapter.
    max_missing: int
    #: Most times the new adapter's breaker may open during a stage.
    max_breaker_trips: int
    #: Highest publish-to-receive p99 latency in ms; None: not gated.
    max_realtime_p99_ms: int | None


@dataclass(frozen=True, slots=True)
class Gates:
    """Health gates; a value above its bound fails the gate.
    ``max_realtime_p99_ms`` None: latency is not gated."""

    max_mismatch_rate: float = 0.0
    max_missing: int = 0
    max_breaker_trips: int = 0
    max_realtime_p99_ms: int | None = None

    def failures(self, health: StageHealth, adapter: str) -> list[str]:
        """Why ``health`` fails these gates, one reason per failed gate."""
        found: list[str] = []
        if health.judged and health.mismatches / health.judged > self.max_mismatch_rate:
            found.append(
                f"mismatch rate {health.mismatches / health.judged:.4g} on {adapter} >"
                f" {self.max_mismatch_rate:g} ({health.mismatches} of {health.judged} events)"
            )
        if health.missing > self.max_missing:
            found.append(f"{_events(health.missing)} missing on {adapter} > {self.max_missing}")
        if health.unobserved:
            found.append(
                f"{_events(health.unobserved)} unobserved on {adapter}: no consumer of it was"
                " reporting receipts, so nothing proves they arrived"
            )
        if health.breaker_trips > self.max_breaker_trips:
            found.append(
                f"{adapter} breaker opened {health.breaker_trips}"
                f" time{'s' if health.breaker_trips != 1 else ''} > {self.max_breaker_trips}"
            )
        limit = self.max_realtime_p99_ms
        if limit is not None and health.p99_ms is not None and health.p99_ms > limit:
            found.append(f"{adapter} p99 latency {health.p99_ms} ms > {limit} ms")
        return found

    def as_dict(self) -> GateLimits:
        return GateLimits(
            max_mismatch_rate=self.max_mismatch_rate,
            max_missing=self.max_missing,
            max_breaker_trips=self.max_breaker_trips,
            max_realtime_p99_ms=self.max_realtime_p99_ms,
        )


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of a plan: its 1-based ``number``, the ``percentage``
    dual-written to the new adapter, and whether it is the cutover."""

    number: int
    percentage: int
    cutover: bool


@dataclass(frozen=True, slots=True)
class Plan:
    """What an operator asked for: ``category`` moved to ``adapter`` through
    ``steps`` (percentages), each held ``hold_ms``, under ``gates``; with
    ``cutover``, a last stage on ``adapter`` alone."""

    category: str
    adapter: str
    steps: tuple[int, ...]
    hold_ms: int
    gates: Gates
    cutover: bool = False

    def __post_init__(self) -> None:
        problem = steps_problem(self.steps, self.cutover)
        if problem is not None:
            raise ValueError(f"steps: {problem}")
        if self.hold_ms < 0:
            raise ValueError(f"hold_s: must be 0 or more, not {self.hold_ms / 1000:g}")

    @property
    def stages(self) -> int:
        return len(self.steps) + self.cutover

    def stage(self, index: int) -> Stage:
        """Stage ``index`` (0-based): a step, or past the steps the cutover."""
        if index < len(self.steps):
            return Stage(index + 1, self.steps[index], False)
        return Stage(index + 1, 100, True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "category": self.category,
            "adapter": self.adapter,
            "steps": list(self.steps),
            "hold_s": self.hold_ms / 1000,
            "gates": self.gates.as_dict(),
            "cutover": self.cutover,
        }


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


def latency_bucket(ms: int) -> int:
    """The key a latency of ``ms`` is counted under for :func:`percentile`:
    exact below a second, then rounded up to a hundredth of a second, and to
    a tenth past ten seconds, so that a stage's counts stay small whatever
    its length."""
    if ms < 1000:
        return max(0, ms)
    step = 10 if ms < 10_000 else 100
    return math.ceil(ms / step) * step


def percentile(counts: Mapping[int, int], q: float) -> int | None:
    """The ``q`` quantile (0 to 1, nearest rank) of latencies counted per
    :func:`latency_bucket` key; None when nothing was counted."""
    keys = sorted(k for k, n in counts.items() if n > 0)
    if not keys:
        return None
    ranks = list(accumulate(counts[k] for k in keys))
    return keys[bisect_left(ranks, max(1, math.ceil(q * ranks[-1])))]
