"""``admin-api``: what the admin API takes and how fast it answers (issue 5).

The service (``broadcaster serve``: both real adapters, SQLite store, admin
API) runs in a child process; this process is the HTTP client.

* ``ingest_single``: ``POST /events`` with one event per request, from
  ``--clients`` concurrent connections;
* ``ingest_batched``: the same with ``--batch`` events per request;
* ``admin_latency``: ``GET /health``, ``GET /stats``, ``GET /config`` and
  ``PATCH /config/categories/DEBUG`` latency (p50/p99) while batched ingest
  keeps publishing, against the same requests on an idle service.

Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from broadcaster.spawn import free_port

from .._common import load_average, progress

NAME = "admin-api"
HELP = "admin API ingest rate (single and batched) and admin request latency, idle and busy"
DEFAULTS: dict[str, Any] = {"seconds": 5.0, "clients": 4, "batch": 100, "rounds": 50}
SMOKE: dict[str, Any] = {"seconds": 0.5, "clients": 2, "batch": 10, "rounds": 3}
PLOTS = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, help="length of each ingest phase (default 5)")
    parser.add_argument("--clients", type=int, help="concurrent HTTP clients (default 4)")
    parser.add_argument("--batch", type=int, help="events per batched request (default 100)")
    parser.add_argument("--rounds", type=int, help="admin requests of each kind (default 50)")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    lines = await measure(args.seconds, args.clients, args.batch, args.rounds)
    figures: dict[str, Any] = {"scenario": NAME}
    for line in lines:
        name = line.pop("bench")
        figures[name] = line
    figures["load_avg_1m"] = load
    return figures


TOKEN = "bench-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Service:
    """``broadcaster serve`` in a child process, once it serves."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DUAL_WRITE_", "ADAPTER_", "BREAKER_", "SUPABASE"))
        }
        env.update(
            STORE_URL=f"sqlite:///{tmp / 'bench.db'}",
            ADMIN_PORT=str(self.port),
            WEBSOCKET_PORT=str(free_port()),
            BROADCASTER_ADMIN_TOKEN=TOKEN,
            RECONCILE_INTERVAL_S="0",
            LOG_LEVEL="WARNING",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "serve"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("metrics"):
                break
        else:
            raise RuntimeError("serve did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _events(n: int, start: int) -> list[dict[str, Any]]:
    return [
        {"category": "SYSTEM", "event_type": "bench", "payload": {"i": start + i}, "key": str(i)}
        for i in range(n)
    ]


async def _ingest(url: str, seconds: float, clients: int, batch: int) -> dict[str, Any]:
    counter = [0]
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as http:
            while time.monotonic() < stop_at:
                body: Any = _events(batch, counter[0]) if batch > 1 else _events(1, counter[0])[0]
                started = time.perf_counter()
                response = await http.post("/events", json=body)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                counter[0] += batch

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "batch": batch,
        "events": counter[0],
        "events_per_s": round(counter[0] / elapsed),
        "requests_per_s": round(len(latencies) / elapsed),
        "request_p50_ms": round(_quantile(latencies, 0.5) * 1000, 2),
        "request_p99_ms": round(_quantile(latencies, 0.99) * 1000, 2),
    }


async def _admin_requests(url: str, rounds: int) -> dict[str, dict[str, float]]:
    timings: dict[str, list[float]] = {"health": [], "stats": [], "config": [], "patch": []}
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as http:
        for i in range(rounds):
            for name, call in (
                ("health", lambda: http.get("/health")),
                ("stats", lambda: http.get("/stats")),
                ("config", lambda: http.get("/config")),
                (
                    "patch",
                    lambda i=i: http.patch(  # type: ignore[misc]
                        "/config/categories/DEBUG", json={"percentage": i % 100}
                    ),
                ),
            ):
                started = time.perf_counter()
                response = await call()
                timings[name].append(time.perf_counter() - started)
                response.raise_for_status()
            await asyncio.sleep(0.02)
    return {
        name: {
            "p50_ms": round(_quantile(values, 0.5) * 1000, 2),
            "p99_ms": round(_quantile(values, 0.99) * 1000, 2),
            "mean_ms": round(statistics.fmean(values) * 1000, 2),
        }
        for name, values in timings.items()
    }


async def measure(seconds: float, clients: int, batch: int, rounds: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-admin-") as tmp:
        service = Service(Path(tmp))
        try:
            progress("ingest, one event per request")
            single = await _ingest(service.url, seconds, clients, 1)
            results.append({"bench": "ingest_single", **single})
            progress("ingest, batched")
            batched = await _ingest(service.url, seconds, clients, batch)
            results.append({"bench": "ingest_batched", **batched})
            progress("admin latency, idle then under load")
            idle = await _admin_requests(service.url, rounds)
            load = asyncio.create_task(_ingest(service.url, seconds * 2, max(1, clients), batch))
            await asyncio.sleep(0.5)
            busy = await _admin_requests(service.url, rounds)
            during = await load
            results.append(
                {
                    "bench": "admin_latency",
                    "idle": idle,
                    "under_load": busy,
                    "load_events_per_s": during["events_per_s"],
                }
            )
        finally:
            service.stop()
    return results
