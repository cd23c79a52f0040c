"""Rollouts driven over a real SQLite store with an injected clock: a rollout
advances through every step when its gates pass, rolls back on the next look
after a gate fails (with the reason in the rollout and in the audit), never
judges what reconciliation has not had time to see, resumes after a restart
at the same step with the same hold left (what a killed service's own probe
never reported is reconciliation's to report and repair, not a gate's), and
cuts over to the new adapter alone — from which a rollback restores
dual-write."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.core import Broadcaster, Receipt
from broadcaster.events import Category
from broadcaster.exceptions import RolloutConflict
from broadcaster.flags import CategoryPatch
from broadcaster.reconcile.reconciler import Reconciler
from broadcaster.rollout.manager import RolloutController, Rollouts, describe
from broadcaster.rollout.plan import Gates
from broadcaster.rollout.view import RolloutView
from broadcaster.routing import bucket
from broadcaster.settings import load_settings
from broadcaster.store.base import ConsumerReceipt, RolloutRow
from broadcaster.store.sqlite import SQLiteStore
from tests._fakes import FaultyAdapter
from tests._shapes import assert_shape
from tests._wait import until

UA = Category.USER_ACTIVITY
HOLD_S = 10.0
#: Reconciliation's window plus buffer in these tests: how old an event must
#: be before a gate judges it.
HORIZON_S = 2.0


def _keys() -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < 100:
        found.setdefault(bucket(UA.value, f"user-{i}"), f"user-{i}")
        i += 1
    return [found[b] for b in range(100)]


#: A key per sampling bucket of USER_ACTIVITY, by bucket.
KEYS = _keys()


class Clock:
    """Wall time that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A broadcaster on a SQLite file, its rollouts on the test's clock, and
    a probe-like consumer of the realtime path that the test reports for."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.ws = MemoryAdapter("websocket")
        self.rt = FaultyAdapter("realtime")
        self.b = Broadcaster(
            load_settings(
                env_file=None,
                reconcile_interval_s=0,
                reconcile_window_s=1.0,
                reconcile_buffer_s=1.0,
                reconcile_max_delay_s=30.0,
            ),
            adapters=[self.ws, self.rt],
            # The store stamps events by the test's clock too.
            store=SQLiteStore(path, clock=clock),
        )
        self.rollouts = Rollouts(self.b, clock=clock)
        self.published = 0

    async def publish(self, n: int = 100) -> list[Receipt]:
        """``n`` events, the i-th with a key in sampling bucket ``i % 100``:
        a step of p % routes exactly p of every hundred to the new path."""
        receipts = [
            await self.b.publish(
                UA.value, "page.view", {"n": self.published + i}, key=KEYS[i % 100]
            )
            for i in range(n)
        ]
        self.published += n
        await self.b.flush(timeout=10)
        return receipts

    async def receive(
        self,
        receipts: Sequence[Receipt],
        *,
        after_s: float = 0.05,
        corrupt: bool = False,
        consumer: str = "probe:test",
    ) -> None:
        """The probe (or ``consumer``) reports what reached the realtime
        path, ``after_s`` after each event was stored (a wrong checksum with
        ``corrupt``)."""
        got = []
        for r in receipts:
            if "realtime" not in r.routed_to:
                continue
            stored = await self.b.store.get(r.sequence_id)
            assert stored is not None
            got.append(
                ConsumerReceipt(
                    sequence_id=r.sequence_id,
                    adapter="realtime",
                    event_type="page.view",
                    received_at_ms=stored.created_at_ms + int(after_s * 1000),
                    checksum="0" * 64 if corrupt else stored.record.checksum,
                    checksum_ok=not corrupt,
                    consumer=consumer,
                )
            )
        await self.b.store.record_receipts(got)

    async def look(self, seconds: float = 0.0) -> RolloutRow:
        """Move the clock by ``seconds`` and let the controller look once;
        the one active rollout, or the last one."""
        self.clock.advance(seconds)
        await self.rollouts.tick()
        rows = await self.b.store.rollouts()
        return rows[-1]

    async def hold_step(self) -> RolloutRow:
        """Traffic of one step, received in time, held and judged: the look
        that moves the rollout on."""
        await self.receive(await self.publish())
        first = await self.look()
        assert first.state == "running"
        held = await self.look(HOLD_S + 1)
        assert held.doc["hold_done_ms"] is not None, held.doc
        return await self.look(HORIZON_S + 1)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path / "store.db", Clock())
    await harness.b.start()
    # The probe watches the realtime path from the start, as the service's does.
    await harness.b.store.register_consumer("probe:test", "realtime", int(harness.clock() * 1000))
    try:
        yield harness
    finally:
        await harness.b.close()


async def start(h: Harness, steps: tuple[int, ...] = (1, 50, 100), **kw: Any) -> RolloutRow:
    options: dict[str, Any] = {"hold_s": HOLD_S, "gates": Gates(), "cutover": False} | kw
    return await h.rollouts.start(UA, steps, by="ops", **options)


def routed(receipts: Sequence[Receipt]) -> set[tuple[str, ...]]:
    return {r.routed_to for r in receipts}


async def test_a_rollout_advances_through_every_step_and_cuts_over(h: Harness) -> None:
    row = await start(h, cutover=True)
    assert describe(row)["percentage"] == 1 and row.state == "running"
    assert h.b.flags.category(UA) == {
        "enabled": True,
        "percentage": 1,
        "adapters": ["realtime"],
        "cutover": False,
    }
    for percentage in (50, 100):
        row = await h.hold_step()
        view = describe(row)
        assert (view["state"], view["percentage"], view["in_cutover"]) == (
            "running",
            percentage,
            False,
        )
        assert "held clean for 10 s" in view["reason"]
    full = await h.publish()
    assert routed(full) == {("websocket", "realtime")}  # 100 %: every event
    await h.receive(full)
    row = await h.hold_step()
    view = describe(row)
    assert view["in_cutover"] is True and view["step"] == 4 and view["stages"] == 4

    # Cut over: the category goes to realtime alone; the legacy path gets nothing new.
    before = len(h.ws.events)
    cut = await h.publish()
    assert routed(cut) == {("realtime",)}
    assert len(h.ws.events) == before
    await h.rt.wait_for({r.sequence_id for r in cut})
    await h.receive(cut)
    await h.look()
    await h.look(HOLD_S + 1)
    row = await h.look(HORIZON_S + 1)
    assert row.state == "completed" and "cutover held clean" in row.doc["reason"]
    assert h.b.flags.category(UA)["cutover"] is True

    # Every move was a configuration change audited as the rollout.
    audit = [e for e in await h.b.store.audit_log() if e.actor == f"rollout:{row.id}"]
    assert [e.after["percentage"] for e in audit] == [1, 50, 100, 100]
    assert audit[0].path.startswith("POST /rollouts by ops: step 1 of 3 (1 %)")
    assert "rollout 1 advance: step 2 of 3 (50 %)" in audit[1].path
    assert audit[-1].after["cutover"] is True and "cutover" in audit[-1].path
    actions = [m["action"] for m in describe(row)["timeline"]]
    assert actions == ["start", "advance", "advance", "cutover", "complete"]
    assert_shape(describe(row), RolloutView)


async def test_mismatches_on_the_new_path_roll_back_on_the_next_look(h: Harness) -> None:
    row = await start(h)
    row = await h.hold_step()  # at 50 %
    assert describe(row)["percentage"] == 50
    sent = await h.publish()
    await h.receive(sent, corrupt=True)
    # Not yet judged: younger than reconciliation's window and buffer.
    assert (await h.look()).state == "running"
    row = await h.look(HORIZON_S + 0.5)
    assert row.state == "rolled_back"
    view = describe(row)
    assert view["percentage"] == 1 and h.b.flags.category(UA)["percentage"] == 1
    assert "mismatch rate 1 on realtime > 0" in view["reason"]
    last = (await h.b.store.audit_log())[-1]
    assert last.actor == f"rollout:{row.id}" and last.after["percentage"] == 1
    assert "rollout 1 rollback: rolled back to 1 %: mismatch rate" in last.path
    # A rolled back rollout moves no more, and a new one may start.
    assert (await h.look(HOLD_S * 3)).state == "rolled_back"
    assert (await start(h)).id == row.id + 1


async def test_a_breaker_trip_rolls_back_from_the_first_step_to_zero(h: Harness) -> None:
    await start(h, (100,))
    await h.look()
    h.rt.mode = "down"  # the Realtime server is gone: the next send trips the breaker
    await h.b.publish(UA.value, "page.view", {}, key="k")
    await until(lambda: h.b.breaker_states()["realtime"]["state"] == "open")
    row = await h.look(0.1)
    assert row.state == "rolled_back"
    assert "realtime breaker opened 1 time > 0" in row.doc["reason"]
    assert h.b.flags.category(UA)["percentage"] == 0


async def test_late_receipts_are_never_judged_missing_or_failed(h: Harness) -> None:
    await start(h)
    sent = await h.publish()
    await h.look()
    # The hold passes and the events are older than the window and buffer,
    # but nothing was reported yet (and they are younger than the max
    # delay): not failures, only not judged.
    for _ in range(2):
        row = await h.look(HOLD_S + 1)
        assert row.state == "running", row.doc["reason"]
        assert "waiting for reconciliation" in row.doc["note"]
    # The receipts come, late (past the window): late, not failed; it moves on.
    await h.receive(sent, after_s=20)
    row = await h.look(1)
    assert describe(row)["percentage"] == 50 and row.state == "running"


async def test_a_restart_resumes_at_the_same_step_with_the_same_hold_left(
    h: Harness, tmp_path: Path
) -> None:
    await start(h)
    row = await h.hold_step()  # at 50 %
    await h.receive(await h.publish())
    await h.look()
    row = await h.look(4)
    left = describe(row)["remaining_hold_s"]
    assert (describe(row)["step"], left) == (2, HOLD_S - 4)
    await h.b.close()

    # The service is down a long while; another process starts on the store.
    again = Harness(tmp_path / "store.db", h.clock)
    h.clock.advance(3600)
    async with again.b:
        assert again.b.flags.category(UA)["percentage"] == 50  # the flags are persisted
        row = await again.look()
        assert (describe(row)["step"], describe(row)["remaining_hold_s"]) == (2, left)
        # The gates judge what is stored since this process began driving.
        await again.receive(await again.publish())
        row = await again.look(left - 1)
        assert row.doc["hold_done_ms"] is None and describe(row)["remaining_hold_s"] == 1
        await again.look(1)
        row = await again.look(HORIZON_S + 1)
        assert describe(row)["percentage"] == 100


@pytest.mark.parametrize("watched_elsewhere", [False, True])
async def test_what_a_killed_services_probe_never_reported_is_left_to_reconciliation(
    h: Harness, tmp_path: Path, watched_elsewhere: bool
) -> None:
    await start(h, (100,))
    sent = await h.publish(10)
    await h.look()
    if watched_elsewhere:
        # A consumer outside the dead service (another instance's probe)
        # got them; the dead service's own probe never wrote its receipts.
        await h.receive(sent, consumer="probe:other-instance")
    await h.b.close()

    again = Harness(tmp_path / "store.db", h.clock)
    async with again.b:
        assert (await again.look()).state == "running"
        await again.receive(await again.publish(10))
        again.clock.advance(30.0 + 1)  # past RECONCILE_MAX_DELAY_S
        reconciler = Reconciler(again.b.store, again.b.reconciler.policy, clock=again.clock)
        report = await reconciler.run()
        row = await again.look()
        row = await again.look(HORIZON_S + 1)
    # Reconciliation reports (and would repair) what nobody alive saw...
    assert report.counts[(UA.value, "realtime", "missing")] == (0 if watched_elsewhere else 10)
    # ...but the crash is not the new path's failure: the gates judged the
    # events stored since the restarted service began driving, and passed.
    assert row.state == "completed", row.doc["reason"]


async def test_a_rollback_from_the_cutover_restores_dual_write(h: Harness) -> None:
    await start(h, (100,), cutover=True)
    await h.hold_step()
    assert h.b.flags.category(UA)["cutover"] is True
    assert routed(await h.publish()) == {("realtime",)}
    h.rt.mode = "down"
    await h.b.publish(UA.value, "page.view", {}, key="k")
    await until(lambda: h.b.breaker_states()["realtime"]["state"] == "open")
    row = await h.look(0.1)
    assert row.state == "rolled_back"
    assert h.b.flags.category(UA) == {
        "enabled": True,
        "percentage": 100,
        "adapters": ["realtime"],
        "cutover": False,
    }
    assert routed(await h.publish(5)) == {("websocket", "realtime")}


async def test_operators_pause_resume_and_abort(h: Harness) -> None:
    row = await start(h)
    with pytest.raises(RolloutConflict) as info:
        await start(h)
    assert info.value.rollout_id == row.id
    await h.look()
    await h.look(4)
    paused = await h.rollouts.pause(row.id, by="ops")
    assert paused.state == "paused"
    with pytest.raises(RolloutConflict, match="only a running one can pause"):
        await h.rollouts.pause(row.id, by="ops")
    # Paused: no hold counts, no gate is judged.
    await h.receive(await h.publish(), corrupt=True)
    assert (await h.look(60)).doc["held_ms"] == 4000
    resumed = await h.rollouts.resume(row.id, by="ops")
    assert describe(resumed)["remaining_hold_s"] == HOLD_S - 4
    aborted = await h.rollouts.abort(row.id, by="ops")
    assert aborted.state == "aborted"
    view = describe(aborted)
    assert_shape(view, RolloutView)
    assert [(m["action"], m["step"]) for m in view["timeline"]] == [
        ("start", 1),
        ("pause", 1),
        ("resume", 1),
        ("abort", 0),
    ]
    assert view["percentage"] == 0 and view["flags_before"] == h.b.flags.category(UA)
    assert h.b.flags.category(UA) == {
        "enabled": False,
        "percentage": 0,
        "adapters": ["realtime"],
        "cutover": False,
    }
    assert (await h.b.store.audit_log())[-1].path.startswith("POST /rollouts/1/abort by ops")
    with pytest.raises(LookupError):
        await h.rollouts.abort(99, by="ops")


async def test_flags_changed_under_a_rollout_are_applied_again(h: Harness) -> None:
    row = await start(h)
    # Another instance wrote a stale document over the rollout's change.
    await h.b.flags.patch_category(UA, CategoryPatch(percentage=0), actor="x", path="stale")
    row = await h.look()
    assert h.b.flags.category(UA)["percentage"] == 1
    last = (await h.b.store.audit_log())[-1]
    assert last.actor == f"rollout:{row.id}" and "flags applied again" in last.path


async def test_a_move_made_meanwhile_by_another_instance_wins(h: Harness) -> None:
    row = await start(h)
    other = Rollouts(h.b, clock=h.clock)
    await h.look()
    await other.pause(row.id, by="ops")  # between this instance's reads and its save
    h.clock.advance(1)
    # The controller's save names the version it read: refused, nothing lost.
    stale = await h.b.store.rollout(row.id)
    assert stale is not None and stale.state == "paused"
    assert (await h.look()).state == "paused"


async def test_the_controller_drives_only_where_it_should(h: Harness) -> None:
    drives = [False]
    controller = RolloutController(h.rollouts, interval_s=0.01, drives=lambda: drives[0])
    row = await start(h)
    assert await controller.run_once() == []
    drives[0] = True
    assert [r.id for r in await controller.run_once()] == [row.id]
    with pytest.raises(ValueError):
        RolloutController(h.rollouts, interval_s=0)
    # Its own task looks every interval.
    h.rt.mode = "down"
    await h.b.publish(UA.value, "page.view", {}, key=KEYS[0])
    controller.start()
    try:
        await until(lambda: h.b.flags.category(UA)["percentage"] == 0)
    finally:
        await controller.stop()


async def test_a_slow_new_path_fails_the_latency_gate(h: Harness) -> None:
    await start(h, (100,), gates=Gates(max_realtime_p99_ms=250))
    await h.receive(await h.publish(), after_s=0.4)  # in the window, but slow
    row = await h.look(HORIZON_S + 0.5)
    assert row.state == "rolled_back"
    assert "realtime p99 latency 400 ms > 250 ms" in row.doc["reason"]
