"""Helpers shared by the benchmark scenarios: progress on stderr, child
processes, per-process CPU, percentiles, time bins, pacing and result tables.

Everything here is small and synchronous except :class:`TokenBucket.take`;
the pure parts (percentiles, bins, the bucket's arithmetic, flattening and the
markdown table) are unit-tested in ``tests/test_loadtests.py``.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from broadcaster.spawn import free_port

__all__ = [
    "REALTIME_KEY",
    "ROOT",
    "Bins",
    "ProcessCpu",
    "TokenBucket",
    "flatten",
    "free_port",
    "load_average",
    "markdown_table",
    "percentile",
    "pin_cpus",
    "pin_helper",
    "progress",
    "python_env",
    "running_loop_name",
    "spawn",
    "summarise",
]

#: The repository root: ``python -m loadtests`` needs it on ``sys.path``.
ROOT = Path(__file__).resolve().parents[1]

#: The ``apikey`` of the local Realtime server in a run: made up by the first
#: process and inherited by its children as ``SUPABASE_KEY`` (:func:`python_env`),
#: so the server accepts the broadcaster and the subscribers and nothing else.
REALTIME_KEY = os.environ.get("SUPABASE_KEY") or secrets.token_urlsafe(32)


def progress(message: str) -> None:
    """One progress line on stderr (stdout carries only the figures)."""
    print(f"[loadtests {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile ``p`` (0-100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[index]


def summarise(values: Sequence[float], scale: float = 1.0, digits: int = 3) -> dict[str, float]:
    """``p50``/``p99``/``p999``/``max`` of ``values`` times ``scale``, rounded."""
    if not values:
        nan = float("nan")
        return {"p50": nan, "p99": nan, "p999": nan, "max": nan}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(p / 100 * n) - 1))]

    return {
        "p50": round(rank(50) * scale, digits),
        "p99": round(rank(99) * scale, digits),
        "p999": round(rank(99.9) * scale, digits),
        "max": round(ordered[-1] * scale, digits),
    }


class Bins:
    """Values grouped into fixed-width time bins (``width`` seconds).

    ``add(t, value)`` puts ``value`` in the bin of wall time ``t`` (``values_of(t)``
    is that bin's list, to append to);
    ``rows(origin)`` gives ``[start_s, count, p50, p99]`` per bin, ``start_s``
    relative to ``origin``, with empty bins in between filled with zeros.
    """

    def __init__(self, width: float) -> None:
        if width <= 0:
            raise ValueError("bin width must be positive")
        self.width = width
        self._bins: dict[int, list[float]] = {}

    def add(self, t: float, value: float) -> None:
        index = int(t // self.width)
        values = self._bins.get(index)
        if values is None:
            self._bins[index] = [value]
        else:
            values.append(value)

    def add_many(self, t: float, values: Iterable[float]) -> None:
        self._bins.setdefault(int(t // self.width), []).extend(values)

    def values_of(self, t: float) -> list[float]:
        """The list of values of wall time ``t``'s bin (created empty): a
        value appended to it is added to the bin. For callers adding many
        values per bin, who keep the list while ``t // width`` stays the same."""
        return self._bins.setdefault(int(t // self.width), [])

    def rows(self, origin: float | None = None) -> list[list[float]]:
        if not self._bins:
            return []
        first, last = min(self._bins), max(self._bins)
        base = origin if origin is not None else first * self.width
        out: list[list[float]] = []
        for index in range(first, last + 1):
            values = self._bins.get(index, [])
            out.append(
                [
                    round(index * self.width - base, 3),
                    len(values),
                    round(percentile(values, 50), 4) if values else 0.0,
                    round(percentile(values, 99), 4) if values else 0.0,
                ]
            )
        return out


class TokenBucket:
    """Paces producers to ``rate`` events/s (``None``: no pacing).

    Tokens accrue continuously up to ``burst``; :meth:`take` takes as many as
    are there (up to ``max_n``), so at low rates events go one per call and at
    high rates batches form on their own while a producer waits for its
    previous call. With none there, a producer reserves the next token and
    sleeps until it exists: each waiting producer has its own slot, so a token
    wakes one producer, not all of them (the measured process runs the
    producers, so their wake-ups count in its CPU). A producer that falls
    behind gets at most ``burst`` events of catch-up: the achieved rate is then
    reported below the target rather than hidden by a later burst.
    """

    def __init__(
        self,
        rate: float | None,
        burst: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = 1.0
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        if self.rate is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def take_now(self, max_n: int) -> int:
        """Take up to ``max_n`` whole tokens without waiting; 0 if none."""
        if self.rate is None:
            return max_n
        self._refill()
        n = max(0, min(max_n, int(self._tokens)))  # none while tokens are owed
        self._tokens -= n
        return n

    def wait_s(self) -> float:
        """Seconds until one whole token is there (0 if it already is)."""
        if self.rate is None:
            return 0.0
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)

    async def take(self, max_n: int, deadline: float) -> int:
        """Wait for tokens and take up to ``max_n``; 0 once ``deadline``
        (on the bucket's clock) has passed."""
        if self._clock() >= deadline:
            return 0
        n = self.take_now(max_n)
        if n or self.rate is None:
            return n
        # Reserve the next token: the balance goes below zero by one, and this
        # producer's token exists once it is back at zero.
        self._tokens -= 1
        ready = self._clock() + -self._tokens / self.rate
        if ready > deadline:
            self._tokens += 1
            await self._sleep(max(0.0, deadline - self._clock()))
            return 0
        await self._sleep(ready - self._clock())
        return 1


def python_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python: this one, with the repository on
    ``PYTHONPATH`` (so ``-m loadtests...`` works from any directory), the
    broadcaster's logs at WARNING and the run's :data:`REALTIME_KEY`."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else ""),
        "LOG_LEVEL": "WARNING",
        "SUPABASE_KEY": REALTIME_KEY,
        **extra,
    }


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the kind of loop running (``--loop`` of a child)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


#: CPUs the helper processes (servers, subscribers, peers) are pinned to;
#: None while nothing is pinned (:func:`pin_cpus`).
_helper_cpus: set[int] | None = None


def pin_cpus() -> dict[str, list[int]] | None:
    """``--pin``: keep this process (the broadcaster's) on its lowest CPU and
    every helper process :func:`spawn` starts on the others, so that the
    scheduler does not move the broadcaster between cores as the local
    Realtime server and subscribers wake: in production those run elsewhere.
    Call before any thread starts (threads inherit the mask of the thread
    that creates them). Returns the split (the JSON's ``pinned``), or None
    with fewer than two CPUs to split or no affinity calls (not Linux)."""
    global _helper_cpus
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    os.sched_setaffinity(0, {cpus[0]})
    _helper_cpus = set(cpus[1:])
    return {"broadcaster": cpus[:1], "helpers": cpus[1:]}


def pin_helper(pid: int) -> None:
    """Put helper process ``pid`` on the helpers' CPUs, if :func:`pin_cpus`
    pinned this one. Right after its start, before it makes threads."""
    if _helper_cpus is not None:
        os.sched_setaffinity(pid, _helper_cpus)


def spawn(
    *args: str,
    stdin: bool = False,
    env: Mapping[str, str] | None = None,
    stderr: Path | None = None,
) -> subprocess.Popen[str]:
    """``python *args`` with piped stdout (and stdin if asked), stderr
    inherited (or appended to the file ``stderr``), :func:`python_env` with
    ``env`` added; on the helpers' CPUs if :func:`pin_cpus` split them."""
    log = stderr.open("ab") if stderr is not None else None
    try:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE if stdin else None,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=python_env(**(env or {})),
        )
    finally:
        if log is not None:
            log.close()  # the child has its own copy
    pin_helper(proc.pid)
    return proc


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / _TICKS


class ProcessCpu:
    """CPU seconds used by named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._start = {name: _cpu_of(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        self.used = {
            name: round(_cpu_of(pid) - self._start[name], 3) for name, pid in self.pids.items()
        }
        return self.used


def load_average() -> float:
    """The 1-minute load average (how busy the machine was when measuring)."""
    return round(os.getloadavg()[0], 2)


def syscall_us(calls: int = 20_000) -> float:
    """Microseconds per system call (``os.getppid``, the cheapest there is),
    best of three loops: what the machine charges for crossing into the
    kernel. Commits, socket writes and wake-ups are mostly such calls, so runs
    on different VMs compare only with this beside them (0.89 µs on the VM of
    2026-12-07, where every per-event figure was 2-3x the earlier ones)."""
    getppid, perf = os.getppid, time.perf_counter
    best = float("inf")
    for _ in range(3):
        started = perf()
        for _ in range(calls):
            getppid()
        best = min(best, perf() - started)
    return round(best / calls * 1e6, 3)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys; lists are left out."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif not isinstance(value, list | tuple):
            out[name] = value
    return out


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}".replace(",", " ")
        return f"{value:.4g}"
    return str(value)


def markdown_table(command: str, results: Sequence[Mapping[str, Any]]) -> str:
    """One row per figure of every result (``scenario`` names the group);
    the header names the command that produced them."""
    lines = [f"| figure (`{command}`) | value |", "|---|---|"]
    for result in results:
        scenario = result.get("scenario", "?")
        for key, value in flatten(result).items():
            if key == "scenario":
                continue
            lines.append(f"| {scenario}: {key} | {_cell(value)} |")
    return "\n".join(lines)
