"""A producer process for the ``producers`` scenario: a
:class:`~broadcaster.Publisher` on ``STORE_URL`` (from the environment)
publishing one event per ``await publish()`` from ``--tasks`` concurrent
tasks, paced together to ``--rate`` events/s (0: no pacing), for
``--seconds``. Each payload carries ``t`` (wall time just before the call)
and ``phase``, for the benchmark subscriber's latencies.

Protocol: prints ``ready`` once the publisher is open, waits for ``go`` on
stdin, publishes, then prints one JSON line: ``{"published": n, "seconds":
s, "errors": n, "publish_p50_ms": ..., "publish_p99_ms": ...}`` (how long
its ``publish()`` calls took).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from broadcaster import Publisher
from broadcaster.exceptions import StoreError
from broadcaster.logs import configure_logging
from broadcaster.loop import EVENT_LOOPS, run_on_loop

from ._common import TokenBucket, percentile
from ._stack import padding

__all__ = ["main"]


async def _run(args: argparse.Namespace) -> dict[str, float | int]:
    pad = padding(args.payload_bytes)
    async with Publisher.from_env(env_file=None) as publisher:
        print("ready", flush=True)
        line = await asyncio.to_thread(sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(f"expected 'go' on stdin, got {line!r}")
        bucket = TokenBucket(args.rate or None, burst=max(1.0, args.rate / 100))
        started = time.monotonic()
        deadline = started + args.seconds
        counts = {"published": 0, "errors": 0}
        durations: list[float] = []

        async def task() -> None:
            while True:
                if not await bucket.take(1, deadline):
                    return
                payload = {"phase": args.phase, "t": time.time(), "pad": pad}
                began = time.perf_counter()
                try:
                    await publisher.publish(args.category, "bench", payload)
                except StoreError:
                    counts["errors"] += 1
                else:
                    counts["published"] += 1
                    durations.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(task() for _ in range(args.tasks)))
        seconds = time.monotonic() - started
    return {
        **counts,
        "seconds": round(seconds, 3),
        "publish_p50_ms": round(percentile(durations, 50), 3),
        "publish_p99_ms": round(percentile(durations, 99), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s, 0: no pacing")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--phase", default="run")
    parser.add_argument("--category", default="SYSTEM")
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument("--loop", choices=EVENT_LOOPS, default="auto")
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")  # stdout carries the protocol
    print(json.dumps(run_on_loop(_run(args), loop=args.loop)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
