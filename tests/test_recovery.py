"""Crash recovery (issue 3, SPEC 1): a broadcaster process is SIGKILLed in the
middle of a steady stream and started again on the same SQLite store. Every
event whose publish() returned reaches each adapter it was routed to, and the
duplicates that at-least-once delivery causes are reported by reconciliation,
not hidden.

Just before the kill the Realtime server loses every broadcast it gets, so the
dead process certainly leaves events undelivered that no consumer has seen:
only the new process's recovery can bring them (the stream alone, delivered
live, would pass the test with recovery doing nothing)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from broadcaster.consumer import ReceiptCollector, StoreReceiptWriter
from broadcaster.consumer.realtime import RealtimeSubscriber
from broadcaster.consumer.websocket import WebSocketSubscriber
from broadcaster.realtime_server import LocalRealtimeServer, Message, Peer
from broadcaster.reconcile.matching import MatchPolicy, Outcome
from broadcaster.reconcile.reconciler import Reconciler
from broadcaster.spawn import free_port
from broadcaster.store import store_from_url

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ACKS_BEFORE_KILL = 1500


class Seen:
    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.changed = asyncio.Event()

    def __call__(self, obj: Mapping[str, Any], ok: bool) -> None:
        assert ok, obj
        self.counts[obj["sequence_id"]] += 1
        self.changed.set()

    async def wait_for(self, wanted: set[int]) -> None:
        while not wanted <= self.counts.keys():
            self.changed.clear()
            await self.changed.wait()


class LossyServer(LocalRealtimeServer):
    """The in-process Realtime server; while ``lose`` is set it drops every
    broadcast (no fan-out, no ack), counting them in ``lost``: the sender's
    events reach no subscriber and stay unacknowledged, so undelivered."""

    def __init__(self) -> None:
        super().__init__()
        self.lose = False
        self.lost = 0

    async def on_broadcast(self, peer: Peer, msg: Message) -> None:
        if self.lose:
            self.lost += 1
            return
        await super().on_broadcast(peer, msg)


async def spawn(mode: str, store_url: str, ws_port: int, rt_url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests._child_broadcaster",
        mode,
        store_url,
        str(ws_port),
        rt_url,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )


async def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'crash.db'}"
    ws_port = free_port()
    server = LossyServer()
    await server.start()
    receipts_store = store_from_url(store_url)
    ws_seen, rt_seen = Seen(), Seen()
    acked: dict[str, set[int]] = {"websocket": set(), "realtime": set()}
    first = second = None
    try:
        first = await spawn("publish", store_url, ws_port, server.url)
        await receipts_store.open()
        writer = StoreReceiptWriter(receipts_store)
        ws_col = ReceiptCollector("websocket", on_event=ws_seen, on_receipt=writer.add)
        rt_col = ReceiptCollector("realtime", on_event=rt_seen, on_receipt=writer.add)
        async with (
            RealtimeSubscriber(server.url, "crash-test-key", collector=rt_col),
            WebSocketSubscriber(
                f"ws://127.0.0.1:{ws_port}/events", collector=ws_col, backoff_max=0.2
            ),
        ):
            assert first.stdout is not None
            total = 0
            async with asyncio.timeout(60):
                while total < ACKS_BEFORE_KILL or not server.lost:
                    if total == ACKS_BEFORE_KILL:
                        server.lose = True  # from now on, until the kill
                    line = (await first.stdout.readline()).decode().split()
                    assert line and line[0] == "ack", line
                    for name in line[2].split(","):
                        acked[name].add(int(line[1]))
                    total += 1
            first.kill()  # SIGKILL: no flush, no goodbye
            await first.wait()
            server.lose = False
            # What the dead process left undelivered: recovery's work. At
            # least the events of the broadcasts the server lost, seen by nobody.
            left = {
                name: {r.sequence_id for r in await receipts_store.undelivered(name, limit=10**6)}
                for name in acked
            }
            assert left["realtime"]

            second = await spawn("recover", store_url, ws_port, server.url)
            assert second.stdout is not None
            async with asyncio.timeout(60):
                assert (await second.stdout.readline()).decode().strip() == "recovered"
            async with asyncio.timeout(30):
                await ws_seen.wait_for(acked["websocket"] | left["websocket"])
                await rt_seen.wait_for(acked["realtime"] | left["realtime"])
        # The consumers are closed: every receipt they counted is in the writer.
        await writer.flush()
        # Reconcile as if well past the max delay: nothing may be missing, and
        # the duplicates the consumers counted are in the report.
        policy = MatchPolicy.from_seconds(5, 30, 300)
        report = await Reconciler(receipts_store, policy, clock=lambda: time.time() + 400).run()
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()
        await receipts_store.close()
        await server.close()

    assert len(acked["websocket"]) == total  # every event goes to the primary
    assert 0 < len(acked["realtime"]) < total
    assert acked["websocket"] <= ws_seen.counts.keys()
    assert acked["realtime"] <= rt_seen.counts.keys()
    assert report.unrepaired_loss == 0
    assert report.total(Outcome.MISMATCH) == 0
    consumer_duplicates = ws_col.stats.duplicates + rt_col.stats.duplicates
    assert sum(report.duplicates.values()) == consumer_duplicates
    assert consumer_duplicates == sum(n - 1 for n in ws_seen.counts.values()) + sum(
        n - 1 for n in rt_seen.counts.values()
    )
