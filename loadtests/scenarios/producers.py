"""``producers``: producer processes → store → ``broadcaster serve`` →
subscribers, every part a process of its own (SPEC 11).

Method. Per store (a fresh SQLite file; then a fresh database on a throwaway
PostgreSQL from pgserver, unless ``--skip-postgres``) and per rate of
``--rates``: the local Realtime server, ``broadcaster serve`` (probes off:
this measures delivery) and the benchmark subscriber (both paths, verifying
every checksum) start as processes; then ``--processes`` producer processes
(:mod:`loadtests.producer_child`) each open a ``Publisher`` on the same
``STORE_URL`` and, on one "go", publish for ``--seconds`` with ``--tasks``
concurrent tasks calling ``await publish()`` once per event, paced together
to the rate (``max``: unpaced). Events are SYSTEM (both paths, crc32).

Figures: ``published`` (calls that returned), ``delivered_per_s`` (events ÷
the time from "go" until the last of them reached the subscriber on the
slower path), ``lost`` per path (published, never received: must be 0),
duplicates, checksum mismatches, publish→receive latency per path from the
``t`` each producer put in the payload just before its call, and CPU
seconds of each process. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .._common import (
    ProcessCpu,
    free_port,
    load_average,
    progress,
    python_env,
    running_loop_name,
    spawn,
)
from .._stack import end_process
from ..bench_store import postgres_server

NAME = "producers"
HELP = "producer processes -> SQLite / PostgreSQL -> serve -> subscribers, end to end"
DEFAULTS: dict[str, Any] = {"rates": "max,1000", "seconds": 10.0, "processes": 4, "tasks": 16}
SMOKE: dict[str, Any] = {"rates": "500", "seconds": 1.0, "processes": 2, "tasks": 2}
PLOTS = False

TOKEN = "producers-bench-token-0123"
ADAPTERS = ("websocket", "realtime")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", help="comma-separated total events/s, or max")
    parser.add_argument("--seconds", type=float, help="publishing time per run")
    parser.add_argument("--processes", type=int, help="producer processes")
    parser.add_argument("--tasks", type=int, help="concurrent publish() callers per process")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")


def _child(args: list[str], env: dict[str, str], *, stdin: bool = False) -> subprocess.Popen[str]:
    """``python *args`` in ``env``, stdout piped (stdin too if asked)."""
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def _readline(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


async def _measure(store_url: str, rate: float | None, args: argparse.Namespace) -> dict[str, Any]:
    rt_port, ws_port, admin_port = free_port(), free_port(), free_port()
    rt_url = f"http://127.0.0.1:{rt_port}"
    env = python_env(
        STORE_URL=store_url,
        WEBSOCKET_PORT=str(ws_port),
        ADMIN_PORT=str(admin_port),
        SUPABASE_URL=rt_url,
        BROADCASTER_ADMIN_TOKEN=TOKEN,
        RECONCILE_PROBE="false",
        RECONCILE_INTERVAL_S="0",
        EVENT_LOOP=running_loop_name(),
    )
    with ExitStack() as procs:
        server = spawn("-m", "broadcaster.realtime_server", "--port", str(rt_port))
        procs.callback(end_process, server)
        if not (await asyncio.to_thread(_readline, server)).strip():
            raise RuntimeError("the Realtime server did not start")
        serve = _child(["-m", "broadcaster", "--env-file", "/dev/null", "serve"], env)
        procs.callback(end_process, serve)
        lines: list[str] = []
        while not lines or not lines[-1].startswith("metrics"):
            line = await asyncio.to_thread(_readline, serve)
            if not line:
                raise RuntimeError(f"serve did not start: {''.join(lines)}")
            lines.append(line)
        sub = spawn(
            "-m",
            "loadtests.subscriber",
            "--ws",
            f"ws://127.0.0.1:{ws_port}/events",
            "--realtime",
            rt_url,
            "--control",
            "--loop",
            running_loop_name(),
            stdin=True,
        )
        procs.callback(end_process, sub)
        _send(sub, "start")
        if (await asyncio.to_thread(_readline, sub)).strip() != "ready":
            raise RuntimeError("the subscriber did not start")
        per_process = 0.0 if rate is None else rate / args.processes
        producers = []
        for _ in range(args.processes):
            proc = _child(
                [
                    "-m",
                    "loadtests.producer_child",
                    "--rate",
                    str(per_process),
                    "--seconds",
                    str(args.seconds),
                    "--tasks",
                    str(args.tasks),
                    "--loop",
                    running_loop_name(),
                ],
                env,
                stdin=True,
            )
            procs.callback(end_process, proc)
            producers.append(proc)
        for proc in producers:
            if (await asyncio.to_thread(_readline, proc)).strip() != "ready":
                raise RuntimeError("a producer did not start")
        cpu = ProcessCpu(
            {
                "serve": serve.pid,
                "realtime_server": server.pid,
                "subscriber": sub.pid,
                **{f"producer_{i}": p.pid for i, p in enumerate(producers)},
            }
        )
        cpu.start()
        go = time.time()
        for proc in producers:
            _send(proc, "go")
        results = [json.loads(await asyncio.to_thread(_readline, p)) for p in producers]
        published = sum(r["published"] for r in results)
        _send(sub, f"wait run {published} 120 {','.join(ADAPTERS)}")
        waited = json.loads(await asyncio.to_thread(_readline, sub))
        used = cpu.stop()
        _send(sub, "report")
        report = json.loads(await asyncio.to_thread(_readline, sub))
    tracks = {a: report.get(f"run/{a}", {}) for a in ADAPTERS}
    last = max(t.get("last_t", go) for t in tracks.values())
    figures: dict[str, Any] = {
        "rate": "max" if rate is None else rate,
        "published": published,
        "publish_errors": sum(r["errors"] for r in results),
        "published_per_s": round(published / max(r["seconds"] for r in results)),
        "delivered_per_s": round(published / (last - go)) if waited["reached"] else 0,
        "lost": {a: published - tracks[a].get("received", 0) for a in ADAPTERS},
        "duplicates": {a: tracks[a].get("duplicates", 0) for a in ADAPTERS},
        "mismatches": report.get("mismatches", {}),
        "publish_ms": {
            "p50_max": max(r["publish_p50_ms"] for r in results),
            "p99_max": max(r["publish_p99_ms"] for r in results),
        },
        "latency_ms": {
            a: {k: tracks[a].get(k) for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms")}
            for a in ADAPTERS
        },
        "cpu_s": used,
        "serve_cpu_us_per_event": round(used["serve"] / published * 1e6, 1) if published else 0,
    }
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    rates = [None if r == "max" else float(r) for r in str(args.rates).split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="loadtests-producers-") as tmp:
        for i, rate in enumerate(rates):
            progress(f"SQLite, rate {rate or 'max'}: {args.processes} producer processes")
            figures = await _measure(f"sqlite:///{Path(tmp) / f'p{i}.db'}", rate, args)
            progress(f"sqlite: {figures}")
            runs.append({"store": "sqlite", **figures})
        server = None if args.skip_postgres else await asyncio.to_thread(postgres_server)
        if server is not None:
            try:
                import psycopg  # noqa: PLC0415 - only with PostgreSQL

                for i, rate in enumerate(rates):
                    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
                        conn.execute(f"CREATE DATABASE producers_{i}")
                    progress(f"PostgreSQL, rate {rate or 'max'}")
                    figures = await _measure(server.get_uri(f"producers_{i}"), rate, args)
                    progress(f"postgresql: {figures}")
                    runs.append({"store": "postgresql", **figures})
            finally:
                server.cleanup()
    return {
        "scenario": NAME,
        "processes": args.processes,
        "tasks": args.tasks,
        "seconds": args.seconds,
        "runs": runs,
        "load_avg_1m": load,
        "cpus": os.cpu_count(),
    }
