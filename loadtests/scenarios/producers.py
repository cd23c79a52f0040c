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

Several instances (``--instances N``, PostgreSQL only: one instance is all
a SQLite store can have): N ``serve`` processes share the store, each with
a subscriber process of its own on its WebSocket path; the first subscriber
also listens to Realtime, which exactly one instance (the lease holder)
writes to. ``lost`` and ``delivered_per_s`` then cover every subscriber.
``--kill-holder-at S`` SIGKILLs the lease holder S seconds after "go":
``realtime_gap_s`` is the longest stretch with no Realtime delivery (bins of
0.1 s), the takeover as a subscriber sees it; ``lost`` must still be 0 on
every surviving path, and Realtime duplicates are what the new holder
re-sent.
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
from .._stores import postgres_server

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
    parser.add_argument(
        "--instances", type=int, default=1, help="serve processes on the store (>1: PostgreSQL)"
    )
    parser.add_argument("--lease-s", type=float, default=5.0, help="INSTANCE_LEASE_S")
    parser.add_argument(
        "--kill-holder-at", type=float, help="SIGKILL the Realtime lease holder S s after go"
    )


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


def _holder(admin_port: int) -> str:
    """The Realtime lease holder, as instance ``admin_port`` sees it."""
    import httpx  # noqa: PLC0415 - only with several instances

    answer = httpx.get(
        f"http://127.0.0.1:{admin_port}/instances",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["lease_holder"])


def _longest_gap(bins: list[list[float]], since: float, until: float) -> float:
    """The longest run of empty 0.1 s bins between ``since`` and ``until``."""
    filled = sorted(b[0] for b in bins if b[1] and since <= b[0] <= until)
    edges = [since, *filled, until]
    return round(max(b - a for a, b in zip(edges, edges[1:], strict=False)), 2)


async def _start_serve(env: dict[str, str]) -> subprocess.Popen[str]:
    serve = _child(["-m", "broadcaster", "--env-file", "/dev/null", "serve"], env)
    lines: list[str] = []
    while not lines or not lines[-1].startswith("metrics"):
        line = await asyncio.to_thread(_readline, serve)
        if not line:
            end_process(serve)
            raise RuntimeError(f"serve did not start: {''.join(lines)}")
        lines.append(line)
    return serve


async def _measure(store_url: str, rate: float | None, args: argparse.Namespace) -> dict[str, Any]:
    rt_port = free_port()
    rt_url = f"http://127.0.0.1:{rt_port}"
    base = {
        "STORE_URL": store_url,
        "SUPABASE_URL": rt_url,
        "BROADCASTER_ADMIN_TOKEN": TOKEN,
        "RECONCILE_PROBE": "false",
        "RECONCILE_INTERVAL_S": "0",
        "EVENT_LOOP": running_loop_name(),
        "INSTANCE_LEASE_S": str(args.lease_s),
    }
    env = python_env(**base)
    instances = [
        (f"i{n}", free_port(), free_port()) for n in range(args.instances)
    ]  # (INSTANCE_ID, WEBSOCKET_PORT, ADMIN_PORT)
    with ExitStack() as procs:
        server = spawn("-m", "broadcaster.realtime_server", "--port", str(rt_port))
        procs.callback(end_process, server)
        if not (await asyncio.to_thread(_readline, server)).strip():
            raise RuntimeError("the Realtime server did not start")
        serves: dict[str, subprocess.Popen[str]] = {}
        for name, ws_port, admin_port in instances:
            serves[name] = await _start_serve(
                python_env(
                    **base,
                    INSTANCE_ID=name,
                    WEBSOCKET_PORT=str(ws_port),
                    ADMIN_PORT=str(admin_port),
                )
            )
            procs.callback(end_process, serves[name])
        subs = []
        for n, (name, ws_port, _) in enumerate(instances):
            paths = ["--realtime", rt_url] if n == 0 else []
            sub = spawn(
                "-m",
                "loadtests.subscriber",
                "--ws",
                f"ws://127.0.0.1:{ws_port}/events",
                *paths,
                "--control",
                "--bin",
                "0.1",
                "--loop",
                running_loop_name(),
                stdin=True,
            )
            procs.callback(end_process, sub)
            _send(sub, "start")
            if (await asyncio.to_thread(_readline, sub)).strip() != "ready":
                raise RuntimeError("a subscriber did not start")
            subs.append((name, sub, ADAPTERS if n == 0 else ("websocket",)))
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
        holder = await asyncio.to_thread(_holder, instances[0][2]) if len(instances) > 1 else None
        cpu = ProcessCpu(
            {
                **{f"serve_{name}": proc.pid for name, proc in serves.items()},
                "realtime_server": server.pid,
                **{f"subscriber_{name}": sub.pid for name, sub, _ in subs},
                **{f"producer_{i}": p.pid for i, p in enumerate(producers)},
            }
        )
        cpu.start()
        go = time.time()
        for proc in producers:
            _send(proc, "go")
        killed_at = None
        if args.kill_holder_at is not None and holder is not None:
            await asyncio.sleep(args.kill_holder_at)
            serves[holder].kill()
            killed_at = time.time()
        results = [json.loads(await asyncio.to_thread(_readline, p)) for p in producers]
        published = sum(r["published"] for r in results)
        reports = {}
        for name, sub, adapters in subs:
            if name == holder and killed_at is not None:
                adapters = tuple(a for a in adapters if a != "websocket")
            _send(sub, f"wait run {published} 120 {','.join(adapters) or 'realtime'}")
            await asyncio.to_thread(_readline, sub)
        used = cpu.stop()
        for name, sub, _ in subs:
            _send(sub, "report")
            reports[name] = json.loads(await asyncio.to_thread(_readline, sub))
    tracks = {
        f"{name}/{a}": reports[name].get(f"run/{a}", {})
        for name, _, adapters in subs
        for a in adapters
        if not (name == holder and killed_at is not None and a == "websocket")
    }
    last = max(t.get("last_t", go) for t in tracks.values())
    first_name = instances[0][0]
    figures: dict[str, Any] = {
        "rate": "max" if rate is None else rate,
        "instances": len(instances),
        "published": published,
        "publish_errors": sum(r["errors"] for r in results),
        "published_per_s": round(published / max(r["seconds"] for r in results)),
        "delivered_per_s": round(published / (last - go)) if last > go else 0,
        "lost": {k: published - t.get("received", 0) for k, t in tracks.items()},
        "duplicates": {k: t.get("duplicates", 0) for k, t in tracks.items()},
        "mismatches": {name: r.get("mismatches", {}) for name, r in reports.items()},
        "publish_ms": {
            "p50_max": max(r["publish_p50_ms"] for r in results),
            "p99_max": max(r["publish_p99_ms"] for r in results),
        },
        "latency_ms": {
            k: {q: t.get(q) for q in ("p50_ms", "p99_ms", "p999_ms", "max_ms")}
            for k, t in tracks.items()
        },
        "cpu_s": used,
        "serve_cpu_us_per_event": {
            name: round(used[f"serve_{name}"] / published * 1e6, 1) if published else 0
            for name in serves
        },
    }
    if killed_at is not None:
        realtime = tracks[f"{first_name}/realtime"]
        figures["killed_holder"] = holder
        figures["lease_s"] = args.lease_s
        figures["realtime_gap_s"] = _longest_gap(
            realtime.get("bins", []), killed_at - 1.0, realtime.get("last_t", killed_at)
        )
    return figures


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    rates = [None if r == "max" else float(r) for r in str(args.rates).split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="loadtests-producers-") as tmp:
        for i, rate in enumerate(rates if args.instances == 1 else []):
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
        "instances": args.instances,
        "seconds": args.seconds,
        "runs": runs,
        "load_avg_1m": load,
        "cpus": os.cpu_count(),
    }
