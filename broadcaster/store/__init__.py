"""Event stores. :func:`store_from_url` picks the backend from ``STORE_URL``."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .base import (
    DELIVERED_STATES,
    UNDELIVERED_STATES,
    AuditEntry,
    ConsumerReceipt,
    DeliveryState,
    PlainPage,
    ScanRow,
    Store,
    StoredEvent,
    StoreStats,
    plain_counts,
)
from .memory import MemoryStore
from .postgres import PostgresStore
from .sqlite import WAL_FRAMES_MAX, SQLiteStore

__all__ = [
    "DELIVERED_STATES",
    "UNDELIVERED_STATES",
    "AuditEntry",
    "PlainPage",
    "ScanRow",
    "StoreStats",
    "ConsumerReceipt",
    "DeliveryState",
    "MemoryStore",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoredEvent",
    "plain_counts",
    "store_from_url",
]

_SQLITE_OPTIONS = frozenset({"synchronous", "busy_timeout_ms", "wal_frames_max"})


def _sqlite_from_url(url: str) -> SQLiteStore:
    # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
    parts = urlsplit(url)
    if parts.netloc:
        raise ValueError(
            f"unsupported STORE_URL {url!r}: sqlite URLs have no host (sqlite:///path)"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ValueError(f"unsupported STORE_URL {url!r}: no database path (sqlite:///path)")
    options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(options) - _SQLITE_OPTIONS
    if unknown:
        raise ValueError(
            f"unsupported STORE_URL {url!r}: unknown option(s) {', '.join(sorted(unknown))};"
            f" known: {', '.join(sorted(_SQLITE_OPTIONS))}"
        )
    synchronous = options.get("synchronous", ["NORMAL"])[-1]
    numbers = {"busy_timeout_ms": 5000, "wal_frames_max": WAL_FRAMES_MAX}
    for name, default in numbers.items():
        given = options.get(name, [str(default)])[-1]
        try:
            numbers[name] = int(given)
        except ValueError:
            raise ValueError(f"unsupported STORE_URL {url!r}: {name}={given!r}") from None
    try:
        return SQLiteStore(
            path,
            synchronous=synchronous,
            busy_timeout_ms=numbers["busy_timeout_ms"],
            wal_frames_max=numbers["wal_frames_max"],
        )
    except ValueError as exc:
        raise ValueError(f"unsupported STORE_URL {url!r}: {exc}") from None


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
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return MemoryStore()
    if scheme == "sqlite":
        return _sqlite_from_url(url)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ValueError(
        f"unsupported STORE_URL {url!r}: expected memory://, sqlite:///path or postgresql://..."
    )
