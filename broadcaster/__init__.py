"""Event-streaming dual-write broadcaster.

The public API is re-exported here; see ``__all__``. Everything raised on
purpose derives from :class:`BroadcasterError` (``broadcaster.exceptions``).
"""

from .adapters import Adapter, AdapterHealth, MemoryAdapter, RealtimeAdapter, WebSocketAdapter
from .admin import AdminServer, create_app
from .consumer import RealtimeSubscriber, ReceiptCollector, WebSocketSubscriber
from .core import Broadcaster, Receipt
from .events import Category, ChecksumInfo, Event, EventFactory, EventRecord, parse_frame
from .exceptions import (
    AdapterError,
    AdapterRejected,
    AdapterTimeout,
    AdapterUnavailable,
    BreakerOpen,
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
from .flags import CategoryPatch, OverrideChange, RuntimeFlags
from .metrics import BroadcasterMetrics
from .reconcile import MatchPolicy, Outcome, Reconciler, Report
from .routing import CategoryRoute, RoutingTable, bucket
from .service import run_service
from .settings import CategorySettings, Settings, load_settings
from .store import AuditEntry, ConsumerReceipt, DeliveryState, MemoryStore, Store

__all__ = [
    "Adapter",
    "AdapterError",
    "AdapterHealth",
    "AdapterRejected",
    "AdapterTimeout",
    "AdapterUnavailable",
    "AdminServer",
    "AuditEntry",
    "Broadcaster",
    "BreakerOpen",
    "BroadcasterClosed",
    "BroadcasterError",
    "BroadcasterMetrics",
    "bucket",
    "Category",
    "CategoryPatch",
    "CategoryRoute",
    "CategorySettings",
    "ChecksumInfo",
    "ChecksumMismatch",
    "ConfigError",
    "ConsumerReceipt",
    "create_app",
    "DeliveryState",
    "Event",
    "EventFactory",
    "EventRecord",
    "FlushTimeout",
    "FrameError",
    "InvalidEvent",
    "load_settings",
    "MatchPolicy",
    "MemoryAdapter",
    "MemoryStore",
    "Outcome",
    "OverrideChange",
    "parse_frame",
    "RealtimeAdapter",
    "RealtimeSubscriber",
    "Receipt",
    "ReceiptCollector",
    "Reconciler",
    "Report",
    "RoutingTable",
    "run_service",
    "RuntimeFlags",
    "Settings",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WebSocketAdapter",
    "WebSocketSubscriber",
]
