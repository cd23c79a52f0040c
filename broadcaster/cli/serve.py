"""``broadcaster serve``, ``realtime-server`` and ``demo``: the commands that
run the system rather than talk to it.

``serve`` runs the whole flow as a service (producer API, store, lanes,
adapters, reconciler, admin API); ``realtime-server`` the local
Realtime-protocol server the Realtime adapter can push to; ``demo`` all of
it in one run, with a summary.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from ..exceptions import BroadcasterError, ConfigError
from ..loop import run_on_loop
from ..settings import Settings
from .common import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM

__all__ = ["run_demo_command", "run_realtime_server", "run_serve"]


def _taken_port(settings: Settings) -> str | None:
    """Why ``serve`` cannot listen, found before anything starts (so the
    error is the only line): a fixed port another process holds."""
    for what, host, port in (
        ("admin API", settings.admin_host, settings.admin_port),
        ("websocket", settings.websocket_host, settings.websocket_port),
    ):
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As the servers bind: a port in TIME_WAIT is free to them too.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                return f"{what} cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def run_serve(settings: Settings) -> int:
    """``broadcaster serve``: the service, until it is stopped."""
    from ..service import run_service

    taken = _taken_port(settings)
    if taken is not None:
        print(f"serve: {taken}", file=sys.stderr)
        return EXIT_PROBLEM
    try:
        run_on_loop(run_service(settings, freeze_gc=True), loop=settings.event_loop)
    except OSError as exc:
        # The admin API could not listen (port taken, unknown host): a start-up
        # failure like the WebSocket server's (a BroadcasterError), so exit 1
        # as that does; the values themselves passed validation.
        print(f"serve: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_PROBLEM
    except ConfigError as exc:  # found at start-up: TLS files, WEBSOCKET_REQUIRE_TOKEN
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BroadcasterError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_OK


def run_realtime_server(args: argparse.Namespace, settings: Settings | None) -> int:
    """``broadcaster realtime-server``: the local Realtime-protocol server
    alone (``settings`` None: ``--key`` was given and nothing else read)."""
    from ..realtime_server import run

    key, secret = args.key, args.jwt_secret
    if settings is None:
        # --key given: the other settings were not read (nor validated).
        if secret is None:
            secret = os.environ.get("SUPABASE_JWT_SECRET")
    else:
        if key is None and settings.supabase_key is not None:
            key = settings.supabase_key.get_secret_value()
        if secret is None and settings.supabase_jwt_secret is not None:
            secret = settings.supabase_jwt_secret.get_secret_value()
    return run(
        args.host,
        args.port,
        key=key,
        limits=args.limits,
        jwt_secret=secret,
        private_roles=args.private_roles,
    )


def run_demo_command(args: argparse.Namespace, settings: Settings) -> int:
    """``broadcaster demo``: the whole system in one run, and its summary."""
    from ..demo import run_demo

    try:
        summary = run_on_loop(
            run_demo(settings, seconds=args.seconds, rate=args.rate, outage=args.outage),
            loop=settings.event_loop,
        )
    except KeyboardInterrupt:
        return EXIT_PROBLEM
    return EXIT_OK if summary.ok else EXIT_PROBLEM
