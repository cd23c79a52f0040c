"""Choosing the event loop: ``EVENT_LOOP`` resolved, refused with the field
named, and coroutines run on the loop named (uvloop is installed with the
package, so ``auto`` means uvloop here; its absence is simulated by blocking
the import)."""

from __future__ import annotations

import asyncio
import sys
from typing import get_args

import pytest
import uvloop

from broadcaster.exceptions import ConfigError
from broadcaster.loop import EVENT_LOOPS, loop_factory, resolve_event_loop, run_on_loop
from broadcaster.settings import Settings


@pytest.fixture
def no_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import uvloop` raise ImportError.
    monkeypatch.setitem(sys.modules, "uvloop", None)


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_auto_is_uvloop_where_installed() -> None:
    assert resolve_event_loop("auto") == "uvloop"
    assert resolve_event_loop("uvloop") == "uvloop"
    assert resolve_event_loop("asyncio") == "asyncio"
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None
    assert EVENT_LOOPS == ("auto", "uvloop", "asyncio")
    # The setting accepts exactly these names.
    assert get_args(Settings.model_fields["event_loop"].annotation) == EVENT_LOOPS


@pytest.mark.usefixtures("no_uvloop")
def test_auto_falls_back_to_asyncio_without_uvloop() -> None:
    assert resolve_event_loop("auto") == "asyncio"
    assert loop_factory("auto") is None
    assert issubclass(run_on_loop(_loop_type(), loop="auto"), asyncio.BaseEventLoop)


@pytest.mark.usefixtures("no_uvloop")
def test_uvloop_asked_for_but_missing_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_event_loop("uvloop")
    assert info.value.variable == "EVENT_LOOP"
    assert "uvloop cannot be imported" in str(info.value)


def test_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_event_loop("trio")
    assert info.value.variable == "EVENT_LOOP"
    assert "auto, uvloop, asyncio" in str(info.value)


def test_run_on_loop_runs_on_the_loop_named() -> None:
    assert run_on_loop(_loop_type()) is uvloop.Loop
    assert run_on_loop(_loop_type(), loop="uvloop") is uvloop.Loop
    loop_type = run_on_loop(_loop_type(), loop="asyncio")
    assert issubclass(loop_type, asyncio.BaseEventLoop)
    assert not issubclass(loop_type, uvloop.Loop)


def test_run_on_loop_with_debug_sets_the_loops_debug_mode() -> None:
    async def debug() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert run_on_loop(debug(), loop="uvloop", debug=True) is True
    assert run_on_loop(debug(), loop="asyncio", debug=False) is False


def test_a_refused_loop_closes_the_coroutine_it_was_given() -> None:
    # Otherwise Python warns "coroutine ... was never awaited" (an error here).
    coro = _loop_type()
    with pytest.raises(ConfigError):
        run_on_loop(coro, loop="nope")
    assert coro.cr_frame is None
