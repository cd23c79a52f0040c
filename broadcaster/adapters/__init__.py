"""Delivery adapters: the WebSocket fan-out (legacy path) and Supabase Realtime."""

from .base import Adapter, AdapterHealth
from .memory import MemoryAdapter

__all__ = ["Adapter", "AdapterHealth", "MemoryAdapter"]
