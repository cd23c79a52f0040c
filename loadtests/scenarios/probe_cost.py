"""``probe-cost``: what ``serve``'s probe consumers (``RECONCILE_PROBE``) cost
the service process.

Method. For each rate of ``--rates``, two runs side by side, the probes off
then on: ``python -m broadcaster serve`` as a child process (SQLite store in a
fresh directory, the background reconciler off), with the local Realtime
server in a process of its own (as a Supabase project would be, so its
fan-out to the probe is not counted as the service's), and this process
posting events to ``POST /events`` in batches paced to the rate
(``--category``: CRITICAL is checksummed with sha256 and routed to both
adapters, the probes' dearest case). After ``--warmup`` seconds, the
service process's CPU seconds (all its threads, from ``/proc``) over
``--seconds`` of wall time.

Each side runs ``--repeat`` times per rate, alternating which goes first
(the machine's load drifts). Figures per rate, medians of each side: events/s
achieved, the service's CPU share (CPU s / wall s) and its CPU µs per event,
with the probes off and on; the ratios on/off; and ``probe_share``: the part
of the probed service's CPU per event the probes account for,
``(on - off) / on`` (the goal: under 10 %). Per event, because the two sides
may not reach the same rate where the machine cannot. With the probes on,
what each probe received (it must keep up: every event, on both paths).
Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from .._common import (
    REALTIME_KEY,
    ROOT,
    ProcessCpu,
    TokenBucket,
    free_port,
    load_average,
    pin_helper,
    progress,
    python_env,
    spawn,
)

NAME = "probe-cost"
HELP = "CPU share of the service process spent by its probe consumers, probes off vs on"
DEFAULTS: dict[str, Any] = {"rates": "1000,10000", "seconds": 10.0, "warmup": 2.0, "repeat": 3}
SMOKE: dict[str, Any] = {"rates": "500", "seconds": 0.5, "warmup": 0.2, "repeat": 1}
PLOTS = False

TOKEN = "probe-cost-token-0123456789"
#: POST /events calls in flight at once: a slow answer does not stall the pace.
_PRODUCERS = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", help="comma list of events/s (default 1000,10000)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds before measuring (default 2)")
    parser.add_argument(
        "--category",
        default="CRITICAL",
        type=str.upper,
        choices=["CRITICAL", "SYSTEM"],
        help="category published (CRITICAL: sha256; SYSTEM: crc32; both go to both adapters)",
    )
    parser.add_argument("--payload-bytes", type=int, default=200, help="approximate payload size")
    parser.add_argument("--repeat", type=int, help="runs of each side per rate (default 3)")


class _Service:
    """``broadcaster serve`` in a child process, and the Realtime server it pushes to."""

    def __init__(self, probe: bool, rt_url: str, directory: Path) -> None:
        self.admin_port = free_port()
        env = python_env(
            STORE_URL=f"sqlite:///{directory / 'bench.db'}",
            ADMIN_PORT=str(self.admin_port),
            WEBSOCKET_PORT=str(free_port()),
            BROADCASTER_ADMIN_TOKEN=TOKEN,
            SUPABASE_URL=rt_url,
            SUPABASE_KEY=REALTIME_KEY,
            RECONCILE_INTERVAL_S="0",
            RECONCILE_PROBE="true" if probe else "false",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "serve"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        # The service is what is measured: it stays where the scheduler puts
        # this process (with --pin, the broadcaster's CPU).
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("metrics"):
                break
        else:
            raise RuntimeError("serve did not start")
        self.url = f"http://127.0.0.1:{self.admin_port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


async def _publish(
    client: httpx.AsyncClient, rate: float, until: float, body: Callable[[int], bytes]
) -> int:
    """Post events paced to ``rate`` until the monotonic time ``until``;
    returns how many the service accepted. ``body(n)`` is the request body
    of ``n`` events, encoded once per size: this process's own work stays
    small beside the service's on a machine they share."""
    bucket = TokenBucket(rate, burst=rate * 0.05)
    max_batch = max(1, min(1000, int(rate / 50)))
    sent = 0

    async def produce() -> None:
        nonlocal sent
        while True:
            n = await bucket.take(max_batch, until)
            if not n:
                return
            response = await client.post("/events", content=body(n))
            if response.status_code != 201:
                raise RuntimeError(f"POST /events: {response.status_code} {response.text}")
            sent += n

    await asyncio.gather(*(produce() for _ in range(_PRODUCERS)))
    return sent


async def _one_run(
    probe: bool, rate: float, rt_url: str, args: argparse.Namespace
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loadtests-probe-") as tmp:
        service = await asyncio.to_thread(_Service, probe, rt_url, Path(tmp))
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            pad = "x" * max(0, args.payload_bytes - 20)

            @functools.cache
            def body(n: int) -> bytes:
                event = {
                    "category": args.category,
                    "event_type": "probe.cost",
                    "payload": {"pad": pad},
                }
                return orjson.dumps([event] * n)

            async with httpx.AsyncClient(base_url=service.url, headers=headers, timeout=60) as c:
                await _publish(c, rate, time.monotonic() + args.warmup, body)
                meter = ProcessCpu({"service": service.proc.pid})
                meter.start()
                started = time.monotonic()
                sent = await _publish(c, rate, started + args.seconds, body)
                wall = time.monotonic() - started
                cpu = meter.stop()["service"]
                health = (await c.get("/health")).json()
        finally:
            await asyncio.to_thread(service.stop)
    result: dict[str, Any] = {
        "events_per_s": round(sent / wall, 1),
        "cpu_s": round(cpu, 3),
        "cpu_share": round(cpu / wall, 4),
        "cpu_us_per_event": round(cpu / sent * 1e6, 1) if sent else None,
    }
    # Behind-ness of the paths themselves: at saturation a lane (not a
    # probe) may be what holds events back.
    result["adapters"] = {
        name: {k: a.get(k) for k in ("breaker", "pending")}
        for name, a in health.get("adapters", {}).items()
    }
    if probe:
        result["probes"] = {
            name: {k: p[k] for k in ("connected", "received", "mismatches")}
            for name, p in health.get("probes", {}).items()
        }
    return result


def _compare(off: list[dict[str, Any]], on: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each side, and what the probes account for."""

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    sides = {
        name: {key: median(runs, key) for key in ("events_per_s", "cpu_share", "cpu_us_per_event")}
        for name, runs in (("off", off), ("on", on))
    }
    us_off, us_on = sides["off"]["cpu_us_per_event"], sides["on"]["cpu_us_per_event"]
    share_off, share_on = sides["off"]["cpu_share"], sides["on"]["cpu_share"]
    return {
        **sides,
        "cpu_ratio_on_off": round(share_on / share_off, 3) if share_off else None,
        "cpu_per_event_ratio_on_off": round(us_on / us_off, 3) if us_off else None,
        # The part of the probed service's CPU (per event) the probes account for.
        "probe_share": round((us_on - us_off) / us_on, 4) if us_on else None,
        "probes_last_run": on[-1].get("probes"),
        "runs": {"off": off, "on": on},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    rt_port = free_port()
    server = spawn("-m", "broadcaster.realtime_server", "--port", str(rt_port))
    pin_helper(server.pid)
    results: dict[str, Any] = {}
    try:
        assert server.stdout is not None
        if not (await asyncio.to_thread(server.stdout.readline)).strip():
            raise RuntimeError("the Realtime server did not start")
        rt_url = f"http://127.0.0.1:{rt_port}"
        for rate in rates:
            runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for r in range(args.repeat):
                # Alternate which goes first: the machine's load drifts.
                for probe in (False, True) if r % 2 == 0 else (True, False):
                    result = await _one_run(probe, rate, rt_url, args)
                    runs[probe].append(result)
                    progress(f"{rate:.0f}/s probes {'on' if probe else 'off'}: {result}")
            results[f"{rate:.0f}"] = _compare(runs[False], runs[True])
    finally:
        server.terminate()
        await asyncio.to_thread(server.communicate)
    return {
        "scenario": NAME,
        "category": args.category,
        "seconds": args.seconds,
        "rates": results,
        "cpus": os.cpu_count(),
        "load_avg_1m": load,
    }
