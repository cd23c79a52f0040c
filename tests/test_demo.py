"""``broadcaster demo`` end to end, shortened: a real SQLite store, the
WebSocket server, a local Realtime server in a child process that is SIGKILLed
and restarted, the admin API over HTTP, real subscribers, reconciliation and
repair — and a summary that proves nothing was lost.

Timing-tolerant: the demo's own waits are bounded and generous, and nothing
here asserts how long a phase took."""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broadcaster.demo import DemoSummary, run_demo
from broadcaster.logs import configure_logging
from broadcaster.settings import load_settings

pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _in_order(seen: list[str], *wanted: str) -> bool:
    """``wanted`` occur in ``seen`` in this order (not necessarily adjacent)."""
    it = iter(seen)
    return all(any(item == w for item in it) for w in wanted)


async def test_demo_flips_a_flag_survives_an_outage_and_repairs_what_was_missed() -> None:
    out = io.StringIO()
    configure_logging("console", "WARNING")  # as `broadcaster demo` runs it
    summary = await run_demo(load_settings(env_file=None), seconds=3, rate=800, out=out)
    text = out.getvalue()
    assert isinstance(summary, DemoSummary)
    assert summary.error is None, text
    assert summary.ok, text

    # Published, delivered, verified, nothing lost.
    assert summary.published >= 200  # of ~2400 asked for; a loaded CI machine gets fewer
    assert summary.mismatches == 0
    # At least once: a machine loaded enough to time an acknowledgement out
    # sends the batch again, and the demo counts each copy a subscriber got
    # twice: never silent.
    assert re.search(rf"^duplicates +{summary.duplicates}$", text, re.MULTILINE), text
    assert summary.lost == {"websocket": 0, "realtime": 0}
    assert summary.received["websocket"] == summary.published  # the primary gets everything
    assert 0 < summary.received["realtime"] < summary.published
    assert summary.verified == summary.received
    assert summary.routed["CRITICAL"]["realtime"] == summary.routed["CRITICAL"]["websocket"]
    assert "realtime" not in summary.routed["DEBUG"]

    # The remote subscriber, SIGKILLed and resumed with --since: every event of
    # its path from its first on, once, without repair; its receipts came
    # through POST /receipts.
    remote = summary.remote
    assert remote["killed_after"] > 0 and remote["missed"] == 0 and remote["duplicates"] == 0
    assert 0 < remote["receipts"] <= remote["received"]
    assert "remote subscriber  killed after" in text and "missed 0, duplicates 0" in text

    # The flag flip went through the admin API, into the audit trail and the routing.
    audit = summary.flag_audit
    assert audit is not None
    assert audit["actor"] == "demo"
    assert audit["path"] == "PATCH /config/categories/USER_ACTIVITY"
    assert audit["before"]["enabled"] is False
    assert audit["after"]["enabled"] is True and audit["after"]["percentage"] == 50
    before, after = summary.flip_routing["before"], summary.flip_routing["after"]
    assert before[1] == 0  # USER_ACTIVITY is off by default: nothing went to realtime
    assert after[0] > 0 and 0 < after[1] < after[0]  # sticky 50 %
    assert summary.routed["USER_ACTIVITY"]["realtime"] == after[1]

    # The breaker failed over and came back (probes may fail while the server
    # restarts, so open <-> half_open may repeat), ramped and backfilled.
    transitions = summary.transitions
    assert _in_order(transitions, "closed->open", "open->half_open", "half_open->closed")
    assert transitions[-1].endswith("->closed")
    assert summary.ramp_shares and summary.ramp_shares[-1] == 100
    assert summary.backfilled > 0
    # The outage's warnings were counted for the summary, not printed over it.
    assert summary.warnings.get("failover started: events for this adapter are pending", 0) >= 1

    # Reconciliation found what the Realtime consumer missed while it was
    # reconnecting; after repair nothing is missing.
    assert summary.reconcile_before["missing"] > 0
    assert summary.reconcile_before["mismatch"] == 0
    assert summary.reconcile_after["missing"] == 0
    assert summary.reconcile_after["mismatch"] == 0
    assert summary.reconcile_after["repaired"] >= summary.reconcile_before["missing"]
    assert summary.repaired["realtime"] >= summary.reconcile_before["missing"]

    # Two rollouts of USER_ACTIVITY through POST /rollouts: the first rolled
    # back on its own by the fault on the keys its step to 25 % added, the
    # second cut the category over to Realtime.
    first, second = summary.rollouts
    assert (first["state"], first["percentage"]) == ("rolled_back", 1), first["timeline"]
    assert "mismatch rate" in first["reason"]
    assert [m["action"] for m in first["timeline"]] == ["start", "advance", "rollback"]
    assert first["last_audit"]["actor"] == f"rollout:{first['id']}"
    assert "rollback: rolled back to 1 %: mismatch rate" in first["last_audit"]["path"]
    assert (second["state"], second["in_cutover"]) == ("completed", True), second
    actions = [m["action"] for m in second["timeline"]]
    assert actions == ["start", "advance", "cutover", "complete"]
    assert summary.cutover_routing == ["realtime"]

    # What was printed: where things are, the phases, the report, the result.
    match = re.search(r"http://127\.0\.0\.1:\d+/dashboard#token=\S+", text)
    assert match is not None and match.group() == summary.dashboard_url
    for phrase in (
        "PATCH /config/categories/USER_ACTIVITY",
        "audit #",
        "killing the Realtime server (SIGKILL",
        "realtime breaker OPEN",
        "realtime breaker HALF-OPEN",
        "realtime breaker CLOSED",
        "ramp: realtime gets 100 %",
        "backfill done",
        "reconciliation before repair",
        "reconciliation after repair",
        "fault at 25 %: the Realtime path damages",
        "rollout 1 rollback 1 %",
        "rollout 2 cutover  cutover",
        "USER_ACTIVITY is cut over: its next event went to realtime only",
        "lost                0",
        "result              OK",
    ):
        assert phrase in text, phrase

    # Cleaned up: both server processes are gone, the temp dir is removed,
    # no task is left running.
    pids = [int(p) for p in re.findall(r"(?:child process|pid) (\d+)", text)]
    assert len(set(pids)) >= 2
    assert all(_gone(pid) for pid in pids)
    store = re.search(r"sqlite:///(\S+)", text)
    assert store is not None and not Path(store.group(1)).parent.exists()
    assert asyncio.all_tasks() == {asyncio.current_task()}


def test_demo_command_exits_0_without_tracebacks_or_warnings() -> None:
    # The command as a user types it, short and without the outage: the test
    # above runs the whole script, outage included, in this process.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "broadcaster",
            "demo",
            "--seconds",
            "1",
            "--rate",
            "500",
            "--no-outage",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        # As a user runs it: asyncio's debug mode (on in CI) logs every step
        # over 100 ms as a warning, which a loaded machine always produces.
        env={k: v for k, v in os.environ.items() if k != "PYTHONASYNCIODEBUG"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert "warning" not in result.stderr.lower(), result.stderr
    assert "/dashboard#token=" in result.stdout
    assert "reconciliation after repair" in result.stdout
    assert "result              OK" in result.stdout
