"""Rollouts of one running broadcaster (docs/rollouts.md): what the admin API
calls, and the controller that drives them.

Every move a rollout makes is a runtime configuration change, written in the
same store transaction as the rollout's new state and audited as
``rollout:<id>`` (:meth:`~broadcaster.flags.RuntimeFlags.change_category`):
every instance follows it as it follows any flag change. A save names the
version of the rollout it read, so an operator's pause or abort on one
instance and the controller's move on another never both land.

:class:`RolloutController` evaluates every running rollout once per
interval, on the one instance that drives them (the one that writes to the
new adapter, so that the breaker it judges is its own): gates on the
stage's evidence (:mod:`.evidence`), then the policy's decision
(:mod:`.policy`). A rollout whose category's flags were changed under it (a
stale configuration document written by another instance) gets its flags
applied again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from ..events import Category
from ..exceptions import RolloutConflict, StoreError
from ..store.base import ConfigChange, RolloutRow, RolloutWrite, rollout_actor
from . import policy
from .evidence import StageEvidence, breaker_opens
from .plan import Gates, Plan, StageHealth
from .policy import Decision, Move, Rollout, RolloutState
from .view import describe

if TYPE_CHECKING:
    from ..core import Broadcaster

__all__ = ["DEFAULT_INTERVAL_S", "RolloutController", "Rollouts", "describe"]

log = structlog.get_logger("broadcaster.rollout")

#: How often rollouts are evaluated when ``RECONCILE_INTERVAL_S`` is 0.
DEFAULT_INTERVAL_S = 30.0


class Rollouts:
    """The rollouts of ``broadcaster``'s store. ``clock``: wall time in seconds."""

    def __init__(self, broadcaster: Broadcaster, *, clock: Callable[[], float] = time.time) -> None:
        self._b = broadcaster
        self._clock = clock
        self._evidence: dict[int, StageEvidence] = {}
        # id -> (version this instance saved, when it evaluated it): hold
        # time counts from there while nobody else changed the rollout.
        self._watched: dict[int, tuple[int, int]] = {}
        # The last sequence id stored when this instance began driving
        # rollouts (None: not driving). What was stored before it may have
        # been in flight when the previous driver died, its receipts lost
        # with that process's probes: reconciliation reports and repairs
        # those events, but no gate counts a crash against the new path.
        self._driving_from: int | None = None

    @property
    def horizon_ms(self) -> int:
        """How old an event must be before a gate judges it: reconciliation's
        window plus its buffer."""
        policy_ = self._b.reconciler.policy
        return policy_.window_ms + policy_.buffer_ms

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- reading ---------------------------------------------------------------

    async def get(self, rollout_id: int) -> RolloutRow | None:
        return await self._b.store.rollout(rollout_id)

    async def all(self) -> list[RolloutRow]:
        return await self._b.store.rollouts()

    async def active_for(self, category: Category) -> RolloutRow | None:
        """The running or paused rollout of ``category``, if any."""
        for row in await self._b.store.rollouts(active_only=True):
            if row.category == category.value:
                return row
        return None

    # -- operators' moves ------------------------------------------------------

    async def start(
        self,
        category: Category,
        steps: tuple[int, ...],
        *,
        hold_s: float,
        gates: Gates,
        cutover: bool,
        by: str,
    ) -> RolloutRow:
        """Start a rollout of ``category`` at its first step. Raises
        ``ValueError`` for a plan the service cannot run, and
        :class:`RolloutConflict` when the category has one running or paused."""
        primary = self._b.settings.dual_write_primary_adapter
        others = [name for name in self._b.adapters if name != primary]
        if not others:
            raise ValueError(f"no adapter besides the primary ({primary}) to roll out to")
        plan = Plan(category.value, others[0], steps, round(hold_s * 1000), gates, cutover)
        await self.begin_driving()
        await self._b.flags.load(quiet=True)
        decision = policy.start(
            plan,
            now_ms=self._now_ms(),
            from_sequence_id=await self._b.store.last_sequence_id(),
            start_flags=self._b.flags.category(category),
            by=by,
        )
        doc = decision.rollout.as_doc()
        assert decision.flags is not None and decision.move is not None

        async def create(change: ConfigChange) -> RolloutWrite:
            return await self._b.store.create_rollout(category.value, doc, change=change)

        written = await self._b.flags.change_category(
            category,
            decision.flags,
            path=f"POST /rollouts by {by}: {_described(plan, decision.move)}",
            persist=create,
            actor=f"a rollout started by {by}",
        )
        log.info(
            "rollout started",
            rollout=written.row.id,
            category=category.value,
            steps=list(steps),
            by=by,
        )
        return written.row

    async def pause(self, rollout_id: int, *, by: str) -> RolloutRow:
        return await self._operate(rollout_id, policy.pause, by=by)

    async def resume(self, rollout_id: int, *, by: str) -> RolloutRow:
        return await self._operate(rollout_id, policy.resume, by=by)

    async def abort(self, rollout_id: int, *, by: str) -> RolloutRow:
        return await self._operate(rollout_id, policy.abort, by=by)

    async def _operate(
        self, rollout_id: int, move: Callable[..., Decision], *, by: str
    ) -> RolloutRow:
        """An operator's move on the rollout as stored now. Raises
        ``LookupError`` when there is no such rollout and
        :class:`RolloutConflict` when its state does not allow the move."""
        row = await self._b.store.rollout(rollout_id)
        if row is None:
            raise LookupError(f"no rollout {rollout_id}")
        await self._b.flags.load(quiet=True)
        decision = move(Rollout.from_doc(row.doc), now_ms=self._now_ms(), by=by)
        assert decision.move is not None
        action = decision.move.action
        saved = await self._save(
            row, decision, path=f"POST /rollouts/{rollout_id}/{action} by {by}"
        )
        log.info(
            f"rollout {decision.move.action}",
            rollout=rollout_id,
            category=row.category,
            by=by,
        )
        return saved

    # -- the controller's look -------------------------------------------------

    def forget(self) -> None:
        """Drop what this instance gathered (it no longer drives rollouts):
        whoever drives them next starts its stages' looks afresh."""
        self._evidence.clear()
        self._watched.clear()
        self._driving_from = None

    async def begin_driving(self) -> int:
        """Mark where this instance began driving rollouts (once until
        :meth:`forget`): gates judge only events stored after the mark, or
        after the stage began if later. Returns the mark."""
        if self._driving_from is None:
            self._driving_from = await self._b.store.last_sequence_id()
        return self._driving_from

    async def tick(self) -> list[RolloutRow]:
        """Evaluate every running rollout once, and apply again the flags of
        any active one whose category's flags differ from its own. Returns
        the active rollouts as they are now (a moved one as saved)."""
        await self.begin_driving()
        await self._b.flags.load(quiet=True)
        rows = await self._b.store.rollouts(active_only=True)
        for gone in set(self._watched) - {row.id for row in rows}:
            self._watched.pop(gone, None)
            self._evidence.pop(gone, None)
        result = []
        for row in rows:
            try:
                row = await self._evaluate(row)
                row = await self._reapply(row)
            except RolloutConflict as exc:
                # Someone else moved it since it was read: next look.
                log.info("rollout changed meanwhile; looked at again next time", error=str(exc))
                self._watched.pop(row.id, None)
            result.append(row)
        return result

    async def _evaluate(self, row: RolloutRow) -> RolloutRow:
        rollout = Rollout.from_doc(row.doc)
        if rollout.state is not RolloutState.RUNNING:
            return row
        now_ms = self._now_ms()
        health = await self._health(row.id, rollout, now_ms)
        seen = self._watched.get(row.id)
        decision = policy.evaluate(
            rollout,
            health,
            now_ms=now_ms,
            watched_since_ms=seen[1] if seen is not None and seen[0] == row.version else None,
            last_sequence_id=await self._b.store.last_sequence_id(),
            by=rollout_actor(row.id),
        )
        action = decision.move.action if decision.move is not None else "hold"
        saved = await self._save(row, decision, path=f"rollout {row.id} {action}")
        self._watched[row.id] = (saved.version, now_ms)
        if decision.move is not None:
            level = "warning" if decision.move.action == "rollback" else "info"
            getattr(log, level)(
                f"rollout {decision.move.action}",
                rollout=row.id,
                category=row.category,
                percentage=decision.move.percentage,
                reason=decision.move.reason,
            )
        return saved

    async def _health(self, rollout_id: int, rollout: Rollout, now_ms: int) -> StageHealth:
        adapter = rollout.plan.adapter
        opened, not_closed = breaker_opens(self._b.breaker_states().get(adapter))
        key = (rollout_id, rollout.stage, rollout.from_sequence_id)
        evidence = self._evidence.get(rollout_id)
        if evidence is None or evidence.key != key:
            evidence = StageEvidence(
                key,
                category=rollout.plan.category,
                adapter=adapter,
                from_sequence_id=max(rollout.from_sequence_id, await self.begin_driving()),
                opens=opened,
            )
            self._evidence[rollout_id] = evidence
        return await evidence.health(
            self._b.store,
            self._b.reconciler,
            now_ms=now_ms,
            horizon_ms=self.horizon_ms,
            trips=evidence.trips(opened, not_closed),
        )

    async def _reapply(self, row: RolloutRow) -> RolloutRow:
        rollout = Rollout.from_doc(row.doc)
        if rollout.state not in policy.ACTIVE_STATES:
            return row
        category = Category(row.category)
        wanted = rollout.flags()
        if self._b.flags.category(category) == wanted:
            return row
        log.warning(
            "rollout flags applied again: the category's flags differed from the rollout's",
            rollout=row.id,
            category=row.category,
            found=self._b.flags.category(category),
        )
        again = Decision(rollout, None, wanted)
        return await self._save(row, again, path=f"rollout {row.id}: flags applied again")

    # -- writing -----------------------------------------------------------------

    async def _save(self, row: RolloutRow, decision: Decision, *, path: str) -> RolloutRow:
        """Write ``decision`` over ``row`` (at its version), with its flags
        change if it has one, in one transaction; the audit's ``path`` is
        ``path`` and where the move leaves the category."""
        rollout = decision.rollout
        doc, state = rollout.as_doc(), rollout.state.value
        store = self._b.store
        if decision.flags is None:
            written = await store.save_rollout(row.id, doc, state=state, version=row.version)
            return written.row

        async def save(change: ConfigChange) -> RolloutWrite:
            return await store.save_rollout(
                row.id, doc, state=state, version=row.version, change=change
            )

        move = decision.move
        what = _described(rollout.plan, move) if move is not None else _stage_name(rollout)
        written = await self._b.flags.change_category(
            Category(row.category),
            decision.flags,
            path=f"{path}: {what}",
            persist=save,
            actor=rollout_actor(row.id),
        )
        return written.row


def _stage_name(rollout: Rollout) -> str:
    stage = rollout.current
    if stage.cutover:
        return "cutover"
    return f"step {stage.number} of {len(rollout.plan.steps)} ({stage.percentage} %)"


def _described(plan: Plan, move: Move) -> str:
    """A move in the audit's words: where the category now stands, and why."""
    if move.stage < 0:
        where = f"{move.percentage} %, the flags from before the rollout"
    elif move.cutover:
        where = f"{plan.category} on {plan.adapter} only"
    else:
        where = f"step {move.stage + 1} of {len(plan.steps)} ({move.percentage} %)"
    if move.action == "rollback":
        return f"rolled back to {move.percentage} %: {move.reason}"
    if move.action in ("advance", "cutover"):
        return f"{where}: {move.reason}"
    return where


class RolloutController:
    """Evaluate ``rollouts`` every ``interval_s`` in a task of its own while
    ``drives()`` says this instance drives them (``start``, ``stop``). A
    round that fails (the store unavailable) is logged and the next one
    tries again; an instance that stops driving forgets what it gathered."""

    def __init__(
        self,
        rollouts: Rollouts,
        *,
        interval_s: float,
        drives: Callable[[], bool] = lambda: True,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.rollouts = rollouts
        self.interval_s = interval_s
        self._drives = drives
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="broadcaster-rollouts"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def run_once(self) -> list[RolloutRow]:
        """One round: evaluate if this instance drives rollouts."""
        if not self._drives():
            self.rollouts.forget()
            return []
        return await self.rollouts.tick()

    async def _run(self) -> None:
        if self._drives():
            # At once, before traffic: the mark is where this process began.
            try:
                await self.rollouts.begin_driving()
            except StoreError as exc:
                log.error("rollouts not marked at start", error=str(exc))
        while True:
            await self._sleep(self.interval_s)
            try:
                await self.run_once()
            except (StoreError, ValueError) as exc:  # store down; a bad document in it
                log.error("rollouts not evaluated this round", error=str(exc))
