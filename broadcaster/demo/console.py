"""What the demo's terminal shows while it runs: one status line redrawn in
place, and the warnings of its deliberate outage (and the errors of the
fault its rollout injects) held back for the summary."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Collection, Iterator, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["Progress", "errors_counted", "warnings_counted"]

REALTIME_CLIENT_MODULES = ("client", "channel", "push", "timer", "presence")


class Progress:
    """One status line: updated in place on a TTY, a line a second otherwise.
    :meth:`note` prints a line above it (phases, results)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0
        self.current = ""

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 1.0):
            return
        self.last = now
        if self.tty:
            # A line wider than the terminal would wrap and could not be redrawn.
            text = text[: max(20, shutil.get_terminal_size().columns - 1)]
            self.out.write("\r\033[K" + text + ("\n" if final else ""))
            self.current = "" if final else text
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + "\n" + self.current)
        else:
            self.out.write(text + "\n")
        self.out.flush()


@contextlib.contextmanager
def warnings_counted(counts: MutableMapping[str, int]) -> Iterator[None]:
    """While the demo runs, WARNING log lines are counted instead of printed
    (the summary lists them): the deliberate outage makes several — connection
    lost, failover started, deliveries failed — and the demo narrates those
    phases itself. So are the Realtime client's reconnect errors. Other errors
    still print. When logging is set to INFO or DEBUG, nothing is held back."""
    if structlog.get_logger().get_effective_level() < logging.WARNING:
        yield
        return

    def count_warnings(
        _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if method in ("warning", "warn"):
            key = str(event.get("event"))
            counts[key] = counts.get(key, 0) + 1
            raise structlog.DropEvent
        return event

    def count_client_errors(record: logging.LogRecord) -> bool:
        # "Connection attempt failed: [Errno 111] ...": counted by its first part.
        key = "realtime client: " + record.getMessage().split(":")[0]
        counts[key] = counts.get(key, 0) + 1
        return False

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[count_warnings, *processors])
    # The official Realtime client logs each failed reconnect (while its server
    # is down, on purpose) as an error through stdlib logging.
    # (A logger's filters see only its own records: one per client module.)
    client_logs = [logging.getLogger(f"realtime._async.{m}") for m in REALTIME_CLIENT_MODULES]
    for client_log in client_logs:
        client_log.addFilter(count_client_errors)
    try:
        yield
    finally:
        structlog.configure(processors=processors)
        for client_log in client_logs:
            client_log.removeFilter(count_client_errors)


@contextlib.contextmanager
def errors_counted(counts: MutableMapping[str, int], events: Collection[str]) -> Iterator[None]:
    """While a fault the demo injects on purpose lasts, the error lines it is
    expected to cause (``events``, e.g. each damaged event's "checksum
    mismatch") are counted in ``counts`` instead of printed; the demo
    narrates the fault and the summary lists them."""

    def count(
        _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = str(event.get("event"))
        if method == "error" and name in events:
            counts[name] = counts.get(name, 0) + 1
            raise structlog.DropEvent
        return event

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[count, *processors])
    try:
        yield
    finally:
        structlog.configure(processors=processors)
