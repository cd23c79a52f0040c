"""The PostgreSQL store's side of consumers: their receipts and reports
(checked against the stored events and written in one transaction), the
consumer registry reconciliation reads, and the facts a receipt is checked
against. Receipts are idempotent per (event, adapter, consumer).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import psycopg

from ...events import record_from_wire
from ..records import ConsumerInfo, ConsumerReceipt, EventFacts, Report, ReportOutcome
from ..shared import (
    ReceiptRow,
    consumer_infos,
    judge_report_rows,
    receipt_rows,
    report_infos,
)
from .connection import ConnectedStore
from .sql import ADD_META, CONSUMERS, FACTS, MERGE_CONSUMERS, UPSERT_RECEIPTS

__all__ = ["ConsumerReports"]


def _registry(infos: Sequence[ConsumerInfo]) -> tuple[list[Any], ...]:
    """``MERGE_CONSUMERS``' arrays for ``infos``."""
    return (
        [c.adapter for c in infos],
        [c.consumer for c in infos],
        [c.from_sequence_id for c in infos],
        [c.through_sequence_id for c in infos],
        [c.first_seen_ms for c in infos],
        [c.last_seen_ms for c in infos],
        [c.receipts for c in infos],
    )


def _consumer_info(row: Sequence[Any]) -> ConsumerInfo:
    adapter, consumer, start, through, first, last, n = row
    return ConsumerInfo(consumer, adapter, int(start), int(through), int(first), int(last), int(n))


def _receipt_columns(rows: Iterable[ReceiptRow]) -> tuple[list[Any], ...]:
    """``UPSERT_RECEIPTS``' arrays for receipt ``rows`` (at least one): one
    row per key (ON CONFLICT cannot touch a row twice in a statement), the
    first as written, with the most deliveries any reported (at least 1)."""
    unique: dict[tuple[int, str, str], ReceiptRow] = {}
    for row in rows:
        key = (row[0], row[1], row[6])
        first = unique.get(key)
        if first is None:
            unique[key] = row
        elif row[8] > first[8]:
            unique[key] = (*first[:8], row[8])
    kept = [(*row[:8], max(row[8], 1)) for row in unique.values()]
    return tuple(list(column) for column in zip(*kept, strict=True))


def _receipt_arrays(
    receipts: Sequence[ConsumerReceipt],
) -> tuple[tuple[list[Any], ...], tuple[list[Any], ...]]:
    """``UPSERT_RECEIPTS``' and ``MERGE_CONSUMERS``' arrays for ``receipts``."""
    return _receipt_columns(receipt_rows(receipts)), _registry(consumer_infos(receipts))


async def _write_receipts(
    cur: psycopg.AsyncCursor[Any],
    columns: tuple[list[Any], ...],
    registry: tuple[list[Any], ...],
) -> None:
    await cur.execute(UPSERT_RECEIPTS, columns)
    row = await cur.fetchone()
    added = int(row[0]) if row is not None else 0
    await cur.execute(MERGE_CONSUMERS, registry)
    # Last statement: the shared counter row is locked only until COMMIT.
    await cur.execute(ADD_META, (added, "receipt_count"))


class ConsumerReports(ConnectedStore):
    """The part of :class:`~broadcaster.store.postgres.PostgresStore` that
    records what consumers received and keeps their registry."""

    async def record_receipts(self, receipts: Sequence[ConsumerReceipt]) -> None:
        """Store consumer receipts in one transaction, idempotently per
        (event, adapter, consumer); see :meth:`Store.record_receipts`."""
        if not receipts:
            return
        columns, registry = _receipt_arrays(receipts)

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await _write_receipts(cur, columns, registry)

        await self._run("record_receipts", body)

    async def record_reports(self, reports: Sequence[Report]) -> ReportOutcome:
        """See :meth:`Store.record_reports`: the stored events are read and the
        receipts written in one transaction, one round trip less than a read
        and a write apart."""
        if not reports:
            return ReportOutcome(0, 0, [])
        wanted = list({r[0] for r in reports})

        async def body(conn: psycopg.AsyncConnection[Any]) -> ReportOutcome:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(FACTS, (wanted,))
                facts: dict[int, tuple[str, str]] = {}
                for seq, event_type, checksum, wire in await cur.fetchall():
                    if checksum is None:  # a row of a version before the column
                        checksum = record_from_wire(bytes(wire)).checksum
                    facts[int(seq)] = (event_type, checksum)
                rows, known, outcome = judge_report_rows(reports, facts)
                if rows:
                    registry = _registry(report_infos(known))
                    await _write_receipts(cur, _receipt_columns(rows), registry)
                return outcome

        return await self._run("record_reports", body)

    async def register_consumer(self, consumer: str, adapter: str, at_ms: int) -> ConsumerInfo:
        """See :meth:`Store.register_consumer`: from the id after the last one
        the sequence handed out."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> ConsumerInfo:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute("SELECT last_value, is_called FROM event_sequence_id")
                seq = await cur.fetchone()
                assert seq is not None
                start = int(seq[0]) + 1 if seq[1] else int(seq[0])
                row = ConsumerInfo(consumer, adapter, start, 0, at_ms, at_ms, 0)
                await cur.execute(MERGE_CONSUMERS, _registry([row]))
                await cur.execute(
                    CONSUMERS + " WHERE adapter = %s AND consumer = %s", (adapter, consumer)
                )
                found = await cur.fetchone()
            assert found is not None
            return _consumer_info(found)

        return await self._run("register_consumer", body)

    async def consumers(self) -> list[ConsumerInfo]:
        """See :meth:`Store.consumers`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[ConsumerInfo]:
            async with conn.cursor() as cur:
                await cur.execute(CONSUMERS + " ORDER BY adapter, consumer")
                return [_consumer_info(row) for row in await cur.fetchall()]

        return await self._run("consumers", body)

    async def event_facts(self, sequence_ids: Sequence[int]) -> dict[int, EventFacts]:
        """See :meth:`Store.event_facts`: one indexed read for the batch."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> dict[int, EventFacts]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT sequence_id, event_type, checksum, routed_to,"
                    " CASE WHEN checksum IS NULL THEN wire END FROM events"
                    " WHERE sequence_id = ANY(%b::bigint[])",
                    (list(sequence_ids),),
                )
                rows = await cur.fetchall()
            facts: dict[int, EventFacts] = {}
            routings: dict[str, tuple[str, ...]] = {}
            for seq, event_type, checksum, routed_json, wire in rows:
                routed = routings.get(routed_json)
                if routed is None:
                    routed = routings[routed_json] = tuple(orjson.loads(routed_json))
                if checksum is None:  # a row of a version before the column
                    checksum = record_from_wire(bytes(wire)).checksum
                facts[int(seq)] = EventFacts(event_type, checksum, routed)
            return facts

        return await self._run("event_facts", body)
