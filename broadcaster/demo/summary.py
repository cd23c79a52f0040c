"""What one demo run did (:class:`DemoSummary`) and the table the demo ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TextIO

from ..reconcile.matching import Outcome
from .stream import FLIP_CATEGORY

__all__ = ["ADAPTERS", "DemoSummary", "print_table"]

ADAPTERS = ("websocket", "realtime")


@dataclass
class DemoSummary:
    """What one demo run did. ``ok`` decides the exit status."""

    published: int = 0
    routed: dict[str, dict[str, int]] = field(default_factory=dict)
    delivered: dict[str, dict[str, int]] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    verified: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    seconds: float = 0.0
    #: ``http://HOST:PORT/dashboard#token=TOKEN``
    dashboard_url: str = ""
    #: The audit entry of the flag flip, as ``GET /audit`` returned it.
    flag_audit: dict[str, Any] | None = None
    #: USER_ACTIVITY events published and how many were routed to realtime,
    #: before and after the flip: ``{"before": (published, to_realtime), ...}``.
    flip_routing: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The realtime breaker's transitions, in order (``"closed->open"`` ...).
    transitions: list[str] = field(default_factory=list)
    #: Ramp shares (percent of live traffic) seen after the breaker closed.
    ramp_shares: list[int] = field(default_factory=list)
    #: Pending events delivered to realtime by the backfill.
    backfilled: int = 0
    #: Reconciliation totals per outcome, before and after repair.
    reconcile_before: dict[str, int] = field(default_factory=dict)
    reconcile_after: dict[str, int] = field(default_factory=dict)
    #: Events re-sent by repair, per adapter (summed over repair rounds).
    repaired: dict[str, int] = field(default_factory=dict)
    #: Per category and adapter: events re-sent by repair and then received.
    resent: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Log lines kept off the screen during the run (warnings, the Realtime
    #: client's reconnect errors), by message.
    warnings: dict[str, int] = field(default_factory=dict)

    #: The remote subscriber (a child process, killed and resumed): events it
    #: printed, WebSocket events it never got, events it got twice, where it
    #: was killed, and receipts the store has from it (by POST /receipts).
    remote: dict[str, int] = field(default_factory=dict)

    #: The rollouts of USER_ACTIVITY, as ``GET /rollouts/{id}`` ended them,
    #: each with the last audit entry it wrote (``last_audit``).
    rollouts: list[dict[str, Any]] = field(default_factory=list)
    #: Where a USER_ACTIVITY event went once the second rollout cut it over.
    cutover_routing: list[str] = field(default_factory=list)

    #: Why the demo could not run to the end (then ``ok`` is False).
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Ran to the end, no checksum mismatch (consumers or reconciler), nothing lost."""
        return (
            self.error is None
            and self.mismatches == 0
            and self.reconcile_after.get(Outcome.MISMATCH.value, 0) == 0
            and not any(self.lost.values())
            and self.remote.get("missed", 0) == 0
        )


def _state_path(transitions: list[str]) -> str:
    """``["closed->open", "open->half_open", ...]`` as one path, with repeated
    cycles folded: ``closed -> (open -> half_open) x3 -> closed``."""
    if not transitions:
        return "-"
    states = [transitions[0].split("->")[0]] + [t.split("->")[1] for t in transitions]
    parts: list[str] = []
    i = 0
    while i < len(states):
        pair = states[i : i + 2]
        n = 1
        while len(pair) == 2 and states[i + 2 * n : i + 2 * n + 2] == pair:
            n += 1
        if n > 1:
            parts.append(f"({pair[0]} -> {pair[1]}) x{n}")
            i += 2 * n
        else:
            parts.append(states[i])
            i += 1
    return " -> ".join(parts)


def print_table(summary: DemoSummary, snapshot: dict[str, Any], out: TextIO) -> None:
    cols = ("routed", "delivered", "repaired")
    width = 10
    block = width * len(cols) + 2
    top = " " * 24 + "".join(f"  {a:<{block - 2}}" for a in ADAPTERS)
    header = f"{'category':<14}{'published':>10}" + "".join(
        "  " + "".join(f"{c:>{width}}" for c in cols) for _ in ADAPTERS
    )
    lines = ["", top.rstrip(), header, "-" * len(header)]
    for cat, data in snapshot.items():
        row = f"{cat:<14}{data['published']:>10}"
        for a in ADAPTERS:
            stats = data["adapters"].get(a, {"routed": 0, "delivered": 0})
            repaired = summary.resent.get(cat, {}).get(a, 0)
            row += f"  {stats['routed']:>{width}}{stats['delivered']:>{width}}{repaired:>{width}}"
        lines.append(row)
    lines.append("-" * len(header))
    lines.append(
        "delivered: acknowledged by the adapter, repair re-sends included;"
        " repaired: re-sent after its consumer missed it"
    )
    lines.append("")
    lines.append(f"published          {summary.published}")
    for a in ADAPTERS:
        lines.append(
            f"{a:<18} received {summary.received[a]}, checksums verified {summary.verified[a]},"
            f" lost {summary.lost[a]}"
        )
    remote = summary.remote
    if "received" in remote:
        lines.append(
            f"remote subscriber  killed after {remote['killed_after']}, resumed with --since:"
            f" received {remote['received']}, missed {remote['missed']},"
            f" duplicates {remote['duplicates']}; receipts by POST /receipts {remote['receipts']}"
        )
    if summary.transitions:
        lines.append(f"realtime breaker   {_state_path(summary.transitions)}")
        lines.append(
            f"ramp               {' -> '.join(f'{s}%' for s in summary.ramp_shares) or '-'};"
            f" backfilled {summary.backfilled}"
        )
    ua = summary.flip_routing
    if ua:
        lines.append(
            f"flag flip          {FLIP_CATEGORY.value} to realtime: {ua['before'][1]} of"
            f" {ua['before'][0]} before, {ua['after'][1]} of {ua['after'][0]} after"
        )
    before, after = summary.reconcile_before, summary.reconcile_after
    if before:
        lines.append(
            f"reconciliation     missing {before.get('missing', 0)} before repair,"
            f" {after.get('missing', 0)} after; repaired {after.get('repaired', 0)};"
            f" mismatch {after.get('mismatch', 0)}"
        )
    for rollout in summary.rollouts:
        ended = rollout["state"]
        if rollout["in_cutover"]:
            ended += f": {rollout['category']} on {rollout['adapter']} only"
        elif ended == "rolled_back":
            ended += f" to {rollout['percentage']} %"
        lines.append(
            f"rollout {rollout['id']:<10} {rollout['category']}"
            f" {'/'.join(map(str, rollout['steps']))} %: {ended} ({rollout['reason']})"
        )
    if summary.rollouts:
        lines.append(
            "                   (the mismatches of the fault injected at 25 % are the rollout's"
            " evidence, not counted below)"
        )
    if summary.warnings:
        lines.append(
            f"log lines held     {sum(summary.warnings.values())} warnings and Realtime client"
            " reconnect errors (LOG_LEVEL=DEBUG prints them live):"
        )
        for message, n in sorted(summary.warnings.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{n:>22} x {message}")
    lines.append(f"checksum mismatches {summary.mismatches}")
    lines.append(f"duplicates          {summary.duplicates}")
    lines.append(f"lost                {sum(summary.lost.values())}")
    lines.append("result              " + ("OK" if summary.ok else "PROBLEM"))
    out.write("\n".join(lines) + "\n")
    out.flush()
