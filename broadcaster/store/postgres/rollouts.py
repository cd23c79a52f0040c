"""The PostgreSQL store's runtime configuration, its audit trail and
progressive rollouts: the part of
:class:`~broadcaster.store.postgres.PostgresStore` that writes them
(:class:`ConfigAndRollouts`), and the statements it runs inside its
transactions, each given a cursor.

A rollout row and the configuration change that goes with it are written in
one transaction. At most one rollout per category is running or paused,
whatever the number of instances: a partial unique index decides (the insert
of a second does nothing and the caller is told which one is in the way),
and a save names the version it read, so of two instances moving one
rollout at once only the first wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Final

import psycopg

from ...exceptions import RolloutConflict
from ..records import AuditEntry, ConfigChange, RolloutRow, RolloutWrite
from ..shared import (
    audit_entry,
    config_json_of,
    rollout_actor,
    rollout_json_of,
    stale_rollout,
)
from .connection import ConnectedStore
from .sql import CONFIG_CHANNEL

__all__ = ["ConfigAndRollouts"]

#: Advisory lock held by every configuration write until it commits, so that
#: audit ids become visible in increasing order ("bcst" + purpose).
_CONFIG_LOCK: Final = 0x62637374_0003

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
_AUDIT_PAGE: Final = (
    "SELECT id, at_ms, actor, path, before_json, after_json FROM audit"
    " WHERE id > %s ORDER BY id LIMIT %s"
)
_ACTIVE: Final = "state IN ('running', 'paused')"
_COLUMNS: Final = "id, category, state, version, doc_json, created_at_ms, updated_at_ms"

Cursor = psycopg.AsyncCursor[Any]


async def _write_config(
    cur: Cursor, texts: tuple[str, str, str, str], actor: str, clock: Callable[[], int]
) -> AuditEntry:
    """Replace the runtime configuration document and insert its audit entry
    (``texts``: the document, path, before and after as JSON), inside the
    caller's transaction, under the configuration lock; stamped by ``clock``
    (epoch ms) once the lock is held, so that times follow ids."""
    doc, path, before_json, after_json = texts
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_CONFIG_LOCK,))
    now_ms = clock()
    await cur.execute(_SAVE_CONFIG, (doc, now_ms))
    await cur.execute(_INSERT_AUDIT, (now_ms, actor, path, before_json, after_json))
    row = await cur.fetchone()
    # Delivered at commit, to every instance: they re-read the flags at once.
    await cur.execute(f"SELECT pg_notify('{CONFIG_CHANNEL}', '')")
    assert row is not None
    return audit_entry(int(row[0]), now_ms, actor, path, before_json, after_json)


async def _create_rollout(
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
    entry = None if texts is None else await _write_config(cur, texts, rollout_actor(row.id), clock)
    return row, entry


async def _save_rollout(
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
        raise stale_rollout(rollout_id, gone=await _read_rollout(cur, rollout_id) is None)
    actor = rollout_actor(rollout_id)
    entry = None if texts is None else await _write_config(cur, texts, actor, clock)
    return _row(updated), entry


async def _read_rollout(cur: Cursor, rollout_id: int) -> RolloutRow | None:
    await cur.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE id = %s", (rollout_id,))
    found = await cur.fetchone()
    return None if found is None else _row(found)


async def _read_rollouts(cur: Cursor, active_only: bool) -> list[RolloutRow]:
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


class ConfigAndRollouts(ConnectedStore):
    """The part of :class:`~broadcaster.store.postgres.PostgresStore` that
    keeps the runtime configuration, its audit trail and the rollouts."""

    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        """Replace the ``runtime_config`` row and insert the ``audit`` row in one
        transaction; see :meth:`Store.save_runtime_config`. Values are serialised
        before the transaction starts; a failed call leaves both tables as they were."""
        doc, before_json, after_json = config_json_of(config, before, after)

        async def body(conn: psycopg.AsyncConnection[Any]) -> AuditEntry:
            async with conn.transaction(), conn.cursor() as cur:
                texts = (doc, path, before_json, after_json)
                return await _write_config(cur, texts, actor, self._now_ms)

        return await self._run("save_runtime_config", body)

    async def runtime_config(self) -> dict[str, Any] | None:
        """The ``runtime_config`` document, or ``None`` if never saved."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> str | None:
            async with conn.cursor() as cur:
                await cur.execute("SELECT doc_json FROM runtime_config WHERE id = 1")
                row = await cur.fetchone()
                return None if row is None else str(row[0])

        doc_json = await self._run("runtime_config", body)
        if doc_json is None:
            return None
        doc: dict[str, Any] = json.loads(doc_json)
        return doc

    async def audit_log(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with id > ``after``, oldest first, at most ``limit``
        (a range read of the ``audit`` primary key)."""
        if limit <= 0:
            return []

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.cursor() as cur:
                await cur.execute(_AUDIT_PAGE, (after, limit))
                return await cur.fetchall()

        rows = await self._run("audit_log", body)
        return [audit_entry(*row) for row in rows]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def create_rollout(
        self, category: str, doc: Mapping[str, Any], *, change: ConfigChange | None = None
    ) -> RolloutWrite:
        """See :meth:`Store.create_rollout`: one transaction."""
        doc_json, texts = rollout_json_of(doc, change)

        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[RolloutRow, AuditEntry | None]:
            async with conn.transaction(), conn.cursor() as cur:
                return await _create_rollout(cur, category, doc_json, texts, self._now_ms)

        return RolloutWrite(*await self._run("create_rollout", body))

    async def save_rollout(
        self,
        rollout_id: int,
        doc: Mapping[str, Any],
        *,
        state: str,
        version: int,
        change: ConfigChange | None = None,
    ) -> RolloutWrite:
        """See :meth:`Store.save_rollout`: one transaction."""
        doc_json, texts = rollout_json_of(doc, change)

        async def body(conn: psycopg.AsyncConnection[Any]) -> tuple[RolloutRow, AuditEntry | None]:
            async with conn.transaction(), conn.cursor() as cur:
                return await _save_rollout(
                    cur, rollout_id, doc_json, state, version, texts, self._now_ms
                )

        return RolloutWrite(*await self._run("save_rollout", body))

    async def rollout(self, rollout_id: int) -> RolloutRow | None:
        """See :meth:`Store.rollout`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> RolloutRow | None:
            async with conn.cursor() as cur:
                return await _read_rollout(cur, rollout_id)

        return await self._run("rollout", body)

    async def rollouts(self, *, active_only: bool = False) -> list[RolloutRow]:
        """See :meth:`Store.rollouts`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[RolloutRow]:
            async with conn.cursor() as cur:
                return await _read_rollouts(cur, active_only)

        return await self._run("rollouts", body)
