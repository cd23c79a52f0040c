"""What the SQLite store's write transactions keep straight besides their
own rows: the sequence high-water mark, the counters, and the outbox tail.

**Counters.** ``meta.receipt_count`` and ``delivered_counts`` change in the
transactions that change what they count, and ``meta.event_count`` counts
the events up to ``meta.last_sequence_id`` (every id above it is a stored
event), so ``stats()`` reads a few rows instead of counting millions. Why
appends leave meta alone: its page was the second page of every one-event
commit, a large part of a small append's cost.

**The tail.** An append writes the event rows only: the outbox rows of events
after ``meta.outbox_through`` are implied by their ``routed_to`` (all queued)
and written by the next mark or prune transaction, before it changes any
state, or by the append that takes the tail past its bound. Reads add the
tail's queued pairs. Why: a ``publish()`` waits for its commit, and an
outbox row per routed adapter in it made every path written to slow the
producer down; the rows now cost a transaction the producer does not wait for.

**Implied acknowledgements.** An ack deletes the pair's outbox row and
writes nothing (an ACKED row is kept only when it carries an error): a
routed pair written out (up to ``outbox_through``) with no row was
acknowledged, and reads say so. Why: moving every acked row to
``deliveries`` was most of an ack's cost.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

import orjson

from .._batching import MarkRequest, parse_routed
from ..base import DeliveryState

__all__ = [
    "ADD_META",
    "HIGH_MARK",
    "HIGH_MARKS",
    "IN_IDS",
    "OUTBOX_THROUGH",
    "add_counts",
    "high_mark",
    "settle_high_mark",
    "write_tail",
    "write_tail_after",
]

# The high-water mark: the newest event, or meta's floor if pruning took it
# (schema 8: appends do not write meta; see settle_high_mark).
HIGH_MARK: Final = (
    "max((SELECT value FROM meta WHERE key = 'last_sequence_id'),"
    " coalesce((SELECT max(sequence_id) FROM events), 0))"
)
HIGH_MARKS: Final = f"SELECT {HIGH_MARK}, (SELECT value FROM meta WHERE key = 'outbox_through')"
OUTBOX_THROUGH: Final = "SELECT value FROM meta WHERE key = 'outbox_through'"
# The tail's outbox rows: one statement per distinct routing (a tail has one or
# two), its adapters expanded once rather than json_each() on every event row
# (a visible share of the loop thread at full rate). updated_at_ms is
# when the event was appended. An append stores routed_to without repeats.
_TAIL_ROUTINGS: Final = "SELECT DISTINCT routed_to FROM events WHERE sequence_id > ?"
_WRITE_TAIL: Final = (
    "INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT a.value, e.sequence_id, 'queued', e.created_at_ms"
    " FROM json_each(?1) AS a CROSS JOIN events AS e"
    " WHERE e.sequence_id > ?2 AND e.routed_to = ?1"
)
_SET_OUTBOX_THROUGH: Final = "UPDATE meta SET value = ? WHERE key = 'outbox_through'"
# The tail up to a bound, for a transaction of plain acks (see write_tail):
# events per routing, then one adapter's rows at a time, less the pairs the
# transaction acknowledges (an acknowledged pair has no row).
_TAIL_ROUTING_COUNTS: Final = (
    "SELECT routed_to, count(*) FROM events"
    " WHERE sequence_id > ? AND sequence_id <= ? GROUP BY routed_to"
)
_WRITE_TAIL_UNACKED: Final = (
    "INSERT INTO outbox (adapter, sequence_id, state, updated_at_ms)"
    " SELECT ?1, e.sequence_id, 'queued', e.created_at_ms FROM events AS e"
    " WHERE e.sequence_id > ?2 AND e.sequence_id <= ?3 AND e.routed_to = ?4"
    " AND e.sequence_id NOT IN (SELECT value FROM json_each(?5))"
)
_ADD_DELIVERED_COUNT: Final = (
    "INSERT INTO delivered_counts (adapter, state, n) VALUES (?, ?, ?)"
    " ON CONFLICT (adapter, state) DO UPDATE SET n = n + excluded.n"
)
ADD_META: Final = "UPDATE meta SET value = value + ? WHERE key = ?"
#: A set of ids, bound as one JSON array (one bind, not one statement per id).
IN_IDS: Final = "sequence_id IN (SELECT value FROM json_each(?))"


def high_mark(conn: sqlite3.Connection) -> int:
    """The highest sequence id ever handed out."""
    (value,) = conn.execute(f"SELECT {HIGH_MARK}").fetchone()
    return int(value)


def add_counts(conn: sqlite3.Connection, counts: dict[tuple[str, str], int]) -> None:
    """Apply per (adapter, state) changes to ``delivered_counts``, in the caller's
    transaction (so the counters change iff the rows they count do)."""
    rows = [(adapter, state, n) for (adapter, state), n in sorted(counts.items()) if n]
    if rows:
        conn.executemany(_ADD_DELIVERED_COUNT, rows)


def settle_high_mark(conn: sqlite3.Connection) -> None:
    """In a write transaction: bring meta's ``last_sequence_id`` up to the
    high-water mark and ``event_count`` with it, before events are deleted.

    An append writes its event rows alone (without the two meta updates a
    one-event commit writes one page less to the WAL), so meta holds a
    floor: ``event_count`` counts the events up to ``last_sequence_id``,
    and every id above it is a stored event (ids are handed out in order and
    only pruning deletes). A trigger (schema 8) settles the floor before a
    delete takes an event above it, so deleting the newest events never
    lowers the mark (ids are never reused) and the count stays exact; opening
    the store settles it too."""
    floor, high = conn.execute(
        f"SELECT (SELECT value FROM meta WHERE key = 'last_sequence_id'), {HIGH_MARK}"
    ).fetchone()
    if high > floor:
        conn.execute(ADD_META, (high - floor, "event_count"))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'last_sequence_id'", (high,))


def write_tail(
    conn: sqlite3.Connection, marks: Sequence[MarkRequest] = ()
) -> tuple[dict[str, int], int]:
    """In a write transaction: write the outbox rows of the tail, so that
    every routed pair has its row before a state changes.

    ``marks`` (coalesced) are the transaction's state changes. When all of them
    are plain acks (ACKED, no error: one request per adapter), only the tail
    up to the highest id they name is written out, and without the pairs they
    acknowledge: such a pair's row would be inserted and deleted in the same
    transaction, and no row is what ACKED is. Why: under steady traffic acks
    come in order, so the tail a transaction writes is mostly the pairs it
    acknowledges, and writing and deleting their rows was most of an ack's
    cost.

    Returns, per adapter, how many of its pairs were acknowledged so (the
    ack counts them as moved out of the outbox), and the highest id whose
    pairs of the acknowledging adapters may have outbox rows now (an ack of
    higher ids only has no rows to delete).
    """
    last, through = conn.execute(HIGH_MARKS).fetchone()
    if last <= through:
        return {}, through
    acked = {m.adapter: m.sequence_ids for m in marks}
    if (
        not marks
        or len(acked) < len(marks)
        or any(m.state is not DeliveryState.ACKED or m.error is not None for m in marks)
    ):
        write_tail_after(conn, through, last)
        return {}, last
    upto = min(last, max(max(ids) for ids in acked.values()))
    if upto <= through:
        return {}, through  # no ack reaches into the tail: it can wait
    skipped: dict[str, int] = {}
    routed_cache: dict[str, tuple[str, ...]] = {}
    for routed_json, events in conn.execute(_TAIL_ROUTING_COUNTS, (through, upto)).fetchall():
        for adapter in dict.fromkeys(parse_routed(routed_json, routed_cache)):
            ids = acked.get(adapter)
            written = conn.execute(
                _WRITE_TAIL_UNACKED,
                (adapter, through, upto, routed_json, orjson.dumps(ids) if ids else b"[]"),
            ).rowcount
            if ids:
                skipped[adapter] = skipped.get(adapter, 0) + events - written
    conn.execute(_SET_OUTBOX_THROUGH, (upto,))
    return skipped, through


def write_tail_after(conn: sqlite3.Connection, through: int, last: int) -> None:
    """Write the outbox rows of every event after ``through`` (up to ``last``)."""
    for (routed_json,) in conn.execute(_TAIL_ROUTINGS, (through,)).fetchall():
        conn.execute(_WRITE_TAIL, (routed_json, through))
    conn.execute(_SET_OUTBOX_THROUGH, (last,))
