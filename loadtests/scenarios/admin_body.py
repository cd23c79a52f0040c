"""``admin-body``: what a large request body costs the service's event loop.

Method. One broadcaster (memory store, adapters that acknowledge at once)
with its admin API, in this process; a client in another process sends
``POST /events`` with a body of ``--mib`` MiB of JSON, whole, as an attacker
would, in each of these cases:

- ``anonymous``: no token (401);
- ``over_cap``: a valid token, but the body is over ``ADMIN_MAX_BODY_BYTES``
  (413);
- ``accepted``: for scale, a valid token and a body just under the cap of
  ``--accepted-mib`` MiB, which the service does read and parse (422: a list
  of too many events, counted before validation).

For each case: the event loop thread's CPU time during the request beyond
what the same wall time costs idle (``loop_cpu_ms``), the longest the loop
was kept from a 1 ms ticker (``max_loop_lag_ms``), and how far the process's
resident memory rose above its level before the request (``rss_growth_mib``,
sampled by the ticker). Each case runs ``--repeat`` times; the figures are
the maxima. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore

from .._common import load_average, progress, python_env

NAME = "admin-body"
HELP = "loop time and memory an anonymous or oversized request body costs the admin API"
DEFAULTS: dict[str, Any] = {"mib": 26.0, "accepted_mib": 7.5, "repeat": 5}
SMOKE: dict[str, Any] = {"mib": 1.0, "accepted_mib": 0.5, "repeat": 1}
PLOTS = False

TOKEN = "admin-body-token-0123456789"

#: The client: a separate process, so its work is not the loop thread's.
_CLIENT = r"""
import socket, sys
host, port, size, token = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
body = b"[" + b",".join([b"{}"] * (size // 3)) + b"]"
auth = f"Authorization: Bearer {token}\r\n" if token else ""
head = (f"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
print("ready", flush=True)
sys.stdin.readline()
with socket.create_connection((host, port)) as s:
    try:
        s.sendall(head + body)
    except OSError:
        pass  # the server answered and closed before taking it all: the point
    reply = b""
    try:
        while chunk := s.recv(65536):
            reply += chunk
    except OSError:
        pass
print(reply.split(b"\r\n", 1)[0].decode(errors="replace"))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mib", type=float, help="size of the large body (default 26)")
    parser.add_argument(
        "--accepted-mib", type=float, help="size of the body under the cap (default 7.5)"
    )
    parser.add_argument("--repeat", type=int, help="runs of each case (default 5)")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _Ticker:
    """A 1 ms ticker on the loop: the longest gap between ticks, and the
    highest resident memory seen at a tick."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.max_rss_kib = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.max_rss_kib = max(self.max_rss_kib, _rss_kib())
            last = now

    def start(self) -> None:
        self.max_gap, self.max_rss_kib = 0.0, _rss_kib()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _send(
    ticker: _Ticker, host: str, port: int, size: int, token: str
) -> tuple[str, float, float, float]:
    """One request from a child process that builds its body first:
    (status line, loop CPU s, wall s, resident KiB before) from the moment it
    is told to send until its answer is back."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CLIENT,
        host,
        str(port),
        str(size),
        token,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=python_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    await proc.stdout.readline()  # "ready": the body is built
    ticker.start()
    before = ticker.max_rss_kib
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    proc.stdin.write(b"go\n")
    status = (await proc.stdout.readline()).decode().strip()
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    await ticker.stop()
    await proc.wait()
    return status, cpu, wall, before


async def _idle_cpu_per_s(ticker: _Ticker) -> float:
    """The loop thread's CPU per second of wall time with only the ticker."""
    ticker.start()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    await asyncio.sleep(0.5)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    await ticker.stop()
    return cpu / wall


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    mib = 1024 * 1024
    cap = int(max(args.accepted_mib + 0.25, 1) * mib)
    b = Broadcaster(
        load_settings(env_file=None, reconcile_interval_s=0),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    app = create_app(b, TokenSet.of({"bench": TOKEN}), max_body_bytes=cap)
    cases = {
        "anonymous": (int(args.mib * mib), ""),
        "over_cap": (int(args.mib * mib), TOKEN),
        "accepted": (int(args.accepted_mib * mib), TOKEN),
    }
    results: dict[str, Any] = {}
    async with b, AdminServer(app, port=0) as server:
        ticker = _Ticker()
        idle = await _idle_cpu_per_s(ticker)
        for name, (size, token) in cases.items():
            worst = {"loop_cpu_ms": 0.0, "max_loop_lag_ms": 0.0, "rss_growth_mib": 0.0}
            status = ""
            for _ in range(args.repeat):
                status, cpu, wall, before = await _send(
                    ticker, server.host, server.port, size, token
                )
                worst["loop_cpu_ms"] = max(worst["loop_cpu_ms"], (cpu - idle * wall) * 1000)
                worst["max_loop_lag_ms"] = max(worst["max_loop_lag_ms"], ticker.max_gap * 1000)
                worst["rss_growth_mib"] = max(
                    worst["rss_growth_mib"], (ticker.max_rss_kib - before) / 1024
                )
            progress(f"{name}: {size / mib:.1f} MiB -> {status}; worst of {args.repeat}: {worst}")
            results[name] = {
                "body_mib": round(size / mib, 2),
                "status": status,
                **{k: round(v, 3) for k, v in worst.items()},
            }
    return {
        "scenario": NAME,
        "max_body_mib": round(cap / mib, 2),
        "repeat": args.repeat,
        **results,
        "load_avg_1m": load,
    }
