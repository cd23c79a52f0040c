"""Consumers: subscribe to an adapter's path, verify every event's checksum,
count matches and mismatches, and report receipts to the store."""

from ._common import ConsumerStats, ReceiptCollector, StoreReceiptWriter

__all__ = ["ConsumerStats", "ReceiptCollector", "StoreReceiptWriter"]
