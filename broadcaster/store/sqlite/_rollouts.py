"""The SQLite store's runtime configuration, its audit trail and progressive
rollouts: the bodies of write transactions
:class:`~broadcaster.store.sqlite.SQLiteStore` runs (on its worker thread)
and of its reads, each given the connection.

The configuration document and its audit entry are written in one
transaction: both or neither; so are a rollout row and the configuration
change that goes with it. At most one rollout per category is running or
paused: the transaction checks before it inserts (SQLite serialises
writers), and a partial unique index backs it.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Final

from ...exceptions import RolloutConflict
from ..base import AuditEntry, RolloutRow, audit_entry, rollout_actor, stale_rollout

__all__ = [
    "create_rollout",
    "read_audit",
    "read_config",
    "read_rollout",
    "read_rollouts",
    "save_rollout",
    "write_config",
]

_SAVE_CONFIG: Final = (
    "INSERT INTO runtime_config (id, doc_json, updated_at_ms) VALUES (1, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET doc_json = excluded.doc_json,"
    " updated_at_ms = excluded.updated_at_ms"
)
_INSERT_AUDIT: Final = (
    "INSERT INTO audit (at_ms, actor, path, before_json, after_json) VALUES (?, ?, ?, ?, ?)"
)
_AUDIT_PAGE: Final = (
    "SELECT id, at_ms, actor, path, before_json, after_json FROM audit"
    " WHERE id > ? ORDER BY id LIMIT ?"
)
_ACTIVE: Final = "state IN ('running', 'paused')"
_COLUMNS: Final = "id, category, state, version, doc_json, created_at_ms, updated_at_ms"


def write_config(
    conn: sqlite3.Connection, texts: tuple[str, str, str, str], actor: str, now_ms: int
) -> AuditEntry:
    """Replace the runtime configuration document and append its audit entry
    (``texts``: the document, path, before and after as JSON), inside the
    caller's transaction."""
    doc, path, before_json, after_json = texts
    conn.execute(_SAVE_CONFIG, (doc, now_ms))
    cursor = conn.execute(_INSERT_AUDIT, (now_ms, actor, path, before_json, after_json))
    entry_id = cursor.lastrowid
    assert entry_id is not None
    return audit_entry(entry_id, now_ms, actor, path, before_json, after_json)


def read_config(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The runtime configuration document, or ``None`` if never saved."""
    row = conn.execute("SELECT doc_json FROM runtime_config WHERE id = 1").fetchone()
    if row is None:
        return None
    doc: dict[str, Any] = json.loads(row[0])
    return doc


def read_audit(conn: sqlite3.Connection, after: int, limit: int) -> list[AuditEntry]:
    """Audit entries with id > ``after``, oldest first, at most ``limit``."""
    return [audit_entry(*row) for row in conn.execute(_AUDIT_PAGE, (after, limit))]


def create_rollout(
    conn: sqlite3.Connection,
    category: str,
    doc_json: str,
    texts: tuple[str, str, str, str] | None,
    now_ms: int,
) -> tuple[RolloutRow, AuditEntry | None]:
    """Insert a running rollout of ``category`` and its configuration change;
    :class:`RolloutConflict` if the category has an active one."""
    other = conn.execute(
        f"SELECT id, state FROM rollouts WHERE category = ? AND {_ACTIVE}", (category,)
    ).fetchone()
    if other is not None:
        raise RolloutConflict(f"{category} has rollout {other[0]} {other[1]}", rollout_id=other[0])
    cursor = conn.execute(
        "INSERT INTO rollouts (category, state, version, doc_json, created_at_ms, updated_at_ms)"
        " VALUES (?, 'running', 1, ?, ?, ?)",
        (category, doc_json, now_ms, now_ms),
    )
    rollout_id = cursor.lastrowid
    assert rollout_id is not None
    entry = None if texts is None else write_config(conn, texts, rollout_actor(rollout_id), now_ms)
    row = RolloutRow(rollout_id, category, "running", 1, json.loads(doc_json), now_ms, now_ms)
    return row, entry


def save_rollout(
    conn: sqlite3.Connection,
    rollout_id: int,
    doc_json: str,
    state: str,
    version: int,
    texts: tuple[str, str, str, str] | None,
    now_ms: int,
) -> tuple[RolloutRow, AuditEntry | None]:
    """Replace rollout ``rollout_id`` if it is at ``version``, with its
    configuration change; :class:`RolloutConflict` otherwise."""
    cursor = conn.execute(
        "UPDATE rollouts SET state = ?, version = version + 1, doc_json = ?, updated_at_ms = ?"
        " WHERE id = ? AND version = ?",
        (state, doc_json, now_ms, rollout_id, version),
    )
    row = read_rollout(conn, rollout_id)
    if row is None or not cursor.rowcount:
        raise stale_rollout(rollout_id, gone=row is None)
    entry = None if texts is None else write_config(conn, texts, rollout_actor(rollout_id), now_ms)
    return row, entry


def read_rollout(conn: sqlite3.Connection, rollout_id: int) -> RolloutRow | None:
    found = conn.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    return None if found is None else _row(found)


def read_rollouts(conn: sqlite3.Connection, active_only: bool) -> list[RolloutRow]:
    where = f" WHERE {_ACTIVE}" if active_only else ""
    return [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM rollouts{where} ORDER BY id")]


def _row(found: tuple[int, str, str, int, str, int, int]) -> RolloutRow:
    rollout_id, category, state, version, doc_json, created_ms, updated_ms = found
    return RolloutRow(
        rollout_id, category, state, version, json.loads(doc_json), created_ms, updated_ms
    )
