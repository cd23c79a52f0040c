"""A rollout's plan and the gates' verdict, as a specification: which steps
make a plan, its stages, which health fails which gate (at its bound it
passes), and the latency figure the latency gate reads — pure values."""

from __future__ import annotations

from typing import Any

import pytest

from broadcaster.rollout.plan import (
    MAX_STEPS,
    Gates,
    Plan,
    StageHealth,
    latency_bucket,
    percentile,
    steps_problem,
)


def plan(steps: tuple[int, ...] = (1, 25, 100), **kw: Any) -> Plan:
    options: dict[str, Any] = {"hold_ms": 60_000, "gates": Gates(), "cutover": False} | kw
    return Plan("USER_ACTIVITY", "realtime", steps, **options)


# -- plans ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "cutover", "problem"),
    [
        ((), False, "at least one step"),
        (tuple(range(1, MAX_STEPS + 2)), False, f"at most {MAX_STEPS}"),
        ((0, 50), False, "from 1 to 100, not 0"),
        ((5, 101), False, "from 1 to 100, not 101"),
        ((5, 5), False, "above the one before"),
        ((50, 25), False, "above the one before"),
        ((1, 50), True, "cutover needs a last step of 100"),
    ],
)
def test_a_plan_names_what_is_wrong_with_its_steps(
    steps: tuple[int, ...], cutover: bool, problem: str
) -> None:
    found = steps_problem(steps, cutover)
    assert found is not None and problem in found
    with pytest.raises(ValueError, match="steps: "):
        plan(steps, cutover=cutover)


def test_a_plan_refuses_a_negative_hold() -> None:
    assert steps_problem([1, 100], True) is None
    with pytest.raises(ValueError, match="hold_s"):
        plan(hold_ms=-1)


def test_a_plan_has_a_stage_per_step_and_one_for_the_cutover() -> None:
    p = plan(cutover=True)
    assert p.stages == 4
    assert [(s.number, s.percentage, s.cutover) for s in map(p.stage, range(4))] == [
        (1, 1, False),
        (2, 25, False),
        (3, 100, False),
        (4, 100, True),
    ]
    assert plan().stages == 3


@pytest.mark.parametrize(
    "health",
    [
        StageHealth(judged=100, mismatches=2),  # a rate at the bound passes
        StageHealth(missing=1, breaker_trips=1),
        StageHealth(p99_ms=250),
        StageHealth(p99_ms=None),  # no latency seen: nothing to judge
    ],
)
def test_values_at_their_bounds_pass(health: StageHealth) -> None:
    gates = Gates(
        max_mismatch_rate=0.02, max_missing=1, max_breaker_trips=1, max_realtime_p99_ms=250
    )
    assert gates.failures(health, "realtime") == []
    assert Gates().failures(StageHealth(p99_ms=10_000), "realtime") == []  # latency not gated


def test_every_failing_gate_is_in_the_reason() -> None:
    health = StageHealth(judged=10, mismatches=1, missing=1, breaker_trips=2)
    assert len(Gates().failures(health, "realtime")) == 3


# -- latency -------------------------------------------------------------------------


def test_latencies_are_kept_exact_below_a_second_then_rounded_up() -> None:
    assert [latency_bucket(ms) for ms in (-3, 0, 999, 1000, 1001, 9991, 10_001)] == [
        0,
        0,
        999,
        1000,
        1010,
        10_000,
        10_100,
    ]


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile({}, 0.99) is None
    assert percentile({5: 0}, 0.99) is None
    counts = {10: 98, 20: 1, 500: 1}
    assert percentile(counts, 0.99) == 20
    assert percentile(counts, 1.0) == 500
    assert percentile(counts, 0.0) == 10
    assert percentile({7: 1}, 0.99) == 7


@pytest.mark.parametrize(
    ("steps", "cutover", "problem"),
    [
        ((), False, "give at least one step"),
        ((5, 5), False, "each step must be above the one before"),
        ((1, 50), True, "a cutover needs a last step of 100"),
    ],
)
def test_a_plan_says_in_full_what_is_wrong_with_its_steps(
    steps: tuple[int, ...], cutover: bool, problem: str
) -> None:
    assert steps_problem(steps, cutover) == problem


def test_a_plan_takes_up_to_its_most_steps_and_a_hold_of_zero() -> None:
    steps = tuple(range(1, MAX_STEPS + 1))
    assert steps_problem(steps, False) is None
    assert plan(hold_ms=0).hold_ms == 0
    with pytest.raises(ValueError, match=r"^hold_s: must be 0 or more, not -1\.5$"):
        plan(hold_ms=-1500)


def test_each_failing_gate_says_what_it_saw_against_its_bound() -> None:
    health = StageHealth(judged=10, mismatches=1, missing=1, unobserved=1, breaker_trips=1)
    assert Gates().failures(health, "realtime") == [
        "mismatch rate 0.1 on realtime > 0 (1 of 10 events)",
        "1 event missing on realtime > 0",
        "1 event unobserved on realtime: no consumer of it was reporting receipts,"
        " so nothing proves they arrived",
        "realtime breaker opened 1 time > 0",
    ]
    again = StageHealth(missing=3, breaker_trips=2, p99_ms=300)
    assert Gates(max_realtime_p99_ms=250).failures(again, "realtime") == [
        "3 events missing on realtime > 0",
        "realtime breaker opened 2 times > 0",
        "realtime p99 latency 300 ms > 250 ms",
    ]


def test_latencies_past_ten_seconds_are_rounded_up_to_a_tenth() -> None:
    assert [latency_bucket(ms) for ms in (10_000, 12_345, 12_301)] == [10_000, 12_400, 12_400]
