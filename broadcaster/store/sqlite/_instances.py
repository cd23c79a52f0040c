"""Service instances' heartbeats and named leases in the SQLite store, as
transaction bodies. One SQLite store serves one service instance, but the
contract is the same on every store, so the admin API and the lease holders
need not know which one they run on.
"""

from __future__ import annotations

import sqlite3

import orjson

from ..base import InstanceInfo, LeaseState

__all__ = ["claim_lease", "heartbeat", "live_instances", "release_lease"]


def heartbeat(
    conn: sqlite3.Connection, instance_id: str, info_json: str, now_ms: int, expired_ms: int
) -> None:
    """Record ``instance_id`` alive at ``now_ms``; forget instances whose last
    heartbeat is older than ``expired_ms``."""
    conn.execute(
        "INSERT INTO instances VALUES (?1, ?2, ?2, ?3) ON CONFLICT (instance_id)"
        " DO UPDATE SET heartbeat_at_ms = ?2, info_json = ?3",
        (instance_id, now_ms, info_json),
    )
    conn.execute("DELETE FROM instances WHERE heartbeat_at_ms < ?", (expired_ms,))


def live_instances(conn: sqlite3.Connection, since_ms: int) -> list[InstanceInfo]:
    """Instances heard from at ``since_ms`` or later."""
    rows = conn.execute(
        "SELECT instance_id, started_at_ms, heartbeat_at_ms, info_json FROM instances"
        " WHERE heartbeat_at_ms >= ? ORDER BY instance_id",
        (since_ms,),
    ).fetchall()
    return [InstanceInfo(i, s, h, orjson.loads(j)) for i, s, h, j in rows]


def claim_lease(
    conn: sqlite3.Connection, name: str, holder: str, expires: int, now_ms: int
) -> LeaseState:
    """Take or renew lease ``name`` for ``holder`` until ``expires``, if it
    is free, expired or already ``holder``'s; one write transaction decides."""
    conn.execute(
        "INSERT INTO leases VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE"
        " SET holder = ?2, expires_at_ms = ?3 WHERE holder = ?2 OR expires_at_ms < ?4",
        (name, holder, expires, now_ms),
    )
    (current, until) = conn.execute(
        "SELECT holder, expires_at_ms FROM leases WHERE name = ?", (name,)
    ).fetchone()
    return LeaseState(name, current, until, current == holder and until == expires)


def release_lease(conn: sqlite3.Connection, name: str, holder: str) -> None:
    conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))
