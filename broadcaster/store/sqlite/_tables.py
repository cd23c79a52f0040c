"""The SQLite store's service tables as store methods: runtime
configuration and its audit trail, progressive rollouts, service instances
and leases. :class:`ServiceTables` is a mixin of
:class:`~broadcaster.store.sqlite.SQLiteStore`; the transaction bodies are
in :mod:`._rollouts` and :mod:`._instances`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ..base import (
    AuditEntry,
    ConfigChange,
    InstanceInfo,
    LeaseState,
    RolloutRow,
    RolloutWrite,
    config_json_of,
    rollout_json_of,
)
from . import _instances, _rollouts
from ._engine import Engine

__all__ = ["ServiceTables"]


class ServiceTables:
    """The store methods of the small tables the service coordinates by;
    each is one transaction on the worker thread."""

    _engine: Engine
    _clock: Callable[[], float]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- runtime config and audit trail -------------------------------------

    async def save_runtime_config(
        self, config: Mapping[str, Any], *, actor: str, path: str, before: Any, after: Any
    ) -> AuditEntry:
        """Replace the ``runtime_config`` row and append to ``audit`` in one write
        transaction; see :meth:`Store.save_runtime_config`. Values are serialised
        before the transaction starts; a failed call leaves both tables as they were."""
        doc, before_json, after_json = config_json_of(config, before, after)
        now_ms = self._now_ms()
        texts = (doc, path, before_json, after_json)
        return await self._engine.worker_write(
            "save_runtime_config", lambda conn: _rollouts.write_config(conn, texts, actor, now_ms)
        )

    async def runtime_config(self) -> dict[str, Any] | None:
        """The ``runtime_config`` document, or ``None`` if never saved."""
        return await self._engine.read("runtime_config", _rollouts.read_config)

    async def audit_log(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries with id > ``after``, oldest first, at most ``limit``
        (a range read of the ``audit`` primary key)."""
        if limit <= 0:
            return []
        return await self._engine.read(
            "audit_log", lambda conn: _rollouts.read_audit(conn, after, limit)
        )

    # -- several service instances ---------------------------------------------

    async def heartbeat(
        self, instance_id: str, info: Mapping[str, Any], *, expire_after_s: float
    ) -> None:
        """See :meth:`Store.heartbeat`."""
        now_ms = self._now_ms()
        info_json = orjson.dumps(dict(info)).decode()
        expired_ms = now_ms - int(expire_after_s * 1000)
        await self._engine.worker_write(
            "heartbeat",
            lambda conn: _instances.heartbeat(conn, instance_id, info_json, now_ms, expired_ms),
        )

    async def instances(self, *, expire_after_s: float) -> list[InstanceInfo]:
        """See :meth:`Store.instances`."""
        since_ms = self._now_ms() - int(expire_after_s * 1000)
        return await self._engine.read(
            "instances", lambda conn: _instances.live_instances(conn, since_ms)
        )

    async def claim_lease(self, name: str, holder: str, ttl_s: float) -> LeaseState:
        """See :meth:`Store.claim_lease`: one write transaction decides."""
        now_ms = self._now_ms()
        expires = now_ms + int(ttl_s * 1000)
        return await self._engine.worker_write(
            "claim_lease",
            lambda conn: _instances.claim_lease(conn, name, holder, expires, now_ms),
        )

    async def release_lease(self, name: str, holder: str) -> None:
        """See :meth:`Store.release_lease`."""
        await self._engine.worker_write(
            "release_lease", lambda conn: _instances.release_lease(conn, name, holder)
        )

    # -- progressive rollouts ---------------------------------------------------

    async def create_rollout(
        self, category: str, doc: Mapping[str, Any], *, change: ConfigChange | None = None
    ) -> RolloutWrite:
        """See :meth:`Store.create_rollout`: one write transaction."""
        doc_json, texts = rollout_json_of(doc, change)
        now_ms = self._now_ms()
        written: tuple[RolloutRow, AuditEntry | None] = await self._engine.worker_write(
            "create_rollout",
            lambda conn: _rollouts.create_rollout(conn, category, doc_json, texts, now_ms),
        )
        return RolloutWrite(*written)

    async def save_rollout(
        self,
        rollout_id: int,
        doc: Mapping[str, Any],
        *,
        state: str,
        version: int,
        change: ConfigChange | None = None,
    ) -> RolloutWrite:
        """See :meth:`Store.save_rollout`: one write transaction."""
        doc_json, texts = rollout_json_of(doc, change)
        now_ms = self._now_ms()
        written: tuple[RolloutRow, AuditEntry | None] = await self._engine.worker_write(
            "save_rollout",
            lambda conn: _rollouts.save_rollout(
                conn, rollout_id, doc_json, state, version, texts, now_ms
            ),
        )
        return RolloutWrite(*written)

    async def rollout(self, rollout_id: int) -> RolloutRow | None:
        """See :meth:`Store.rollout`."""
        return await self._engine.read(
            "rollout", lambda conn: _rollouts.read_rollout(conn, rollout_id)
        )

    async def rollouts(self, *, active_only: bool = False) -> list[RolloutRow]:
        """See :meth:`Store.rollouts`."""
        return await self._engine.read(
            "rollouts", lambda conn: _rollouts.read_rollouts(conn, active_only)
        )
