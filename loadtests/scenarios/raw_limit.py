"""``raw-limit``: the limit beside ours, measured in the same run.

First the raw limit: a plain ``websockets`` server (``websockets.asyncio.server``,
no broadcaster code on the sending side) with two connections from a peer
process (:mod:`loadtests.raw_peer`), one per "path". A loop sends the same
pre-encoded frames — the wire bytes of real sealed events of
``--payload-bytes``, one event per text frame — on both connections, as fast
as ``send`` lets it, for ``--seconds``. An event counts once both connections
delivered it: raw events/s = min(frames on a, frames on b) ÷ the time from the
first frame to the last one received.

The same loop then sends on one connection only (``raw_one_connection_events_per_s``):
``raw_two_over_one`` is what carrying every event on a second path costs the
transport itself on this machine (sender, receiver and kernel share its two
cores), the bound beside which ``dual-vs-single``'s maximum ratio can be read.

Then ``sustained --rate max`` for as long, the broadcaster's maximum: both real
adapters, SQLite store on, verifying subscribers in another process; then the
two-connection raw loop once more. This VM's speed drifts by a quarter within
minutes (the raw loop 44 600-63 400 events/s in three runs of one evening), so
the raw limit is the mean of the runs before and after the broadcaster's
(both are in ``raw_events_per_s_runs``), as ``dual-vs-single`` mirrors its
modes. Figures: raw events/s, the broadcaster's maximum achieved and
delivered events/s, and ``fraction`` = broadcaster delivered ÷ raw. The raw loop does less per event
than any broadcaster could (no validation, store, checksum, Realtime protocol
or batching; the peer parses JSON but verifies nothing): it is a ceiling for
this machine and this websockets version, not a target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from broadcaster.events import EventFactory, seal

from .._common import load_average, progress, spawn
from .._stack import padding
from ..plotting import plot_timeline
from . import sustained

NAME = "raw-limit"
HELP = "plain websockets send loop (2 connections) vs the broadcaster's max, same run"
DEFAULTS: dict[str, Any] = {"seconds": 5.0, "warmup": 1.0, "realtime": "process"}
SMOKE: dict[str, Any] = {"seconds": 0.5, "warmup": 0.2, "realtime": "embedded"}
PLOTS = True
FRAMES = 1000
CHUNK = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, help="raw loop and broadcaster run (default 5)")
    parser.add_argument("--warmup", type=float, help="broadcaster warm-up seconds (default 1)")
    sustained.add_load_arguments(parser)


def _frames(n: int, payload_bytes: int) -> list[bytes]:
    factory = EventFactory()
    pad = padding(payload_bytes)
    t = time.time()
    return [
        seal(
            factory.draft(
                "SYSTEM", "bench.tick", {"t": t, "phase": "raw", "p": 0, "i": i, "pad": pad}
            ),
            i + 1,
        ).wire
        for i in range(n)
    ]


async def raw_loop(
    seconds: float, payload_bytes: int, bin_s: float, *, paths: int = 2
) -> dict[str, Any]:
    """Send pre-encoded frames on two connections (``paths=1``: the first only)
    for ``seconds``; the peer's counts."""
    frames = _frames(FRAMES, payload_bytes)
    connections: dict[str, ServerConnection] = {}
    both, done = asyncio.Event(), asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        connections[ws.request.path] = ws
        if len(connections) == 2:
            both.set()
        await done.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        peer = spawn(
            "-m", "loadtests.raw_peer", "--url", f"ws://127.0.0.1:{port}", "--bin", str(bin_s)
        )
        try:
            assert peer.stdout is not None
            line = await asyncio.to_thread(peer.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"raw peer did not start: {line!r}")
            async with asyncio.timeout(30):
                await both.wait()
            a, b = connections["/a"], connections["/b"]
            progress(f"raw loop: {seconds:g}s, sending on {paths} connection(s)")
            sent = 0
            started = time.monotonic()
            deadline = started + seconds
            while time.monotonic() < deadline:
                start = sent % FRAMES
                if paths == 2:
                    for frame in frames[start : start + CHUNK]:
                        await a.send(frame, text=True)
                        await b.send(frame, text=True)
                else:
                    for frame in frames[start : start + CHUNK]:
                        await a.send(frame, text=True)
                sent += CHUNK
            send_s = time.monotonic() - started
            await a.send("end")
            await b.send("end")
            out = await asyncio.to_thread(peer.stdout.readline)
            counted: dict[str, Any] = json.loads(out)
        finally:
            done.set()
            try:
                await asyncio.to_thread(peer.wait, 30)
            except subprocess.TimeoutExpired:
                peer.kill()
                peer.wait()
            if peer.stdout is not None:
                peer.stdout.close()
    used = [counted["a"], counted["b"]][:paths]
    delivered = min(c["count"] for c in used)
    first = min(c["first_t"] for c in used)
    last = max(c["last_t"] for c in used)
    return {
        "sent": sent,
        "send_events_per_s": round(sent / send_s),
        "delivered": delivered,
        "events_per_s": round(delivered / max(1e-9, last - first)),
        "started_t": first,
        "bins": {"a": counted["a"]["bins"], "b": counted["b"]["bins"]},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    raw = await raw_loop(args.seconds, args.payload_bytes, args.bin)
    progress(f"raw: {raw['events_per_s']} events/s on both connections")
    one = await raw_loop(args.seconds, args.payload_bytes, args.bin, paths=1)
    progress(f"raw: {one['events_per_s']} events/s on one connection; now the broadcaster")
    figures, phase = await sustained.measure(args, "max", args.seconds, args.warmup, label=NAME)
    after = await raw_loop(args.seconds, args.payload_bytes, args.bin)
    progress(f"raw again: {after['events_per_s']} events/s on both connections")
    raw_rate = round((raw["events_per_s"] + after["events_per_s"]) / 2)
    result = {
        "scenario": NAME,
        "seconds": args.seconds,
        "payload_bytes": args.payload_bytes,
        "raw_events_per_s": raw_rate,
        "raw_events_per_s_runs": [raw["events_per_s"], after["events_per_s"]],
        "raw_send_events_per_s": raw["send_events_per_s"],
        "raw_delivered": raw["delivered"] + after["delivered"],
        "raw_lost": raw["sent"] + after["sent"] - raw["delivered"] - after["delivered"],
        "raw_one_connection_events_per_s": one["events_per_s"],
        "raw_one_connection_lost": one["sent"] - one["delivered"],
        "raw_two_over_one": round(raw["events_per_s"] / one["events_per_s"], 4),
        "broadcaster_max_events_per_s": figures["achieved_events_per_s"],
        "broadcaster_delivered_events_per_s": figures["delivered_events_per_s"],
        "broadcaster_lost": figures["lost"],
        "broadcaster_websocket_p99_ms": figures["websocket"]["p99_ms"],
        "broadcaster_realtime_p99_ms": figures["realtime"]["p99_ms"],
        "broadcaster_cpu_s": figures["cpu_s"],
        "fraction": round(figures["delivered_events_per_s"] / raw_rate, 4),
        "load_avg_1m": load,
    }
    if args.plot:
        series: dict[str, Any] = {
            "raw connection a": raw["bins"]["a"] + after["bins"]["a"],
            "raw connection b": raw["bins"]["b"] + after["bins"]["b"],
            "broadcaster published (call latency)": phase.published.rows(origin=0.0),
        }
        series.update({f"broadcaster {a}": bins for a, bins in phase.received.items()})
        plot_timeline(
            args.plot,
            f"raw websockets loop {raw_rate} events/s (mean of two runs), "
            f"broadcaster {figures['delivered_events_per_s']} events/s",
            series,
            bin_s=args.bin,
            origin=raw["started_t"],
            markers={
                "raw": raw["started_t"],
                "broadcaster": phase.started_t,
                "raw again": after["started_t"],
            },
        )
        progress(f"wrote {args.plot}")
    return result
