"""A subscriber process for benchmarks: listens on both paths and measures
publish→receive latency from the ``t`` (publish wall time) in each payload.

Run: ``python -m loadtests.subscriber --ws URL --realtime URL``. It prints
``ready`` once both paths are subscribed, and on SIGTERM/SIGINT one JSON object:
per phase and adapter, the count and latency percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from broadcaster.consumer import ReceiptCollector
from broadcaster.consumer.realtime import RealtimeSubscriber
from broadcaster.consumer.websocket import WebSocketSubscriber
from broadcaster.logs import configure_logging

__all__ = ["main", "percentile"]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _run(ws_url: str, rt_url: str) -> dict[str, Any]:
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    mismatches: dict[str, int] = defaultdict(int)

    def recorder(adapter: str) -> Any:
        def on_event(obj: Mapping[str, Any], ok: bool) -> None:
            payload = obj["payload"]
            latencies[(payload.get("phase", "?"), adapter)].append(
                (time.time() - payload["t"]) * 1000
            )
            if not ok:
                mismatches[adapter] += 1

        return on_event

    ws_col = ReceiptCollector("websocket", on_event=recorder("websocket"), track_seen=False)
    rt_col = ReceiptCollector("realtime", on_event=recorder("realtime"), track_seen=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with (
        WebSocketSubscriber(ws_url, collector=ws_col),
        RealtimeSubscriber(rt_url, collector=rt_col),
    ):
        print("ready", flush=True)
        await stop.wait()
    result: dict[str, Any] = {"mismatches": dict(mismatches)}
    for (phase, adapter), values in sorted(latencies.items()):
        result[f"{phase}/{adapter}"] = {
            "received": len(values),
            "p50_ms": round(percentile(values, 50), 3),
            "p99_ms": round(percentile(values, 99), 3),
            "p999_ms": round(percentile(values, 99.9), 3),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ws", required=True)
    parser.add_argument("--realtime", required=True)
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")  # stdout carries the results
    result = asyncio.run(_run(args.ws, args.realtime))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
