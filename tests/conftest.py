"""Shared fixtures. Every test starts from a clean environment: no broadcaster
variables inherited from the shell, no .env from the working directory, and
structlog as it comes (a test that configured logging — the CLI does, at
WARNING — must not filter out the info lines a later test captures).

The modules whose code does network I/O on the event loop run every async
test twice, on asyncio's own loop and on uvloop (the loop ``broadcaster``
commands run on by default, ``broadcaster.loop``); the rest on asyncio's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import structlog
import uvloop
from hypothesis import settings

from broadcaster import commit_scheduler
from tests._env import SETTING_PREFIXES
from tests._postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]  # fixtures: a real PostgreSQL (tests/_postgres.py)

# scripts/mutation selects this profile: a mutant's verdict must not hang on a
# random draw, on an example a previous mutant left in the database, or on a
# deadline missed because the machine (or mutmut's indirection) was slow.
settings.register_profile("mutation", derandomize=True, database=None, deadline=None)

#: Test modules (paths under tests/) whose async tests run on both loops:
#: those whose broadcaster, servers or clients run on the test's own loop (a
#: test whose broadcaster is a child process gains nothing from a second run).
BOTH_LOOPS = (
    "adapters/realtime/test_adapter.py",
    "adapters/test_websocket.py",
    "admin/test_server.py",
    "consumer/",
    "test_core.py",
    "test_e2e.py",
    "test_failover.py",
    "test_lanes.py",
    "realtime_server/test_server.py",
    "test_service.py",
)
_ASYNCIO: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
_BOTH = {**_ASYNCIO, "uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    path = item.path.relative_to(Path(__file__).parent).as_posix()
    return _BOTH if path.startswith(BOTH_LOOPS) else _ASYNCIO


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    structlog.reset_defaults()


@pytest.fixture
def commits_in_callers_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every publish() commits in its caller's step, however slow the loop:
    no loop-lag bound, no per-turn time budget. For tests that count loop
    turns after commits: on a loaded machine (CI, coverage, asyncio debug
    mode) a VM pause mid-step must not send a commit to the writer task."""
    monkeypatch.setattr(commit_scheduler, "_INLINE_MAX_LAG_S", 1.0)
    monkeypatch.setattr(commit_scheduler, "_INLINE_BUDGET_S", 1.0)


#: Grouped tests that xdist's ``--dist loadgroup`` failed to group.
_UNGROUPED: set[str] = set()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The load-test smoke (one xdist group, see tests/test_loadtests.py)
    first, then the slow tests: scheduled last, a long test runs alone while
    the other worker idles; scheduled first, the other worker takes the
    short ones meanwhile.

    In a worker of ``--dist loadgroup``, xdist has by now suffixed each
    grouped test's id with its group; a grouped test without one means the
    grouping silently stopped working (it did with a pytest release), and
    each worker would pay for the smoke run itself: those tests fail."""
    if config.getoption("loadgroup", default=False):
        _UNGROUPED.update(
            item.nodeid
            for item in items
            if item.get_closest_marker("xdist_group") is not None and "@" not in item.nodeid
        )
    items.sort(
        key=lambda item: (
            item.get_closest_marker("xdist_group") is None,
            item.get_closest_marker("slow") is None,
        )
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in _UNGROUPED:
        pytest.fail(
            "--dist loadgroup did not group this test: pytest and pytest-xdist disagree "
            "on renaming tests (pin pytest as pyproject.toml says)",
            pytrace=False,
        )
