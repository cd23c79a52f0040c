"""Event-streaming dual-write broadcaster.

The public API is re-exported here; see ``__all__``. What only the
package's own modules need (the event factory, the sampling bucket, the
admin API's request bodies, the event-loop plumbing) stays in its module. Everything raised on
purpose derives from :class:`BroadcasterError` (``broadcaster.exceptions``).
"""

from typing import TYPE_CHECKING

from .adapters import Adapter, AdapterHealth, MemoryAdapter, RealtimeAdapter, WebSocketAdapter
from .consumer import RealtimeSubscriber, ReceiptCollector, WebSocketSubscriber
from .core import Broadcaster
from .events import (
    Category,
    ChecksumInfo,
    Event,
    EventRecord,
    SignatureInfo,
    SigningKey,
    parse_frame,
)
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
    HistoryPruned,
    InvalidEvent,
    SignatureMismatch,
    StoreError,
    StoreUnavailable,
)
from .flags import RuntimeFlags
from .loop import run_on_loop
from .producer import Publisher, Receipt
from .reconcile import MatchPolicy, Outcome, Reconciler, Report
from .routing import RoutingTable
from .settings import CategorySettings, Settings, load_settings
from .store import AuditEntry, ConsumerReceipt, DeliveryState, MemoryStore, Store

if TYPE_CHECKING:
    from .admin import AdminServer, create_app
    from .metrics import BroadcasterMetrics
    from .service import run_service

# The admin API pulls in FastAPI: imported on first use, so that processes
# that never serve it (the local Realtime server, subscribers, the CLI's
# other commands) start fast.
_LAZY = {
    "AdminServer": ".admin",
    "create_app": ".admin",
    "run_service": ".service",
    "BroadcasterMetrics": ".metrics",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'broadcaster' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
    "Category",
    "CategorySettings",
    "ChecksumInfo",
    "ChecksumMismatch",
    "ConfigError",
    "ConsumerReceipt",
    "create_app",
    "DeliveryState",
    "Event",
    "EventRecord",
    "FlushTimeout",
    "FrameError",
    "HistoryPruned",
    "InvalidEvent",
    "load_settings",
    "MatchPolicy",
    "MemoryAdapter",
    "MemoryStore",
    "Outcome",
    "parse_frame",
    "Publisher",
    "RealtimeAdapter",
    "RealtimeSubscriber",
    "Receipt",
    "ReceiptCollector",
    "Reconciler",
    "Report",
    "RoutingTable",
    "run_on_loop",
    "run_service",
    "RuntimeFlags",
    "Settings",
    "SignatureInfo",
    "SignatureMismatch",
    "SigningKey",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WebSocketAdapter",
    "WebSocketSubscriber",
]
