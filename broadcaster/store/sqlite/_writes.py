"""The SQLite store's two hot writes, as transaction bodies: the producer's
append (events sealed and stored, ids from the high-water mark) and the
lanes' marks (delivery states changed, many ``mark()`` calls in one
transaction).

Sequence ids come from the high-water mark, read inside the write
transaction, so they are strictly increasing and never reused, and a failed
append consumes none.
"""

from __future__ import annotations

import sqlite3
from typing import Final

import orjson

from ...events import EventDraft, EventRecord, seal
from .._batching import MarkRequest, coalesce_marks
from ..base import SETTLED_STATES, DeliveryState
from ._outbox import HIGH_MARKS, add_counts, write_tail, write_tail_after

__all__ = ["TAIL_MAX", "append_events", "mark_rows", "write_marks"]

_INSERT_EVENT: Final = (
    "INSERT INTO events (sequence_id, event_id, category, event_type, created_at_ms,"
    " routed_to, wire, checksum, payload_keys) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: Events appended since ``meta.outbox_through`` beyond which an append writes
#: their outbox rows itself: bounds what reads add up.
TAIL_MAX: Final = 4096

#: Ids marked that weigh as much as one event appended (see :func:`mark_rows`).
_MARK_IDS_PER_ROW: Final = 4


def append_events(
    conn: sqlite3.Connection, items: list[tuple[EventDraft, tuple[str, ...]]], now_ms: int
) -> list[EventRecord]:
    """Seal ``items`` with the next ids and insert their rows, in the
    caller's write transaction."""
    # Read the high-water mark inside the write transaction: it is the
    # single source of ids, and holding the write lock makes it ours.
    last, through = conn.execute(HIGH_MARKS).fetchone()
    records: list[EventRecord] = []
    rows: list[tuple[int, str, str, str, int, str, bytes, str, str]] = []
    # A batch has one or two distinct routings: encode each once.
    routed_json: dict[tuple[str, ...], str] = {}
    seq = int(last)
    for draft, routed in items:
        seq += 1
        record = seal(draft, seq)
        records.append(record)
        routing = routed_json.get(routed)
        if routing is None:
            # Without repeats: each (event, adapter) is one pair.
            routing = orjson.dumps(tuple(dict.fromkeys(routed))).decode()
            routed_json[routed] = routing
        rows.append(
            (
                seq,
                record.event_id,
                record.category.value,
                record.event_type,
                now_ms,
                routing,
                record.wire,
                record.checksum,
                record.payload_keys,
            )
        )
    conn.executemany(_INSERT_EVENT, rows)
    if seq - through > TAIL_MAX:
        # Acks lag far behind (or none come): write the tail's outbox
        # rows here, so that reads never add up a long tail.
        write_tail_after(conn, through, seq)
    # The ids are consumed iff the event rows exist: the high-water mark
    # is the newest row (meta is a floor; see settle_high_mark).
    return records


def _mark_statements(source: str, target: str) -> tuple[str, str, str]:
    """A state change as SQL: update rows already in ``target``, then move the
    rows of ``source`` there. Ids travel as one JSON array (one bind, not one
    statement per id). COALESCE keeps the last error when a state has none."""
    where = "adapter = :adapter AND sequence_id IN (SELECT value FROM json_each(:ids))"
    return (
        f"UPDATE {target} SET state = :state, error = COALESCE(:error, error),"
        f" updated_at_ms = :now WHERE {where}",
        f"INSERT INTO {target} (sequence_id, adapter, state, error, updated_at_ms)"
        f" SELECT sequence_id, adapter, :state, COALESCE(:error, error), :now"
        f" FROM {source} WHERE {where}",
        f"DELETE FROM {source} WHERE {where}",
    )


_MARK_DELIVERED: Final = _mark_statements("outbox", "deliveries")
_MARK_UNDELIVERED: Final = _mark_statements("deliveries", "outbox")
# An ack (no error given) deletes the outbox rows: ACKED is implied (schema 7).
_ACK_PLAIN: Final = (
    "DELETE FROM outbox WHERE adapter = :adapter"
    " AND sequence_id IN (SELECT value FROM json_each(:ids)) AND error IS NULL"
)
# A row that carries an error keeps it, as an explicit ACKED row in deliveries.
_ACK_KEEPING_ERRORS: Final = (
    "INSERT INTO deliveries (sequence_id, adapter, state, error, updated_at_ms)"
    " SELECT sequence_id, adapter, :state, error, :now FROM outbox"
    " WHERE adapter = :adapter AND sequence_id IN (SELECT value FROM json_each(:ids))"
    " AND error IS NOT NULL"
)
# Pairs of these ids acknowledged implicitly (routed to the adapter, outbox rows
# written, no row anywhere) get an explicit row in {table} with the new state.
_IMPLIED_TO: Final = (
    "INSERT INTO {table} (sequence_id, adapter, state, error, updated_at_ms)"
    " SELECT e.sequence_id, :adapter, :state, :error, :now FROM events AS e"
    " WHERE e.sequence_id IN (SELECT value FROM json_each(:ids))"
    " AND e.sequence_id <= (SELECT value FROM meta WHERE key = 'outbox_through')"
    " AND EXISTS (SELECT 1 FROM json_each(e.routed_to) WHERE value = :adapter)"
    " AND NOT EXISTS (SELECT 1 FROM outbox AS o"
    "  WHERE o.adapter = :adapter AND o.sequence_id = e.sequence_id)"
    " AND NOT EXISTS (SELECT 1 FROM deliveries AS d"
    "  WHERE d.sequence_id = e.sequence_id AND d.adapter = :adapter)"
)
_IMPLIED_TO_DELIVERIES: Final = _IMPLIED_TO.format(table="deliveries")
_IMPLIED_TO_OUTBOX: Final = _IMPLIED_TO.format(table="outbox")
# What a group-committed mark is about to change in deliveries, for the counters.
_DELIVERED_BEFORE: Final = (
    "SELECT state, count(*) FROM deliveries WHERE adapter = :adapter"
    " AND sequence_id IN (SELECT value FROM json_each(:ids)) GROUP BY state"
)


def mark_rows(requests: list[MarkRequest]) -> int:
    """What a transaction of ``requests`` weighs against ``loop_write_max``,
    in appended events."""
    # An id marked costs about a quarter of an event appended (set-based
    # statements, no sealing): weigh it so.
    ids = sum(len(r.sequence_ids) for r in requests)
    return -(-ids // _MARK_IDS_PER_ROW)


def write_marks(conn: sqlite3.Connection, requests: list[MarkRequest], now_ms: int) -> None:
    """Apply the ``mark()`` calls of one group commit, in the caller's write
    transaction: the tail written first, then each state change, then the
    counters."""
    marks = coalesce_marks(requests)
    unwritten, rows_through = write_tail(conn, marks)
    counts: dict[tuple[str, str], int] = {}
    for request in marks:
        adapter, state = request.adapter, request.state.value
        params = {
            "state": state,
            "error": request.error,
            "now": now_ms,
            "adapter": adapter,
            "ids": orjson.dumps(request.sequence_ids),
        }
        implied = 0
        if request.state in SETTLED_STATES:
            update, move, delete = _MARK_DELIVERED
            distinct = len(set(request.sequence_ids))
            if request.state is DeliveryState.ACKED and request.error is None:
                # The usual ack: the outbox rows go, nothing is written
                # (cheaper than moving them to deliveries). Rows with
                # no error first, in one statement; only if ids are left
                # look for rows whose error must be kept (a separate
                # pass over every id cost the loop at full rate).
                # Pairs of the tail acknowledged by not writing them,
                # then the rows of earlier ones (if any can have one).
                moved = unwritten.get(adapter, 0)
                if min(request.sequence_ids) <= rows_through:
                    moved += conn.execute(_ACK_PLAIN, params).rowcount
                if moved < distinct:
                    conn.execute(_ACK_KEEPING_ERRORS, params)
                    moved += conn.execute(delete, params).rowcount
            else:
                conn.execute(move, params)
                moved = conn.execute(delete, params).rowcount
            counts[adapter, state] = counts.get((adapter, state), 0) + moved
            # Every id came out of the outbox: none had another row, so
            # skip the lookups per id. Otherwise (a re-ack, a repair,
            # unknown ids) rows already delivered change state (the ones
            # just moved count as state -> state), and implicitly
            # acknowledged pairs get a row unless the state is ACKED.
            if moved < distinct:
                for old, n in conn.execute(_DELIVERED_BEFORE, params).fetchall():
                    counts[adapter, old] = counts.get((adapter, old), 0) - n
                    counts[adapter, state] = counts.get((adapter, state), 0) + n
                conn.execute(update, params)
                if request.state is not DeliveryState.ACKED or request.error:
                    implied = conn.execute(_IMPLIED_TO_DELIVERIES, params).rowcount
        else:
            # Rows of these ids in deliveries go back to the outbox, and
            # implicitly acknowledged pairs get an outbox row.
            for old, n in conn.execute(_DELIVERED_BEFORE, params).fetchall():
                counts[adapter, old] = counts.get((adapter, old), 0) - n
            implied = conn.execute(_IMPLIED_TO_OUTBOX, params).rowcount
            for statement in _MARK_UNDELIVERED:
                conn.execute(statement, params)
        if implied:
            acked = (adapter, DeliveryState.ACKED.value)
            counts[acked] = counts.get(acked, 0) - implied
            if request.state in SETTLED_STATES:
                counts[adapter, state] = counts.get((adapter, state), 0) + implied
    add_counts(conn, counts)
