"""The rollout policy as a specification: how a rollout starts, holds, advances,
rolls back, cuts over and completes, and what operators may do to it — pure
values and an explicit clock, no store, no service."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from broadcaster.exceptions import RolloutConflict
from broadcaster.rollout.plan import (
    Gates,
    Plan,
    StageHealth,
)
from broadcaster.rollout.policy import (
    ACTIVE_STATES,
    Decision,
    Move,
    Rollout,
    RolloutState,
    abort,
    evaluate,
    pause,
    resume,
    start,
)
from broadcaster.routing import CategoryFlags
from tests._shapes import assert_shape

BEFORE: dict[str, Any] = {
    "enabled": False,
    "percentage": 0,
    "adapters": ["websocket"],
    "cutover": False,
}
HOLD_MS = 60_000
T0 = 1_000_000


def plan(steps: tuple[int, ...] = (1, 25, 100), **kw: Any) -> Plan:
    options: dict[str, Any] = {"hold_ms": HOLD_MS, "gates": Gates(), "cutover": False} | kw
    return Plan("USER_ACTIVITY", "realtime", steps, **options)


def started(p: Plan | None = None) -> Rollout:
    return start(p or plan(), now_ms=T0, from_sequence_id=10, start_flags=BEFORE, by="ops").rollout


def clean(through_ms: int, judged: int = 50) -> StageHealth:
    return StageHealth(judged=judged, complete_through_ms=through_ms)


def look(r: Rollout, health: StageHealth, now: int, since: int | None, last: int = 99) -> Decision:
    return evaluate(
        r, health, now_ms=now, watched_since_ms=since, last_sequence_id=last, by="rollout:1"
    )


# -- start, hold, advance, complete -----------------------------------------------


def test_a_rollout_starts_at_its_first_step_with_the_new_adapter_added() -> None:
    decision = start(plan(), now_ms=T0, from_sequence_id=10, start_flags=BEFORE, by="ops")
    r = decision.rollout
    assert (r.state, r.stage, r.from_sequence_id, r.held_ms) == (RolloutState.RUNNING, 0, 10, 0)
    assert decision.flags == {
        "enabled": True,
        "percentage": 1,
        "adapters": ["websocket", "realtime"],
        "cutover": False,
    }
    assert decision.move is not None and decision.move.action == "start"
    assert r.reason == "started by ops" and r.note.startswith("holding: 0 of 60")
    assert r.remaining_hold_ms == HOLD_MS and r.current.percentage == 1
    # A category already writing to the new adapter keeps its adapters as they are.
    both = {**BEFORE, "adapters": ["realtime", "websocket"]}
    again = start(plan(), now_ms=T0, from_sequence_id=0, start_flags=both, by="ops")
    assert again.flags is not None and again.flags["adapters"] == ["realtime", "websocket"]


def test_hold_counts_only_watched_time_and_a_stage_advances_once_judged_through_it() -> None:
    r = started()
    # First look (e.g. after a restart): nothing is counted yet.
    d = look(r, clean(T0), T0 + 5_000, None)
    assert d.move is None and d.flags is None and d.rollout.held_ms == 0
    # Watched for 40 s: counted.
    d = look(d.rollout, clean(T0), T0 + 45_000, T0 + 5_000)
    assert d.rollout.held_ms == 40_000 and d.rollout.remaining_hold_ms == 20_000
    # The hold is reached at T0 + 65 s; events up to then are not judged yet.
    d = look(d.rollout, clean(T0 + 30_000), T0 + 65_000, T0 + 45_000)
    assert d.rollout.hold_done_ms == T0 + 65_000 and d.move is None
    assert d.rollout.held_ms == HOLD_MS and "waiting for reconciliation" in d.rollout.note
    # Judged through the moment the hold was reached: the next step.
    d = look(d.rollout, clean(T0 + 65_000), T0 + 100_000, T0 + 65_000, last=500)
    assert d.move is not None and d.move.action == "advance"
    assert d.flags is not None and d.flags["percentage"] == 25
    r2 = d.rollout
    assert (r2.stage, r2.from_sequence_id, r2.stage_started_ms) == (1, 500, T0 + 100_000)
    assert (r2.held_ms, r2.hold_done_ms) == (0, None)
    assert "step 1 (1 %) held clean for 60 s (50 events judged on realtime)" in r2.reason


def test_a_stage_with_no_event_judged_does_not_advance() -> None:
    d = look(started(), clean(T0), T0 + HOLD_MS, T0)
    d = look(d.rollout, clean(T0 + HOLD_MS, judged=0), T0 + HOLD_MS + 1, T0 + HOLD_MS)
    assert d.move is None and "waiting for an event of this stage" in d.rollout.note


def test_a_clock_that_went_back_counts_nothing() -> None:
    d = look(started(), clean(T0), T0 + 1_000, T0 + 5_000)
    assert d.rollout.held_ms == 0


def run_through(r: Rollout, now: int) -> tuple[Rollout, int, list[Decision]]:
    """Look at ``r`` until it stops running: each stage watched for its hold,
    then judged through it."""
    decisions = []
    while r.state is RolloutState.RUNNING:
        d = look(r, clean(now), now + HOLD_MS, now)
        d = look(d.rollout, clean(now + HOLD_MS), now + HOLD_MS + 1, now + HOLD_MS)
        decisions.append(d)
        r, now = d.rollout, now + HOLD_MS + 1
    return r, now, decisions


def test_a_rollout_completes_after_its_last_step_held_clean() -> None:
    r, _, decisions = run_through(started(), T0)
    assert [d.move.action for d in decisions if d.move] == ["advance", "advance", "complete"]
    assert decisions[-1].flags is None  # the last step's flags stay
    assert r.state is RolloutState.COMPLETED and r.current.percentage == 100
    assert r.flags()["percentage"] == 100 and not r.flags()["cutover"]
    assert [m.action for m in r.moves] == ["start", "advance", "advance", "complete"]
    # Nothing moves a completed rollout.
    assert look(r, StageHealth(missing=9), T0 * 2, T0).rollout == r


def test_with_cutover_the_last_stage_is_the_new_adapter_alone() -> None:
    r, _, decisions = run_through(started(plan(cutover=True)), T0)
    actions = [d.move.action for d in decisions if d.move]
    assert actions == ["advance", "advance", "cutover", "complete"]
    cut = decisions[2]
    assert cut.flags is not None and cut.flags["cutover"] is True
    assert cut.flags["percentage"] == 100
    assert "cutover" in r.reason and r.state is RolloutState.COMPLETED
    assert r.flags()["cutover"] is True


# -- rollback ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("health", "gates", "reason"),
    [
        (StageHealth(judged=100, mismatches=1), Gates(), "mismatch rate 0.01 on realtime > 0"),
        (StageHealth(judged=100, mismatches=3), Gates(max_mismatch_rate=0.02), "(3 of 100"),
        (StageHealth(missing=2), Gates(max_missing=1), "2 events missing on realtime > 1"),
        (StageHealth(unobserved=4), Gates(), "4 events unobserved on realtime"),
        (StageHealth(breaker_trips=1), Gates(), "realtime breaker opened 1 time > 0"),
        (StageHealth(p99_ms=400), Gates(max_realtime_p99_ms=250), "p99 latency 400 ms > 250"),
    ],
)
def test_a_failing_gate_rolls_back_with_its_reason(
    health: StageHealth, gates: Gates, reason: str
) -> None:
    r = started(plan(gates=gates))
    d = look(r, health, T0 + 1_000, T0)
    assert d.rollout.state is RolloutState.ROLLED_BACK
    assert d.move is not None and d.move.action == "rollback" and reason in d.move.reason
    assert reason in d.rollout.reason
    # From the first step: back to 0.
    assert d.flags is not None and d.flags["percentage"] == 0 and d.flags["cutover"] is False
    assert d.rollout.flags() == d.flags


def test_a_later_stage_rolls_back_to_the_previous_steps_percentage() -> None:
    second = replace(started(), stage=1)
    d = look(second, StageHealth(missing=1), T0 + 1, T0)
    assert d.flags is not None and d.flags["percentage"] == 1
    assert d.move is not None and d.move.stage == 0


def test_a_rollback_from_the_cutover_restores_dual_write_at_the_last_step() -> None:
    cutting = replace(started(plan(cutover=True)), stage=3)
    assert cutting.current.cutover
    d = look(cutting, StageHealth(breaker_trips=1), T0 + 1, T0)
    assert d.flags == {
        "enabled": True,
        "percentage": 100,
        "adapters": ["websocket", "realtime"],
        "cutover": False,
    }


def test_a_failure_rolls_back_even_while_the_picture_is_incomplete() -> None:
    r = started()
    d = look(r, StageHealth(judged=3, mismatches=1, complete_through_ms=0), T0 + 1, T0)
    assert d.rollout.state is RolloutState.ROLLED_BACK


# -- operators ---------------------------------------------------------------------


def test_pause_keeps_the_hold_resume_continues_it_and_a_paused_rollout_is_not_judged() -> None:
    d = look(started(), clean(T0), T0 + 30_000, T0)
    held = d.rollout.held_ms
    paused = pause(d.rollout, now_ms=T0 + 31_000, by="ops")
    assert paused.move is not None and paused.flags is None
    assert paused.rollout.state is RolloutState.PAUSED and paused.rollout.note == "paused"
    assert paused.rollout.reason == "paused by ops"
    # Paused: a failing gate changes nothing.
    assert look(paused.rollout, StageHealth(missing=5), T0 + 40_000, T0).rollout == paused.rollout
    resumed = resume(paused.rollout, now_ms=T0 + 90_000, by="ops").rollout
    assert resumed.state is RolloutState.RUNNING and resumed.held_ms == held
    assert resumed.remaining_hold_ms == HOLD_MS - held


def test_abort_restores_the_flags_from_before_the_rollout() -> None:
    r = replace(started(plan(cutover=True)), stage=3)
    d = abort(r, now_ms=T0 + 1, by="ops")
    assert d.rollout.state is RolloutState.ABORTED and d.flags == BEFORE
    assert d.move is not None and (d.move.stage, d.move.percentage) == (-1, 0)
    assert d.rollout.flags() == BEFORE
    paused = pause(started(), now_ms=T0, by="ops").rollout
    assert abort(paused, now_ms=T0, by="ops").rollout.state is RolloutState.ABORTED


@pytest.mark.parametrize(
    ("state", "move", "allowed"),
    [
        (RolloutState.RUNNING, pause, True),
        (RolloutState.PAUSED, pause, False),
        (RolloutState.PAUSED, resume, True),
        (RolloutState.RUNNING, resume, False),
        (RolloutState.COMPLETED, abort, False),
        (RolloutState.ROLLED_BACK, abort, False),
        (RolloutState.ABORTED, pause, False),
    ],
)
def test_an_operator_move_needs_the_right_state(
    state: RolloutState, move: Any, allowed: bool
) -> None:
    r = replace(started(), state=state)
    if allowed:
        assert move(r, now_ms=T0, by="ops").rollout.state is not state
    else:
        with pytest.raises(RolloutConflict, match=f"rollout is {state.value}"):
            move(r, now_ms=T0, by="ops")


def test_active_states() -> None:
    assert ACTIVE_STATES == {RolloutState.RUNNING, RolloutState.PAUSED}


# -- the stored document -------------------------------------------------------------


def test_a_rollout_survives_its_document() -> None:
    r = started(plan(cutover=True, gates=Gates(0.01, 2, 1, 250)))
    d = look(r, clean(T0), T0 + 20_000, T0)
    d = look(d.rollout, StageHealth(missing=9), T0 + 30_000, T0)
    assert Rollout.from_doc(d.rollout.as_doc()) == d.rollout
    assert d.rollout.as_doc()["plan"]["hold_s"] == 60.0


def test_a_rollout_names_the_categorys_flags_in_full_in_every_state() -> None:
    r = started(plan(cutover=True))
    rolled_back = look(r, StageHealth(missing=1), T0 + 1, T0).rollout
    aborted = abort(r, now_ms=T0 + 1, by="ops").rollout
    completed, _, _ = run_through(r, T0)
    for each in (r, rolled_back, aborted, completed):
        assert_shape(each.flags(), CategoryFlags)
        assert Rollout.from_doc(json.loads(json.dumps(each.as_doc()))) == each
    # A copy: a caller's change to the flags is not the rollout's.
    aborted.flags()["percentage"] = 99
    assert aborted.flags() == BEFORE


def test_a_document_it_did_not_write_is_refused() -> None:
    doc = started().as_doc()
    for broken in ({**doc, "state": "sleeping"}, {k: v for k, v in doc.items() if k != "plan"}):
        with pytest.raises((KeyError, ValueError)):
            Rollout.from_doc(broken)


# -- the timeline: every move says when, what, where the rollout stood, why and who ----


def test_start_pause_and_resume_are_recorded_on_the_timeline() -> None:
    begun = start(plan(), now_ms=T0, from_sequence_id=10, start_flags=BEFORE, by="ops")
    assert begun.move == Move(T0, "start", 0, 1, False, "started by ops", "ops")
    looked = look(begun.rollout, clean(T0), T0 + 30_000, T0).rollout
    paused = pause(looked, now_ms=T0 + 31_000, by="alice")
    assert paused.move == Move(T0 + 31_000, "pause", 0, 1, False, "paused by alice", "alice")
    resumed = resume(paused.rollout, now_ms=T0 + 90_000, by="bob")
    assert resumed.move == Move(T0 + 90_000, "resume", 0, 1, False, "resumed by bob", "bob")
    assert resumed.rollout.note == "holding: 30 of 60 s clean"
    assert resumed.rollout.moves == (begun.move, paused.move, resumed.move)


def test_advance_cutover_and_complete_are_recorded_with_the_stage_reached() -> None:
    r, _, decisions = run_through(started(plan(steps=(50, 100), cutover=True)), T0)
    moves = [d.move for d in decisions]
    assert [(m.action, m.stage, m.percentage, m.cutover, m.by) for m in moves if m] == [
        ("advance", 1, 100, False, "rollout:1"),
        ("cutover", 2, 100, True, "rollout:1"),
        ("complete", 2, 100, True, "rollout:1"),
    ]
    assert moves[0] is not None and moves[0].reason == (
        "step 1 (50 %) held clean for 60 s (50 events judged on realtime)"
    )
    assert moves[2] is not None and moves[2].reason == (
        "cutover held clean for 60 s (50 events judged on realtime)"
    )
    assert [m.at_ms for m in r.moves[1:]] == [T0 + k * (HOLD_MS + 1) for k in (1, 2, 3)]
    assert decisions[0].rollout.note == "holding: 0 of 60 s clean"
    assert r.note == ""


def test_one_event_judged_is_said_in_the_singular() -> None:
    d = look(started(), clean(T0), T0 + HOLD_MS, T0)
    d = look(d.rollout, clean(T0 + HOLD_MS, judged=1), T0 + HOLD_MS + 1, T0 + HOLD_MS)
    assert d.move is not None and d.move.reason.endswith("(1 event judged on realtime)")


def test_a_stage_held_but_not_yet_judged_says_so() -> None:
    d = look(started(), clean(T0), T0 + HOLD_MS, T0)
    assert d.rollout.note == (
        "held clean; waiting for reconciliation to judge the stage's last events"
    )


def test_a_rollback_is_recorded_with_every_failing_gate() -> None:
    gates = Gates(max_missing=1)
    health = StageHealth(missing=2, breaker_trips=1)
    cutting = replace(started(plan(gates=gates, cutover=True)), stage=3)
    d = look(cutting, health, T0 + 1_000, T0)
    failures = gates.failures(health, "realtime")
    assert len(failures) == 2
    assert d.move == Move(T0 + 1_000, "rollback", 2, 100, False, "; ".join(failures), "rollout:1")
    assert d.rollout.note == ""


def test_an_abort_is_recorded_with_the_flags_it_restores() -> None:
    cut_before = {**BEFORE, "enabled": True, "percentage": 100, "cutover": True}
    r = start(plan(), now_ms=T0, from_sequence_id=0, start_flags=cut_before, by="ops").rollout
    d = abort(r, now_ms=T0 + 1, by="carol")
    reason = "aborted by carol: the flags from before the rollout restored"
    assert d.move == Move(T0 + 1, "abort", -1, 100, True, reason, "carol")
    assert d.rollout.note == ""
    # A rollout stored before cutover existed kept flags without it: no cutover.
    doc = start(plan(), now_ms=T0, from_sequence_id=0, start_flags=cut_before, by="ops")
    older = doc.rollout.as_doc()
    del older["start_flags"]["cutover"]
    aborted = abort(Rollout.from_doc(older), now_ms=T0 + 1, by="ops")
    assert aborted.move is not None and aborted.move.cutover is False


def test_a_refused_operator_move_names_what_was_asked() -> None:
    with pytest.raises(RolloutConflict, match="only a running one can pause$"):
        pause(replace(started(), state=RolloutState.PAUSED), now_ms=T0, by="ops")
    with pytest.raises(RolloutConflict, match="only a paused one can resume$"):
        resume(started(), now_ms=T0, by="ops")


def test_a_rollout_whose_hold_is_done_survives_its_document() -> None:
    held = look(started(), clean(T0), T0 + HOLD_MS, T0).rollout
    assert held.hold_done_ms == T0 + HOLD_MS
    assert Rollout.from_doc(held.as_doc()) == held
