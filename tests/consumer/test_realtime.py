"""The Realtime subscriber, fed by the real adapter through the local server:
in-process and as a separate process that is SIGKILLed and restarted."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from realtime import AsyncRealtimeClient

from broadcaster.adapters.realtime import (
    RealtimeAdapter,
    broadcast_channel_params,
    channel_topic,
)
from broadcaster.consumer import ReceiptCollector
from broadcaster.consumer.realtime import FastBroadcastClient, RealtimeSubscriber
from broadcaster.events import Category, EventFactory, EventRecord, SigningKey, seal
from broadcaster.exceptions import AdapterError
from broadcaster.realtime_server import LocalRealtimeServer
from broadcaster.spawn import RealtimeServerProcess

#: The key every client presents (the local server accepts any unless given one).
KEY = "service-key"
FAST: dict[str, Any] = {"reconnect_initial_s": 0.02, "reconnect_max_s": 0.1, "poll_s": 0.05}


async def until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test after ``within_s``."""
    async with asyncio.timeout(within_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


class Records:
    def __init__(self, signing_key: SigningKey | None = None) -> None:
        self._factory = EventFactory(signing_key=signing_key)
        self.seq = 0

    def make(self, n: int, category: Category = Category.CRITICAL) -> list[EventRecord]:
        out = []
        for _ in range(n):
            self.seq += 1
            draft = self._factory.draft(category, "order.created", {"n": self.seq, "ü": "ß"})
            out.append(seal(draft, self.seq))
        return out


@pytest.fixture
async def server() -> AsyncIterator[LocalRealtimeServer]:
    srv = LocalRealtimeServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def test_subscriber_verifies_and_counts_what_the_adapter_sends(
    server: LocalRealtimeServer,
) -> None:
    records = Records()
    seen: list[int] = []
    collector = ReceiptCollector(
        "realtime", on_event=lambda obj, ok: seen.append(obj["sequence_id"])
    )
    # The bare project URL works too: /realtime/v1 is appended.
    sub = RealtimeSubscriber(
        server.url, KEY, categories=["critical", Category.SYSTEM], collector=collector, **FAST
    )
    assert sub.topics == ["events:critical", "events:system"]
    async with sub, RealtimeAdapter(server.realtime_url, KEY, **FAST) as adapter:
        assert sub.ready
        critical, system = records.make(30), records.make(5, Category.SYSTEM)
        debug = records.make(4, Category.DEBUG)  # not subscribed
        await adapter.send(critical + debug + system)
        await until(lambda: len(seen) == 35)
        await asyncio.sleep(0.05)
    assert sorted(seen) == [r.sequence_id for r in critical + system]
    assert [s for s in seen if s <= 30] == [r.sequence_id for r in critical]
    stats = collector.stats
    assert (stats.received, stats.verified, stats.mismatches, stats.malformed) == (35, 35, 0, 0)
    assert stats.by_category == {"CRITICAL": 30, "SYSTEM": 5}
    assert sub.batches >= 2
    assert not sub.ready


async def test_signed_events_verify_with_the_key_and_are_bad_signatures_without_it(
    server: LocalRealtimeServer,
) -> None:
    records = Records(SigningKey("k2", "the-signing-key"))
    # Keys mid-rotation: the old one and the one the producer now signs with.
    holder = ReceiptCollector("realtime", signing_keys={"k1": "old-key", "k2": "the-signing-key"})
    stranger = ReceiptCollector("realtime", signing_keys={"k2": "someone-elses-key"})
    async with (
        RealtimeSubscriber(server.realtime_url, KEY, collector=holder, **FAST),
        RealtimeSubscriber(server.realtime_url, KEY, collector=stranger, **FAST),
        RealtimeAdapter(server.realtime_url, KEY, **FAST) as adapter,
    ):
        await adapter.send(records.make(20) + records.make(5, Category.SYSTEM))
        await until(lambda: holder.stats.received == stranger.stats.received == 25)
    assert (holder.stats.verified, holder.stats.bad_signatures) == (25, 0)
    assert (stranger.stats.verified, stranger.stats.bad_signatures) == (0, 25)
    assert holder.stats.mismatches == stranger.stats.mismatches == 0


async def test_tampered_and_malformed_broadcasts_are_counted_not_dropped_silently(
    server: LocalRealtimeServer,
) -> None:
    records = Records()
    collector = ReceiptCollector("realtime")
    async with RealtimeSubscriber(server.realtime_url, KEY, collector=collector, **FAST) as sub:
        sender = AsyncRealtimeClient(server.realtime_url, "k", auto_reconnect=False)
        await sender.connect()
        channel = sender.channel(
            channel_topic("events", Category.CRITICAL), broadcast_channel_params(ack=False)
        )
        await channel.subscribe()
        good, bad = (r.to_dict() for r in records.make(2))
        bad["payload"] = {"n": 999}  # checksum no longer matches
        await channel.send_broadcast("events", {"events": [good, bad, "junk"]})
        await channel.send_broadcast("events", {"no_events": True})
        await channel.send_broadcast("other-event", {"events": [good]})  # not ours
        await until(lambda: sub.batches == 2)
        await sender.close()
    assert collector.stats.verified == 1
    assert collector.stats.mismatches == 1
    assert sub.malformed == 2  # "junk" and the payload without an events list


async def test_fast_client_hands_callbacks_what_the_stock_client_does(
    server: LocalRealtimeServer,
) -> None:
    got: dict[str, list[dict[str, Any]]] = {"stock": [], "fast": []}
    clients: list[AsyncRealtimeClient] = []
    for name, cls in (("stock", AsyncRealtimeClient), ("fast", FastBroadcastClient)):
        client = cls(server.realtime_url, "k", auto_reconnect=False)
        await client.connect()
        clients.append(client)
        channel = client.channel("events:critical", broadcast_channel_params(ack=False))
        channel.on_broadcast("*", lambda p, name=name: got[name].append(dict(p)))
        await channel.subscribe()
        assert channel.is_joined  # the join reply took the client's own path
    sender = AsyncRealtimeClient(server.realtime_url, "k", auto_reconnect=False)
    await sender.connect()
    clients.append(sender)
    channel = sender.channel("events:critical", broadcast_channel_params(ack=True))
    await channel.subscribe()
    bodies: list[dict[str, Any]] = [
        {"type": "broadcast", "event": "events", "payload": {"events": [{"a": "ü"}]}},
        {"type": "broadcast", "event": "x", "payload": {}, "meta": {"id": "m1"}},
        {"type": "broadcast", "event": "events", "payload": [1, 2]},  # invalid: both drop it
        {"type": "broadcast", "event": "last", "payload": {"n": 1}},
    ]
    for body in bodies:
        await channel.push("broadcast", body)
    await until(lambda: len(got["stock"]) == 3 and len(got["fast"]) == 3)
    assert got["fast"] == got["stock"]
    assert got["fast"][1] == {"event": "x", "payload": {}, "meta": {"id": "m1"}}
    for client in clients:
        await client.close()


async def test_subscriber_rejoins_after_an_in_process_server_restart() -> None:
    records = Records()
    srv = LocalRealtimeServer()
    await srv.start()
    collector = ReceiptCollector("realtime")
    try:
        async with (
            RealtimeSubscriber(srv.realtime_url, KEY, collector=collector, **FAST) as sub,
            RealtimeAdapter(srv.realtime_url, KEY, **FAST) as adapter,
        ):
            await adapter.send(records.make(3))
            await until(lambda: collector.stats.verified == 3)
            await srv.close()
            await until(lambda: not sub.ready)
            await srv.start()
            await until(lambda: sub.ready and adapter.health().connected)
            assert sub.link.connects == 2
            await adapter.send(records.make(4))
            await until(lambda: collector.stats.verified == 7)
    finally:
        await srv.close()


@pytest.fixture
async def server_process(tmp_path: Path) -> AsyncIterator[RealtimeServerProcess]:
    """``python -m broadcaster.realtime_server`` in its own process, accepting
    only its own random key."""
    sp = RealtimeServerProcess(key=secrets.token_urlsafe(16), stderr=tmp_path / "server.log")
    try:
        yield sp
    finally:
        await sp.kill()


@pytest.mark.slow
async def test_sigkilled_server_process_restarted_adapter_and_subscriber_recover(
    server_process: RealtimeServerProcess,
) -> None:
    records = Records()
    url = await server_process.start()
    assert url == f"http://127.0.0.1:{server_process.port}"
    received: list[int] = []
    collector = ReceiptCollector(
        "realtime", on_event=lambda o, ok: received.append(o["sequence_id"])
    )
    sent_ok: list[int] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async with (
        RealtimeSubscriber(url, server_process.key, collector=collector, **FAST) as sub,
        RealtimeAdapter(
            url + "/realtime/v1", server_process.key, ack_timeout_s=2, **FAST
        ) as adapter,
    ):

        async def produce() -> None:
            # A stand-in for the broadcaster's lane: send, and on failure retry later.
            while not stop.is_set():
                batch = records.make(5)
                try:
                    await adapter.send(batch)
                except AdapterError as exc:
                    failures.append(type(exc).__name__)
                else:
                    sent_ok.extend(r.sequence_id for r in batch)
                await asyncio.sleep(0.01)

        producer = asyncio.get_running_loop().create_task(produce())
        await until(lambda: len(received) >= 50)
        await server_process.kill()  # SIGKILL mid-stream
        await until(lambda: bool(failures) and not adapter.health().connected)
        assert set(failures) <= {"AdapterUnavailable"}
        before_restart = len(sent_ok)
        assert await server_process.start() == url
        await until(lambda: adapter.health().connected and sub.ready, within_s=10)
        # Broadcasts have no history: what went out before the subscriber
        # rejoined is not replayed (reconciliation reports it). Judge from here.
        both_ready = len(sent_ok)
        assert both_ready >= before_restart
        await until(lambda: len(sent_ok) >= both_ready + 50)
        stop.set()
        await producer
        after = sent_ok[both_ready:]
        await until(lambda: set(after) <= set(received))
    # Everything acknowledged once both were back was received, verified, in order.
    after_set = set(after)
    assert [s for s in received if s in after_set] == after
    assert collector.stats.mismatches == 0 and collector.stats.malformed == 0
    assert sub.link.connects == 2 and adapter.link is None
