"""The ``broadcaster`` command (docs/cli.md).

Exit codes: 0 success, 1 the command ran and found a problem, 2 bad
configuration or arguments (one line on stderr naming the variable and value).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from ssl import SSLContext
from typing import TYPE_CHECKING

from .cli_rollout import add_rollout_parser, run_rollout
from .events import Category
from .exceptions import AdapterRejected, BroadcasterError, ConfigError, HistoryPruned
from .logs import configure_logging
from .loop import resolve_event_loop, run_on_loop
from .settings import Settings, load_settings, unknown_variables

if TYPE_CHECKING:
    from .consumer import ConsumerStats

__all__ = ["main"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2


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


def _parser() -> argparse.ArgumentParser:
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
    from .realtime_server.cli import add_arguments

    add_arguments(server)
    return parser


def _load(args: argparse.Namespace) -> Settings:
    env_file = ".env" if args.env_file is None else args.env_file
    # A file named on the command line must exist: a typo would otherwise
    # run on defaults without a word (--env-file /dev/null: no file at all).
    if args.env_file is not None and not Path(env_file).exists():
        raise ConfigError("--env-file", env_file, "no such file")
    settings = load_settings(env_file)
    _warn_unknown(env_file)
    return settings


def _warn_unknown(env_file: str) -> None:
    """One line on stderr per variable that looks like a setting and is none
    (a misspelling is otherwise ignored without a word)."""
    from dotenv import dotenv_values

    names = list(os.environ)
    if Path(env_file).is_file():
        names += list(dotenv_values(env_file))
    for name, close in unknown_variables(names):
        hint = f" (did you mean {close}?)" if close is not None else ""
        print(f"warning: {name} is not a setting{hint}; it is ignored", file=sys.stderr)


def _config(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "show":
        print(json.dumps(settings.effective(), indent=2, sort_keys=True))
    else:
        print("configuration OK")
    return EXIT_OK


def _subscriber_token(settings: Settings) -> str | None:
    """The first ``consumer`` token of the settings, else the admin token."""
    from .security import Scope

    consumer = settings.api_tokens().first(Scope.CONSUMER)
    if consumer is not None:
        return consumer.secret.decode("utf-8", "surrogateescape")
    admin = settings.broadcaster_admin_token
    return admin.get_secret_value() if admin is not None else None


def _subscribe(args: argparse.Namespace, settings: Settings) -> int:
    from .tls import client_ssl_context

    url = args.url
    if url is None:
        scheme = "wss" if settings.websocket_tls_cert is not None else "ws"
        url = f"{scheme}://{settings.websocket_host}:{settings.websocket_port}/events"
    try:
        context = client_ssl_context(args.ca_file) if args.ca_file is not None else None
    except ValueError as exc:
        print(f"subscribe: --ca-file: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    token = args.token if args.token is not None else _subscriber_token(settings)
    # With EVENT_SIGNING_KEY set, an event not signed with it is a bad signature.
    secret = settings.event_signing_key
    keys = None if secret is None else {settings.event_signing_key_id: secret.get_secret_value()}
    if (args.consumer is not None or args.admin_url is not None) and not args.report:
        print("subscribe: --consumer and --admin-url need --report", file=sys.stderr)
        return EXIT_CONFIG
    report = None
    if args.report:
        if not token:
            print(
                "subscribe --report: no token for POST /receipts; give --token, or set a"
                " 'consumer' token in BROADCASTER_TOKENS or BROADCASTER_ADMIN_TOKEN",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        consumer = args.consumer or f"subscribe:{platform.node()}:{os.getpid()}"
        if not 1 <= len(consumer) <= 128 or not consumer.isprintable():
            print(
                f"subscribe: --consumer: 1-128 printable characters, not {consumer!r}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        report = (args.admin_url or _admin_url(settings), consumer)
    try:
        stats = run_on_loop(
            _tail(
                url,
                args,
                ssl=context,
                token=token,
                signing_keys=keys,
                report=report,
            ),
            loop=settings.event_loop,
        )
    except KeyboardInterrupt:
        return EXIT_OK
    except HistoryPruned as exc:  # before AdapterRejected: not an argument problem
        print(f"subscribe: {_pruned(exc)}", file=sys.stderr)
        return EXIT_PROBLEM
    except ValueError as exc:  # not a ws:// or wss:// URL, or --ca-file with ws://
        print(f"subscribe: --url: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except AdapterRejected as exc:  # the server refused the path, filter or token
        print(f"subscribe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BroadcasterError as exc:  # nothing listening, connection lost for good
        print(f"subscribe: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return EXIT_PROBLEM if stats.mismatches or stats.bad_signatures or stats.malformed else EXIT_OK


def _admin_url(settings: Settings) -> str:
    """The admin API of the service these settings describe, as a client
    reaches it: a wildcard listen address means this host."""
    scheme = "https" if settings.admin_tls_cert is not None else "http"
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(
        settings.admin_host, settings.admin_host
    )
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{settings.admin_port}"


async def _tail(
    url: str,
    args: argparse.Namespace,
    *,
    ssl: SSLContext | None,
    token: str | None,
    signing_keys: dict[str, str] | None,
    report: tuple[str, str] | None,
) -> ConsumerStats:
    """``tail``, with a :class:`ReceiptPoster` fed by it when ``report`` is
    ``(admin URL, consumer name)``; its figures go to stderr at the end."""
    from .consumer import ReceiptPoster
    from .consumer.websocket import tail

    if report is None:
        return await tail(
            url,
            args.categories,
            sys.stdout,
            limit=args.limit,
            ssl=ssl,
            token=token,
            signing_keys=signing_keys,
            since=args.since,
        )
    admin_url, consumer = report
    assert token is not None
    # --ca-file vouches for the service's certificate on both of its ports.
    poster = ReceiptPoster(admin_url, token, verify=ssl if ssl is not None else True)
    await poster.start()
    try:
        return await tail(
            url,
            args.categories,
            sys.stdout,
            limit=args.limit,
            ssl=ssl,
            token=token,
            signing_keys=signing_keys,
            since=args.since,
            consumer=consumer,
            on_receipt=poster.add,
        )
    finally:
        await poster.close()
        p = poster.stats
        print(
            f"receipts as {consumer} to {poster.url}: posted {p.posted}, retries {p.retries},"
            f" dropped {p.dropped}, rejected {p.rejected}"
            + (f" (last error: {p.last_error})" if p.last_error else ""),
            file=sys.stderr,
        )


def _pruned(exc: HistoryPruned) -> str:
    """One line saying how far back the store goes, and how to go on."""
    if exc.oldest is None:
        return (
            f"cannot resume after sequence id {exc.since}: the events after it were pruned and"
            " the store holds none now; start again without --since"
        )
    return (
        f"cannot resume after sequence id {exc.since}: the store goes back only to sequence"
        f" id {exc.oldest} (the events between were pruned); --since {exc.oldest - 1} reads"
        " on from there"
    )


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    if args.repair:
        return _repair(args, settings)
    from .reconcile.matching import MatchPolicy
    from .reconcile.reconciler import Reconciler
    from .security import mask_url_password
    from .store import store_exists, store_from_url

    async def run() -> tuple[dict[str, object], int] | None:
        # Opening a store creates it: a typo in STORE_URL (or the wrong
        # directory) would report an empty store as "no loss".
        if not await store_exists(settings.store_url):
            return None
        async with store_from_url(settings.store_url) as store:
            policy = MatchPolicy.from_seconds(
                settings.reconcile_window_s,
                settings.reconcile_buffer_s,
                settings.reconcile_max_delay_s,
            )
            report = await Reconciler(store, policy).run()
            return report.as_dict(), report.unrepaired_loss

    try:
        result = run_on_loop(run(), loop=settings.event_loop)
    except BroadcasterError as exc:
        print(f"reconcile: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if result is None:
        print(
            f"reconcile: no store at STORE_URL={mask_url_password(settings.store_url)}"
            " (nothing was created; run it where the service's store is)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    data, loss = result
    _print_report(args, data, loss)
    return EXIT_PROBLEM if loss else EXIT_OK


def _repair(args: argparse.Namespace, settings: Settings) -> int:
    """Repair needs the process that owns the adapters (its WebSocket
    subscribers are connected to it), so it goes through the admin API."""
    import httpx

    from .security import Scope

    url = (args.admin_url or f"http://{settings.admin_host}:{settings.admin_port}").rstrip("/")
    tokens = settings.api_tokens()
    found = tokens.first(Scope.ADMIN) or tokens.first(Scope.OPERATOR)
    if found is None:
        print(
            "reconcile --repair: no token to ask the service with; set BROADCASTER_ADMIN_TOKEN"
            " (the token the service printed at start) or an operator token in"
            " BROADCASTER_TOKENS",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    token = found.secret.decode()
    try:
        response = httpx.post(
            f"{url}/reconciliation/run",
            params={"repair": "true"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
    except httpx.HTTPError as exc:
        print(f"reconcile --repair: the service at {url} is not reachable: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if response.status_code != 200:
        print(
            f"reconcile --repair: {url} answered {response.status_code}: {response.text}",
            file=sys.stderr,
        )
        return EXIT_CONFIG if response.status_code in (401, 403) else EXIT_PROBLEM
    body = response.json()
    loss = int(body["unrepaired_loss"])
    queued = {str(k): int(v) for k, v in body["repair"].items()}
    _print_report(args, body["report"], loss)
    if not args.json:
        for adapter, n in queued.items():
            print(f"repair queued on {adapter}: {n} events")
    # What was queued is re-sent now; anything the report could not list
    # (over its id cap) is still unrepaired: run again to confirm.
    left = max(0, loss - sum(queued.values()))
    if not args.json and loss:
        print(f"unrepaired after this repair: {left} (run again to confirm delivery)")
    return EXIT_PROBLEM if left else EXIT_OK


def _print_report(args: argparse.Namespace, data: dict[str, object], loss: int) -> None:
    from .reconcile.matching import Outcome

    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return
    outcomes = [o.value for o in Outcome] + ["duplicate"]
    header = f"{'category':<14}{'adapter':<11}" + "".join(f"{o:>10}" for o in outcomes)
    print(header)
    print("-" * len(header))
    categories = data["categories"]
    assert isinstance(categories, dict)
    for category, adapters in categories.items():
        for adapter, row in adapters.items():
            print(f"{category:<14}{adapter:<11}" + "".join(f"{row[o]:>10}" for o in outcomes))
    print("-" * len(header))
    print(f"unrepaired loss: {loss}")
    missing = data["missing"]
    assert isinstance(missing, dict)
    for adapter, ids in missing.items():
        print(f"missing on {adapter}: {ids}")
    _print_consumers(data)


def _print_consumers(data: dict[str, object]) -> None:
    """Who reported receipts on each routed adapter, and how far: a report
    is only as good as its consumers."""
    consumers = data.get("consumers") or []
    assert isinstance(consumers, list)
    categories = data["categories"]
    assert isinstance(categories, dict)
    routed = sorted({adapter for adapters in categories.values() for adapter in adapters})
    print("consumers reporting receipts:")
    for adapter in routed:
        mine = [c for c in consumers if c["adapter"] == adapter]
        if not mine:
            print(f"  {adapter:<10} none: its events are 'unobserved', not judged missing")
        for c in mine:
            print(
                f"  {adapter:<10} {c['consumer']}: events {c['from_sequence_id']}"
                f" through {c['through_sequence_id']} ({c['receipts']} receipts)"
            )


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


def _serve(settings: Settings) -> int:
    from .service import run_service

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


def _realtime_server(args: argparse.Namespace, settings: Settings | None) -> int:
    from .realtime_server import run

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


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    try:
        summary = run_on_loop(
            run_demo(settings, seconds=args.seconds, rate=args.rate, outage=args.outage),
            loop=settings.event_loop,
        )
    except KeyboardInterrupt:
        return EXIT_PROBLEM
    return EXIT_OK if summary.ok else EXIT_PROBLEM


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


def _shipped(args: argparse.Namespace) -> int:
    """``config example`` / ``config files``: what the package ships, needing
    no valid settings (a first ``.env`` is made with it)."""
    data = resources.files("broadcaster") / "data"
    if args.action == "example":
        sys.stdout.write((data / "env.example").read_text(encoding="utf-8"))
    else:
        print(data / "config")
    return EXIT_OK


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config" and args.action in ("example", "files"):
        return _shipped(args)
    if args.command == "realtime-server" and args.key is not None:
        # Needs no other setting: runs even where the rest would not validate.
        return _realtime_server(args, None)
    try:
        settings = _load(args)
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
        return _realtime_server(args, settings)
    configure_logging(settings.log_format, level)
    if args.command == "config":
        return _config(args, settings)
    if args.command == "subscribe":
        return _subscribe(args, settings)
    if args.command == "reconcile":
        return _reconcile(args, settings)
    if args.command == "serve":
        return _serve(settings)
    if args.command == "rollout":
        return run_rollout(args, settings, _admin_url(settings))
    return _demo(args, settings)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
