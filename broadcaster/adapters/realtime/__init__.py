"""The Supabase Realtime adapter (docs/wire-format.md) and its connection.

:mod:`.adapter` batches events into acknowledged broadcast pushes and keeps
within the project's quotas; :mod:`.link` supervises the connection the
project's ``supabase`` client gives; :mod:`.client_glue` is the one module
that uses the clients beyond their documented API (each such attribute is
listed there and checked by a test).
"""

from .adapter import RealtimeAdapter
from .client_glue import FastBroadcastClient, PreEncodedPushClient
from .health import RealtimeHealth
from .link import (
    BROADCAST_EVENT,
    RealtimeLink,
    broadcast_channel_params,
    channel_topic,
    normalize_realtime_url,
)

__all__ = [
    "BROADCAST_EVENT",
    "FastBroadcastClient",
    "PreEncodedPushClient",
    "RealtimeAdapter",
    "RealtimeHealth",
    "RealtimeLink",
    "broadcast_channel_params",
    "channel_topic",
    "normalize_realtime_url",
]
