"""The ``broadcaster`` command line's arguments: every subcommand and option
(docs/cli.md lists them, and a test checks it does).

The command line drives the whole flow from outside: ``serve`` runs it,
``subscribe`` is a consumer, ``reconcile`` the reconciler, ``config`` and
``rollout`` change and show how events are routed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_rollout import add_rollout_parser
from ..events import Category

__all__ = ["build_parser"]


def _categories(value: str) -> list[str]:
    names = [part.strip().upper() for part in value.split(",") if part.strip()]
    for name in names:
        if name not in Category.__members__:
            raise argparse.ArgumentTypeError(
                f"unknown category {name!r}; expected some of {','.join(Category)}"
            )
    return names


def _sequence_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > 2**63 - 1:
        raise argparse.ArgumentTypeError(f"not a sequence id (a whole number >= 0): {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``broadcaster`` command's parser, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="broadcaster",
        description="Event-streaming dual-write broadcaster (WebSocket + Supabase Realtime).",
    )
    parser.add_argument(
        "--env-file",
        help="read settings from this file too (default: .env, if there is one)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the whole system locally and print a summary")
    demo.add_argument(
        "--seconds",
        type=float,
        default=8.0,
        help="how long to publish (longer while an outage recovers)",
    )
    demo.add_argument(
        "--no-outage",
        dest="outage",
        action="store_false",
        help="do not kill and restart the local Realtime server",
    )
    demo.add_argument("--rate", type=float, default=2000.0, help="target events per second")

    config = sub.add_parser(
        "config",
        help="show or check the configuration; print an example .env or where the shipped"
        " alert rules and dashboard are",
    )
    config.add_argument(
        "action",
        choices=["show", "check", "example", "files"],
        help="show: the effective settings (secrets masked); check: validate them; example:"
        " print a commented .env with every variable; files: print the directory holding"
        " the Prometheus alert rules and the Grafana dashboard",
    )

    subscribe = sub.add_parser("subscribe", help="tail the WebSocket stream, verifying checksums")
    subscribe.add_argument(
        "--url", help="ws://host:port/events or wss://... (default: from settings)"
    )
    subscribe.add_argument(
        "--ca-file",
        type=Path,
        help="CA bundle (PEM) to trust for wss:// (default: the system trust store)",
    )
    subscribe.add_argument(
        "--token",
        help="token sent as 'Authorization: Bearer' (default: the first 'consumer' token"
        " of BROADCASTER_TOKENS, else BROADCASTER_ADMIN_TOKEN)",
    )
    subscribe.add_argument(
        "--categories", type=_categories, help="comma list, e.g. CRITICAL,SYSTEM"
    )
    subscribe.add_argument("--limit", type=int, help="stop after this many events")
    subscribe.add_argument(
        "--report",
        action="store_true",
        help="post a receipt per event to the admin API (POST /receipts), so reconciliation"
        " counts this subscriber; --token is sent there too",
    )
    subscribe.add_argument(
        "--consumer",
        help="the consumer name receipts are reported under (default: subscribe:<host>:<pid>)",
    )
    subscribe.add_argument(
        "--admin-url",
        help="admin API receipts go to (default: http(s)://ADMIN_HOST:ADMIN_PORT)",
    )
    subscribe.add_argument(
        "--since",
        type=_sequence_id,
        metavar="N",
        help="first replay the stored events after sequence id N (the last one seen), then"
        " continue live; reconnects always resume from the last event received",
    )

    reconcile = sub.add_parser(
        "reconcile", help="reconcile the store; exit 1 while unrepaired loss remains"
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    reconcile.add_argument(
        "--repair",
        action="store_true",
        help="ask the running service (broadcaster serve) to re-send what is missing",
    )
    reconcile.add_argument(
        "--admin-url", help="admin API of the service (default: http://ADMIN_HOST:ADMIN_PORT)"
    )

    sub.add_parser("serve", help="run the service: adapters, store, reconciler and admin API")
    add_rollout_parser(sub)

    server = sub.add_parser(
        "realtime-server", help="run the local Realtime-protocol server on its own"
    )
    from ..realtime_server.cli import add_arguments

    add_arguments(server)
    return parser
