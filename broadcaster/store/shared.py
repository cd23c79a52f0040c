"""What the three store backends compute alike, in plain Python: the
reference answer of a plain page, judging consumers' reports against the
stored events, the consumer registry's rows, and the JSON texts of runtime
configuration and rollout writes. Kept apart from the backends so that
memory, SQLite and PostgreSQL cannot drift apart on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..exceptions import RolloutConflict
from .records import (
    AuditEntry,
    ConfigChange,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    Report,
    ReportOutcome,
    ScanRow,
)

__all__ = [
    "ReceiptRow",
    "audit_entry",
    "config_json_of",
    "consumer_infos",
    "judge_report_rows",
    "judge_reports",
    "merge_consumer",
    "plain_counts",
    "receipt_rows",
    "report_infos",
    "rollout_actor",
    "rollout_json_of",
    "stale_rollout",
]


def plain_counts(
    rows: Sequence[ScanRow], *, judged_before_ms: int, window_ms: int
) -> dict[tuple[str, str], int] | None:
    """The answer of :meth:`Store.plain_page` for ``rows`` (one page, already
    read): per ``(category, adapter)`` the number of routed pairs, if every
    pair is plainly matched, else None. Backends that can decide this in SQL
    do so without reading the rows; this is the reference they must agree with."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        if row.created_at_ms > judged_before_ms or len(set(row.routed_to)) != len(row.routed_to):
            return None
        if any(r.adapter not in row.routed_to for r in row.receipts):
            return None
        for adapter in row.routed_to:
            if row.states.get(adapter) is DeliveryState.REPAIRED:
                return None
            seen = [r for r in row.receipts if r.adapter == adapter]
            if not seen or len({r.consumer for r in seen}) != len(seen):
                return None
            for r in seen:
                if not (
                    r.deliveries == 1
                    and r.event_type == row.event_type
                    and r.checksum_ok
                    and r.checksum == row.checksum
                    and (r.payload_keys is None or r.payload_keys == row.payload_keys)
                    and r.received_at_ms - row.created_at_ms <= window_ms
                ):
                    return None
            key = (row.category, adapter)
            counts[key] = counts.get(key, 0) + 1
    return counts


#: A receipt as a row: :class:`ConsumerReceipt`'s fields in their order
#: (sequence id, adapter, event type, received at ms, checksum, checksum ok,
#: consumer, payload keys, deliveries), what the SQL stores write.
ReceiptRow = tuple[int, str, str, int, str, bool, str, str | None, int]


def receipt_rows(receipts: Iterable[ConsumerReceipt]) -> list[ReceiptRow]:
    """``receipts`` as rows, each counted delivered at least once."""
    return [
        (
            r.sequence_id,
            r.adapter,
            r.event_type,
            r.received_at_ms,
            r.checksum,
            r.checksum_ok,
            r.consumer,
            r.payload_keys,
            max(r.deliveries, 1),
        )
        for r in receipts
    ]


def judge_report_rows(
    reports: Sequence[Report], facts: Mapping[int, tuple[str, str]]
) -> tuple[list[ReceiptRow], list[Report], ReportOutcome]:
    """The receipt rows to store for ``reports``, the reports of stored
    events among them, and the outcome, given ``facts``: sequence id ->
    (event type, checksum) of the stored events. Rows, not receipt objects:
    a batch is thousands of reports, and the SQL stores write rows."""
    rows: list[ReceiptRow] = []
    known: list[Report] = []
    unknown: set[int] = set()
    mismatches = 0
    for report in reports:
        seq, adapter, checksum, consumer, received_ms, times, verified = report
        fact = facts.get(seq)
        if fact is None:
            unknown.add(seq)
            continue
        ok = verified and checksum == fact[1]
        mismatches += not ok
        rows.append((seq, adapter, fact[0], received_ms, checksum, ok, consumer, None, times))
        known.append(report)
    return rows, known, ReportOutcome(len(rows), mismatches, sorted(unknown))


def judge_reports(
    reports: Sequence[Report], facts: Mapping[int, tuple[str, str]]
) -> tuple[list[ConsumerReceipt], ReportOutcome]:
    """:func:`judge_report_rows` as receipt objects."""
    rows, _, outcome = judge_report_rows(reports, facts)
    return [ConsumerReceipt(*row) for row in rows], outcome


def consumer_infos(receipts: Sequence[ConsumerReceipt]) -> list[ConsumerInfo]:
    """What one batch of receipts says of each (consumer, adapter): the rows a
    store merges into its consumer registry (min/max, and a sum of receipts)."""
    return _infos((r.consumer, r.adapter, r.sequence_id, r.received_at_ms) for r in receipts)


def report_infos(reports: Iterable[Report]) -> list[ConsumerInfo]:
    """:func:`consumer_infos` of the receipts stored for ``reports`` (pass
    only those of stored events)."""
    return _infos((r[3], r[1], r[0], r[4]) for r in reports)


def _infos(keyed: Iterable[tuple[str, str, int, int]]) -> list[ConsumerInfo]:
    """Registry rows from (consumer, adapter, sequence id, received at ms).
    Accumulates plain lists and builds one frozen row per key: a batch is
    usually thousands of receipts from one or two consumers."""
    acc: dict[tuple[str, str], list[int]] = {}
    for consumer, adapter, seq, at in keyed:
        row = acc.get((consumer, adapter))
        if row is None:
            acc[consumer, adapter] = [seq, seq, at, at, 1]
            continue
        if seq < row[0]:
            row[0] = seq
        elif seq > row[1]:
            row[1] = seq
        if at < row[2]:
            row[2] = at
        elif at > row[3]:
            row[3] = at
        row[4] += 1
    return [ConsumerInfo(consumer, adapter, *row) for (consumer, adapter), row in acc.items()]


def merge_consumer(old: ConsumerInfo, new: ConsumerInfo) -> ConsumerInfo:
    """A registry row updated with a batch's :func:`consumer_infos` row."""
    return ConsumerInfo(
        old.consumer,
        old.adapter,
        min(old.from_sequence_id, new.from_sequence_id),
        max(old.through_sequence_id, new.through_sequence_id),
        min(old.first_seen_ms, new.first_seen_ms),
        max(old.last_seen_ms, new.last_seen_ms),
        old.receipts + new.receipts,
    )


def _dumps(value: Any) -> str:
    """Canonical JSON text of a runtime-config value (shared by the backends).

    Strict: NaN and infinity are refused (``ValueError``), as are values JSON
    cannot represent (``TypeError``)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_json_of(config: Mapping[str, Any], before: Any, after: Any) -> tuple[str, str, str]:
    """The JSON texts of one :meth:`Store.save_runtime_config` call, built before
    anything is written so a bad value fails the call with nothing stored."""
    if not isinstance(config, Mapping):
        raise TypeError(f"runtime config must be a mapping, not {type(config).__name__}")
    return _dumps(dict(config)), _dumps(before), _dumps(after)


def audit_entry(
    entry_id: int, at_ms: int, actor: str, path: str, before_json: str, after_json: str
) -> AuditEntry:
    """An audit entry from its stored row (JSON texts as written by
    :func:`config_json_of`), shared by the backends."""
    return AuditEntry(
        id=int(entry_id),
        at_ms=int(at_ms),
        actor=actor,
        path=path,
        before=json.loads(before_json),
        after=json.loads(after_json),
    )


def stale_rollout(rollout_id: int, *, gone: bool) -> RolloutConflict:
    """The error of a rollout save that found the rollout gone, or at
    another version than the caller read (shared by the backends)."""
    if gone:
        return RolloutConflict(f"no rollout {rollout_id}", rollout_id=rollout_id)
    return RolloutConflict(
        f"rollout {rollout_id} changed since it was read; read it again", rollout_id=rollout_id
    )


def rollout_actor(rollout_id: int) -> str:
    """Who the audit says made a change a rollout wrote."""
    return f"rollout:{rollout_id}"


def rollout_json_of(
    doc: Mapping[str, Any], change: ConfigChange | None
) -> tuple[str, tuple[str, str, str, str] | None]:
    """The JSON texts of a rollout write: the document's, and the change's
    ``(config, path, before, after)`` (None without one), built before
    anything is written, so a value JSON cannot hold fails the call with
    nothing stored."""
    if change is None:
        return _dumps(dict(doc)), None
    config, before, after = config_json_of(change.config, change.before, change.after)
    return _dumps(dict(doc)), (config, change.path, before, after)
