"""A real deployment on one host (SPEC 11): producer processes publish with
``broadcaster.Publisher`` into one SQLite file while ``broadcaster serve``
delivers, and ``broadcaster subscribe`` in another process receives. All of
them real processes; a producer is SIGKILLed mid-``publish()``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_resume_cli import Subscriber
from tests.test_service import REPO, Child

pytestmark = pytest.mark.slow

#: A producer process: publishes COUNT events one ``publish()`` at a time and
#: prints each returned sequence id (so the test knows which calls returned).
PRODUCER = r"""
import asyncio, sys
from broadcaster import Publisher

async def main(tag: str, count: int) -> None:
    async with Publisher.from_env(env_file=None) as publisher:
        for i in range(count):
            receipt = await publisher.publish("CRITICAL", "deploy", {"producer": tag, "i": i})
            print("returned", receipt.sequence_id, flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def producer(env: dict[str, str], tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, tag, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


class DeploySubscriber(Subscriber):
    def take(self, line: str | None) -> bool:
        if line is None:
            return False
        seq, category, event_type, verdict = line.split()
        assert (category, event_type, verdict) == ("CRITICAL", "deploy", "OK"), line
        self.ids.append(int(seq))
        return True


def returned_ids(proc: subprocess.Popen[str]) -> tuple[list[int], str]:
    out, err = proc.communicate(timeout=120)
    # A line cut short by SIGKILL was not a returned publish().
    return [
        int(line.split()[1])
        for line in out.splitlines(keepends=True)
        if line.startswith("returned ") and line.endswith("\n")
    ], err


def reap(procs: list[subprocess.Popen[str]]) -> None:
    """Kill what is still running (a failed test) and close every pipe."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)


def reconcile_until_judged(child: Child, events: int) -> dict[str, object]:
    """``broadcaster reconcile --json`` until the probes' receipts judged all
    ``events`` on both paths (they report a moment after delivery)."""
    deadline = time.monotonic() + 120  # fails instead of hanging
    while True:
        result = child.cli("reconcile", "--json")
        assert result.returncode in (0, 1), result.stderr
        report = json.loads(result.stdout)
        rows = report["categories"]["CRITICAL"]
        if all(rows[a]["matched"] == events for a in ("websocket", "realtime")):
            return report
        assert time.monotonic() < deadline, report
        time.sleep(0.2)


def test_three_producer_processes_reach_a_subscriber_once_each_in_order(
    tmp_path: Path,
) -> None:
    child = Child(
        tmp_path,
        RECONCILE_WINDOW_S="3",
        RECONCILE_BUFFER_S="0",
        RECONCILE_MAX_DELAY_S="60",
    )
    subscriber: DeploySubscriber | None = None
    producers: list[subprocess.Popen[str]] = []
    try:
        ws_url = next(line.split()[1] for line in child.lines if line.startswith("websocket"))
        subscriber = DeploySubscriber(child.env, "--url", ws_url, "--since", "0")
        producers += [producer(child.env, f"p{n}", 400) for n in range(3)]
        published: list[int] = []
        for proc in producers:
            ids, err = returned_ids(proc)
            assert proc.returncode == 0, err
            published += ids
        subscriber.read_until(done=max(published))
        report = reconcile_until_judged(child, len(published))
    finally:
        reap(producers)
        if subscriber is not None:
            subscriber.finish()
        code, _, serve_err = child.stop()
    assert code == 0, serve_err
    assert len(published) == 1200
    assert subscriber.ids == sorted(published)  # every event, once, in sequence order
    # Reconciliation, from the probes' receipts: every pair matched, none missing.
    totals = report["totals"]
    assert isinstance(totals, dict)
    assert totals["matched"] == 2 * 1200
    assert totals["missing"] == totals["mismatch"] == totals["duplicate"] == 0


def test_every_publish_that_returned_before_a_sigkill_is_delivered(tmp_path: Path) -> None:
    child = Child(tmp_path)
    subscriber: DeploySubscriber | None = None
    producers: list[subprocess.Popen[str]] = []
    try:
        ws_url = next(line.split()[1] for line in child.lines if line.startswith("websocket"))
        subscriber = DeploySubscriber(child.env, "--url", ws_url, "--since", "0")
        victim = producer(child.env, "victim", 1_000_000)
        steady = producer(child.env, "steady", 300)
        producers += [victim, steady]
        assert victim.stdout is not None
        returned = 0
        while returned < 200:  # it is publishing
            returned += victim.stdout.readline().startswith("returned ")
        victim.send_signal(signal.SIGKILL)
        killed, _ = returned_ids(victim)
        survived, err = returned_ids(steady)
        assert steady.returncode == 0, err
        subscriber.read_until(done=max(killed + survived))
    finally:
        reap(producers)
        if subscriber is not None:
            subscriber.finish()
        code, _, serve_err = child.stop()
    assert code == 0, serve_err
    assert victim.returncode == -signal.SIGKILL
    assert set(killed) | set(survived) <= set(subscriber.ids)
    assert subscriber.ids == sorted(set(subscriber.ids))


def test_a_second_service_on_the_same_sqlite_file_exits_1_saying_why(tmp_path: Path) -> None:
    first = Child(tmp_path)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "serve"],
            capture_output=True,
            text=True,
            env={**first.env, "ADMIN_PORT": "0", "WEBSOCKET_PORT": "0"},
            cwd=REPO,
            timeout=120,
        )
    finally:
        code, _, err = first.stop()
    assert code == 0, err
    assert second.returncode == 1
    [line] = second.stderr.splitlines()
    assert line.startswith("serve: another broadcaster serve (pid ")
    assert "one service instance per SQLite store" in line
