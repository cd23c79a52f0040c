"""Consumers: subscribe to an adapter's path, verify every event's checksum,
count matches and mismatches, and report receipts: to the store directly
(:class:`StoreReceiptWriter`) or, from another process, to the admin API's
``POST /receipts`` (:class:`ReceiptPoster`)."""

from ._common import ConsumerStats, ReceiptCollector, StoreReceiptWriter
from .realtime import RealtimeSubscriber
from .receipts import ReceiptPoster, ReceiptPosterStats
from .websocket import WebSocketSubscriber, tail

__all__ = [
    "ConsumerStats",
    "RealtimeSubscriber",
    "ReceiptCollector",
    "ReceiptPoster",
    "ReceiptPosterStats",
    "StoreReceiptWriter",
    "WebSocketSubscriber",
    "tail",
]
