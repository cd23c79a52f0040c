"""``broadcaster reconcile``: the reconciler on the command line.

At the end of the flow: it matches the store's routed events with the
consumers' receipts and prints the report (exit 1 while unrepaired loss
remains); ``--repair`` asks the running service, which owns the adapters,
to reconcile and re-send what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..exceptions import BroadcasterError
from ..loop import run_on_loop
from ..settings import Settings
from .common import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM

__all__ = ["run_reconcile"]


def run_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """``broadcaster reconcile``: reconcile the store here, or with
    ``--repair`` ask the running service to, and print the report."""
    if args.repair:
        return _repair(args, settings)
    from ..reconcile.matching import MatchPolicy
    from ..reconcile.reconciler import Reconciler
    from ..security import mask_url_password
    from ..store import store_exists, store_from_url

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

    from ..security import Scope

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
    from ..reconcile.matching import Outcome

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
