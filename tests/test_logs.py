"""Logging: console by default, JSON lines with LOG_FORMAT=json, context bound
through contextvars."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

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
