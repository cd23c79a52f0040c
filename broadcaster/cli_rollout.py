"""``broadcaster rollout start|status|pause|resume|abort`` (docs/cli.md): the
progressive rollouts of a running service, through its admin API.

A rollout lives in the service (its store, its controller), so every action
is a request to ``/rollouts``; this module only builds the request and
prints the answer. Exit codes as every command's: 0 done; 1 the service
refused the move (409: another rollout of the category, a state that does
not allow it; 404: no such rollout) or cannot be reached; 2 bad arguments,
no token, or a token or plan the service refuses.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .settings import Settings

__all__ = ["add_rollout_parser", "run_rollout"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2


def _steps(value: str) -> list[int]:
    try:
        steps = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma list of percentages: {value!r} (e.g. 1,5,25,50,100)"
        ) from None
    if not steps:
        raise argparse.ArgumentTypeError("give at least one step, e.g. 1,5,25,50,100")
    return steps


def _rollout_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"not a rollout id (a whole number >= 1): {value!r}")
    return int(value)


def add_rollout_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``rollout`` command and its actions, on the command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--admin-url",
        help="the service's admin API (default: http(s)://ADMIN_HOST:ADMIN_PORT)",
    )
    common.add_argument(
        "--token",
        help="bearer token (default: BROADCASTER_ADMIN_TOKEN, else an operator token of"
        " BROADCASTER_TOKENS; status also takes a read token)",
    )
    common.add_argument("--json", action="store_true", help="print the service's answer as JSON")
    rollout = sub.add_parser(
        "rollout", help="progressive rollouts of a running service: start, status, pause, ..."
    )
    actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser(
        "start", parents=[common], help="start a rollout of a category through steps"
    )
    start.add_argument("category", help="the category, e.g. USER_ACTIVITY")
    start.add_argument(
        "--steps",
        type=_steps,
        required=True,
        help="comma list of rising percentages of the category on the new adapter,"
        " e.g. 1,5,25,50,100",
    )
    start.add_argument(
        "--hold", type=float, default=600.0, help="seconds each step must hold clean (600)"
    )
    start.add_argument(
        "--max-mismatch-rate", type=float, default=0.0, help="gate: mismatched ÷ judged (0)"
    )
    start.add_argument("--max-missing", type=int, default=0, help="gate: missing events (0)")
    start.add_argument(
        "--max-breaker-trips", type=int, default=0, help="gate: new adapter breaker trips (0)"
    )
    start.add_argument(
        "--max-p99-ms",
        type=int,
        help="gate: publish-to-receive p99 on the new adapter, in ms (default: not gated)",
    )
    start.add_argument(
        "--cutover",
        action="store_true",
        help="after the last step (100) holds clean, the category on the new adapter only",
    )
    status = actions.add_parser(
        "status", parents=[common], help="one rollout with its timeline, or every rollout"
    )
    status.add_argument("id", type=_rollout_id, nargs="?", help="the rollout (default: all)")
    for name, what in (
        ("pause", "hold a running rollout at its step"),
        ("resume", "let a paused rollout run on"),
        ("abort", "end a rollout and restore the category's flags from before it"),
    ):
        action = actions.add_parser(name, parents=[common], help=what)
        action.add_argument("id", type=_rollout_id, help="the rollout")


def _token(args: argparse.Namespace, settings: Settings) -> str | None:
    if args.token:
        token: str = args.token
        return token
    from .security import Scope

    tokens = settings.api_tokens()
    scopes = [Scope.ADMIN, Scope.OPERATOR]
    if args.action == "status":
        scopes.append(Scope.READ)
    for scope in scopes:
        found = tokens.first(scope)
        if found is not None:
            return found.secret.decode("utf-8", "surrogateescape")
    return None


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    if args.action == "start":
        gates: dict[str, Any] = {
            "max_mismatch_rate": args.max_mismatch_rate,
            "max_missing": args.max_missing,
            "max_breaker_trips": args.max_breaker_trips,
            "max_realtime_p99_ms": args.max_p99_ms,
        }
        body = {
            "category": args.category.upper(),
            "steps": args.steps,
            "hold_s": args.hold,
            "gates": gates,
            "cutover": args.cutover,
        }
        return "POST", "/rollouts", body
    if args.action == "status":
        return "GET", "/rollouts" if args.id is None else f"/rollouts/{args.id}", None
    return "POST", f"/rollouts/{args.id}/{args.action}", None


def run_rollout(args: argparse.Namespace, settings: Settings, admin_url: str) -> int:
    """Run ``broadcaster rollout ACTION``; ``admin_url`` is the settings'
    admin API (``--admin-url`` wins)."""
    import httpx

    token = _token(args, settings)
    if token is None:
        print(
            f"rollout {args.action}: no token to ask the service with; set"
            " BROADCASTER_ADMIN_TOKEN (the token the service printed at start), an operator"
            " token in BROADCASTER_TOKENS, or --token",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    url = (args.admin_url or admin_url).rstrip("/")
    method, path, body = _request(args)
    cert = settings.admin_tls_cert
    try:
        response = httpx.request(
            method,
            f"{url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            verify=str(cert) if cert is not None and args.admin_url is None else True,
        )
    except httpx.HTTPError as exc:
        print(
            f"rollout {args.action}: the service at {url} is not reachable: {exc}", file=sys.stderr
        )
        return EXIT_PROBLEM
    if response.status_code >= 400:
        print(f"rollout {args.action}: {_refusal(response)}", file=sys.stderr)
        return EXIT_CONFIG if response.status_code in (401, 403, 422) else EXIT_PROBLEM
    data = response.json()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif "rollouts" in data:
        for rollout in data["rollouts"]:
            print(_summary(rollout))
        if not data["rollouts"]:
            print("no rollouts")
    else:
        print(_details(data))
    return EXIT_OK


def _refusal(response: Any) -> str:
    """The service's reason for refusing, in one line."""
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if isinstance(detail, list):
        detail = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail)
    return f"{response.status_code} {detail if detail else response.text}"


def _where(rollout: dict[str, Any]) -> str:
    state = rollout["state"]
    if state == "rolled_back":
        return f"rolled back from step {rollout['step']} to {rollout['percentage']} %"
    if state == "aborted":
        return f"back to {rollout['percentage']} %, as before it"
    if rollout["in_cutover"]:
        return f"cutover: {rollout['category']} on {rollout['adapter']} only"
    return f"step {rollout['step']} of {rollout['stages']}, {rollout['percentage']} %"


def _summary(rollout: dict[str, Any]) -> str:
    line = f"rollout {rollout['id']}  {rollout['category']}  {rollout['state']}  {_where(rollout)}"
    if rollout["state"] == "running":
        line += f"  hold left {rollout['remaining_hold_s']:g} s"
    return line


def _details(rollout: dict[str, Any]) -> str:
    lines = [
        _summary(rollout),
        f"  steps   {','.join(str(s) for s in rollout['steps'])}"
        f"{' then cutover' if rollout['cutover'] else ''}, hold {rollout['hold_s']:g} s",
        f"  gates   {json.dumps(rollout['gates'], sort_keys=True)}",
        f"  reason  {rollout['reason']}",
    ]
    if rollout["note"]:
        lines.append(f"  now     {rollout['note']}")
    lines.append("  timeline")
    for move in rollout["timeline"]:
        where = "cutover" if move["cutover"] else f"{move['percentage']:>3} %"
        lines.append(f"    {move['at']}  {move['action']:<9} {where:<8} {move['reason']}")
    return "\n".join(lines)
