"""structlog setup: console lines for people, JSON lines for machines.

Context (``event_id``, ``category``, ``adapter``) is bound with
:func:`structlog.contextvars.bound_contextvars` where the work happens, so
every line logged inside carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

__all__ = ["configure_logging", "get_logger", "use_log_settings"]


class _StderrLogger:
    """Prints each rendered line to whatever ``sys.stderr`` is *now*.

    structlog's PrintLogger keeps the stream it was built with; when stderr is
    swapped (pytest capture, daemonising) that stream may be closed later.
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def _stderr_logger(*_args: object) -> _StderrLogger:
    return _StderrLogger()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler that also resolves ``sys.stderr`` at write time."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(fmt: Literal["console", "json"] = "console", level: str = "INFO") -> None:
    """Configure structlog (and route stdlib logging of dependencies through it)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    # Dependencies (realtime, websockets, uvicorn) log through stdlib logging;
    # keep them quiet below WARNING unless DEBUG is asked for.
    logging.basicConfig(
        level=max(numeric, logging.WARNING), handlers=[_StderrHandler()], force=True
    )


def use_log_settings(fmt: Literal["console", "json"], level: str) -> None:
    """``LOG_FORMAT`` and ``LOG_LEVEL`` for a program using the Python API,
    unless it configured structlog itself (then its choice stands)."""
    if not structlog.is_configured():
        configure_logging(fmt, level)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
