"""``broadcaster subscribe``: a consumer on the command line.

At the consumers' end of the flow: it tails the WebSocket stream (resuming
after ``--since``), verifies each event's checksum and signature, prints
it, and with ``--report`` posts a receipt per event to the service's admin
API so that the reconciler counts it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from ssl import SSLContext
from typing import TYPE_CHECKING

from ..exceptions import AdapterRejected, BroadcasterError, HistoryPruned
from ..loop import run_on_loop
from ..settings import Settings
from .common import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM, admin_url

if TYPE_CHECKING:
    from ..consumer import ConsumerStats

__all__ = ["run_subscribe"]


def _subscriber_token(settings: Settings) -> str | None:
    """The first ``consumer`` token of the settings, else the admin token."""
    from ..security import Scope

    consumer = settings.api_tokens().first(Scope.CONSUMER)
    if consumer is not None:
        return consumer.secret.decode("utf-8", "surrogateescape")
    admin = settings.broadcaster_admin_token
    return admin.get_secret_value() if admin is not None else None


def run_subscribe(args: argparse.Namespace, settings: Settings) -> int:
    """``broadcaster subscribe``: tail the WebSocket stream, verifying each
    event, optionally reporting receipts."""
    from ..tls import client_ssl_context

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
        report = (args.admin_url or admin_url(settings), consumer)
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
    from ..consumer import ReceiptPoster
    from ..consumer.websocket import tail

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
