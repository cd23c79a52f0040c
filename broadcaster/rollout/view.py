"""A rollout as the admin API shows it (``GET /rollouts/{id}``): its plan,
where it stands, why it last moved, what it waits for, and its timeline."""

from __future__ import annotations

from typing import TypedDict

from ..events import format_timestamp
from ..routing import CategoryFlags
from ..store.base import RolloutRow
from .plan import GateLimits
from .policy import Rollout

__all__ = ["RolloutView", "TimelineEntry", "describe"]


class TimelineEntry(TypedDict):
    """One move of a rollout, as ``GET /rollouts/{id}`` lists it."""

    #: When (UTC ISO-8601).
    at: str
    #: ``start``, ``advance``, ``cutover``, ``pause``, ``resume``,
    #: ``rollback``, ``abort`` or ``complete``.
    action: str
    #: The stage it left the rollout at, 1-based (0: the flags from before it).
    step: int
    #: The category's percentage after the move, and whether it is cut over.
    percentage: int
    cutover: bool
    reason: str
    #: A token's name, or ``rollout:<id>`` for the rollout's own moves.
    by: str


class RolloutView(TypedDict):
    """A rollout as ``GET /rollouts/{id}`` shows it (:func:`describe`)."""

    id: int
    category: str
    #: ``running``, ``paused``, ``rolled_back``, ``aborted`` or ``completed``.
    state: str
    #: The plan: the new adapter, its steps (percentages), each held
    #: ``hold_s`` clean under ``gates``, and whether a cutover follows.
    adapter: str
    steps: list[int]
    hold_s: float
    gates: GateLimits
    cutover: bool
    #: The current stage, 1-based, of ``stages`` (the cutover is the last).
    step: int
    stages: int
    #: The category's percentage on the new adapter where the rollout stands.
    percentage: int
    #: Whether the category is on the new adapter only now.
    in_cutover: bool
    stage_started_at: str
    #: The stage's events are those stored after this sequence id.
    from_sequence_id: int
    #: Clean, watched time the stage has held, and what it still needs.
    held_s: float
    remaining_hold_s: float
    #: Why it last moved.
    reason: str
    #: What it waits for now ("" when it is not running).
    note: str
    #: The category's flags before the rollout: what an abort restores.
    flags_before: CategoryFlags
    created_at: str
    updated_at: str
    #: One more with every save: a save names the version it read.
    version: int
    timeline: list[TimelineEntry]


def describe(row: RolloutRow) -> RolloutView:
    """A rollout as ``GET /rollouts/{id}`` shows it: the plan, where it stands
    (``step`` of ``stages``, the category's ``percentage`` by it), the
    ``reason`` for its last move and what it waits for (``note``), and its
    timeline."""
    rollout = Rollout.from_doc(row.doc)
    plan = rollout.plan
    stage = rollout.current
    flags = rollout.flags()
    return RolloutView(
        id=row.id,
        category=row.category,
        state=row.state,
        adapter=plan.adapter,
        steps=list(plan.steps),
        hold_s=plan.hold_ms / 1000,
        gates=plan.gates.as_dict(),
        cutover=plan.cutover,
        step=stage.number,
        stages=plan.stages,
        percentage=flags["percentage"],
        in_cutover=flags["cutover"],
        stage_started_at=format_timestamp(rollout.stage_started_ms),
        from_sequence_id=rollout.from_sequence_id,
        held_s=rollout.held_ms / 1000,
        remaining_hold_s=rollout.remaining_hold_ms / 1000,
        reason=rollout.reason,
        note=rollout.note,
        flags_before=rollout.start_flags.copy(),
        created_at=format_timestamp(row.created_at_ms),
        updated_at=format_timestamp(row.updated_at_ms),
        version=row.version,
        timeline=[
            TimelineEntry(
                at=format_timestamp(m.at_ms),
                action=m.action,
                step=m.stage + 1,
                percentage=m.percentage,
                cutover=m.cutover,
                reason=m.reason,
                by=m.by,
            )
            for m in rollout.moves
        ],
    )
