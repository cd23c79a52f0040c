"""The PostgreSQL store's view of the service instances sharing it:
heartbeats (who is alive, and what each says of itself) and named leases
(at most one holder at a time, e.g. the reconciler), both by the
database's clock so the instances' own clocks do not matter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg

from ..records import InstanceInfo, LeaseState
from .connection import ConnectedStore
from .sql import NOW_MS

__all__ = ["InstanceRegistry"]


class InstanceRegistry(ConnectedStore):
    """The part of :class:`~broadcaster.store.postgres.PostgresStore` that
    keeps instances' heartbeats and leases."""

    async def heartbeat(
        self, instance_id: str, info: Mapping[str, Any], *, expire_after_s: float
    ) -> None:
        """See :meth:`Store.heartbeat` (the database's clock)."""
        info_json = json.dumps(dict(info))

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    f"INSERT INTO instances VALUES (%(id)s, {NOW_MS}, {NOW_MS}, %(info)s)"
                    f" ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at_ms = {NOW_MS},"
                    " info_json = %(info)s",
                    {"id": instance_id, "info": info_json},
                )
                await cur.execute(
                    f"DELETE FROM instances WHERE heartbeat_at_ms < {NOW_MS} - %s",
                    (int(expire_after_s * 1000),),
                )

        await self._run("heartbeat", body)

    async def instances(self, *, expire_after_s: float) -> list[InstanceInfo]:
        """See :meth:`Store.instances` (the database's clock)."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> list[InstanceInfo]:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SELECT instance_id, started_at_ms, heartbeat_at_ms, info_json FROM instances"
                    f" WHERE heartbeat_at_ms >= {NOW_MS} - %s ORDER BY instance_id",
                    (int(expire_after_s * 1000),),
                )
                rows = await cur.fetchall()
            return [InstanceInfo(i, int(a), int(h), json.loads(j)) for i, a, h, j in rows]

        return await self._run("instances", body)

    async def claim_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        """See :meth:`Store.claim_lease`: one statement decides, under the
        row's lock, by the database's clock."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> LeaseState:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    f"INSERT INTO leases VALUES (%(name)s, %(holder)s, {NOW_MS} + %(ttl)s)"
                    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                    " expires_at_ms = excluded.expires_at_ms"
                    f" WHERE leases.holder = excluded.holder OR leases.expires_at_ms < {NOW_MS}"
                    " RETURNING expires_at_ms",
                    {"name": name, "holder": holder, "ttl": int(ttl_s * 1000)},
                )
                won = await cur.fetchone()
                if won is not None:
                    return LeaseState(name, holder, int(won[0]), True)
                await cur.execute(
                    "SELECT holder, expires_at_ms FROM leases WHERE name = %s", (name,)
                )
                row = await cur.fetchone()
            assert row is not None  # the INSERT met a row it did not take
            return LeaseState(name, str(row[0]), int(row[1]), False)

        return await self._run("claim_lease", body)

    async def release_lease(self, name: str, holder: str) -> None:
        """See :meth:`Store.release_lease`."""

        async def body(conn: psycopg.AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    "DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder)
                )

        await self._run("release_lease", body)
