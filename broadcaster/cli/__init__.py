"""The ``broadcaster`` command (docs/cli.md).

:func:`main` parses the arguments (:mod:`~broadcaster.cli.parser`), loads
the settings and hands over to the subcommand's module: ``config``,
``subscribe``, ``reconcile``, ``serve`` (with ``realtime-server`` and
``demo``), and ``rollout`` (:mod:`broadcaster.cli_rollout`).

Exit codes: 0 success, 1 the command ran and found a problem, 2 bad
configuration or arguments (one line on stderr naming the variable and value).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..cli_rollout import run_rollout
from ..exceptions import ConfigError
from ..logs import configure_logging
from ..loop import resolve_event_loop
from .common import EXIT_CONFIG, EXIT_OK, admin_url, load
from .config import run_config, shipped
from .parser import build_parser
from .reconcile import run_reconcile
from .serve import run_demo_command, run_realtime_server, run_serve
from .subscribe import run_subscribe

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``broadcaster`` console script."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``broadcaster reconcile --json | head``): not
        # an error of ours. Point stdout at nothing so the interpreter's
        # final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config" and args.action in ("example", "files"):
        return shipped(args)
    if args.command == "realtime-server" and args.key is not None:
        # Needs no other setting: runs even where the rest would not validate.
        return run_realtime_server(args, None)
    try:
        settings = load(args)
        # EVENT_LOOP=uvloop where uvloop cannot be imported: refused here,
        # with every other configuration error, before anything starts.
        resolve_event_loop(settings.event_loop)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    level = settings.log_level
    if args.command in ("demo", "subscribe", "reconcile", "rollout") and level == "INFO":
        # These commands talk to a person through stdout; routine INFO lines
        # would tear the progress display. LOG_LEVEL=DEBUG still shows all.
        level = "WARNING"
    if args.command == "realtime-server":
        return run_realtime_server(args, settings)
    configure_logging(settings.log_format, level)
    if args.command == "config":
        return run_config(args, settings)
    if args.command == "subscribe":
        return run_subscribe(args, settings)
    if args.command == "reconcile":
        return run_reconcile(args, settings)
    if args.command == "serve":
        return run_serve(settings)
    if args.command == "rollout":
        return run_rollout(args, settings, admin_url(settings))
    return run_demo_command(args, settings)
