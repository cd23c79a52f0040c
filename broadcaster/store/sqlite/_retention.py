"""How the SQLite store forgets, and what it remembers of it: pruning fully
delivered old events in short transactions, and the named watermarks
(``reconciled_through``, ``pruned_through``) the reconciler and resuming
subscribers go by.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Final

import orjson

from .._batching import parse_routed
from ..base import DeliveryState
from ._outbox import ADD_META, IN_IDS, add_counts, write_tail
from ._reconcile import SCAN_OUTBOX

__all__ = ["PRUNE_CHUNK", "get_watermark", "prune_chunk", "set_watermark"]

#: Events deleted per ``prune`` transaction: the write lock is released between
#: chunks, so appends and marks interleave with a long prune.
PRUNE_CHUNK: Final = 5000

_PRUNE_CANDIDATES: Final = (
    "SELECT sequence_id, routed_to FROM events WHERE sequence_id > ? AND sequence_id <= ?"
    " AND created_at_ms < ? ORDER BY sequence_id LIMIT ?"
)
_RAISE_PRUNED: Final = (
    "INSERT INTO watermarks (name, value) VALUES ('pruned_through', ?)"
    " ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)"
)


def prune_chunk(
    cursor: int, through: int, older_than_ms: int
) -> Callable[[sqlite3.Connection], tuple[int, int, bool]]:
    """The body of one prune transaction: delete up to :data:`PRUNE_CHUNK`
    fully delivered events after ``cursor``; it returns the events deleted,
    the next cursor and whether the range is done."""

    def body(conn: sqlite3.Connection) -> tuple[int, int, bool]:
        write_tail(conn)
        candidates = conn.execute(
            _PRUNE_CANDIDATES, (cursor, through, older_than_ms, PRUNE_CHUNK)
        ).fetchall()
        if not candidates:
            return 0, cursor, True
        low, high = candidates[0][0], candidates[-1][0]
        routed_cache: dict[str, tuple[str, ...]] = {}
        adapters: dict[str, None] = {}
        for routed_json in {row[1] for row in candidates}:
            adapters.update(dict.fromkeys(parse_routed(routed_json, routed_cache)))
        # Checked in the same write transaction as the deletes: an event
        # still in the outbox for any adapter is never deleted.
        undelivered = {
            seq
            for seq, _, _ in conn.execute(
                SCAN_OUTBOX, (orjson.dumps(list(adapters)), low, high)
            ).fetchall()
        }
        doomed = [seq for seq, _ in candidates if seq not in undelivered]
        finished = len(candidates) < PRUNE_CHUNK
        if not doomed:
            return 0, high, finished
        ids = (orjson.dumps(doomed),)
        counts: dict[tuple[str, str], int] = {}
        # Pairs without a row were acknowledged (implied): routed pairs
        # of the doomed events, less those with a row in deliveries.
        implied: dict[str, int] = {}
        routed_of = dict(candidates)
        for seq in doomed:
            for adapter in dict.fromkeys(parse_routed(routed_of[seq], routed_cache)):
                implied[adapter] = implied.get(adapter, 0) + 1
        for adapter, state, n in conn.execute(
            f"SELECT adapter, state, count(*) FROM deliveries WHERE {IN_IDS}"
            " GROUP BY adapter, state",
            ids,
        ):
            counts[adapter, state] = -n
            if adapter in implied:  # (a row always names a routed adapter)
                implied[adapter] -= n
        for adapter, n in implied.items():
            acked = (adapter, DeliveryState.ACKED.value)
            counts[acked] = counts.get(acked, 0) - n
        conn.execute(f"DELETE FROM deliveries WHERE {IN_IDS}", ids)
        receipts = conn.execute(f"DELETE FROM receipts WHERE {IN_IDS}", ids).rowcount
        events = conn.execute(f"DELETE FROM events WHERE {IN_IDS}", ids).rowcount
        conn.execute(_RAISE_PRUNED, (max(doomed),))
        add_counts(conn, counts)
        conn.executemany(ADD_META, [(-events, "event_count"), (-receipts, "receipt_count")])
        return events, high, finished

    return body


def get_watermark(conn: sqlite3.Connection, name: str) -> int:
    """A persisted counter (``watermarks`` table); 0 if never set."""
    row = conn.execute("SELECT value FROM watermarks WHERE name = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def set_watermark(conn: sqlite3.Connection, name: str, value: int) -> None:
    conn.execute(
        "INSERT INTO watermarks (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, int(value)),
    )
