"""Progressive rollout policy (docs/rollouts.md): a pure state machine, no
I/O, the clock passed in (wall-clock milliseconds, as the store keeps them).

A rollout moves one category through *stages*: each step of the plan (the
share of the category's events dual-written to the new adapter), and, with
``cutover``, a last stage where the category goes to the new adapter only.
Each stage is held while its health gates pass:

* its **evidence** is what happened during the stage only: the events stored
  after the stage began (by sequence id), judged by reconciliation's rules
  once they are older than its window and buffer, the new adapter's breaker
  trips, and its publish-to-receive latency (:class:`StageHealth`);
* a gate that fails **rolls back** at once: to the previous step's
  percentage (0 from the first step; dual-write from the cutover), state
  ``rolled_back``, the reason kept;
* a stage **advances** once it has been watched clean for ``hold_s`` *and*
  every event stored up to the moment the hold was reached has a final
  verdict, at least one of them on the new adapter: a rollout never moves
  on a partial picture, nor on no picture at all. Hold time counts
  only while someone watches (a caller passes when it last looked); time
  paused or with the service down is not counted;
* after the last stage the rollout is ``completed``.

Operators ``pause`` (the stage and its hold are kept), ``resume``, and
``abort`` (the category's flags as they were before the rollout). Every
decision says which category flags to apply with it, so the caller writes
the move and the flags together. The plan, a stage's health and the gates'
verdict are values of :mod:`.plan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final

from ..exceptions import RolloutConflict
from ..routing import CategoryFlags
from .plan import Gates, Plan, Stage, StageHealth

__all__ = [
    "ACTIVE_STATES",
    "Decision",
    "Move",
    "Rollout",
    "RolloutState",
    "abort",
    "evaluate",
    "pause",
    "resume",
    "start",
]


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    COMPLETED = "completed"


#: A category has at most one rollout in these states.
ACTIVE_STATES: Final = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})


@dataclass(frozen=True, slots=True)
class Move:
    """One entry of a rollout's timeline: at ``at_ms`` ``by`` (a token's name,
    or ``rollout:<id>`` for the rollout itself) made ``action`` and the
    rollout stood at ``stage`` (0-based; -1: the flags before it began) with
    ``percentage`` and ``cutover``, for ``reason``."""

    at_ms: int
    action: str
    stage: int
    percentage: int
    cutover: bool
    reason: str
    by: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at_ms": self.at_ms,
            "action": self.action,
            "stage": self.stage,
            "percentage": self.percentage,
            "cutover": self.cutover,
            "reason": self.reason,
            "by": self.by,
        }


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout's whole state, as the store keeps it (:meth:`as_doc`).

    ``from_sequence_id``: the events of the current stage are those stored
    after it. ``held_ms``: clean, watched time held at this stage so far;
    ``hold_done_ms``: when it reached ``hold_ms`` (None: not yet).
    ``start_flags``: the category's flags before the rollout (what abort
    restores). ``reason``: why it last moved; ``note``: what it waits for now."""

    plan: Plan
    state: RolloutState
    stage: int
    stage_started_ms: int
    from_sequence_id: int
    held_ms: int
    hold_done_ms: int | None
    start_flags: CategoryFlags
    reason: str
    note: str
    moves: tuple[Move, ...]

    @property
    def current(self) -> Stage:
        return self.plan.stage(self.stage)

    @property
    def remaining_hold_ms(self) -> int:
        return max(0, self.plan.hold_ms - self.held_ms)

    def stage_flags(self, index: int) -> CategoryFlags:
        """The category's flags at stage ``index``: enabled, the stage's
        percentage, the starting adapters with the rollout's own."""
        stage = self.plan.stage(index)
        return self._flags(stage.percentage, stage.cutover)

    def flags(self) -> CategoryFlags:
        """The category's flags where the rollout stands now: its stage's
        while active or completed, the rolled-back percentage, or the
        starting flags once aborted."""
        if self.state is RolloutState.ABORTED:
            return self.start_flags.copy()
        if self.state is RolloutState.ROLLED_BACK:
            return self._flags(self._previous_percentage(), False)
        return self.stage_flags(self.stage)

    def _previous_percentage(self) -> int:
        return self.plan.steps[self.stage - 1] if self.stage > 0 else 0

    def _flags(self, percentage: int, cutover: bool) -> CategoryFlags:
        adapters = list(self.start_flags["adapters"])
        if self.plan.adapter not in adapters:
            adapters.append(self.plan.adapter)
        return CategoryFlags(
            enabled=True, percentage=percentage, adapters=adapters, cutover=cutover
        )

    def _moved(self, move: Move, **changes: Any) -> Rollout:
        return replace(self, reason=move.reason, moves=(*self.moves, move), **changes)

    def as_doc(self) -> dict[str, Any]:
        """The JSON document the store keeps (:meth:`from_doc` reads it)."""
        return {
            "plan": self.plan.as_dict(),
            "state": self.state.value,
            "stage": self.stage,
            "stage_started_ms": self.stage_started_ms,
            "from_sequence_id": self.from_sequence_id,
            "held_ms": self.held_ms,
            "hold_done_ms": self.hold_done_ms,
            "start_flags": self.start_flags.copy(),
            "reason": self.reason,
            "note": self.note,
            "moves": [m.as_dict() for m in self.moves],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Rollout:
        """The rollout :meth:`as_doc` wrote. Raises ``KeyError``,
        ``ValueError`` or ``TypeError`` for a document it did not write."""
        plan = doc["plan"]
        gates = plan["gates"]
        return cls(
            plan=Plan(
                category=plan["category"],
                adapter=plan["adapter"],
                steps=tuple(int(s) for s in plan["steps"]),
                hold_ms=round(float(plan["hold_s"]) * 1000),
                gates=Gates(
                    max_mismatch_rate=float(gates["max_mismatch_rate"]),
                    max_missing=int(gates["max_missing"]),
                    max_breaker_trips=int(gates["max_breaker_trips"]),
                    max_realtime_p99_ms=gates["max_realtime_p99_ms"],
                ),
                cutover=bool(plan["cutover"]),
            ),
            state=RolloutState(doc["state"]),
            stage=int(doc["stage"]),
            stage_started_ms=int(doc["stage_started_ms"]),
            from_sequence_id=int(doc["from_sequence_id"]),
            held_ms=int(doc["held_ms"]),
            hold_done_ms=doc["hold_done_ms"],
            start_flags=_flags_of(doc["start_flags"]),
            reason=str(doc["reason"]),
            note=str(doc["note"]),
            moves=tuple(Move(**m) for m in doc["moves"]),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """A rollout after a decision: the ``move`` it made (None: it held), and
    the category flags to write with it (None: they stay as they are)."""

    rollout: Rollout
    move: Move | None = None
    flags: CategoryFlags | None = None


def start(
    plan: Plan,
    *,
    now_ms: int,
    from_sequence_id: int,
    start_flags: CategoryFlags,
    by: str,
) -> Decision:
    """A new rollout of ``plan`` at its first stage; ``from_sequence_id`` is
    the last event stored before it, ``start_flags`` the category's flags now."""
    first = plan.stage(0)
    move = Move(now_ms, "start", 0, first.percentage, first.cutover, f"started by {by}", by)
    rollout = Rollout(
        plan=plan,
        state=RolloutState.RUNNING,
        stage=0,
        stage_started_ms=now_ms,
        from_sequence_id=from_sequence_id,
        held_ms=0,
        hold_done_ms=None,
        start_flags=start_flags.copy(),
        reason=move.reason,
        note=_holding(plan.hold_ms, 0),
        moves=(move,),
    )
    return Decision(rollout, move, rollout.stage_flags(0))


def evaluate(
    rollout: Rollout,
    health: StageHealth,
    *,
    now_ms: int,
    watched_since_ms: int | None,
    last_sequence_id: int,
    by: str,
) -> Decision:
    """Judge a running rollout's current stage by ``health`` at ``now_ms``.

    ``watched_since_ms``: when the caller last evaluated this rollout, unchanged
    since (None after a restart, or when someone else changed it): the time
    in between counts towards the hold. ``last_sequence_id`` is the last
    event stored now (where a next stage begins). A rollout that is not
    running is returned as it is."""
    if rollout.state is not RolloutState.RUNNING:
        return Decision(rollout)
    failures = rollout.plan.gates.failures(health, rollout.plan.adapter)
    if failures:
        back = rollout._previous_percentage()
        move = Move(now_ms, "rollback", rollout.stage - 1, back, False, "; ".join(failures), by)
        rolled = rollout._moved(move, state=RolloutState.ROLLED_BACK, note="")
        return Decision(rolled, move, rolled.flags())
    credit = now_ms - watched_since_ms if watched_since_ms is not None else 0
    held = min(rollout.plan.hold_ms, rollout.held_ms + max(0, credit))
    done = rollout.hold_done_ms
    if done is None and held >= rollout.plan.hold_ms:
        done = now_ms
    note = None
    if done is None:
        note = _holding(rollout.plan.hold_ms, held)
    elif health.complete_through_ms < done:
        note = "held clean; waiting for reconciliation to judge the stage's last events"
    elif not health.judged:
        # Nothing seen is no evidence: a stage without traffic never passes.
        note = f"held; waiting for an event of this stage to be judged on {rollout.plan.adapter}"
    if note is not None:
        return Decision(replace(rollout, held_ms=held, hold_done_ms=done, note=note))
    finished = rollout.current
    why = (
        f"{_stage_name(finished)} held clean for {rollout.plan.hold_ms / 1000:g} s"
        f" ({_events(health.judged)} judged on {rollout.plan.adapter})"
    )
    following = rollout.stage + 1
    if following == rollout.plan.stages:
        move = Move(
            now_ms, "complete", rollout.stage, finished.percentage, finished.cutover, why, by
        )
        return Decision(rollout._moved(move, state=RolloutState.COMPLETED, note=""), move)
    stage = rollout.plan.stage(following)
    action = "cutover" if stage.cutover else "advance"
    move = Move(now_ms, action, following, stage.percentage, stage.cutover, why, by)
    moved = rollout._moved(
        move,
        stage=following,
        stage_started_ms=now_ms,
        from_sequence_id=last_sequence_id,
        held_ms=0,
        hold_done_ms=None,
        note=_holding(rollout.plan.hold_ms, 0),
    )
    return Decision(moved, move, moved.stage_flags(following))


def pause(rollout: Rollout, *, now_ms: int, by: str) -> Decision:
    """Hold a running rollout where it is; its stage's hold stops counting.
    Raises :class:`RolloutConflict` unless it is running."""
    _require(rollout, RolloutState.RUNNING, "pause")
    current = rollout.current
    move = Move(
        now_ms, "pause", rollout.stage, current.percentage, current.cutover, f"paused by {by}", by
    )
    return Decision(rollout._moved(move, state=RolloutState.PAUSED, note="paused"), move)


def resume(rollout: Rollout, *, now_ms: int, by: str) -> Decision:
    """Let a paused rollout run on from its stage and the hold it had.
    Raises :class:`RolloutConflict` unless it is paused."""
    _require(rollout, RolloutState.PAUSED, "resume")
    current = rollout.current
    move = Move(
        now_ms, "resume", rollout.stage, current.percentage, current.cutover, f"resumed by {by}", by
    )
    note = _holding(rollout.plan.hold_ms, rollout.held_ms)
    return Decision(rollout._moved(move, state=RolloutState.RUNNING, note=note), move)


def abort(rollout: Rollout, *, now_ms: int, by: str) -> Decision:
    """End a running or paused rollout and restore the category's flags from
    before it began. Raises :class:`RolloutConflict` otherwise."""
    if rollout.state not in ACTIVE_STATES:
        raise RolloutConflict(
            f"rollout is {rollout.state.value}: only a running or paused one can be aborted"
        )
    flags = rollout.start_flags.copy()
    move = Move(
        now_ms,
        "abort",
        -1,
        flags["percentage"],
        flags["cutover"],
        f"aborted by {by}: the flags from before the rollout restored",
        by,
    )
    return Decision(rollout._moved(move, state=RolloutState.ABORTED, note=""), move, flags)


def _flags_of(doc: Mapping[str, Any]) -> CategoryFlags:
    """The category flags a rollout's document keeps (:meth:`Rollout.as_doc`);
    a document stored before cutover existed has none, which means none."""
    return CategoryFlags(
        enabled=bool(doc["enabled"]),
        percentage=int(doc["percentage"]),
        adapters=[str(name) for name in doc["adapters"]],
        cutover=bool(doc.get("cutover", False)),
    )


def _require(rollout: Rollout, state: RolloutState, verb: str) -> None:
    if rollout.state is not state:
        raise RolloutConflict(
            f"rollout is {rollout.state.value}: only a {state.value} one can {verb}"
        )


def _stage_name(stage: Stage) -> str:
    if stage.cutover:
        return "cutover"
    return f"step {stage.number} ({stage.percentage} %)"


def _events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


def _holding(hold_ms: int, held_ms: int) -> str:
    return f"holding: {held_ms / 1000:g} of {hold_ms / 1000:g} s clean"
