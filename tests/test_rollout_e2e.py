"""A progressive rollout end to end, every part a real process: ``broadcaster
serve`` (its probes watching both paths) pushing to a local Realtime server in
a process of its own, events posted to the admin API, and a WebSocket
subscriber of the category in this process.

The rollout climbs its steps on its own while the probes' receipts match, cuts
over (the category on Realtime alone: the WebSocket subscriber gets nothing
new of it), and when the Realtime server is killed it rolls back on its own to
dual-write, the reason in ``GET /rollouts/{id}`` and in the audit, and the
WebSocket subscriber gets the category again.

A service killed mid-rollout (SIGKILL) and started again on the same store
resumes the rollout at the same step with the same hold left: the time it was
down counts for nothing, and the hold goes on counting from where the store
has it. A graceful stop (SIGTERM) leaves the rollout in the store as it last
stood, for the next start to resume from."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from broadcaster.rollout.manager import describe
from broadcaster.spawn import RealtimeServerProcess
from broadcaster.store import store_from_url
from tests.test_service import TOKEN, Child

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Subscriber:
    """A WebSocket subscriber of USER_ACTIVITY and CRITICAL: what it got, by
    sequence id."""

    def __init__(self, url: str) -> None:
        self.url = url + "?categories=USER_ACTIVITY,CRITICAL"
        self.got: dict[int, str] = {}
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with websockets.connect(self.url) as ws:
            async for frame in ws:
                event = json.loads(frame)
                self.got[event["sequence_id"]] = event["category"]

    async def wait_for(self, sequence_id: int) -> None:
        async with asyncio.timeout(30):
            while sequence_id not in self.got:  # noqa: ASYNC110 (frames of another process)
                await asyncio.sleep(0.02)


class Service:
    def __init__(self, child: Child, realtime: RealtimeServerProcess | None = None) -> None:
        self.child = child
        self.realtime = realtime
        self.http = httpx.AsyncClient(base_url=child.url, headers=AUTH, timeout=30)
        self.keys = itertools.count()

    async def post(self, category: str = "USER_ACTIVITY", n: int = 20) -> list[dict[str, Any]]:
        events = [
            {"category": category, "event_type": "page.view", "payload": {}, "key": f"u{k}"}
            for k in itertools.islice(self.keys, n)
        ]
        answer = await self.http.post("/events", json=events)
        assert answer.status_code == 201, answer.text
        receipts: list[dict[str, Any]] = answer.json()
        return receipts

    async def rollout(self) -> dict[str, Any]:
        body: dict[str, Any] = (await self.http.get("/rollouts/1")).json()
        return body

    async def rollout_until(self, done: Any) -> dict[str, Any]:
        """The rollout once ``done(rollout)``, posting nothing meanwhile."""
        async with asyncio.timeout(60):
            while not done(view := await self.rollout()):  # noqa: ASYNC110 (another process)
                await asyncio.sleep(0.02)
        return view

    async def traffic_until(self, done: Any) -> dict[str, Any]:
        """Post USER_ACTIVITY events until ``done(rollout)``; the rollout then."""
        async with asyncio.timeout(60):
            while True:
                await self.post()
                view = await self.rollout()
                if done(view):
                    return view
                await asyncio.sleep(0.05)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    realtime = RealtimeServerProcess(key="rollout-e2e-key-0123456789")
    await realtime.start()
    try:
        child = await asyncio.to_thread(
            Child,
            tmp_path,
            SUPABASE_URL=realtime.url,
            SUPABASE_KEY=realtime.key,
            LOG_LEVEL="WARNING",
            RECONCILE_INTERVAL_S="0.25",
            RECONCILE_WINDOW_S="0.25",
            RECONCILE_BUFFER_S="0.25",
            RECONCILE_MAX_DELAY_S="5",
        )
        svc = Service(child, realtime)
        try:
            yield svc
        finally:
            await svc.http.aclose()
            code, _, err = await asyncio.to_thread(child.stop)
            assert code == 0, err
            assert "Traceback" not in err
    finally:
        await realtime.kill()


async def test_a_rollout_climbs_cuts_over_and_rolls_back_when_realtime_dies(
    service: Service,
) -> None:
    ws_url = next(line.split()[1] for line in service.child.lines if line.startswith("websocket"))
    subscriber = Subscriber(ws_url)
    reader = asyncio.create_task(subscriber.run())
    try:
        await service.post("CRITICAL", 1)  # the subscriber is connected once it has this
        first = (await service.post("CRITICAL", 1))[0]["sequence_id"]
        await subscriber.wait_for(first)

        plan = {"category": "USER_ACTIVITY", "steps": [50, 100], "hold_s": 0.5, "cutover": True}
        started = await service.http.post("/rollouts", json=plan)
        assert started.status_code == 201, started.text

        # Clean receipts on both paths: it climbs both steps, then cuts over.
        view = await service.traffic_until(lambda r: r["in_cutover"] or r["state"] != "running")
        assert (view["state"], view["in_cutover"]) == ("running", True), view
        paused = await service.http.post("/rollouts/1/pause")  # hold it there
        assert paused.json()["state"] == "paused", paused.text
        actions = [m["action"] for m in paused.json()["timeline"]]
        assert actions == ["start", "advance", "cutover", "pause"]

        # Cut over: USER_ACTIVITY goes to Realtime alone; the WebSocket
        # subscriber gets nothing new of it (frames follow sequence order, so
        # the CRITICAL event after them proves they were not sent).
        cut = await service.post()
        assert {tuple(r["routed_to"]) for r in cut} == {("realtime",)}
        sentinel = (await service.post("CRITICAL", 1))[0]["sequence_id"]
        await subscriber.wait_for(sentinel)
        assert not {r["sequence_id"] for r in cut} & subscriber.got.keys()

        # The Realtime server dies: its breaker trips, and the rollout, let
        # run again, rolls back to dual-write on its own.
        assert service.realtime is not None
        await service.realtime.kill()
        await service.http.post("/rollouts/1/resume")
        view = await service.traffic_until(lambda r: r["state"] != "running")
        assert view["state"] == "rolled_back", view
        assert "realtime breaker opened" in view["reason"]
        assert (view["percentage"], view["in_cutover"]) == (100, False)
        assert view["timeline"][-1]["action"] == "rollback"
        audit = (await service.http.get("/audit")).json()["entries"]
        assert audit[-1]["actor"] == "rollout:1"
        assert "rollback" in audit[-1]["path"] and "realtime breaker opened" in audit[-1]["path"]
        assert audit[-1]["after"]["cutover"] is False

        # Dual-write again: the WebSocket subscriber gets the category.
        again = await service.post(n=1)
        assert again[0]["routed_to"] == ["websocket", "realtime"]
        await subscriber.wait_for(again[0]["sequence_id"])
        assert subscriber.got[again[0]["sequence_id"]] == "USER_ACTIVITY"
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


#: Far longer than the test: the hold never completes, so nothing caps it.
RESTART_HOLD_S = 60.0


async def serve(tmp_path: Path) -> Service:
    """``broadcaster serve`` on the SQLite store in ``tmp_path`` (the same one
    each time), pushing to its own local Realtime stand-in, looking at
    rollouts five times a second."""
    child = await asyncio.to_thread(
        Child, tmp_path, LOG_LEVEL="WARNING", RECONCILE_INTERVAL_S="0.2"
    )
    return Service(child)


async def stopped(service: Service, sig: signal.Signals) -> dict[str, Any]:
    """Stop ``service`` with ``sig``; the rollout as it left it in the store."""
    await service.http.aclose()
    service.child.proc.send_signal(sig)
    _, err = await asyncio.to_thread(service.child.proc.communicate, timeout=60)
    code = service.child.proc.returncode
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), err
    assert "Traceback" not in err
    async with store_from_url(service.child.store_url) as store:
        row = await store.rollout(1)
    assert row is not None
    return describe(row)


def at_ms(stamp: str) -> int:
    return round(datetime.fromisoformat(stamp).timestamp() * 1000)


#: What a restart must leave as it was: the step, when and from which event
#: it began, and every move made so far.
PLACE = ("state", "step", "percentage", "stage_started_at", "from_sequence_id", "timeline")


async def test_a_killed_service_resumes_its_rollout_at_the_same_step_and_hold(
    tmp_path: Path,
) -> None:
    service = await serve(tmp_path)
    try:
        plan = {"category": "USER_ACTIVITY", "steps": [50, 100], "hold_s": RESTART_HOLD_S}
        started = await service.http.post("/rollouts", json=plan)
        assert started.status_code == 201, started.text
        await service.rollout_until(lambda r: r["held_s"] > 0)

        # Killed part way through the step's hold: what the store has is
        # what the service started again on it resumes.
        left = await stopped(service, signal.SIGKILL)
        assert (left["state"], left["step"], left["percentage"]) == ("running", 1, 50)
        service = await serve(tmp_path)
        instances = (await service.http.get("/instances")).json()
        (me,) = [
            i for i in instances["instances"] if i["instance_id"] == instances["this_instance"]
        ]
        # Its first looks since it started.
        now = await service.rollout_until(lambda r: r["version"] > left["version"])
        assert {k: now[k] for k in PLACE} == {k: left[k] for k in PLACE}
        # Only watched time counts: the hold gained at most the time this
        # process has been watching, nothing for the time it was down.
        gained_ms = round((now["held_s"] - left["held_s"]) * 1000)
        assert 0 <= gained_ms <= at_ms(now["updated_at"]) - me["started_at_ms"], (left, now)
        left_ms = round(now["remaining_hold_s"] * 1000)
        assert left_ms == round(RESTART_HOLD_S * 1000) - round(now["held_s"] * 1000)
        config = (await service.http.get("/config")).json()
        assert config["flags"]["categories"]["USER_ACTIVITY"]["percentage"] == 50
        # And it counts on from there.
        later = await service.rollout_until(lambda r: r["held_s"] > now["held_s"])
        assert {k: later[k] for k in PLACE} == {k: left[k] for k in PLACE}

        # A graceful stop leaves it in the store where it stood, with the
        # hold as last counted, for the next start to resume from.
        kept = await stopped(service, signal.SIGTERM)
        assert {k: kept[k] for k in PLACE} == {k: left[k] for k in PLACE}
        assert kept["held_s"] >= later["held_s"]
    finally:
        await service.http.aclose()
        if service.child.proc.poll() is None:
            code, _, err = await asyncio.to_thread(service.child.stop)
            assert code == 0, err
