"""Reconciliation matching (docs/deploying.md): pure functions, no I/O, clock passed in.

For each event routed to an adapter, :func:`judge` looks at the consumer
receipts for that (sequence id, adapter) and returns one outcome:

``awaiting``  not judged yet: younger than the buffer (out-of-order receipts
              may still come), or not received and younger than max delay
``matched``   received within the window and meeting the category's criterion
``late``      received, criterion met, but later than the window after the
              event's timestamp
``mismatch``  received, but the event type differs or the criterion fails
              (checksum differs for exact categories, payload keys for
              semantic ones)
``missing``   not received by max delay, while a consumer of the adapter
              was reporting
``unobserved`` not received by max delay, and no consumer of the adapter was
              watching yet when the event was stored (its sequence id is
              below every consumer's first): nobody could have seen it, so
              it is not evidence of loss
``pending``   not received while its delivery is held by an open breaker
``repaired``  received after reconciliation repair re-sent it

Several consumers may report the same pair (the service's probes, remote
subscribers). One receipt within the window is enough for ``matched``; any
consumer whose first receipt breaks the criterion makes it ``mismatch``.
Deliveries to one consumer beyond its first count as duplicates. Criteria per
category: CRITICAL, SYSTEM and USER_ACTIVITY exact (checksum equal),
PERFORMANCE semantic (same event type and payload keys), DEBUG presence only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from ..events import Category

__all__ = [
    "CRITERIA",
    "Criterion",
    "Expected",
    "Judgement",
    "MatchPolicy",
    "Observation",
    "Outcome",
    "Report",
    "judge",
]


class Outcome(StrEnum):
    AWAITING = "awaiting"
    MATCHED = "matched"
    LATE = "late"
    MISMATCH = "mismatch"
    MISSING = "missing"
    UNOBSERVED = "unobserved"
    PENDING = "pending"
    REPAIRED = "repaired"


class Criterion(StrEnum):
    EXACT = "exact"
    SEMANTIC = "semantic"
    PRESENCE = "presence"


CRITERIA: Final[Mapping[Category, Criterion]] = {
    Category.CRITICAL: Criterion.EXACT,
    Category.SYSTEM: Criterion.EXACT,
    Category.USER_ACTIVITY: Criterion.EXACT,
    Category.PERFORMANCE: Criterion.SEMANTIC,
    Category.DEBUG: Criterion.PRESENCE,
}


@dataclass(frozen=True, slots=True)
class MatchPolicy:
    """Timing rules, in milliseconds (from RECONCILE_WINDOW_S / _BUFFER_S / _MAX_DELAY_S)."""

    window_ms: int = 5_000
    buffer_ms: int = 30_000
    max_delay_ms: int = 300_000
    criteria: Mapping[Category, Criterion] = field(default_factory=lambda: dict(CRITERIA))

    @classmethod
    def from_seconds(cls, window_s: float, buffer_s: float, max_delay_s: float) -> MatchPolicy:
        return cls(round(window_s * 1000), round(buffer_s * 1000), round(max_delay_s * 1000))


@dataclass(frozen=True, slots=True)
class Expected:
    """What the store says was routed to ``adapter``."""

    sequence_id: int
    adapter: str
    category: Category
    event_type: str
    event_time_ms: int
    checksum: str
    payload_keys: frozenset[str]
    pending: bool = False  # held by an open breaker / the restore ramp
    repaired: bool = False  # re-sent by repair


@dataclass(frozen=True, slots=True)
class Observation:
    """What a consumer reported receiving."""

    sequence_id: int
    adapter: str
    event_type: str
    received_at_ms: int
    checksum: str
    checksum_ok: bool
    payload_keys: frozenset[str] | None = None
    consumer: str = "default"
    #: How many times this consumer received the event (1: once).
    deliveries: int = 1


@dataclass(frozen=True, slots=True)
class Judgement:
    outcome: Outcome
    duplicates: int = 0
    reason: str = ""


def _meets(criterion: Criterion, expected: Expected, seen: Observation) -> str:
    """Empty string when ``seen`` meets ``criterion``; else why not."""
    if criterion is Criterion.EXACT:
        if not seen.checksum_ok or seen.checksum != expected.checksum:
            return f"checksum {seen.checksum} != {expected.checksum}"
    elif criterion is Criterion.SEMANTIC:
        if seen.payload_keys is not None and seen.payload_keys != expected.payload_keys:
            return "payload keys differ"
    return ""


def judge(
    expected: Expected,
    observations: Sequence[Observation],
    now_ms: int,
    policy: MatchPolicy,
    watched_from: int | None = 1,
) -> Judgement:
    """Classify one (event, adapter) pair. ``observations`` are the receipts for
    this sequence id and adapter, from any consumers, in any order.
    ``watched_from`` is the lowest sequence id any consumer of the adapter
    watched from (None: no consumer ever reported or registered); an event
    before it that nobody received is ``unobserved``, not ``missing``."""
    age = now_ms - expected.event_time_ms
    if age < policy.buffer_ms:
        return Judgement(Outcome.AWAITING)
    if not observations:
        if expected.pending:
            return Judgement(Outcome.PENDING)
        if age < policy.max_delay_ms:
            return Judgement(Outcome.AWAITING)
        if watched_from is None or expected.sequence_id < watched_from:
            return Judgement(Outcome.UNOBSERVED, reason="no consumer of the adapter was reporting")
        return Judgement(Outcome.MISSING, reason=f"not received within {policy.max_delay_ms} ms")
    firsts: dict[str, Observation] = {}
    duplicates = 0
    for seen in observations:
        duplicates += seen.deliveries - 1
        other = firsts.get(seen.consumer)
        if other is None:
            firsts[seen.consumer] = seen
        else:
            duplicates += 1
            if seen.received_at_ms < other.received_at_ms:
                firsts[seen.consumer] = seen
    criterion = policy.criteria[expected.category]
    for first in sorted(firsts.values(), key=lambda o: o.received_at_ms):
        if first.event_type != expected.event_type:
            return Judgement(
                Outcome.MISMATCH,
                duplicates,
                f"event_type {first.event_type!r} != {expected.event_type!r}",
            )
        why = _meets(criterion, expected, first)
        if why:
            return Judgement(Outcome.MISMATCH, duplicates, why)
    if expected.repaired:
        return Judgement(Outcome.REPAIRED, duplicates)
    earliest = min(o.received_at_ms for o in firsts.values())
    if earliest - expected.event_time_ms > policy.window_ms:
        return Judgement(Outcome.LATE, duplicates)
    return Judgement(Outcome.MATCHED, duplicates)


@dataclass
class Report:
    """Counts per (category, adapter) and outcome, plus duplicates, and the
    sequence ids that need attention (missing, mismatch) for repair."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    duplicates: Counter[tuple[str, str]] = field(default_factory=Counter)
    missing: dict[str, list[int]] = field(default_factory=dict)
    mismatched: dict[str, list[int]] = field(default_factory=dict)
    max_missing_ids: int = 10_000
    #: Who reported receipts, per adapter, and how far (the store's registry,
    #: as plain data: adapter, consumer, first/last seen, through, receipts).
    consumers: list[dict[str, object]] = field(default_factory=list)

    def add(self, expected: Expected, judgement: Judgement) -> None:
        key = (expected.category.value, expected.adapter)
        self.counts[(*key, judgement.outcome.value)] += 1
        if judgement.duplicates:
            self.duplicates[key] += judgement.duplicates
        if judgement.outcome is Outcome.MISSING:
            ids = self.missing.setdefault(expected.adapter, [])
            if len(ids) < self.max_missing_ids:
                ids.append(expected.sequence_id)
        elif judgement.outcome is Outcome.MISMATCH:
            ids = self.mismatched.setdefault(expected.adapter, [])
            if len(ids) < self.max_missing_ids:
                ids.append(expected.sequence_id)

    def add_matched(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Count pairs known to be matched without judging each one
        (:meth:`~broadcaster.store.base.Store.plain_page`):
        ``(category, adapter) -> pairs``."""
        for (category, adapter), n in counts.items():
            if n:
                self.counts[(category, adapter, Outcome.MATCHED.value)] += n

    def extend(self, pairs: Iterable[tuple[Expected, Judgement]]) -> None:
        for expected, judgement in pairs:
            self.add(expected, judgement)

    def total(self, outcome: Outcome) -> int:
        return sum(n for (_, _, o), n in self.counts.items() if o == outcome.value)

    @property
    def unrepaired_loss(self) -> int:
        """Events missing on some path (the ``broadcaster reconcile`` exit status)."""
        return self.total(Outcome.MISSING)

    def totals(self) -> dict[str, int]:
        """Pairs per outcome over every category and adapter, and the
        duplicate receipts (``duplicate``)."""
        return {o.value: self.total(o) for o in Outcome} | {
            "duplicate": sum(self.duplicates.values())
        }

    def as_dict(self) -> dict[str, object]:
        table: dict[str, dict[str, dict[str, int]]] = {}
        for (category, adapter, outcome), n in sorted(self.counts.items()):
            row = table.setdefault(category, {}).setdefault(
                adapter, {o.value: 0 for o in Outcome} | {"duplicate": 0}
            )
            row[outcome] = n
        for (category, adapter), n in self.duplicates.items():
            row = table.setdefault(category, {}).setdefault(
                adapter, {o.value: 0 for o in Outcome} | {"duplicate": 0}
            )
            row["duplicate"] = n
        return {
            "categories": table,
            "totals": self.totals(),
            "missing": {a: ids[:100] for a, ids in self.missing.items()},
            "mismatched": {a: ids[:100] for a, ids in self.mismatched.items()},
            "consumers": self.consumers,
        }
