"""The SQLite store's reads for delivery and for people, as read transaction
bodies: what each lane still owes, the service's cursor over new events,
history for resuming subscribers, one event in full, and the counts.

Each is a range read of a key (the outbox's, or the events'), so its cost
follows the result rather than the table; the outbox tail's implied pairs
are added to what the rows say.
"""

from __future__ import annotations

import sqlite3
from typing import Final

import orjson

from ...events import record_from_wire
from .._batching import implied_pairs
from ..base import ConsumerReceipt, DeliveryState, StoredEvent, StoreStats
from ._outbox import OUTBOX_THROUGH, high_mark

__all__ = [
    "FIRST_SEQUENCE_ID",
    "READ_EVENTS",
    "UNDELIVERED",
    "UNDELIVERED_TAIL",
    "EventRows",
    "event_rows",
    "first_sequence_id",
    "read_events",
    "read_routed",
    "stats",
    "stored_event",
    "undelivered",
]

# Row shapes as sqlite3 returns them.
_EventRow = tuple[bytes, str, int]  # wire, routed_to, created_at_ms
_DeliveryRow = tuple[str, str, str | None]  # adapter, state, error
_ReceiptRow = tuple[int, str, str, int, str, int, str, str | None, int]
#: One event's row, its delivery states and its receipts, as :func:`event_rows` reads them.
EventRows = tuple[_EventRow, list[_DeliveryRow], list[_ReceiptRow]]

#: What is still to deliver to an adapter: a range read of the outbox key.
UNDELIVERED: Final = (
    "SELECT e.wire FROM outbox AS o JOIN events AS e ON e.sequence_id = o.sequence_id"
    " WHERE o.adapter = ? AND o.sequence_id > ? ORDER BY o.sequence_id LIMIT ?"
)
#: The tail's events routed to an adapter (all come after every outbox row).
UNDELIVERED_TAIL: Final = (
    "SELECT e.wire FROM events AS e WHERE e.sequence_id > ?"
    " AND EXISTS (SELECT 1 FROM json_each(e.routed_to) WHERE value = ?)"
    " ORDER BY e.sequence_id LIMIT ?"
)
# Per adapter: the tail's queued events and the oldest one's append time.
_TAIL_COUNTS: Final = (
    "SELECT a.value, count(DISTINCT e.sequence_id), min(e.created_at_ms)"
    " FROM events AS e, json_each(e.routed_to) AS a WHERE e.sequence_id > ? GROUP BY a.value"
)
_STATES_OF: Final = (
    "SELECT adapter, state, error FROM {table} WHERE sequence_id = ?1"
    " AND adapter IN (SELECT value FROM json_each(?2))"
)
#: read_events(): a range read of the events key. The filters are parameters
#: that may be NULL, so one statement (and one cached plan) serves every call.
READ_EVENTS: Final = (
    "SELECT wire FROM events WHERE sequence_id > ?1"
    " AND (?2 IS NULL OR category IN (SELECT value FROM json_each(?2)))"
    " AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(routed_to) WHERE value = ?3))"
    " ORDER BY sequence_id LIMIT ?4"
)
FIRST_SEQUENCE_ID: Final = "SELECT coalesce(min(sequence_id), 0) FROM events"
_READ_ROUTED: Final = (
    "SELECT wire, routed_to, payload_keys FROM events"
    " WHERE sequence_id > ? AND sequence_id <= ? ORDER BY sequence_id LIMIT ?"
)


def undelivered(conn: sqlite3.Connection, adapter: str, after: int, limit: int) -> list[bytes]:
    """The wires still to deliver to ``adapter`` after ``after``: the outbox
    rows, then the tail's events."""
    wires = [row[0] for row in conn.execute(UNDELIVERED, (adapter, after, limit))]
    if len(wires) < limit:
        (through,) = conn.execute(OUTBOX_THROUGH).fetchone()
        tail = (max(after, through), adapter, limit - len(wires))
        wires += [row[0] for row in conn.execute(UNDELIVERED_TAIL, tail)]
    return wires


def event_rows(conn: sqlite3.Connection, sequence_id: int) -> EventRows | None:
    """One event's row, per-adapter states (implied ones included) and receipts."""
    row = conn.execute(
        "SELECT wire, routed_to, created_at_ms FROM events WHERE sequence_id = ?",
        (sequence_id,),
    ).fetchone()
    if row is None:
        return None
    deliveries: list[_DeliveryRow] = [
        *conn.execute(_STATES_OF.format(table="outbox"), (sequence_id, row[1])),
        *conn.execute(_STATES_OF.format(table="deliveries"), (sequence_id, row[1])),
    ]
    (through,) = conn.execute(OUTBOX_THROUGH).fetchone()
    explicit = [(sequence_id, adapter) for adapter, _, _ in deliveries]
    deliveries += [
        (adapter, state, None)
        for _, adapter, state in implied_pairs([(sequence_id, row[1])], through, explicit, {})
    ]
    receipts = conn.execute(
        "SELECT sequence_id, adapter, event_type, received_at_ms, checksum,"
        " checksum_ok, consumer, payload_keys, deliveries FROM receipts"
        " WHERE sequence_id = ? ORDER BY id",
        (sequence_id,),
    ).fetchall()
    return row, deliveries, receipts


def stored_event(found: EventRows) -> StoredEvent:
    """What :func:`event_rows` read, as a :class:`StoredEvent` (on the loop)."""
    (wire, routed_json, created_ms), deliveries, receipt_rows = found
    routed = tuple(orjson.loads(routed_json))
    by_adapter = {adapter: (state, error) for adapter, state, error in deliveries}
    return StoredEvent(
        record=record_from_wire(wire),
        routed_to=routed,
        created_at_ms=created_ms,
        states={a: DeliveryState(by_adapter[a][0]) for a in routed if a in by_adapter},
        errors={a: e for a, (_, e) in by_adapter.items() if e is not None},
        receipts=tuple(
            ConsumerReceipt(
                sequence_id=seq,
                adapter=adapter,
                event_type=event_type,
                received_at_ms=received,
                checksum=checksum,
                checksum_ok=bool(ok),
                consumer=consumer,
                payload_keys=keys,
                deliveries=int(n),
            )
            for seq, adapter, event_type, received, checksum, ok, consumer, keys, n in (
                receipt_rows
            )
        ),
    )


def read_routed(
    conn: sqlite3.Connection, after: int, high: int, limit: int
) -> list[tuple[bytes, str, str | None]]:
    """Events after ``after`` up to ``high`` with their routing: (wire, routed_to, payload_keys)."""
    rows: list[tuple[bytes, str, str | None]] = conn.execute(
        _READ_ROUTED, (after, high, limit)
    ).fetchall()
    return rows


def read_events(
    conn: sqlite3.Connection, after: int, cats: bytes | None, adapter: str | None, limit: int
) -> list[bytes]:
    """Wires after ``after``, filtered in SQL (``cats``: a JSON array of categories)."""
    return [row[0] for row in conn.execute(READ_EVENTS, (after, cats, adapter, limit))]


def first_sequence_id(conn: sqlite3.Connection) -> int:
    """The lowest stored sequence id (0: none), from the key's first entry."""
    (value,) = conn.execute(FIRST_SEQUENCE_ID).fetchone()
    return int(value)


def stats(conn: sqlite3.Connection) -> StoreStats:
    """Counts per adapter and state, oldest undelivered event per adapter:
    counters kept by the writes plus the (small) outbox and tail."""
    meta = dict(
        conn.execute(
            "SELECT key, value FROM meta"
            " WHERE key IN ('last_sequence_id', 'event_count', 'receipt_count')"
        ).fetchall()
    )
    high = high_mark(conn)
    states: dict[str, dict[str, int]] = {}
    for adapter, state, n in [
        *conn.execute("SELECT adapter, state, n FROM delivered_counts WHERE n != 0"),
        *conn.execute("SELECT adapter, state, count(*) FROM outbox GROUP BY adapter, state"),
    ]:
        states.setdefault(adapter, {})[state] = n
    oldest: dict[str, int | None] = dict.fromkeys(states)
    # min(sequence_id) per adapter reads the outbox key in order; its
    # created_at_ms is one lookup by primary key.
    for adapter, created in conn.execute(
        "SELECT o.adapter, e.created_at_ms FROM (SELECT adapter, min(sequence_id)"
        " AS sequence_id FROM outbox GROUP BY adapter) AS o"
        " JOIN events AS e ON e.sequence_id = o.sequence_id"
    ):
        oldest[adapter] = created
    # The tail (queued, and younger than every outbox row).
    (through,) = conn.execute(OUTBOX_THROUGH).fetchone()
    for adapter, n, created in conn.execute(_TAIL_COUNTS, (through,)):
        per = states.setdefault(adapter, {})
        per["queued"] = per.get("queued", 0) + n
        if oldest.get(adapter) is None:
            oldest[adapter] = created
    return StoreStats(
        last_sequence_id=high,
        # Every id above the floor is a stored event.
        events=int(meta["event_count"]) + high - int(meta["last_sequence_id"]),
        receipts=int(meta["receipt_count"]),
        states=states,
        oldest_undelivered_ms=oldest,
    )
