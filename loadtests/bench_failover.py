"""Failover, restore and backfill, timed in one run (issue 4).

The broadcaster (SQLite store in a temp dir, real WebSocket fan-out, real
Realtime adapter) runs here; the local Realtime server runs in its own process
(``python -m broadcaster.realtime_server``). A producer publishes CRITICAL
events (routed to both paths) at ``--rate`` events/s throughout, one
``publish()`` per event from ``--producers`` concurrent callers. Phases:

* ``steady``: both paths healthy, ``--seconds``;
* ``failover``: the server is SIGKILLed; ``--outage`` seconds of outage;
* ``backfill``: the server is restarted on the same port; until the breaker is
  closed at full share and the backfill has delivered every pending event.

Prints one JSON line per phase with publish() latency p50/p99/max (ms) and the
events published, then a summary line: ``failover_s`` (SIGKILL → breaker open,
after which traffic goes to the WebSocket path only), ``half_open_s`` /
``closed_s`` / ``full_share_s`` (restart → each), ``restore_s`` (restart →
breaker closed and every event left pending by the outage and the ramp
delivered to Realtime; null if that took longer than ``--restore-timeout``,
with ``pending_at_end`` saying how many were left) and the number backfilled.

    python -m loadtests.bench_failover --seconds 3 --outage 3 --rate 2000
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broadcaster.adapters.realtime import RealtimeAdapter
from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.breaker_policy import BreakerConfig
from broadcaster.core import Broadcaster
from broadcaster.logs import configure_logging
from broadcaster.settings import load_settings

from ._common import REALTIME_KEY, TokenBucket, percentile, python_env

__all__ = ["FailoverRun", "main", "measure"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _start_server(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broadcaster.realtime_server",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=python_env(),
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        await proc.stdout.readline()  # the URL line: listening
    return proc


async def _until(predicate: Any, within_s: float) -> float:
    # The breaker exposes no awaitable for its state: poll it finely.
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
    return time.monotonic()


class _Producer:
    """``producers`` tasks calling ``publish()`` one event at a time, paced
    together to ``rate`` events/s by a shared token bucket (one sequential
    caller could not reach the rate: each call waits for its commit)."""

    def __init__(self, b: Broadcaster, rate: float, producers: int = 8) -> None:
        self.b = b
        self.rate = rate
        self.producers = producers
        self.phase = "steady"
        self.latencies: dict[str, list[float]] = {}
        #: (monotonic time the call returned, seconds it took), for plots.
        self.samples: list[tuple[float, float]] = []
        self.task: asyncio.Task[None] | None = None
        self._next = 0

    async def _one(self, bucket: TokenBucket) -> None:
        while True:
            await bucket.take(1, float("inf"))
            i = self._next
            self._next += 1
            started = time.monotonic()
            await self.b.publish("CRITICAL", "bench.failover", {"i": i}, key=f"k{i}")
            ended = time.monotonic()
            self.latencies.setdefault(self.phase, []).append(ended - started)
            self.samples.append((ended, ended - started))

    async def run(self) -> None:
        bucket = TokenBucket(self.rate, burst=self.producers)
        await asyncio.gather(*(self._one(bucket) for _ in range(self.producers)))


def _phase_line(name: str, latencies: list[float]) -> dict[str, Any]:
    return {
        "phase": name,
        "events": len(latencies),
        "publish_p50_ms": round(percentile(latencies, 50) * 1e3, 3),
        "publish_p99_ms": round(percentile(latencies, 99) * 1e3, 3),
        "publish_max_ms": round(max(latencies, default=float("nan")) * 1e3, 3),
    }


@dataclass
class FailoverRun:
    """One run's figures: a line per phase, the summary, and for plots the
    producer's (monotonic time, publish seconds) samples and event marks."""

    phases: list[dict[str, Any]]
    summary: dict[str, Any]
    samples: list[tuple[float, float]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


async def measure(args: argparse.Namespace) -> FailoverRun:
    port = _free_port()
    server = await _start_server(port)
    servers = [server]
    try:
        url = f"http://127.0.0.1:{port}"
        with tempfile.TemporaryDirectory() as tmp:
            settings = load_settings(
                env_file=None,
                websocket_port=0,
                supabase_url=url,
                supabase_key=REALTIME_KEY,
                store_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                # No background reconcile: its pass over the store stalls the
                # publish path (~1 s at 60 000 events), which is not failover.
                reconcile_interval_s=0,
            )

            def config(name: str) -> BreakerConfig:
                return dataclasses.replace(
                    BreakerConfig.from_settings(settings, name),
                    recovery_time_s=args.recovery,
                    ramp_step_s=args.ramp_step,
                )

            ws = WebSocketAdapter.from_settings(settings)
            rt = RealtimeAdapter(url, REALTIME_KEY, reconnect_max_s=0.2, poll_s=0.1)
            b = Broadcaster(
                settings, adapters=[ws, rt], breaker_config=config, backfill_rate=args.backfill_rate
            )
            async with b:
                breaker, lane = b.breakers["realtime"], b.lane("realtime")
                producer = _Producer(b, args.rate, getattr(args, "producers", 8))
                producer.task = asyncio.get_running_loop().create_task(producer.run())
                try:
                    await asyncio.sleep(args.seconds)  # steady state runs for a fixed time

                    producer.phase = "failover"
                    killed = time.monotonic()
                    server.kill()
                    await server.wait()
                    opened = await _until(lambda: breaker.state == "open", 30)
                    await asyncio.sleep(args.outage)  # the outage lasts a fixed time

                    producer.phase = "backfill"
                    restarted = time.monotonic()
                    server = await _start_server(port)
                    servers.append(server)
                    half_open = await _until(lambda: breaker.state != "open", 60)
                    closed = await _until(lambda: breaker.state == "closed", 60)
                    full = await _until(
                        lambda: breaker.state == "closed" and breaker.share == 100, 120
                    )
                    # Restored: closed, and every event recorded PENDING during the
                    # outage and the ramp is delivered. (Not ``lane.settled``: with
                    # producers publishing all the time, something is always in flight.)
                    restored: float | None
                    try:
                        restored = await _until(
                            lambda: lane.pending == 0 and breaker.state == "closed",
                            getattr(args, "restore_timeout", 300.0),
                        )
                    except TimeoutError:
                        restored = None  # reported as null, with what is still pending
                    pending_left = lane.pending
                finally:
                    producer.task.cancel()
                    await asyncio.gather(producer.task, return_exceptions=True)
                await b.flush(timeout=60)
                phases = [
                    _phase_line(name, producer.latencies.get(name, []))
                    for name in ("steady", "failover", "backfill")
                ]
                summary = {
                    "summary": True,
                    "rate": args.rate,
                    "failover_s": round(opened - killed, 3),
                    "half_open_s": round(half_open - restarted, 3),
                    "closed_s": round(closed - restarted, 3),
                    "full_share_s": round(full - restarted, 3),
                    "restore_s": None if restored is None else round(restored - restarted, 3),
                    "pending_at_end": pending_left,
                    "backfilled": b.stats.backfilled["realtime"],
                    "parked": b.stats.parked["realtime"],
                    "transitions": breaker.transitions,
                    "recovery_time_s": args.recovery,
                    "ramp_step_s": args.ramp_step,
                    "backfill_rate": args.backfill_rate,
                }
                marks = {
                    "SIGKILL": killed,
                    "open": opened,
                    "restart": restarted,
                    "half-open": half_open,
                    "closed": closed,
                    "full share": full,
                    **({"restored": restored} if restored is not None else {}),
                }
        return FailoverRun(phases, summary, producer.samples, marks)
    finally:
        for proc in servers:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _run(args: argparse.Namespace) -> None:
    result = await measure(args)
    for line in (*result.phases, result.summary):
        print(json.dumps(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="steady phase length")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the server is down")
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s published")
    parser.add_argument("--recovery", type=float, default=1.0, help="breaker recovery_time_s")
    parser.add_argument("--ramp-step", type=float, default=1.0, help="breaker ramp_step_s")
    parser.add_argument("--backfill-rate", type=float, default=5000.0, help="events/s")
    parser.add_argument("--producers", type=int, default=8, help="concurrent publish() callers")
    parser.add_argument(
        "--restore-timeout", type=float, default=300.0, help="give up waiting for restore (s)"
    )
    configure_logging("console", "WARNING")
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
