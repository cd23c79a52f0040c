"""The evidence a rollout's gates judge: what happened during its current
stage, read from the store (docs/rollouts.md).

A stage's events are those of the rollout's category stored after the stage
began (by sequence id). Each is judged on the rollout's adapter by
reconciliation's own rules (:meth:`~broadcaster.reconcile.Reconciler.judge_row`)
only once it is older than reconciliation's window and buffer, so a receipt
still on its way never reads as a failure. Verdicts that are final are
counted once and kept: each look reads on from where the last one left
every earlier event final. Events after the first one not yet final are
judged again at every look (a mismatch among them counts now, their
matches are not kept), so one event waiting for its receipt neither hides
a failure behind it nor blocks the count.

Latency is the probe consumers' publish-to-receive time on the adapter;
breaker trips are this instance's breaker of the adapter opening since the
stage was first looked at (the instance that drives rollouts is the one
that writes to the new adapter).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ..probes import PROBE_CONSUMER_PREFIX
from ..reconcile.matching import Outcome, Report
from ..reconcile.reconciler import Reconciler
from ..store.base import ScanRow, Store
from .plan import StageHealth, latency_bucket, percentile

__all__ = ["PAGE", "StageEvidence", "breaker_opens"]

#: Rows read from the store per page.
PAGE: Final = 5000

_FINAL_COUNTED: Final = frozenset(
    {Outcome.MATCHED, Outcome.LATE, Outcome.MISMATCH, Outcome.MISSING, Outcome.REPAIRED}
)


def breaker_opens(view: Mapping[str, object] | None) -> tuple[int, bool]:
    """From one adapter's breaker view (``Broadcaster.breaker_states()``):
    how often it has opened, and whether it is not closed now. No breaker
    (no lane on this instance): never opened, closed."""
    if view is None:
        return 0, False
    transitions = view.get("transitions")
    opened = 0
    if isinstance(transitions, Mapping):
        opened = sum(int(n) for name, n in transitions.items() if str(name).endswith("->open"))
    return opened, view.get("state") != "closed"


@dataclass
class _Tally:
    judged: int = 0
    mismatches: int = 0
    missing: int = 0
    unobserved: int = 0
    latency: Counter[int] = field(default_factory=Counter)

    def add(self, report: Report, category: str, adapter: str) -> None:
        counts = report.counts
        for outcome in _FINAL_COUNTED:
            self.judged += counts[(category, adapter, outcome.value)]
        self.mismatches += counts[(category, adapter, Outcome.MISMATCH.value)]
        self.missing += counts[(category, adapter, Outcome.MISSING.value)]
        self.unobserved += counts[(category, adapter, Outcome.UNOBSERVED.value)]

    def plus(self, other: _Tally) -> _Tally:
        return _Tally(
            self.judged + other.judged,
            self.mismatches + other.mismatches,
            self.missing + other.missing,
            self.unobserved + other.unobserved,
            self.latency + other.latency,
        )


class StageEvidence:
    """The evidence of one stage of one rollout, gathered look by look.

    ``key`` names the stage (rollout id, stage, first sequence id after it
    began); a new stage needs a new object. ``opens`` is how often the
    adapter's breaker had opened when the stage was first looked at."""

    def __init__(
        self,
        key: tuple[int, int, int],
        *,
        category: str,
        adapter: str,
        from_sequence_id: int,
        opens: int,
    ) -> None:
        self.key = key
        self.category = category
        self.adapter = adapter
        #: Every event up to here is counted in ``_kept`` (or is not the
        #: rollout's to judge).
        self.cursor = from_sequence_id
        self._opens = opens
        self._kept = _Tally()

    def trips(self, opened: int, not_closed: bool) -> int:
        """Breaker trips during the stage: openings since it was first
        looked at, or one if the breaker has been open all along."""
        since = max(0, opened - self._opens)
        return since if since or not not_closed else 1

    async def health(
        self,
        store: Store,
        reconciler: Reconciler,
        *,
        now_ms: int,
        horizon_ms: int,
        trips: int,
    ) -> StageHealth:
        """Read on from the cursor and judge what is old enough; the stage's
        health as of ``now_ms``. ``horizon_ms``: how old an event must be
        before it is judged (reconciliation's window plus buffer)."""
        cutoff = now_ms - horizon_ms
        watched_from = await _watched_from(store)
        fresh = _Tally()
        first_open: int | None = None  # created_at of the first event not final
        after = self.cursor
        reading = True
        while reading:
            rows = await store.scan(after=after, limit=PAGE)
            if not rows:
                break
            for row in rows:
                if row.created_at_ms > cutoff:
                    reading = False
                    break
                after = row.sequence_id
                if row.category != self.category or self.adapter not in row.routed_to:
                    if first_open is None:
                        self.cursor = after
                    continue
                tally = _Tally()
                report = Report()
                final = reconciler.judge_row(row, now_ms, report, watched_from, only=self.adapter)
                tally.add(report, self.category, self.adapter)
                tally.latency.update(self._latency(row))
                if final and first_open is None:
                    self._kept = self._kept.plus(tally)
                    self.cursor = after
                    continue
                fresh = fresh.plus(tally)
                if not final and first_open is None:
                    first_open = row.created_at_ms
            # One page at a time, yielding in between: publishing keeps going.
            await asyncio.sleep(0)
        seen = self._kept.plus(fresh)
        return StageHealth(
            judged=seen.judged,
            mismatches=seen.mismatches,
            missing=seen.missing,
            unobserved=seen.unobserved,
            breaker_trips=trips,
            p99_ms=percentile(seen.latency, 0.99),
            complete_through_ms=cutoff if first_open is None else first_open - 1,
        )

    def _latency(self, row: ScanRow) -> list[int]:
        """The probes' publish-to-receive times of ``row`` on the adapter
        (each probe's first receipt), as :func:`latency_bucket` keys."""
        firsts: dict[str, int] = {}
        for receipt in row.receipts:
            if receipt.adapter != self.adapter:
                continue
            if not receipt.consumer.startswith(PROBE_CONSUMER_PREFIX):
                continue
            known = firsts.get(receipt.consumer)
            if known is None or receipt.received_at_ms < known:
                firsts[receipt.consumer] = receipt.received_at_ms
        return [latency_bucket(at - row.created_at_ms) for at in firsts.values()]


async def _watched_from(store: Store) -> dict[str, int]:
    """Per adapter, the lowest sequence id any of its consumers watches from
    (as reconciliation computes it)."""
    watched: dict[str, int] = {}
    for info in await store.consumers():
        known = watched.get(info.adapter)
        watched[info.adapter] = (
            info.from_sequence_id if known is None else min(known, info.from_sequence_id)
        )
    return watched
