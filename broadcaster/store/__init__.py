"""Event stores. :func:`store_from_url` picks the backend from ``STORE_URL``."""

from __future__ import annotations

import os

from ..settings import parse_store_url
from .base import (
    DELIVERED_STATES,
    SETTLED_STATES,
    UNDELIVERED_STATES,
    AuditEntry,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    InstanceInfo,
    LeaseState,
    PlainPage,
    ScanRow,
    Store,
    StoredEvent,
    StoreHealth,
    StoreStats,
    plain_counts,
)
from .memory import MemoryStore
from .postgres import PostgresStore, postgres_store_exists
from .sqlite import FILE_CHECK_S, WAL_FRAMES_MAX, SQLiteStore

__all__ = [
    "DELIVERED_STATES",
    "FILE_CHECK_S",
    "SETTLED_STATES",
    "UNDELIVERED_STATES",
    "AuditEntry",
    "PlainPage",
    "ScanRow",
    "StoreHealth",
    "StoreStats",
    "ConsumerInfo",
    "ConsumerReceipt",
    "DeliveryState",
    "EventFacts",
    "InstanceInfo",
    "LeaseState",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoredEvent",
    "plain_counts",
    "store_exists",
    "store_from_url",
]


def store_from_url(url: str) -> Store:
    """The store for ``url`` (not yet opened). Raises ``ValueError`` naming a bad URL.

    * ``memory://`` — in-process, not durable (tests, benchmarks).
    * ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` — the
      embedded default; options ``?synchronous=normal|full`` (``full`` survives
      power loss, ``normal`` a process crash), ``?busy_timeout_ms=N`` and
      ``?wal_frames_max=N`` (the WAL length, in 4 KiB pages, at which writes
      are held briefly so the WAL file is reused: bounds its size).
    * ``postgresql://...`` or ``postgres://...`` — a libpq URL, for several
      broadcaster processes sharing one store.
    """
    spec = parse_store_url(url)
    if spec.kind == "memory":
        return MemoryStore()
    if spec.kind == "postgresql":
        return PostgresStore(url)
    return SQLiteStore(
        spec.path,
        synchronous=spec.synchronous,
        busy_timeout_ms=spec.busy_timeout_ms,
        wal_frames_max=WAL_FRAMES_MAX if spec.wal_frames_max is None else spec.wal_frames_max,
    )


async def store_exists(url: str) -> bool:
    """Whether ``url`` names a store some service already created, checked
    without creating anything: a SQLite file that exists, a PostgreSQL
    database (its ``search_path``) that has this project's tables. A memory
    store never exists before it is opened. Raises
    :class:`~broadcaster.exceptions.StoreUnavailable` when PostgreSQL cannot
    be reached."""
    spec = parse_store_url(url)
    if spec.kind == "memory":
        return False
    if spec.kind == "sqlite":
        return os.path.isfile(spec.path)  # noqa: ASYNC240 (one stat, no thread worth it)
    return await postgres_store_exists(url)
