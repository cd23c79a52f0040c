"""What consumers report to the SQLite store, as transaction bodies: their
receipts (idempotent per event, adapter and consumer), reports checked
against the stored events, the registry of consumers, and the facts a
receipt is verified against.

Receipts come in runs of nearby ids, so the events they name are read with
one range read where that beats a lookup per id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import orjson

from ...events import record_from_wire
from ..base import ConsumerInfo, EventFacts, Report, ReportOutcome, report_infos
from ..shared import judge_report_rows
from ._outbox import ADD_META, IN_IDS, high_mark

__all__ = [
    "consumer_row",
    "consumers",
    "event_facts",
    "ids_where",
    "insert_receipts",
    "merge_consumers",
    "record_reports",
    "register_consumer",
]

_INSERT_RECEIPT: Final = (
    "INSERT INTO receipts (sequence_id, adapter, event_type, received_at_ms,"
    " checksum, checksum_ok, consumer, payload_keys, deliveries, dup)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,"
    " EXISTS (SELECT 1 FROM receipts WHERE sequence_id = ?1 AND adapter = ?2))"
    " ON CONFLICT (sequence_id, adapter, consumer) DO NOTHING"
)
_RAISE_DELIVERIES: Final = (
    "UPDATE receipts SET deliveries = ?4"
    " WHERE sequence_id = ?1 AND adapter = ?2 AND consumer = ?3 AND deliveries < ?4"
)
_MERGE_CONSUMER: Final = (
    "INSERT INTO consumers (adapter, consumer, from_sequence_id, through_sequence_id,"
    " first_seen_ms, last_seen_ms, receipts) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (adapter, consumer) DO UPDATE SET"
    " from_sequence_id = min(from_sequence_id, excluded.from_sequence_id),"
    " through_sequence_id = max(through_sequence_id, excluded.through_sequence_id),"
    " first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),"
    " last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),"
    " receipts = receipts + excluded.receipts"
)
_CONSUMERS: Final = (
    "SELECT adapter, consumer, from_sequence_id, through_sequence_id, first_seen_ms,"
    " last_seen_ms, receipts FROM consumers"
)


def consumer_row(c: ConsumerInfo) -> tuple[str, str, int, int, int, int, int]:
    """``c`` as the parameters of a merge into ``consumers``."""
    return (
        c.adapter,
        c.consumer,
        c.from_sequence_id,
        c.through_sequence_id,
        c.first_seen_ms,
        c.last_seen_ms,
        c.receipts,
    )


def _consumer_info(row: Sequence[Any]) -> ConsumerInfo:
    adapter, consumer, start, through, first, last, n = row
    return ConsumerInfo(consumer, adapter, start, through, first, last, n)


def ids_where(wanted: set[int]) -> tuple[str, tuple[object, ...]]:
    """A WHERE clause (and its parameters) on ``sequence_id`` that takes at
    least the ids in ``wanted`` (callers skip the others). Receipts come in
    runs of nearby ids: a range read beats a lookup per id unless the range
    is mostly ids nobody asked for."""
    low, high = min(wanted), max(wanted)
    if high - low < 4 * len(wanted):
        return "sequence_id BETWEEN ? AND ?", (low, high)
    return IN_IDS, (orjson.dumps(sorted(wanted)).decode(),)


def insert_receipts(conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Write receipt rows (the columns of ``_INSERT_RECEIPT``, with the
    delivery number last) and count the new ones."""
    # One statement per row (executemany): each sees the rows before
    # it, so a second consumer's receipt within the batch is flagged
    # dup, and a key repeated within the batch is kept once.
    added = conn.executemany(_INSERT_RECEIPT, rows).rowcount
    raised = [(r[0], r[1], r[6], r[8]) for r in rows if r[8] > 1]
    if raised:
        conn.executemany(_RAISE_DELIVERIES, raised)
    conn.execute(ADD_META, (added, "receipt_count"))


def merge_consumers(
    conn: sqlite3.Connection, infos: Sequence[tuple[str, str, int, int, int, int, int]]
) -> None:
    """Merge :func:`consumer_row` rows into the registry of consumers."""
    conn.executemany(_MERGE_CONSUMER, infos)


def record_reports(
    conn: sqlite3.Connection,
    reports: Sequence[Report],
    where: tuple[str, tuple[object, ...]],
) -> ReportOutcome:
    """Read the events ``reports`` name (``where``: :func:`ids_where` of
    them) and write the receipts of the known ones."""
    clause, params = where
    facts: dict[int, tuple[str, str]] = {}
    for seq, event_type, checksum, wire in conn.execute(
        "SELECT sequence_id, event_type, checksum,"
        f" CASE WHEN checksum IS NULL THEN wire END FROM events WHERE {clause}",
        params,
    ):
        if checksum is None:  # a row of a version before the column
            checksum = record_from_wire(bytes(wire)).checksum
        facts[seq] = (event_type, checksum)
    rows, known, outcome = judge_report_rows(reports, facts)
    insert_receipts(conn, rows)
    merge_consumers(conn, [consumer_row(c) for c in report_infos(known)])
    return outcome


def register_consumer(
    conn: sqlite3.Connection, consumer: str, adapter: str, at_ms: int
) -> ConsumerInfo:
    """Register ``consumer`` from the next id (read inside the write
    transaction, so no event committed before it counts)."""
    row = ConsumerInfo(consumer, adapter, high_mark(conn) + 1, 0, at_ms, at_ms, 0)
    conn.execute(_MERGE_CONSUMER, consumer_row(row))
    return _consumer_info(
        conn.execute(
            _CONSUMERS + " WHERE adapter = ? AND consumer = ?", (adapter, consumer)
        ).fetchone()
    )


def consumers(conn: sqlite3.Connection) -> list[ConsumerInfo]:
    return [_consumer_info(row) for row in conn.execute(_CONSUMERS + " ORDER BY adapter, consumer")]


def event_facts(
    conn: sqlite3.Connection, wanted: set[int], where: tuple[str, tuple[object, ...]]
) -> dict[int, EventFacts]:
    """What receipts of the ``wanted`` events are checked against: one
    indexed read (``where``: :func:`ids_where` of them)."""
    clause, params = where
    facts: dict[int, EventFacts] = {}
    routings: dict[str, tuple[str, ...]] = {}
    for seq, event_type, checksum, routed_json, wire in conn.execute(
        "SELECT sequence_id, event_type, checksum, routed_to,"
        f" CASE WHEN checksum IS NULL THEN wire END FROM events WHERE {clause}",
        params,
    ):
        if seq not in wanted:
            continue
        routed = routings.get(routed_json)
        if routed is None:
            routed = routings[routed_json] = tuple(orjson.loads(routed_json))
        if checksum is None:  # a row of a version before the column
            checksum = record_from_wire(bytes(wire)).checksum
        facts[seq] = EventFacts(event_type, checksum, routed)
    return facts
