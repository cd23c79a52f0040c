"""Event-streaming dual-write broadcaster.

The public API is re-exported here; see ``__all__``. Everything raised on
purpose derives from :class:`BroadcasterError` (``broadcaster.exceptions``).
"""

from .adapters import Adapter, AdapterHealth, MemoryAdapter
from .core import Broadcaster, Receipt
from .events import Category, ChecksumInfo, Event, EventFactory, EventRecord, parse_frame
from .exceptions import (
    AdapterError,
    AdapterRejected,
    AdapterTimeout,
    AdapterUnavailable,
    BroadcasterClosed,
    BroadcasterError,
    ChecksumMismatch,
    ConfigError,
    FlushTimeout,
    FrameError,
    InvalidEvent,
    StoreError,
    StoreUnavailable,
)
from .routing import CategoryRoute, RoutingTable, bucket
from .settings import CategorySettings, Settings, load_settings
from .store import ConsumerReceipt, DeliveryState, MemoryStore, Store

__all__ = [
    "Adapter",
    "AdapterError",
    "AdapterHealth",
    "AdapterRejected",
    "AdapterTimeout",
    "AdapterUnavailable",
    "Broadcaster",
    "BroadcasterClosed",
    "BroadcasterError",
    "Category",
    "CategoryRoute",
    "CategorySettings",
    "ChecksumInfo",
    "ChecksumMismatch",
    "ConfigError",
    "ConsumerReceipt",
    "DeliveryState",
    "Event",
    "EventFactory",
    "EventRecord",
    "FlushTimeout",
    "FrameError",
    "InvalidEvent",
    "MemoryAdapter",
    "MemoryStore",
    "Receipt",
    "RoutingTable",
    "Settings",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "bucket",
    "load_settings",
    "parse_frame",
]
