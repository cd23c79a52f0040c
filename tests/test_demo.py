"""``broadcaster demo`` end to end, shortened: both real paths, a real SQLite
store, real subscribers, and a summary that proves nothing was lost."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from broadcaster.demo import run_demo
from broadcaster.settings import load_settings

pytestmark = pytest.mark.slow


async def test_demo_delivers_everything_and_prints_the_summary() -> None:
    out = io.StringIO()
    summary = await run_demo(load_settings(env_file=None), seconds=1.5, rate=1500, out=out)
    text = out.getvalue()
    assert summary.ok
    assert summary.published >= 200  # of ~2250 asked for; a loaded CI machine gets fewer
    assert summary.mismatches == 0 and sum(summary.lost.values()) == 0
    assert summary.received["websocket"] == summary.published  # primary gets everything
    assert 0 < summary.received["realtime"] < summary.published
    assert summary.verified == summary.received
    for category in ("CRITICAL", "PERFORMANCE", "USER_ACTIVITY", "SYSTEM", "DEBUG"):
        assert summary.routed[category]["websocket"] > 0
    assert summary.routed["CRITICAL"]["realtime"] == summary.routed["CRITICAL"]["websocket"]
    assert "realtime" not in summary.routed["DEBUG"]
    assert (
        "published" in text and "lost                0" in text and "result              OK" in text
    )


def test_demo_command_exits_0_without_tracebacks() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broadcaster", "demo", "--seconds", "1", "--rate", "500"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "result              OK" in result.stdout
