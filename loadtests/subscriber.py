"""A subscriber process for benchmarks: listens on both paths (the WebSocket
fan-out and Realtime, every category) through the project's verifying
consumers and measures publish→receive latency from the ``t`` (wall time the
producer took just before its ``publish`` call) in each payload.

Run: ``python -m loadtests.subscriber --ws URL --realtime URL``. It prints
``ready`` once both paths are subscribed. ``--realtime-ws URL`` instead of
``--realtime``: what it counts as the Realtime path comes from a second
WebSocket fan-out at URL (``publish-overhead``, which swaps the second path);
with neither, it listens on the WebSocket path alone. Per phase (the payload's ``phase``)
and adapter it counts distinct sequence ids, duplicates and checksum
mismatches and keeps every latency, also in time bins of ``--bin`` seconds.

Two ways to end it:

* SIGTERM/SIGINT: prints the report (one JSON object) and exits;
* with ``--control``, commands on stdin, one per line: first ``start`` (the
  servers listen: subscribe now), then each answered with one JSON line on
  stdout:

  - ``wait PHASE COUNT TIMEOUT_S ADAPTER[,ADAPTER]``: until every named
    adapter has COUNT distinct events of PHASE, or the timeout;
    answers ``{"reached": bool, "counts": {adapter: n}}``;
  - ``receipts TIMEOUT_S`` (with ``--receipts``): until every receipt made so
    far has been posted (or given up on), or the timeout; answers
    ``{"made": n, "posted": n, "dropped": n, "rejected": n}``;
  - ``report``: the report; then the process exits.

``--receipts URL``: also post a receipt for every event received, on either
path, to the broadcaster's ``URL/receipts`` (``POST /receipts``, as a remote
consumer does) with the token in ``$LOADTESTS_RECEIPTS_TOKEN``, so that
reconciliation sees what this subscriber got.

Report: ``{"mismatches": {adapter: n}, "reconnects": {adapter: n} (WebSocket
paths: times the subscription was dropped and made again), "realtime_link":
{"losses", "rejoins"} (the Realtime connection: channels lost, a quota's shut
down included, and joined again), "<phase>/<adapter>": {"received",
"duplicates", "p50_ms", "p99_ms", "p999_ms", "max_ms", "first_t", "last_t",
"bins": [[t, count, p50_ms, p99_ms], ...]}}`` with ``t`` wall-clock seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from typing import Any

from broadcaster.consumer import ReceiptCollector, ReceiptPoster
from broadcaster.consumer.realtime import RealtimeSubscriber
from broadcaster.consumer.websocket import WebSocketSubscriber
from broadcaster.logs import configure_logging
from broadcaster.loop import EVENT_LOOPS, run_on_loop
from broadcaster.store.base import ConsumerReceipt

from ._common import Bins, percentile, summarise

__all__ = ["RECEIPTS_TOKEN_ENV", "Receipts", "Recorder", "main", "percentile"]

ADAPTERS = ("websocket", "realtime")


class _Track:
    __slots__ = (
        "bin_key",
        "bin_values",
        "bins",
        "duplicates",
        "first_t",
        "last_t",
        "latencies",
        "seen",
        "width",
    )

    def __init__(self, bin_s: float) -> None:
        self.latencies: list[float] = []
        self.seen: set[int] = set()
        self.duplicates = 0
        self.width = bin_s
        self.bins = Bins(bin_s)
        #: ``t // width`` of the last event and its bin's list of values:
        #: while events stay in one bin, binning one is a list append.
        self.bin_key = math.nan  # equal to nothing: the first event looks its bin up
        self.bin_values: list[float] = []
        self.first_t = 0.0
        self.last_t = 0.0


class Recorder:
    """What one subscriber process saw, per phase and adapter.

    Feed it with :meth:`handler` (a collector's ``on_event``) or :meth:`on_event`.
    """

    def __init__(self, bin_s: float = 0.25) -> None:
        self.bin_s = bin_s
        self.tracks: dict[tuple[str, str], _Track] = {}
        self.mismatches: dict[str, int] = defaultdict(int)
        #: adapter -> phase -> track, for phases that are str (hashable, and
        #: their own ``str()``); the handlers look their track up here.
        self._phases: dict[str, dict[str, _Track]] = {}

    def _track(self, phase: str, adapter: str) -> _Track:
        track = self.tracks.get((phase, adapter))
        if track is None:
            track = self.tracks[(phase, adapter)] = _Track(self.bin_s)
        return track

    def handler(
        self, adapter: str, clock: Callable[[], float] = time.time
    ) -> Callable[[Mapping[str, Any], bool], None]:
        """A :class:`ReceiptCollector`'s ``on_event`` for ``adapter``: records
        each event as received at ``clock()``.

        One call per event (the collector's) does all the bookkeeping: this is
        the benchmark subscriber's hot path, it runs for every event of both
        paths. An exception (a payload without ``t``...) leaves what was
        recorded before it, as :meth:`on_event` always did.
        """
        phases = self._phases.setdefault(adapter, {})
        track_of = self._track
        mismatches = self.mismatches

        def record(obj: Mapping[str, Any], ok: bool) -> None:
            now = clock()
            payload = obj["payload"]
            phase = payload.get("phase", "?")
            track = phases.get(phase) if type(phase) is str else None
            if track is None:
                track = track_of(str(phase), adapter)
                if type(phase) is str:
                    phases[phase] = track
            seq = obj["sequence_id"]
            seen = track.seen
            if seq in seen:
                track.duplicates += 1
            else:
                seen.add(seq)
            latency_ms = (now - payload["t"]) * 1000
            track.latencies.append(latency_ms)
            # Bins.add(now, latency_ms) without the call: the bin's list is
            # kept while now // width stays the same (so int() of it, the
            # bin's index, does too).
            key = now // track.width
            if key != track.bin_key:
                values = track.bins.values_of(now)
                track.bin_key = key
                track.bin_values = values
            track.bin_values.append(latency_ms)
            if not track.first_t:
                track.first_t = now
            track.last_t = now
            if not ok:
                mismatches[adapter] += 1

        return record

    def on_event(self, adapter: str, obj: Mapping[str, Any], ok: bool, now: float) -> None:
        """Record one event of ``adapter`` received at ``now`` (what a
        :meth:`handler` does with its clock's time)."""
        self.handler(adapter, lambda: now)(obj, ok)

    def count(self, phase: str, adapter: str) -> int:
        track = self.tracks.get((phase, adapter))
        return len(track.seen) if track is not None else 0

    def short(self, phase: str, count: int, adapters: list[str]) -> bool:
        """Whether any of ``adapters`` has fewer than ``count`` events of ``phase``."""
        return any(self.count(phase, a) < count for a in adapters)

    def report(self) -> dict[str, Any]:
        result: dict[str, Any] = {"mismatches": dict(self.mismatches)}
        for (phase, adapter), track in sorted(self.tracks.items()):
            figures = summarise(track.latencies)
            result[f"{phase}/{adapter}"] = {
                "received": len(track.seen),
                "duplicates": track.duplicates,
                "p50_ms": figures["p50"],
                "p99_ms": figures["p99"],
                "p999_ms": figures["p999"],
                "max_ms": figures["max"],
                "first_t": track.first_t,
                "last_t": track.last_t,
                "bins": track.bins.rows(origin=0.0),
            }
        return result


async def _stdin() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


#: The environment variable ``--receipts`` takes its token from.
RECEIPTS_TOKEN_ENV = "LOADTESTS_RECEIPTS_TOKEN"


class Receipts:
    """Every receipt the collectors make, posted through a :class:`ReceiptPoster`."""

    def __init__(self, poster: ReceiptPoster) -> None:
        self.poster = poster
        self.made = 0

    def add(self, receipt: ConsumerReceipt) -> None:
        self.made += 1
        self.poster.add(receipt)

    def settled(self) -> bool:
        stats = self.poster.stats
        return stats.posted + stats.dropped + stats.rejected >= self.made

    def figures(self) -> dict[str, int]:
        stats = self.poster.stats
        return {
            "made": self.made,
            "posted": stats.posted,
            "dropped": stats.dropped,
            "rejected": stats.rejected,
        }


async def _control(
    recorder: Recorder,
    reader: asyncio.StreamReader,
    stop: asyncio.Event,
    receipts: Receipts | None = None,
) -> None:
    while not stop.is_set():
        line = (await reader.readline()).decode().strip()
        if not line or line == "report":
            stop.set()
            return
        words = line.split()
        if words[0] == "wait" and len(words) == 5:
            phase, count, timeout, adapters = words[1], int(words[2]), float(words[3]), words[4]
            names = adapters.split(",")
            deadline = time.monotonic() + timeout
            # Polled: counts move on every event, and waking a waiter per
            # event would cost the hot path more than a 10 ms poll.
            while time.monotonic() < deadline and recorder.short(phase, count, names):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            counts = {a: recorder.count(phase, a) for a in names}
            reached = all(n >= count for n in counts.values())
            print(json.dumps({"reached": reached, "counts": counts}), flush=True)
        elif words[0] == "receipts" and len(words) == 2 and receipts is not None:
            deadline = time.monotonic() + float(words[1])
            while time.monotonic() < deadline and not receipts.settled():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            print(json.dumps(receipts.figures()), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {line!r}"}), flush=True)


async def _run(
    ws_url: str,
    rt_url: str | None,
    bin_s: float,
    control: bool,
    *,
    rt_over_ws: bool = False,
    receipts_url: str | None = None,
) -> dict[str, Any]:
    recorder = Recorder(bin_s)
    receipts = None
    if receipts_url is not None:
        token = os.environ.get(RECEIPTS_TOKEN_ENV)
        if not token:
            raise SystemExit(f"--receipts needs a token in ${RECEIPTS_TOKEN_ENV}")
        receipts = Receipts(ReceiptPoster(receipts_url, token))
    on_receipt = receipts.add if receipts is not None else None
    ws_col = ReceiptCollector(
        "websocket",
        on_event=recorder.handler("websocket"),
        on_receipt=on_receipt,
        track_seen=False,
    )
    rt_col = ReceiptCollector(
        "realtime", on_event=recorder.handler("realtime"), on_receipt=on_receipt, track_seen=False
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = await _stdin() if control else None
    if reader is not None:
        # Started alongside the servers it subscribes to (the imports overlap):
        # the parent says "start" once they listen.
        line = (await reader.readline()).decode().strip()
        if line != "start":
            raise SystemExit(f"expected 'start' on stdin, got {line!r}")
    # WebSocket paths whose reconnections are counted (a fan-out closes a
    # subscriber that falls too far behind, code 1013; what it sent meanwhile
    # never reaches this process, and the report must say why it is missing).
    fanouts: dict[str, WebSocketSubscriber] = {}
    realtime: RealtimeSubscriber | None = None
    async with AsyncExitStack() as paths:
        if receipts is not None:
            # Entered first, left last: what the paths received is posted.
            await paths.enter_async_context(receipts.poster)
        if rt_url is not None and rt_over_ws:
            fanouts["realtime"] = WebSocketSubscriber(rt_url, collector=rt_col)
            await paths.enter_async_context(fanouts["realtime"])
        elif rt_url is not None:
            # The server's apikey, inherited from the parent (python_env).
            key = os.environ.get("SUPABASE_KEY")
            realtime = RealtimeSubscriber(rt_url, key, collector=rt_col)
            await paths.enter_async_context(realtime)
        fanouts["websocket"] = WebSocketSubscriber(ws_url, collector=ws_col)
        await paths.enter_async_context(fanouts["websocket"])
        print("ready", flush=True)
        task = loop.create_task(_control(recorder, reader, stop, receipts)) if reader else None
        await stop.wait()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    report = recorder.report()
    report["reconnects"] = {name: sub.connections - 1 for name, sub in fanouts.items()}
    if realtime is not None:
        link = realtime.link
        report["realtime_link"] = {"losses": link.losses, "rejoins": max(0, link.connects - 1)}
    if receipts is not None:
        report["receipts"] = receipts.figures()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ws", required=True)
    second = parser.add_mutually_exclusive_group()
    second.add_argument("--realtime", help="the Realtime server's URL")
    second.add_argument(
        "--realtime-ws", help="a WebSocket fan-out URL standing in for the Realtime path"
    )
    parser.add_argument("--bin", type=float, default=0.25, help="time bin width, seconds")
    parser.add_argument(
        "--receipts",
        metavar="URL",
        help="post receipts to URL/receipts (the broadcaster's admin API; "
        f"token in ${RECEIPTS_TOKEN_ENV})",
    )
    parser.add_argument("--control", action="store_true", help="read commands on stdin")
    parser.add_argument(
        "--loop", choices=EVENT_LOOPS, default="auto", help="event loop (broadcaster.loop)"
    )
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")  # stdout carries the results
    rt_over_ws = args.realtime_ws is not None
    rt_url = args.realtime_ws if rt_over_ws else args.realtime
    result = run_on_loop(
        _run(
            args.ws,
            rt_url,
            args.bin,
            args.control,
            rt_over_ws=rt_over_ws,
            receipts_url=args.receipts,
        ),
        loop=args.loop,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
