"""The demo's last phase: reconcile, repair what a consumer missed, and
reconcile again until nothing is missing (bounded)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter

from ..consumer import ReceiptCollector, StoreReceiptWriter
from ..core import Broadcaster
from ..reconcile.matching import Outcome, Report
from ..settings import Settings
from .stream import Publisher
from .summary import ADAPTERS
from .timeline import (
    CATCH_UP_TIMEOUT_S,
    RECOVERY_TIMEOUT_S,
    REPAIR_TIMEOUT_S,
    DemoBase,
    until,
)

__all__ = ["ReconcilePhase"]


def _totals(report: Report) -> dict[str, int]:
    totals = {o.value: report.total(o) for o in Outcome}
    totals["duplicate"] = sum(report.duplicates.values())
    return totals


def _describe_report(report: Report) -> str:
    totals = _totals(report)
    text = ", ".join(f"{name} {n}" for name, n in totals.items())
    missing: Counter[str] = Counter()
    for (_, adapter, outcome), n in report.counts.items():
        if outcome == Outcome.MISSING.value:
            missing[adapter] += n
    per_adapter = ", ".join(f"{a} {missing[a]}" for a in ADAPTERS if missing[a])
    return text + (f"  (missing on {per_adapter})" if per_adapter else "")


def _received(collectors: dict[str, ReceiptCollector], wanted: dict[str, set[int]]) -> bool:
    return all(ids <= collectors[a].seen for a, ids in wanted.items())


class ReconcilePhase(DemoBase):
    """Reconciles and repairs once publishing has stopped."""

    async def _reconcile(
        self,
        b: Broadcaster,
        receipts: StoreReceiptWriter,
        collectors: dict[str, ReceiptCollector],
        publisher: Publisher,
        settings: Settings,
    ) -> None:
        await b.flush(timeout=RECOVERY_TIMEOUT_S)
        # Everything is acknowledged; let the consumers read the tail. On the
        # realtime path only what was sent after its consumer came back can arrive.
        last = publisher.last_sequence_id
        tail_rt = {s for s in publisher.routed["realtime"] if s > self.rejoined_after}

        def caught_up() -> bool:
            return (
                publisher.routed["websocket"] <= collectors["websocket"].seen
                and tail_rt <= collectors["realtime"].seen
            )

        await until(caught_up, CATCH_UP_TIMEOUT_S)
        await receipts.flush()
        # An event is judged missing once it is older than the max delay.
        wait = publisher.last_at + settings.reconcile_max_delay_s + 0.2 - time.time()
        self.note(
            f"{self.t()} published {publisher.count} events (last sequence id {last});"
            f" reconciling in {max(0.0, wait):.1f} s, once the newest event is older than"
            f" the max delay ({settings.reconcile_max_delay_s:g} s)"
        )
        await asyncio.sleep(max(0.0, wait))
        report = await b.reconcile()
        self.summary.reconcile_before = _totals(report)
        self.note(f"{self.t()} reconciliation before repair: {_describe_report(report)}")
        deadline = time.monotonic() + REPAIR_TIMEOUT_S
        while report.unrepaired_loss and time.monotonic() < deadline:
            missing = {a: set(ids) for a, ids in report.missing.items()}
            queued = await b.repair(report)
            for adapter, n in queued.items():
                self.summary.repaired[adapter] = self.summary.repaired.get(adapter, 0) + n
            self.note(
                f"{self.t()} repair: re-sending "
                + ", ".join(f"{n} to {a}" for a, n in queued.items())
            )
            await b.flush(timeout=RECOVERY_TIMEOUT_S)
            await until(functools.partial(_received, collectors, missing), CATCH_UP_TIMEOUT_S)
            await receipts.flush()
            report = await b.reconcile()
        self.summary.reconcile_after = _totals(report)
        for (category, adapter, outcome), n in report.counts.items():
            if outcome == Outcome.REPAIRED.value:
                self.summary.resent.setdefault(category, {})[adapter] = n
        self.note(f"{self.t()} reconciliation after repair:  {_describe_report(report)}")
