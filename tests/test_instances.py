"""Several ``broadcaster serve`` instances on one PostgreSQL store (SPEC 11),
every part a real process: producer processes publish with ``Publisher``,
each instance serves the WebSocket path to its own subscribers from the
store, exactly one instance (the lease holder) pushes to a Realtime server
that both are configured with, and a runtime change made on one instance is
in force on the other within a second.

Only the lease holder drives a rollout: every controller move comes from it,
each step is in force on both instances, and when it is killed the survivor
takes the rollout over at the same step with the hold it had."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from broadcaster.consumer import RealtimeSubscriber, ReceiptCollector
from broadcaster.realtime_server import LocalRealtimeServer
from broadcaster.store.base import ConsumerReceipt
from tests.test_deployment import DeploySubscriber, producer, reap, returned_ids
from tests.test_service import TOKEN, Child

pytestmark = pytest.mark.slow

KEY = "instances-realtime-key-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Short, for the takeover test, yet several renewals long (one every third of
#: it): a lease that moved because a busy machine delayed a renewal would
#: make the exactly-once assertions fail for a legitimate handover.
LEASE_S = 2.0


def instance(
    tmp_path: Path, pg_url: str, realtime: LocalRealtimeServer, name: str, **env: str
) -> Child:
    settings = {
        "STORE_URL": pg_url,
        "SUPABASE_URL": realtime.url,
        "SUPABASE_KEY": KEY,
        "INSTANCE_ID": name,
        "INSTANCE_LEASE_S": str(LEASE_S),
        "RECONCILE_PROBE": "false",
    }
    return Child(tmp_path, **(settings | env))


def ws_url(child: Child) -> str:
    return next(line.split()[1] for line in child.lines if line.startswith("websocket"))


def get(child: Child, path: str) -> Any:
    answer = httpx.get(child.url + path, headers=AUTH, timeout=30)
    answer.raise_for_status()
    return answer.json()


async def until(condition: Any, what: str, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110 (a poll of other processes)
            await asyncio.sleep(0.05)
    assert condition(), what


class RealtimeWatcher:
    """A Realtime subscriber of every category channel, in this process."""

    def __init__(self, realtime: LocalRealtimeServer) -> None:
        self.ids: list[int] = []
        collector = ReceiptCollector("realtime", consumer="watcher", on_receipt=self._got)
        self.subscriber = RealtimeSubscriber(realtime.url, KEY, collector=collector)

    def _got(self, receipt: ConsumerReceipt) -> None:
        assert receipt.checksum_ok
        self.ids.append(receipt.sequence_id)


async def start_instances(
    tmp_path: Path, pg_url: str, realtime: LocalRealtimeServer
) -> tuple[Child, Child]:
    a = await asyncio.to_thread(instance, tmp_path, pg_url, realtime, "a")
    b = await asyncio.to_thread(instance, tmp_path, pg_url, realtime, "b")
    return a, b


def stop(*children: Child) -> None:
    for child in children:
        if child.proc.poll() is None:
            code, _, err = child.stop()
            assert code == 0, err
        else:
            child.proc.communicate(timeout=60)


class Pair(NamedTuple):
    realtime: LocalRealtimeServer
    watcher: RealtimeWatcher
    a: Child
    b: Child


@pytest.fixture
async def pair(tmp_path: Path, pg_url: str) -> AsyncIterator[Pair]:
    """Two instances on one fresh PostgreSQL schema, both pushing to one
    Realtime server in this process, and a Realtime watcher of it."""
    realtime = LocalRealtimeServer(key=KEY)
    await realtime.start()
    try:
        a, b = await start_instances(tmp_path, pg_url, realtime)
        try:
            yield Pair(realtime, RealtimeWatcher(realtime), a, b)
        finally:
            await asyncio.to_thread(stop, a, b)
    finally:
        await realtime.close()


async def test_every_subscriber_on_every_instance_gets_every_event_once_in_order(
    pair: Pair,
) -> None:
    watcher, a, b = pair.watcher, pair.a, pair.b
    subscribers: list[DeploySubscriber] = []
    producers: list[subprocess.Popen[str]] = []
    try:
        view = await asyncio.to_thread(get, a, "/instances")
        assert [i["instance_id"] for i in view["instances"]] == ["a", "b"]
        holder = view["lease_holder"]
        assert holder in ("a", "b")
        assert (await asyncio.to_thread(get, b, "/instances"))["lease_holder"] == holder
        assert [i["writes_realtime"] for i in view["instances"]] == [holder == "a", holder == "b"]
        for child, name in ((a, "a"), (b, "b")):
            metrics = (await asyncio.to_thread(httpx.get, child.url + "/metrics")).text
            held = 1 if name == holder else 0
            assert f'broadcaster_delivering{{adapter="realtime"}} {held}.0' in metrics
            assert 'broadcaster_delivering{adapter="websocket"} 1.0' in metrics
        health = (await asyncio.to_thread(get, b, "/health"))["cluster"]
        assert (health["instance_id"], health["lease_holder"]) == ("b", holder)
        assert [i["instance_id"] for i in health["instances"]] == ["a", "b"]
        subscribers = [
            DeploySubscriber(child.env, "--url", ws_url(child), "--since", "0") for child in (a, b)
        ]
        async with watcher.subscriber:
            producers = [producer(a.env, f"p{n}", 300) for n in range(3)]
            published: list[int] = []
            for proc in producers:
                ids, err = await asyncio.to_thread(returned_ids, proc)
                assert proc.returncode == 0, err
                published += ids
            for sub in subscribers:
                await asyncio.to_thread(sub.read_until, done=max(published))
            await until(lambda: len(watcher.ids) >= len(published), "realtime deliveries")
        seen_s = await change_seen_on_the_other(a, b)
    finally:
        reap(producers)
        for sub in subscribers:
            sub.finish()
    assert len(published) == 900
    for sub in subscribers:
        assert sub.ids == sorted(published)
    # One writer: each event reached Realtime once.
    assert sorted(watcher.ids) == sorted(published)
    # A runtime change made on one instance is in force on the other within 1 s.
    assert seen_s < 1.0, seen_s


async def change_seen_on_the_other(a: Child, b: Child) -> float:
    """PATCH a category on ``a``; seconds until ``b`` says it is in force."""

    def debug_percentage(child: Child) -> int:
        return int(get(child, "/config")["flags"]["categories"]["DEBUG"]["percentage"])

    wanted = 37 if await asyncio.to_thread(debug_percentage, b) != 37 else 38
    answer = await asyncio.to_thread(
        httpx.patch,
        a.url + "/config/categories/DEBUG",
        json={"percentage": wanted},
        headers=AUTH,
        timeout=30,
    )
    answer.raise_for_status()
    changed = time.monotonic()
    await until(lambda: debug_percentage(b) == wanted, "the change on instance b")
    return time.monotonic() - changed


async def test_the_survivor_takes_the_lease_when_the_holder_is_killed_and_nothing_is_lost(
    pair: Pair,
) -> None:
    watcher, a, b = pair.watcher, pair.a, pair.b
    children = {"a": a, "b": b}
    producers: list[subprocess.Popen[str]] = []
    subscriber: DeploySubscriber | None = None
    try:
        holder = (await asyncio.to_thread(get, a, "/instances"))["lease_holder"]
        survivor = children["b" if holder == "a" else "a"]
        subscriber = DeploySubscriber(survivor.env, "--url", ws_url(survivor), "--since", "0")
        async with watcher.subscriber:
            producers = [producer(survivor.env, f"p{n}", 400) for n in range(3)]
            await until(lambda: len(watcher.ids) >= 100, "the holder pushing to Realtime")
            children[holder].proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await until(
                lambda: get(survivor, "/instances")["lease_holder"] == survivor.env["INSTANCE_ID"],
                "the survivor taking the lease",
            )
            taken_s = time.monotonic() - killed_at
            published: list[int] = []
            for proc in producers:
                ids, err = await asyncio.to_thread(returned_ids, proc)
                assert proc.returncode == 0, err
                published += ids
            await until(lambda: set(published) <= set(watcher.ids), "every event on Realtime")
            await asyncio.to_thread(subscriber.read_until, done=max(published))

            def listed() -> list[str]:
                view = get(survivor, "/instances")
                return [i["instance_id"] for i in view["instances"]]

            # The dead instance's heartbeat runs out: then only the survivor is listed.
            alive = [survivor.env["INSTANCE_ID"]]
            await until(lambda: listed() == alive, "the dead instance still listed")
    finally:
        reap(producers)
        if subscriber is not None:
            subscriber.finish()
    assert len(published) == 1200
    assert subscriber is not None and subscriber.ids == sorted(published)
    # At least once on Realtime: what the dead holder had sent without
    # recording it was sent again by the survivor.
    assert set(watcher.ids) == set(published)
    # For the record (-s): the timing is a benchmark's business, not a test's.
    print(f"lease taken over {taken_s:.2f} s after the SIGKILL (lease {LEASE_S} s)")


#: Instances that drive rollouts briskly: looked at five times a second,
#: events judged half a second after they are stored, on the receipts of the
#: probes (the only consumers of the Realtime path here).
ROLLOUT_ENV = {
    "RECONCILE_PROBE": "true",
    "RECONCILE_INTERVAL_S": "0.2",
    "RECONCILE_WINDOW_S": "0.25",
    "RECONCILE_BUFFER_S": "0.25",
    "RECONCILE_MAX_DELAY_S": "5",
}


def post(child: Child, path: str, body: Any) -> Any:
    answer = httpx.post(child.url + path, json=body, headers=AUTH, timeout=30)
    assert answer.is_success, answer.text
    return answer.json()


def user_activity(n: int, start: int) -> list[dict[str, Any]]:
    return [
        {"category": "USER_ACTIVITY", "event_type": "page.view", "payload": {}, "key": f"u{k}"}
        for k in range(start, start + n)
    ]


def moves_logged(err: str) -> list[str]:
    """What an instance's JSON log says it did about the Realtime lease and
    rollouts, in order."""
    said = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    return [e for e in said if e.startswith(("rollout", "realtime lease"))]


async def test_only_the_lease_holder_drives_a_rollout_and_the_survivor_goes_on_from_its_step(
    tmp_path: Path, pg_url: str
) -> None:
    realtime = LocalRealtimeServer(key=KEY)
    await realtime.start()
    children: dict[str, Child] = {}
    try:
        for name, child in zip(
            ("a", "b"),
            await asyncio.gather(
                *(
                    asyncio.to_thread(instance, tmp_path, pg_url, realtime, name, **ROLLOUT_ENV)
                    for name in ("a", "b")
                )
            ),
            strict=True,
        ):
            children[name] = child
        await until(
            lambda: get(children["a"], "/instances")["lease_holder"] is not None,
            "a lease holder",
        )
        holder = (await asyncio.to_thread(get, children["a"], "/instances"))["lease_holder"]
        driver, other = children[holder], children["b" if holder == "a" else "a"]
        other_name = other.env["INSTANCE_ID"]

        # Started through the instance that does not drive rollouts: an
        # operator's move lands on any instance; the holder drives it.
        plan = {"category": "USER_ACTIVITY", "steps": [50, 100], "hold_s": 1.0}
        assert (await asyncio.to_thread(post, other, "/rollouts", plan))["state"] == "running"
        await asyncio.to_thread(post, other, "/events", user_activity(20, 0))
        await until(
            lambda: (
                (r := get(other, "/rollouts/1"))["state"] != "running"
                or (r["step"] == 2 and r["held_s"] > 0)
            ),
            "step 2 held for a while",
        )
        assert (await asyncio.to_thread(get, other, "/rollouts/1"))["state"] == "running"

        # Killed with step 2's events in flight: the survivor sends again
        # what the holder had not, and reconciliation judges them.
        await asyncio.to_thread(post, other, "/events", user_activity(20, 20))
        driver.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(driver.proc.wait, 60)
        # Nobody drives the rollout until the survivor holds the lease: the
        # rollout as the dead holder left it, and a moment when the survivor
        # still did not drive it.
        before: dict[str, Any] | None = None
        watched_from_ms = 0
        while True:
            asked_ms = int(time.time() * 1000)
            left = await asyncio.to_thread(get, other, "/rollouts/1")
            view = await asyncio.to_thread(get, other, "/instances")
            if view["lease_holder"] == other_name:
                break
            before, watched_from_ms = left, asked_ms
            await asyncio.sleep(0.05)
        assert before is not None, "the lease moved before the holder's ran out"
        seen = before["version"]
        await until(lambda: get(other, "/rollouts/1")["version"] > seen, "the survivor's look")
        now = await asyncio.to_thread(get, other, "/rollouts/1")
        # It goes on at the same step, begun at the same time and event, with
        # the moves made so far (and its completion, should the hold have
        # been done before the kill).
        place = ("step", "stage_started_at", "from_sequence_id")
        assert {k: now[k] for k in place} == {k: before[k] for k in place}
        assert now["timeline"][: len(before["timeline"])] == before["timeline"]
        # The survivor counts only the time it watched: the dead holder's
        # last stretch and the lease's running out add nothing.
        gained_ms = round((now["held_s"] - before["held_s"]) * 1000)
        updated_ms = round(datetime.fromisoformat(now["updated_at"]).timestamp() * 1000)
        assert 0 <= gained_ms <= max(0, updated_ms - watched_from_ms), (before, now)

        # The step is in force on the survivor too, which followed it from
        # the store when the holder moved.
        flags = (await asyncio.to_thread(get, other, "/config"))["flags"]["categories"]
        assert flags["USER_ACTIVITY"]["percentage"] == 100

        # Step 2's events stored since the survivor took over, judged clean
        # on its watch: it completes. (What the holder left in flight is
        # reconciliation's to judge: its probe's receipts died with it.)
        await asyncio.to_thread(post, other, "/events", user_activity(20, 40))
        await until(lambda: get(other, "/rollouts/1")["state"] != "running", "the end")
        done = await asyncio.to_thread(get, other, "/rollouts/1")
        assert done["state"] == "completed", done
        assert [m["action"] for m in done["timeline"]] == ["start", "advance", "complete"]
        audit = await asyncio.to_thread(get, other, "/audit")
        moved = [e["path"] for e in audit["entries"] if e["actor"] == "rollout:1"]
        assert [path.split(":")[0] for path in moved] == [
            "POST /rollouts by admin",
            "rollout 1 advance",
        ]
    finally:
        try:
            logs = await asyncio.to_thread(stop_reading_logs, children)
        finally:
            await realtime.close()
    # Every controller move came from the instance holding the lease: the
    # advance from the first holder; the completion from the survivor, once
    # it had taken the lease over. The survivor started the rollout only as
    # the operator's move it was asked for.
    assert moves_logged(logs[holder]) == [
        "realtime lease taken: this instance writes to Realtime",
        "rollout advance",
    ]
    assert moves_logged(logs[other_name]) == [
        "rollout started",
        "realtime lease taken: this instance writes to Realtime",
        "rollout complete",
    ]


def stop_reading_logs(children: dict[str, Child]) -> dict[str, str]:
    """Stop every child still running; each one's log (stderr), by name."""
    logs = {}
    for name, child in children.items():
        if child.proc.poll() is None:
            code, _, logs[name] = child.stop()
            assert code == 0, logs[name]
        else:
            _, logs[name] = child.proc.communicate(timeout=60)
    return logs
