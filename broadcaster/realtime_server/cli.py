"""Running the server on its own: ``python -m broadcaster.realtime_server``
(and ``broadcaster realtime-server``, which calls :func:`run`).

Its stdout carries one line once it listens, its URL, and then one JSON line
of its counters (:meth:`~.transport.Transport.snapshot`) each time it gets
SIGUSR1: how a supervisor in another process (the load tests) reads what it
counted and refused without stopping it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence

from .quotas import LIMITS, Plan, plan_named
from .server import LocalRealtimeServer
from .tokens import DEFAULT_PRIVATE_ROLES
from .transport import DEFAULT_PORT

__all__ = ["add_arguments", "main", "parse_roles", "run"]


def parse_roles(text: str) -> tuple[str, ...]:
    """``--private-roles``: a comma list of one role or more. Raises
    ``argparse.ArgumentTypeError`` for an empty one."""
    roles = tuple(role.strip() for role in text.split(",") if role.strip())
    if not roles:
        raise argparse.ArgumentTypeError("expected one role or more, such as authenticated")
    return roles


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's options, shared by both ways of running it."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--key", help="the only apikey accepted (default: SUPABASE_KEY; with neither, any key)"
    )
    parser.add_argument(
        "--limits",
        choices=LIMITS,
        default="none",
        help="enforce this Supabase plan's Realtime quotas (default: none)",
    )
    parser.add_argument(
        "--jwt-secret",
        help="the secret private channels' access tokens are signed with "
        "(default: SUPABASE_JWT_SECRET; with neither, private channels are refused)",
    )
    parser.add_argument(
        "--private-roles",
        type=parse_roles,
        default=DEFAULT_PRIVATE_ROLES,
        metavar="ROLE,...",
        help="token roles allowed on private channels "
        f"(default: {','.join(DEFAULT_PRIVATE_ROLES)})",
    )


async def _run(
    host: str,
    port: int,
    key: str | None,
    plan: Plan | None,
    jwt_secret: str | None,
    private_roles: Sequence[str],
) -> int:
    # Handlers first: a supervisor may signal as soon as it reads the URL line.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = LocalRealtimeServer(
        host, port, key=key, limits=plan, jwt_secret=jwt_secret, private_roles=private_roles
    )
    await server.start()

    def print_counters() -> None:
        print(json.dumps(server.snapshot()), flush=True)

    loop.add_signal_handler(signal.SIGUSR1, print_counters)
    # On stderr: stdout carries only the URL line and the counters.
    if not server.checks_key:
        print(
            "realtime-server: no --key and no SUPABASE_KEY: accepting any apikey",
            file=sys.stderr,
            flush=True,
        )
    if not server.checks_tokens:
        print(
            "realtime-server: no --jwt-secret and no SUPABASE_JWT_SECRET: "
            "private channels are refused",
            file=sys.stderr,
            flush=True,
        )
    print(server.url, flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; prints its URL on one stdout line
    (and its counters as a JSON line on each SIGUSR1)."""
    parser = argparse.ArgumentParser(
        prog="python -m broadcaster.realtime_server",
        description="Local Supabase Realtime (broadcast) protocol server.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    key = args.key if args.key is not None else os.environ.get("SUPABASE_KEY")
    secret = args.jwt_secret
    if secret is None:
        secret = os.environ.get("SUPABASE_JWT_SECRET")
    return run(
        args.host,
        args.port,
        key=key,
        limits=args.limits,
        jwt_secret=secret,
        private_roles=args.private_roles,
    )


def run(
    host: str,
    port: int,
    *,
    key: str | None,
    limits: str = "none",
    jwt_secret: str | None = None,
    private_roles: Sequence[str] = DEFAULT_PRIVATE_ROLES,
) -> int:
    """Run the server until SIGTERM/SIGINT, accepting only ``key`` (None or
    empty: any key), enforcing the quotas of the plan named ``limits``, and
    checking private channels' tokens with ``jwt_secret``; prints its URL on
    one stdout line. Returns the exit code."""
    from ..logs import configure_logging

    plan = plan_named(limits)
    # Logs go to stderr so stdout carries only the URL line.
    configure_logging("console", "INFO")
    try:
        return asyncio.run(
            _run(host, port, key or None, plan, jwt_secret or None, tuple(private_roles))
        )
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
