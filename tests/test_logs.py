"""Logging: console by default, JSON lines with LOG_FORMAT=json, context bound
through contextvars."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.contextvars import bound_contextvars, merge_contextvars
from structlog.testing import capture_logs

from broadcaster.core import Broadcaster
from broadcaster.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    # configure_logging binds the (captured) stderr of this test; put structlog
    # and the stdlib root logger back so later tests don't write to a closed stream.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_writes_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO")
    with bound_contextvars(event_id="01ABC", category="CRITICAL", adapter="realtime"):
        get_logger("t").warning("delivery failed", error="boom")
    get_logger("t").debug("hidden at INFO")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "delivery failed"
    assert record["adapter"] == "realtime" and record["category"] == "CRITICAL"
    assert record["event_id"] == "01ABC" and record["level"] == "warning"
    assert record["timestamp"].endswith("Z")


def test_console_format_is_human_readable(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console", "DEBUG")
    get_logger("t").debug("adapter connected", adapter="websocket")
    err = capsys.readouterr().err
    assert "adapter connected" in err and "adapter=websocket" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.strip().splitlines()[-1])


def test_unknown_level_falls_back_to_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "LOUD")
    get_logger("t").debug("no")
    get_logger("t").info("yes")
    assert [json.loads(x)["event"] for x in capsys.readouterr().err.strip().splitlines()] == ["yes"]


def test_config_load_is_logged_with_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUAL_WRITE_GLOBAL_OVERRIDE", "websocket")
    monkeypatch.setenv("STORE_URL", "memory://")
    with capture_logs(processors=[merge_contextvars]) as logs:
        Broadcaster.from_env(env_file=None)
    loaded = [e for e in logs if e["event"] == "configuration loaded"]
    assert loaded and loaded[0]["override"] == "websocket"
    assert loaded[0]["categories"]["CRITICAL"] == "on 100% websocket,realtime"


_SCRIPT = """
import asyncio
from broadcaster import Broadcaster, Publisher

async def main():
    async with Publisher.from_env(env_file=None) as p:
        await p.publish("CRITICAL", "e", {})
    async with Broadcaster.from_env(env_file=".env") as b:
        await b.publish("CRITICAL", "e", {})
        await b.flush()

asyncio.run(main())
"""


@pytest.mark.parametrize("level", ["ERROR", "INFO"])
def test_the_python_api_logs_at_log_level(tmp_path: Path, level: str) -> None:
    """A program using Publisher/Broadcaster.from_env gets LOG_LEVEL without
    configuring logging itself; and no .env is reported as none."""
    import subprocess
    import sys

    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LOG_", "STORE_", "WEBSOCKET_"))
    }
    env |= {"LOG_LEVEL": level, "STORE_URL": f"sqlite:///{tmp_path / 'a.db'}"}
    env |= {"WEBSOCKET_PORT": "0", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    if level == "ERROR":
        assert done.stderr == ""
    else:
        loaded = [line for line in done.stderr.splitlines() if "configuration loaded" in line]
        assert len(loaded) == 1 and "env_file=None" in loaded[0]
