"""Dual-write versus single-write through both real adapters, in one run.

Layout: the broadcaster (store on: SQLite in a temp dir) runs in this process;
the local Realtime-protocol server and the subscribers run in two other
processes. Producers publish as fast as they can for ``--seconds`` per phase:

* ``dual``: override ``all`` — every event to the WebSocket fan-out and Realtime;
* ``single``: override ``websocket`` — the legacy path only.

Prints one JSON line per phase (events/s, producer-visible publish() latency
p50/p99 in µs, publish→receive latency p50/p99/p99.9 in ms per adapter measured
at the subscribers) and one line of dual ÷ single ratios.

    python -m loadtests.bench_dualwrite --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from broadcaster.core import Broadcaster
from broadcaster.logs import configure_logging
from broadcaster.settings import load_settings

from ._common import REALTIME_KEY, percentile, python_env

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )


async def _phase(
    b: Broadcaster, name: str, seconds: float, producers: int, batch: int
) -> dict[str, Any]:
    b.set_routing(b.routing.with_override("all" if name == "dual" else "websocket"))
    latencies: list[float] = []
    count = 0
    deadline = time.monotonic() + seconds

    async def producer(p: int) -> None:
        nonlocal count
        i = 0
        while time.monotonic() < deadline:
            if batch == 1:
                t0 = time.perf_counter()
                await b.publish(
                    "SYSTEM", "bench.tick", {"t": time.time(), "phase": name, "p": p, "i": i}
                )
                latencies.append(time.perf_counter() - t0)
                i += 1
            else:
                events = [
                    {
                        "category": "SYSTEM",
                        "event_type": "bench.tick",
                        "payload": {"t": time.time(), "phase": name, "p": p, "i": i + k},
                    }
                    for k in range(batch)
                ]
                t0 = time.perf_counter()
                await b.publish_many(events)
                latencies.append(time.perf_counter() - t0)
                i += batch
        count += i

    started = time.monotonic()
    await asyncio.gather(*(producer(p) for p in range(producers)))
    published_in = time.monotonic() - started
    await b.flush(timeout=120)
    drained_in = time.monotonic() - started
    return {
        "phase": name,
        "events": count,
        "publish_rate_per_s": round(count / published_in),
        "end_to_end_rate_per_s": round(count / drained_in),
        "publish_p50_us": round(percentile(latencies, 50) * 1e6, 1),
        "publish_p99_us": round(percentile(latencies, 99) * 1e6, 1),
    }


async def _run(args: argparse.Namespace) -> None:
    rt_port, ws_port = _free_port(), _free_port()
    server = _spawn("-m", "broadcaster.realtime_server", "--port", str(rt_port))
    assert server.stdout is not None
    server.stdout.readline()  # the server prints its URL once listening
    rt_url = f"http://127.0.0.1:{rt_port}"
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            env_file=None,
            websocket_port=ws_port,
            supabase_url=rt_url,
            supabase_key=REALTIME_KEY,
            store_url=args.store or f"sqlite:///{Path(tmp) / 'bench.db'}",
            log_level="WARNING",
        )
        sub = None
        try:
            async with Broadcaster(settings) as b:
                sub = _spawn(
                    "-m",
                    "loadtests.subscriber",
                    "--ws",
                    f"ws://127.0.0.1:{ws_port}/events",
                    "--realtime",
                    rt_url,
                )
                assert sub.stdout is not None
                line = await asyncio.to_thread(sub.stdout.readline)
                assert line.strip() == "ready", line
                results = {}
                for phase in ("dual", "single"):
                    results[phase] = await _phase(
                        b, phase, args.seconds, args.producers, args.batch
                    )
                await asyncio.sleep(1.0)  # let the subscribers read the tail
                sub.send_signal(signal.SIGTERM)
                out, _ = await asyncio.to_thread(sub.communicate, timeout=60)
                received = json.loads(out.strip().splitlines()[-1])
        finally:
            for proc in (sub, server):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=10)
    for phase, result in results.items():
        for adapter in ("websocket", "realtime"):
            if f"{phase}/{adapter}" in received:
                seen = received[f"{phase}/{adapter}"]
                result[adapter] = {
                    k: v for k, v in seen.items() if k.endswith("_ms") or k == "received"
                }
        print(json.dumps(result), flush=True)
    dual, single = results["dual"], results["single"]
    print(
        json.dumps(
            {
                "ratio": "dual/single",
                "publish_p50": round(dual["publish_p50_us"] / single["publish_p50_us"], 3),
                "publish_p99": round(dual["publish_p99_us"] / single["publish_p99_us"], 3),
                "end_to_end_rate": round(
                    dual["end_to_end_rate_per_s"] / single["end_to_end_rate_per_s"], 3
                ),
                "checksum_mismatches": received.get("mismatches", {}),
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--producers", type=int, default=8, help="concurrent producer tasks")
    parser.add_argument("--batch", type=int, default=1, help="events per publish call")
    parser.add_argument("--store", help="STORE_URL (default: SQLite in a temp dir)")
    configure_logging("console", "WARNING")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
