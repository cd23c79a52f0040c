"""Event stores. :func:`open_store` picks the backend from ``STORE_URL``."""

from __future__ import annotations

from .base import ConsumerReceipt, DeliveryState, Store, StoredEvent
from .memory import MemoryStore

__all__ = [
    "ConsumerReceipt",
    "DeliveryState",
    "MemoryStore",
    "Store",
    "StoredEvent",
    "store_from_url",
]


def store_from_url(url: str) -> Store:
    """The store for ``url`` (not yet opened): ``memory://``, ``sqlite:///path``
    or ``postgresql://...``. Raises ``ValueError`` for an unknown scheme."""
    if url == "memory://" or url.startswith("memory:"):
        return MemoryStore()
    raise ValueError(
        f"unsupported STORE_URL {url!r}: expected memory://, sqlite:/// or postgresql://"
    )
