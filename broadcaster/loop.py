"""The event loop the ``broadcaster`` commands run on (``EVENT_LOOP``).

``uvloop`` is the default where it is installed (``auto``): asyncio's own loop
is Python code, and this program's hot path is made of what that code does —
waking a delivery lane (``call_soon``, a ``Handle`` per wake-up), a socket
write, the Realtime client's push with its timeout task and its reply. uvloop
does those in C on libuv. Measured on this project's 2-core machine
(``python -m loadtests publish-overhead --loop asyncio|uvloop``): the
producer's ``publish()`` p50 with dual-write over single-write, the real
Realtime path as the second, 1.35-1.53 on asyncio and 1.02-1.16 on uvloop,
and the call itself a third faster.

A program that embeds :class:`~broadcaster.core.Broadcaster` chooses its own
loop; :func:`run_on_loop` is ``asyncio.run`` on the loop a name stands for, for such
programs and for the commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final, Literal, TypeVar

from .exceptions import ConfigError

__all__ = ["EVENT_LOOPS", "loop_factory", "resolve_event_loop", "run_on_loop"]

#: The values of ``EVENT_LOOP`` (``Settings.event_loop``).
EVENT_LOOPS: Final = ("auto", "uvloop", "asyncio")

_T = TypeVar("_T")


def resolve_event_loop(name: str) -> Literal["uvloop", "asyncio"]:
    """The loop ``name`` stands for here: ``auto`` is uvloop where it can be
    imported (not on Windows), else asyncio's own.

    Raises :class:`~broadcaster.exceptions.ConfigError` (its ``variable``:
    ``EVENT_LOOP``) for a name not in :data:`EVENT_LOOPS`, or for ``uvloop``
    when uvloop cannot be imported."""
    if name not in EVENT_LOOPS:
        raise ConfigError("EVENT_LOOP", name, f"must be one of {', '.join(EVENT_LOOPS)}")
    if name == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401  (only whether it imports)
    except ImportError as exc:
        if name == "uvloop":
            raise ConfigError("EVENT_LOOP", name, f"uvloop cannot be imported: {exc}") from exc
        return "asyncio"
    return "uvloop"


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A ``loop_factory`` for :class:`asyncio.Runner`: uvloop's, or None for
    asyncio's default. Raises as :func:`resolve_event_loop`."""
    if resolve_event_loop(name) == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def run_on_loop(
    main: Coroutine[Any, Any, _T], *, loop: str = "auto", debug: bool | None = None
) -> _T:
    """``asyncio.run(main, debug=debug)`` on the loop ``loop`` names (see
    :func:`resolve_event_loop`, which says what it raises before ``main``
    starts). The loop is closed afterwards, as ``asyncio.run`` does."""
    try:
        factory = loop_factory(loop)
    except ConfigError:
        main.close()  # never awaited: close it, or Python warns that it was not
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
