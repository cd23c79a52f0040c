"""The demo's progressive rollouts, once the main stream is over and counted:
USER_ACTIVITY 1 → 25 → 100 through ``POST /rollouts``, with a fault on the
Realtime path that damages the events the step to 25 % adds (the rollout
rolls back on its own), then a clean run that cuts the category over to
Realtime.

The controller runs here as ``broadcaster serve`` runs it, every tenth of a
second, and the gates judge events as soon as they are older than a
demo-only reconcile window and buffer: with the production timings (hold
times of minutes) a rollout takes an afternoon, not a few seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import httpx

from ..adapters.realtime import RealtimeAdapter
from ..core import Broadcaster
from ..events import Category, EventRecord
from ..rollout.manager import RolloutController, Rollouts
from ..routing import bucket
from .console import errors_counted
from .stream import make_event
from .timeline import RECOVERY_TIMEOUT_S, DemoBase

__all__ = ["DamagingRealtimeAdapter", "RolloutPhase"]

# Demo-only: how long each step holds, how often the controller looks, and
# how old an event must be before a gate judges it (window and buffer). The
# consumers' receipts reach the store in batches, later still on a busy
# machine: judged sooner, an event still on its way would count as missing
# and roll back a clean step.
HOLD_S = 0.3
LOOK_EVERY_S = 0.1
GATE_WINDOW_MS = 500
GATE_BUFFER_MS = 700

ROLLOUT_CATEGORY = Category.USER_ACTIVITY


class DamagingRealtimeAdapter(RealtimeAdapter):
    """The demo's Realtime adapter with a fault it can switch on: while
    :attr:`damaging` is ``(category, first_bucket, after_sequence_id)``,
    events of that category published after ``after_sequence_id`` whose
    sampling bucket is ``first_bucket`` or above leave with a payload byte
    changed — a faulty proxy or encoder on the new path that only some keys go
    through. Their consumer's checksum check fails. Keyed so, the fault shows
    exactly when a rollout's step first routes those keys to the new path,
    however fast or slow the machine: events published before the rollout
    set its flags (routed by the flags before it) are left alone."""

    damaging: tuple[Category, int, int] | None = None

    async def send(self, batch: Sequence[EventRecord]) -> None:
        if self.damaging is not None:
            category, first, after = self.damaging
            batch = [
                self._damaged(r)
                if r.category is category
                and r.sequence_id > after
                and bucket(category.value, r.routing_key) >= first
                else r
                for r in batch
            ]
        await super().send(batch)

    @staticmethod
    def _damaged(record: EventRecord) -> EventRecord:
        return dataclasses.replace(record, wire=record.wire.replace(b"h\xc3\xa9llo", b"hello"))


class RolloutPhase(DemoBase):
    """Two rollouts of USER_ACTIVITY: one a fault rolls back, one that cuts over."""

    async def _rollouts(
        self,
        b: Broadcaster,
        http: httpx.AsyncClient,
        rt: DamagingRealtimeAdapter,
        rollouts: Rollouts,
    ) -> None:
        policy = b.reconciler.policy
        b.reconciler.policy = dataclasses.replace(
            policy, window_ms=GATE_WINDOW_MS, buffer_ms=GATE_BUFFER_MS
        )
        controller = RolloutController(rollouts, interval_s=LOOK_EVERY_S)
        stop = asyncio.Event()
        stream = asyncio.create_task(self._stream(b, stop), name="demo-rollout-stream")
        controller.start()
        try:
            self.note(
                f"{self.t()} progressive rollout of {ROLLOUT_CATEGORY.value} through POST /rollouts"
                f" (demo-only: each step holds {HOLD_S:g} s; gates judge events older than"
                f" {(GATE_WINDOW_MS + GATE_BUFFER_MS) / 1000:g} s; no mismatch, none missing,"
                " no breaker trip)"
            )
            # Each damaged event's consumer logs a checksum mismatch: the
            # narration says what happens instead.
            with errors_counted(self.summary.warnings, {"checksum mismatch"}):
                try:
                    first = await self._run(
                        http, [1, 25, 100], cutover=False, fault=(b, rt), fault_at=25
                    )
                finally:
                    rt.damaging = None
            second = await self._run(http, [25, 100], cutover=True, fault=None, fault_at=None)
            self.summary.rollouts = [first, second]
            routed = (await b.publish(ROLLOUT_CATEGORY, "page.view", {"n": -1})).routed_to
            self.summary.cutover_routing = list(routed)
            self.note(
                f"{self.t()}        {ROLLOUT_CATEGORY.value} is cut over: its next event went to"
                f" {', '.join(routed)} only; WebSocket subscribers get nothing new of it"
            )
        finally:
            stop.set()
            await controller.stop()
            await stream
            b.reconciler.policy = policy

    async def _stream(self, b: Broadcaster, stop: asyncio.Event) -> None:
        """USER_ACTIVITY events, up to a couple of hundred a second, until ``stop``."""
        rng = random.Random(self.seed + 1)
        i = 0
        while not stop.is_set():
            batch: list[dict[str, Any]] = []
            while len(batch) < 2:
                event = make_event(rng, i)
                i += 1
                if event["category"] == ROLLOUT_CATEGORY.value:
                    batch.append(event)
            await b.publish_many(batch)
            try:
                await asyncio.wait_for(stop.wait(), 0.01)
            except TimeoutError:
                pass

    async def _run(
        self,
        http: httpx.AsyncClient,
        steps: list[int],
        *,
        cutover: bool,
        fault: tuple[Broadcaster, DamagingRealtimeAdapter] | None,
        fault_at: int | None,
    ) -> dict[str, Any]:
        """Start one rollout and narrate its moves until it ends (with
        ``fault``, the Realtime path damages what the steps past the first
        add, narrated once the rollout reaches ``fault_at`` %); its final view."""
        plan = {"category": ROLLOUT_CATEGORY.value, "steps": steps, "hold_s": HOLD_S}
        response = await http.post("/rollouts", json={**plan, "cutover": cutover})
        response.raise_for_status()
        view: dict[str, Any] = response.json()
        if fault is not None:
            # The keys past the first step's, in events published under the
            # rollout's flags: what its later steps add. The flags from before
            # it (USER_ACTIVITY at 50 %) routed more keys, and those events
            # may still be on their way.
            b, rt = fault
            rt.damaging = (ROLLOUT_CATEGORY, steps[0], await b.store.last_sequence_id())
        path = f"/rollouts/{view['id']}"
        self.note(
            f"{self.t()} rollout {view['id']}: steps {' → '.join(map(str, steps))} %"
            + (" then cutover" if cutover else "")
        )
        shown = 0
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            while True:
                for move in view["timeline"][shown:]:
                    self._narrate(view["id"], move)
                shown = len(view["timeline"])
                if view["state"] != "running":
                    break
                if fault_at is not None and view["percentage"] == fault_at:
                    fault_at = None
                    self.note(
                        f"{self.t()}        fault at {view['percentage']} %: the Realtime path"
                        f" damages the {ROLLOUT_CATEGORY.value} events this step adds (a payload"
                        " byte changed on the way)"
                    )
                await asyncio.sleep(0.05)
                view = (await http.get(path)).raise_for_status().json()
        audit = (await http.get("/audit")).raise_for_status().json()["entries"]
        last = next(e for e in reversed(audit) if e["actor"] == f"rollout:{view['id']}")
        view["last_audit"] = last
        self.note(f"       audit #{last['id']} by {last['actor']!r}: {last['path']}")
        return view

    def _narrate(self, rollout_id: int, move: dict[str, Any]) -> None:
        where = "cutover" if move["cutover"] else f"{move['percentage']} %"
        action = move["action"]
        self.note(f"{self.t()}        rollout {rollout_id} {action:<8} {where:<8} {move['reason']}")
