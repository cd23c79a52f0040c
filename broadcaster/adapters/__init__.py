"""Delivery adapters: the WebSocket fan-out (legacy path) and Supabase Realtime."""

from .base import Adapter, AdapterHealth
from .memory import MemoryAdapter
from .realtime import RealtimeAdapter
from .websocket import WebSocketAdapter

__all__ = ["Adapter", "AdapterHealth", "MemoryAdapter", "RealtimeAdapter", "WebSocketAdapter"]
