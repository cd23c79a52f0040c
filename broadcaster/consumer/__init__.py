"""Consumers: subscribe to an adapter's path, verify every event's checksum,
count matches and mismatches, and report receipts to the store."""

from ._common import ConsumerStats, ReceiptCollector, StoreReceiptWriter
from .realtime import RealtimeSubscriber
from .websocket import WebSocketSubscriber, tail

__all__ = [
    "ConsumerStats",
    "RealtimeSubscriber",
    "ReceiptCollector",
    "StoreReceiptWriter",
    "WebSocketSubscriber",
    "tail",
]
