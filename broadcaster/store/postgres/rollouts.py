"""The PostgreSQL store's runtime configuration writes and progressive
rollouts: the statements :class:`~broadcaster.store.postgres.PostgresStore`
runs inside its transactions, each given a cursor.

A rollout row and the configuration change that goes with it are written in
one transaction. At most one rollout per category is running or paused,
whatever the number of instances: a partial unique index decides (the insert
of a second does nothing and the caller is told which one is in the way),
and a save names the version it read, so of two instances moving one
rollout at once only the first wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import psycopg

from ..exceptions import RolloutConflict
from .base import AuditEntry, RolloutRow, audit_entry, rollout_actor, stale_rollout

__all__ = [
    "AUDIT_PAGE",
    "CONFIG_LOCK",
    "create_rollout",
    "read_rollout",
    "read_rollouts",
    "save_rollout",
    "write_config",
]

#: Advisory lock held by every configuration write until it commits, so that
#: audit ids become visible in increasing order ("bcst" + purpose).
CONFIG_LOCK: Final = 0x62637374_0003

_SAVE_CONFIG: Final = (
    "INSERT INTO runtime_config (id, doc_json, updated_at_ms) VALUES (1, %s, %s)"
    " ON CONFLICT (id) DO UPDATE SET doc_json = excluded.doc_json,"
    " updated_at_ms = excluded.updated_at_ms"
)
_INSERT_AUDIT: Final = (
    "INSERT INTO audit (at_ms, actor, path, before_json, after_json)"
    " VALUES (%s, %s, %s, %s, %s) RETURNING id"
)
#: One page of the audit trail: ``(after, limit)``.
AUDIT_PAGE: Final = (
    "SELECT id, at_ms, actor, path, before_json, after_json FROM audit"
    " WHERE id > %s ORDER BY id LIMIT %s"
)
_ACTIVE: Final = "state IN ('running', 'paused')"
_COLUMNS: Final = "id, category, state, version, doc_json, created_at_ms, updated_at_ms"

Cursor = psycopg.AsyncCursor[Any]


async def write_config(
    cur: Cursor, texts: tuple[str, str, str, str], actor: str, clock: Callable[[], int]
) -> AuditEntry:
    """Replace the runtime configuration document and insert its audit entry
    (``texts``: the document, path, before and after as JSON), inside the
    caller's transaction, under :data:`CONFIG_LOCK`; stamped by ``clock``
    (epoch ms) once the lock is held, so that times follow ids."""
    doc, path, before_json, after_json = texts
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (CONFIG_LOCK,))
    now_ms = clock()
    await cur.execute(_SAVE_CONFIG, (doc, now_ms))
    await cur.execute(_INSERT_AUDIT, (now_ms, actor, path, before_json, after_json))
    row = await cur.fetchone()
    assert row is not None
    return audit_entry(int(row[0]), now_ms, actor, path, before_json, after_json)


async def create_rollout(
    cur: Cursor,
    category: str,
    doc_json: str,
    texts: tuple[str, str, str, str] | None,
    clock: Callable[[], int],
) -> tuple[RolloutRow, AuditEntry | None]:
    """Insert a running rollout of ``category`` and its configuration change;
    :class:`RolloutConflict` if the category has an active one."""
    now_ms = clock()
    await cur.execute(
        "INSERT INTO rollouts (category, state, version, doc_json, created_at_ms, updated_at_ms)"
        " VALUES (%s, 'running', 1, %s, %s, %s)"
        f" ON CONFLICT (category) WHERE {_ACTIVE} DO NOTHING RETURNING {_COLUMNS}",
        (category, doc_json, now_ms, now_ms),
    )
    created = await cur.fetchone()
    if created is None:
        await cur.execute(
            f"SELECT id, state FROM rollouts WHERE category = %s AND {_ACTIVE}", (category,)
        )
        other = await cur.fetchone()
        if other is None:  # it ended between the insert and this read
            raise RolloutConflict(f"{category} had another rollout active; try again")
        raise RolloutConflict(f"{category} has rollout {other[0]} {other[1]}", rollout_id=other[0])
    row = _row(created)
    entry = None if texts is None else await write_config(cur, texts, rollout_actor(row.id), clock)
    return row, entry


async def save_rollout(
    cur: Cursor,
    rollout_id: int,
    doc_json: str,
    state: str,
    version: int,
    texts: tuple[str, str, str, str] | None,
    clock: Callable[[], int],
) -> tuple[RolloutRow, AuditEntry | None]:
    """Replace rollout ``rollout_id`` if it is at ``version``, with its
    configuration change; :class:`RolloutConflict` otherwise."""
    now_ms = clock()
    await cur.execute(
        "UPDATE rollouts SET state = %s, version = version + 1, doc_json = %s,"
        f" updated_at_ms = %s WHERE id = %s AND version = %s RETURNING {_COLUMNS}",
        (state, doc_json, now_ms, rollout_id, version),
    )
    updated = await cur.fetchone()
    if updated is None:
        raise stale_rollout(rollout_id, gone=await read_rollout(cur, rollout_id) is None)
    actor = rollout_actor(rollout_id)
    entry = None if texts is None else await write_config(cur, texts, actor, clock)
    return _row(updated), entry


async def read_rollout(cur: Cursor, rollout_id: int) -> RolloutRow | None:
    await cur.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE id = %s", (rollout_id,))
    found = await cur.fetchone()
    return None if found is None else _row(found)


async def read_rollouts(cur: Cursor, active_only: bool) -> list[RolloutRow]:
    where = f" WHERE {_ACTIVE}" if active_only else ""
    await cur.execute(f"SELECT {_COLUMNS} FROM rollouts{where} ORDER BY id")
    return [_row(found) for found in await cur.fetchall()]


def _row(found: tuple[Any, ...]) -> RolloutRow:
    rollout_id, category, state, version, doc_json, created_ms, updated_ms = found
    return RolloutRow(
        int(rollout_id),
        str(category),
        str(state),
        int(version),
        json.loads(doc_json),
        int(created_ms),
        int(updated_ms),
    )
