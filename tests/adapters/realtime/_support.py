"""What the Realtime adapter's tests share: sealed records, a server that
records what it was pushed, a listening client, and fast reconnect settings."""

from __future__ import annotations

from typing import Any

from realtime import AsyncRealtimeClient

from broadcaster.adapters.realtime import broadcast_channel_params, channel_topic
from broadcaster.events import Category, EventFactory, EventRecord, seal
from broadcaster.realtime_server import LocalRealtimeServer, Peer

__all__ = ["FAST", "KEY", "Listener", "Msg", "RecordingServer", "Records", "is_batch"]

Msg = dict[str, Any]

#: The key the adapters present (the local server accepts any unless given one).
KEY = "service-key"

FAST: dict[str, Any] = {
    "connect_timeout_s": 2.0,
    "reconnect_initial_s": 0.02,
    "reconnect_max_s": 0.1,
    "poll_s": 0.05,
}


class Records:
    """Sealed events with increasing sequence ids."""

    def __init__(self) -> None:
        self._factory = EventFactory()
        self._seq = 0

    def make(
        self, n: int, category: Category = Category.CRITICAL, payload_bytes: int = 0
    ) -> list[EventRecord]:
        out = []
        for _ in range(n):
            self._seq += 1
            payload = {"i": self._seq, "pad": "x" * payload_bytes}
            out.append(seal(self._factory.draft(category, "test.event", payload), self._seq))
        return out


class RecordingServer(LocalRealtimeServer):
    """Keeps every broadcast push (topic and event sequence ids) it received,
    every join's payload, and every ``access_token`` message."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pushes: list[tuple[str, list[int]]] = []
        self.push_sizes: list[int] = []
        self.join_payloads: list[tuple[str, Msg]] = []
        self.access_tokens: list[tuple[str, str]] = []

    async def on_join(self, peer: Peer, msg: Msg) -> None:
        self.join_payloads.append((msg["topic"], msg["payload"]))
        await super().on_join(peer, msg)

    async def on_access_token(self, peer: Peer, msg: Msg) -> None:
        self.access_tokens.append((msg["topic"], msg["payload"].get("access_token")))
        await super().on_access_token(peer, msg)

    async def on_broadcast(self, peer: Peer, msg: Msg) -> None:
        if is_batch(msg):  # not the adapter's canary pings
            events = msg["payload"]["payload"]["events"]
            self.pushes.append((msg["topic"], [e["sequence_id"] for e in events]))
            self.push_sizes.append(len(events))
        await super().on_broadcast(peer, msg)


def is_batch(msg: Msg) -> bool:
    """Whether a broadcast push carries a batch of events (the adapter also
    pings its canary channel now and then)."""
    return bool(msg["payload"].get("event") == "events")


class Listener:
    """An official client joined to a category channel, recording what arrives."""

    def __init__(self, url: str, category: Category = Category.CRITICAL) -> None:
        self.client = AsyncRealtimeClient(url, "anon", auto_reconnect=False)
        self.topic = channel_topic("events", category)
        self.batches: list[Msg] = []

    @property
    def events(self) -> list[Msg]:
        return [e for b in self.batches for e in b["payload"]["events"]]

    async def start(self) -> None:
        await self.client.connect()
        channel = self.client.channel(self.topic, broadcast_channel_params(ack=False))
        channel.on_broadcast("events", lambda p: self.batches.append(dict(p)))
        await channel.subscribe()
        assert channel.is_joined

    async def close(self) -> None:
        await self.client.close()
