"""What the reconciler reads from the SQLite store, as read transaction
bodies: pages of events with their delivery states and receipts
(``scan()``), and pages proven plain from totals alone (``plain_page()``),
so that a long run of well-delivered events is counted, not judged pair
by pair.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Final

import orjson

from .._batching import assemble_scan, implied_pairs, parse_routed, routed_pairs
from ..base import PlainPage, ScanRow
from ._outbox import OUTBOX_THROUGH

__all__ = ["SCAN_OUTBOX", "plain_page", "scan"]

# scan(): one page is four range reads. CASE: the wire only for rows written
# before migration 3 filled checksum and payload_keys.
_SCAN_EVENTS: Final = (
    "SELECT sequence_id, category, event_type, created_at_ms, checksum, payload_keys,"
    " routed_to, CASE WHEN checksum IS NULL OR payload_keys IS NULL THEN wire END"
    " FROM events WHERE sequence_id > ? ORDER BY sequence_id LIMIT ?"
)
_SCAN_DELIVERED: Final = (
    "SELECT sequence_id, adapter, state FROM deliveries WHERE sequence_id BETWEEN ? AND ?"
)
#: Outbox rows of a range of ids. The outbox key is (adapter, sequence_id):
#: name the adapters (a JSON array), so each is a range read.
SCAN_OUTBOX: Final = (
    "SELECT sequence_id, adapter, state FROM outbox"
    " WHERE adapter IN (SELECT value FROM json_each(?)) AND sequence_id BETWEEN ? AND ?"
)
_SCAN_RECEIPTS: Final = (
    "SELECT sequence_id, adapter, event_type, received_at_ms, checksum, checksum_ok,"
    " consumer, payload_keys, deliveries FROM receipts WHERE sequence_id BETWEEN ? AND ?"
    " ORDER BY sequence_id, id"
)
# plain_page(): the page's bounds, then three set-based checks, cheapest first.
# None of them sorts or groups the receipts: each receipt row is read once.
_PAGE_LAST: Final = (
    "SELECT max(sequence_id) FROM"
    " (SELECT sequence_id FROM events WHERE sequence_id > ? ORDER BY sequence_id LIMIT ?)"
)
# The counters first: while nothing was ever repaired, no page needs the range read.
_ANY_REPAIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM delivered_counts WHERE state = 'repaired' AND n > 0)"
)
_PAGE_REPAIRED: Final = (
    "SELECT EXISTS (SELECT 1 FROM deliveries WHERE sequence_id BETWEEN ? AND ?"
    " AND state = 'repaired')"
)
# Per (category, routing): events, and whether any is too young to judge or
# lacks the columns the receipts are compared with (rows of an old version).
_PAGE_ROUTED: Final = (
    "SELECT category, routed_to, count(*), max(created_at_ms),"
    " count(*) - min(count(checksum), count(payload_keys))"
    " FROM events WHERE sequence_id BETWEEN ? AND ? GROUP BY category, routed_to"
)
# Receipts of the page's events: how many, how many plainly match their event
# and name an adapter it was routed to, how many are not the first of their
# pair (another consumer's), and deliveries beyond the first (duplicates). The
# routing test is a CASE over the page's few distinct routings, built per page
# (see _routed_test): far cheaper than json_each() on every receipt.
_PAGE_RECEIPTS: Final = (
    "SELECT count(*), coalesce(sum(r.event_type = e.event_type AND r.checksum_ok"
    " AND r.checksum = e.checksum"
    " AND (r.payload_keys IS NULL OR r.payload_keys = e.payload_keys)"
    " AND r.received_at_ms - e.created_at_ms <= ? AND {routed}), 0),"
    " coalesce(sum(r.dup), 0), coalesce(sum(r.deliveries - 1), 0)"
    " FROM receipts AS r JOIN events AS e ON e.sequence_id = r.sequence_id"
    " WHERE r.sequence_id BETWEEN ? AND ?"
)


def _routed_test(routings: dict[str, tuple[str, ...]]) -> tuple[str, list[str]]:
    """SQL (and its parameters) true iff receipt ``r``'s adapter is one its
    event ``e`` was routed to, for events whose ``routed_to`` is among ``routings``."""
    parts: list[str] = []
    params: list[str] = []
    for routed_json, adapters in routings.items():
        marks = ", ".join("?" * len(adapters))
        parts.append(f"WHEN ? THEN r.adapter IN ({marks})" if adapters else "WHEN ? THEN 0")
        params += [routed_json, *adapters]
    return f"CASE e.routed_to {' '.join(parts)} ELSE 0 END", params


def scan(conn: sqlite3.Connection, after: int, limit: int) -> list[ScanRow]:
    """Events after ``after`` with states and receipts: four range reads;
    the wire is not parsed."""
    events = conn.execute(_SCAN_EVENTS, (after, limit)).fetchall()
    if not events:
        return []
    low, high = events[0][0], events[-1][0]
    routed_cache: dict[str, tuple[str, ...]] = {}
    adapters: dict[str, None] = {}
    for routed_json in {row[6] for row in events}:
        adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
    states: list[Any] = conn.execute(_SCAN_DELIVERED, (low, high)).fetchall()
    if adapters:
        states += conn.execute(SCAN_OUTBOX, (orjson.dumps(list(adapters)), low, high)).fetchall()
        (through,) = conn.execute(OUTBOX_THROUGH).fetchone()
        states += implied_pairs([(row[0], row[6]) for row in events], through, states, routed_cache)
    receipts = conn.execute(_SCAN_RECEIPTS, (low, high)).fetchall()
    # Built on the worker thread: the loop only receives the finished page.
    return assemble_scan(events, states, receipts, routed_cache)


def plain_page(
    conn: sqlite3.Connection, after: int, limit: int, judged_before_ms: int, window_ms: int
) -> PlainPage:
    """A few aggregate queries; no row of the page is handed to Python.
    Pairs are proven covered by receipts from totals: every receipt plainly
    matches a pair routed to its adapter and is a first delivery, and the
    receipts that are the first of their pair (``dup`` is 0, set at write
    time) are as many as the routed pairs."""
    (last,) = conn.execute(_PAGE_LAST, (after, limit)).fetchone()
    if last is None:
        return PlainPage(0, {})
    low, high = after + 1, int(last)
    (repaired,) = conn.execute(_ANY_REPAIRED).fetchone()
    if repaired:
        (repaired,) = conn.execute(_PAGE_REPAIRED, (low, high)).fetchone()
    if repaired:
        return PlainPage(high, None)
    routings: dict[str, tuple[str, ...]] = {}
    expected = routed_pairs(conn.execute(_PAGE_ROUTED, (low, high)), judged_before_ms, routings)
    if expected is None:
        return PlainPage(high, None)
    counts, pairs = expected
    test, params = _routed_test(routings)
    received, plain, others, duplicates = conn.execute(
        _PAGE_RECEIPTS.format(routed=test), (window_ms, *params, low, high)
    ).fetchone()
    if duplicates or received - others != pairs or plain != received:
        return PlainPage(high, None)
    return PlainPage(high, counts)
