"""The reconciler: reads the store page by page and judges every (event,
routed adapter) pair with :func:`~broadcaster.reconcile.matching.judge`.

Strategy (docs/deploying.md): deliver, then reconcile. A run only reads the store and
yields to the event loop between pages, so it never blocks publishing. Its
memory is one page of rows plus the report's counters (and at most
``Report.max_missing_ids`` ids per adapter), not the size of the store.

Most pages, once both paths agree, hold nothing but plainly matched pairs:
each run first asks the store to prove that of a large page in aggregate
(:meth:`~broadcaster.store.base.Store.plain_page`, a few SQL aggregates
instead of a million Python objects) and counts it; only a page where that
fails is read and judged pair by pair.

After a run, ``reconciled_through`` (a store watermark) is the highest sequence
id below which every pair has a final verdict (not awaiting, not pending);
retention prunes only below it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import orjson
import structlog

from ..events import Category
from ..store.base import DeliveryState, ScanRow, Store
from .matching import Expected, MatchPolicy, Observation, Outcome, Report, judge

__all__ = ["RECONCILED_THROUGH", "Reconciler"]

log = structlog.get_logger("broadcaster.reconcile")

#: Store watermark: every event at or below it has a final verdict everywhere.
RECONCILED_THROUGH = "reconciled_through"

_NOT_FINAL = frozenset({Outcome.AWAITING, Outcome.PENDING})


def _keys(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    keys: list[str] = orjson.loads(text)
    return frozenset(keys)


class Reconciler:
    """Matches what adapters were sent against what consumers received."""

    def __init__(
        self,
        store: Store,
        policy: MatchPolicy,
        *,
        clock: Callable[[], float] = time.time,
        page_size: int = 5000,
        plain_page_size: int = 20_000,
    ) -> None:
        self._store = store
        self.policy = policy
        self._clock = clock
        self._page = page_size
        self._plain_page = plain_page_size
        self.last_report: Report | None = None
        self.last_run_at_ms: int | None = None
        self.last_duration_s: float | None = None

    def judge_row(
        self,
        row: ScanRow,
        now_ms: int,
        report: Report,
        watched_from: Mapping[str, int] | None = None,
        *,
        only: str | None = None,
    ) -> bool:
        """Judge one event on each of its routed adapters (``only`` that one,
        given) into ``report``; returns whether every verdict is final.
        ``watched_from`` maps an adapter to the lowest sequence id its
        consumers watch from (an adapter not in it has none); None treats
        every adapter as watched throughout."""
        final = True
        category = Category(row.category)
        expected_keys = _keys(row.payload_keys) or frozenset()
        for adapter in row.routed_to:
            if only is not None and adapter != only:
                continue
            state = row.states.get(adapter)
            expected = Expected(
                sequence_id=row.sequence_id,
                adapter=adapter,
                category=category,
                event_type=row.event_type,
                event_time_ms=row.created_at_ms,
                checksum=row.checksum,
                payload_keys=expected_keys,
                pending=state is DeliveryState.PENDING,
                repaired=state is DeliveryState.REPAIRED,
            )
            observations = [
                Observation(
                    sequence_id=r.sequence_id,
                    adapter=r.adapter,
                    event_type=r.event_type,
                    received_at_ms=r.received_at_ms,
                    checksum=r.checksum,
                    checksum_ok=r.checksum_ok,
                    payload_keys=_keys(r.payload_keys),
                    consumer=r.consumer,
                    deliveries=r.deliveries,
                )
                for r in row.receipts
                if r.adapter == adapter
            ]
            start = 1 if watched_from is None else watched_from.get(adapter)
            judgement = judge(expected, observations, now_ms, self.policy, start)
            report.add(expected, judgement)
            if judgement.outcome in _NOT_FINAL:
                final = False
        return final

    async def progress(self) -> tuple[int, int | None]:
        """``(reconciled_through, created_at_ms)``: the watermark, and when the
        first event above it was stored (None when every stored event is
        reconciled) — what reconciliation lag is measured from."""
        through = await self._store.get_watermark(RECONCILED_THROUGH)
        rows = await self._store.scan(after=through, limit=1)
        return through, rows[0].created_at_ms if rows else None

    async def run(self) -> Report:
        """Reconcile every retained event; returns (and keeps) the report."""
        started = time.perf_counter()
        now_ms = int(self._clock() * 1000)
        report = Report()
        consumers = await self._store.consumers()
        watched_from: dict[str, int] = {}
        for info in consumers:
            known = watched_from.get(info.adapter)
            watched_from[info.adapter] = (
                info.from_sequence_id if known is None else min(known, info.from_sequence_id)
            )
        report.consumers = [
            {
                "adapter": c.adapter,
                "consumer": c.consumer,
                "from_sequence_id": c.from_sequence_id,
                "through_sequence_id": c.through_sequence_id,
                "first_seen_ms": c.first_seen_ms,
                "last_seen_ms": c.last_seen_ms,
                "receipts": c.receipts,
            }
            for c in consumers
        ]
        after = 0
        final_through = await self._store.get_watermark(RECONCILED_THROUGH)
        prefix_final = True
        judged_before_ms = now_ms - self.policy.buffer_ms
        while True:
            page = await self._store.plain_page(
                after=after,
                limit=self._plain_page,
                judged_before_ms=judged_before_ms,
                window_ms=self.policy.window_ms,
            )
            if not page.last:
                break
            if page.matched is not None:
                report.add_matched(page.matched)
                if prefix_final:
                    final_through = max(final_through, page.last)
                after = page.last
                await asyncio.sleep(0)
                continue
            # Something in this page needs a verdict of its own: judge every
            # pair, in pages of rows, up to the end of the page.
            while after < page.last:
                rows = await self._store.scan(after=after, limit=self._page)
                if not rows:  # pruned since plain_page() saw them
                    break
                for row in rows:
                    final = self.judge_row(row, now_ms, report, watched_from)
                    if prefix_final and final:
                        final_through = max(final_through, row.sequence_id)
                    else:
                        prefix_final = False
                after = rows[-1].sequence_id
                # One page at a time, yielding in between: publishing keeps going.
                await asyncio.sleep(0)
            after = max(after, page.last)
        await self._store.set_watermark(RECONCILED_THROUGH, final_through)
        self.last_report = report
        self.last_run_at_ms = now_ms
        self.last_duration_s = time.perf_counter() - started
        log.info(
            "reconciliation finished",
            duration_s=round(self.last_duration_s, 3),
            reconciled_through=final_through,
            **{o.value: report.total(o) for o in Outcome},
        )
        return report
