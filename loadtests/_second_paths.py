"""What :class:`~loadtests._stack.Stack` can put in the Realtime adapter's
place (``second_path``), the fan-outs' buffer in the harness, and payload
filler."""

from __future__ import annotations

from collections.abc import Sequence

from broadcaster.adapters import Adapter, AdapterHealth, WebSocketAdapter
from broadcaster.adapters.memory import MemoryHealth
from broadcaster.events import EventRecord

__all__ = [
    "FANOUT_BUFFER_BYTES",
    "SECOND_PATHS",
    "DropAdapter",
    "SecondWebSocketAdapter",
    "padding",
]

#: What :class:`Stack` can put in the Realtime adapter's place.
SECOND_PATHS = ("realtime", "websocket", "none", "realtime-process")
#: Each WebSocket fan-out's per-subscriber buffer here (the service's default
#: is 16 MiB): at the single-write maximum the measuring subscriber, sharing
#: the second core, can fall that far behind and be dropped (code 1013) —
#: a limit of the harness's subscriber, not of the broadcaster.
FANOUT_BUFFER_BYTES = 256 * 2**20


class SecondWebSocketAdapter(WebSocketAdapter):
    """A WebSocket fan-out under the Realtime adapter's name: the plainest
    second network path (one pre-encoded frame per batch and subscriber, one
    transport write, no acknowledgement round trip)."""

    name = "realtime"


class DropAdapter(Adapter):
    """The Realtime adapter's place with no transport behind it: every batch
    is acknowledged at once and dropped (counted in ``health().extra``).
    What is left of dual-write's cost with it is the broadcaster's own: the
    second lane, its acknowledgements in the store."""

    name = "realtime"

    def __init__(self) -> None:
        self.events = 0
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def send(self, batch: Sequence[EventRecord]) -> None:
        self.events += len(batch)

    async def close(self) -> None:
        self.running = False

    def health(self) -> AdapterHealth[MemoryHealth]:
        return AdapterHealth(
            name=self.name, connected=self.running, extra=MemoryHealth(events=self.events)
        )


def padding(payload_bytes: int) -> str:
    """Filler that brings a benchmark payload to about ``payload_bytes``."""
    return "x" * max(0, payload_bytes - 60)
