"""``checksum-cost``: the share of per-event CPU spent computing checksums.

Method. The checksum is one step of :func:`broadcaster.events.seal`: the
algorithm's function from :data:`broadcaster.checksums.CHECKSUM_FUNCTIONS`
called on the event's canonical bytes (the cost of writing the 8 or 64 hex
characters into the wire bytes is left out: a few bytes of a join). Its cost
is measured on its own and divided by three denominators, from narrowest to
widest:

1. ``draft_seal``: the pure event pipeline, ``EventFactory.draft`` (validate,
   encode the payload, ULID, timestamp) plus ``seal`` (canonical bytes,
   checksum, wire bytes), for ``--events`` events of the same shape as in
   ``sustained`` (``--payload-bytes``);
2. ``publish_memory``: the whole ``publish_many`` path (batches of 100) on a
   memory store with two adapters that acknowledge at once and keep nothing —
   everything but I/O — as process CPU per event;
3. ``publish_real``: the broadcaster process's CPU per event in
   ``sustained --rate max`` conditions (both real adapters, SQLite store,
   subscribers in another process) for ``--seconds`` per algorithm.

The checksum step is timed as seal runs it, a loop of
``CHECKSUM_FUNCTIONS[algorithm](c)`` (``compute_checksum`` adds a call and a
lookup, ~30 ns, that no event pays) over the real canonical bytes of the
sealed events minus the same loop with an empty body; ``hash_only`` is the
bare ``isal_zlib.crc32``/``hashlib.sha256`` call (the functions the hot path
wraps). Steps 1-2 take CPU time of this thread/process
(``time.thread_time_ns``/``time.process_time_ns``, immune to time spent
descheduled on a shared machine) and keep the best of ``--repeat`` runs, as
``timeit`` does; the share is checksum ns ÷ denominator ns per event. Which
algorithm an event gets is set per category (``DUAL_WRITE_<CAT>_CHECKSUM``),
so in steps 1-2 the two algorithms run through the same category in turn, and
in step 3 through SYSTEM (crc32) and CRITICAL (sha256) in one broadcaster, both
routed to both adapters: everything else equal. ``checksum_ns_by_payload_bytes``
repeats the isolated checksum timing over larger payloads (and for crc32c).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from isal import isal_zlib

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.checksums import CHECKSUM_FUNCTIONS
from broadcaster.core import Broadcaster
from broadcaster.events import Category, EventFactory, EventRecord, seal
from broadcaster.settings import load_settings

from .._common import load_average, progress
from .._stack import Stack, padding
from .sustained import add_realtime_argument

NAME = "checksum-cost"
HELP = "CPU share of CRC32 and SHA256 checksums per event (isolated, memory path, real path)"
DEFAULTS: dict[str, Any] = {"events": 50_000, "seconds": 3.0, "repeat": 5, "realtime": "process"}
SMOKE: dict[str, Any] = {"events": 2_000, "seconds": 0.3, "repeat": 2, "realtime": "embedded"}
PLOTS = False

ALGORITHMS = ("crc32", "sha256")
SIZES = (64, 1024, 16_384)
CATEGORY = Category.SYSTEM
#: Real path: one category per algorithm in one broadcaster.
REAL_CATEGORIES = {Category.SYSTEM: "crc32", Category.CRITICAL: "sha256"}


class NullAdapter(MemoryAdapter):
    """Acknowledges at once and keeps nothing."""

    async def send(self, batch: Sequence[EventRecord]) -> None:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="events per isolated measurement")
    parser.add_argument("--seconds", type=float, help="real-path phase per algorithm")
    parser.add_argument("--repeat", type=int, help="repetitions; the best is kept")
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument("--skip-real", action="store_true", help="no real-adapter phases")
    add_realtime_argument(parser)


@contextmanager
def _checksum_env(algorithms: dict[Category, str]) -> Iterator[None]:
    """``DUAL_WRITE_<CAT>_CHECKSUM`` set for the settings built inside."""
    names = {f"DUAL_WRITE_{cat.value}_CHECKSUM": alg for cat, alg in algorithms.items()}
    before = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def _payloads(n: int, payload_bytes: int) -> list[dict[str, Any]]:
    pad = padding(payload_bytes)
    t = time.time()
    return [{"t": t, "phase": "run", "p": 0, "i": i, "pad": pad} for i in range(n)]


def _best_ns(repeat: int, body: Callable[[], object]) -> int:
    """Least thread CPU ns of ``repeat`` calls of ``body`` (GC off while timing)."""
    best = None
    for _ in range(repeat):
        gc.disable()
        try:
            t0 = time.thread_time_ns()
            body()
            spent = time.thread_time_ns() - t0
        finally:
            gc.enable()
        best = spent if best is None else min(best, spent)
    assert best is not None
    return best


def _checksum_ns(algorithm: str, canonical: list[bytes], repeat: int) -> tuple[float, float]:
    """(checksum step ns, as in seal(); bare hash ns) per event over ``canonical``."""

    def empty() -> None:
        for _c in canonical:
            pass

    functions = CHECKSUM_FUNCTIONS

    def step() -> None:
        for c in canonical:
            functions[algorithm](c)

    crc32, sha256 = isal_zlib.crc32, hashlib.sha256

    def bare() -> None:
        if algorithm == "crc32":
            for c in canonical:
                crc32(c)
        elif algorithm == "sha256":
            for c in canonical:
                sha256(c).digest()
        else:
            step()

    n = len(canonical)
    base = _best_ns(repeat, empty)
    return (
        max(0.0, (_best_ns(repeat, step) - base) / n),
        max(0.0, (_best_ns(repeat, bare) - base) / n),
    )


def _isolated(algorithm: str, payloads: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    factory = EventFactory(checksums={CATEGORY: algorithm})  # type: ignore[dict-item]
    n = len(payloads)
    drafts: list[Any] = []

    def draft() -> None:
        drafts[:] = [factory.draft(CATEGORY, "bench.tick", p) for p in payloads]

    records: list[EventRecord] = []

    def sealing() -> None:
        records[:] = [seal(d, i) for i, d in enumerate(drafts, 1)]

    draft_ns = _best_ns(repeat, draft) / n
    seal_ns = _best_ns(repeat, sealing) / n
    canonical = [r.canonical for r in records]
    checksum_ns, hash_ns = _checksum_ns(algorithm, canonical, repeat)
    return {
        "canonical_bytes": round(sum(map(len, canonical)) / n),
        "checksum_ns": round(checksum_ns),
        "hash_only_ns": round(hash_ns),
        "draft_ns": round(draft_ns),
        "seal_ns": round(seal_ns),
        "share_of_draft_seal": round(checksum_ns / (draft_ns + seal_ns), 4),
    }


async def _publish_memory(algorithm: str, n: int, payload_bytes: int, repeat: int) -> float:
    """Process CPU ns per event of publish_many on memory store + null adapters."""
    with _checksum_env({CATEGORY: algorithm}):
        settings = load_settings(
            env_file=None, store_url="memory://", log_level="WARNING", reconcile_interval_s=0
        )
    assert settings.checksum_algorithms()[CATEGORY] == algorithm
    adapters = [NullAdapter("websocket"), NullAdapter("realtime")]
    best = float("inf")
    async with Broadcaster(settings, adapters=adapters) as b:
        b.set_routing(b.routing.with_override("all"))
        payloads = _payloads(n, payload_bytes)
        for _ in range(repeat):
            t0 = time.process_time_ns()
            for start in range(0, n, 100):
                await b.publish_many(
                    [
                        {"category": CATEGORY.value, "event_type": "bench.tick", "payload": p}
                        for p in payloads[start : start + 100]
                    ]
                )
            await b.flush()
            best = min(best, (time.process_time_ns() - t0) / n)
    return best


async def _publish_real(args: argparse.Namespace) -> dict[str, float]:
    """Broadcaster CPU ns per event at max rate, real adapters and SQLite, per
    algorithm: one stack, each algorithm on its own category (both routed to
    both adapters by the override), one phase each."""
    out: dict[str, float] = {}
    with _checksum_env(REAL_CATEGORIES):
        async with Stack(embedded_realtime=args.realtime == "embedded") as stack:
            b = stack.broadcaster
            for cat, algorithm in REAL_CATEGORIES.items():
                assert b.settings.checksum_algorithms()[cat] == algorithm
            await stack.phase("warmup", seconds=min(0.5, args.seconds), rate=None)
            for cat, algorithm in REAL_CATEGORIES.items():
                progress(f"real path, {algorithm} ({cat.value}): max rate for {args.seconds:g}s")
                result = await stack.phase(
                    algorithm,
                    seconds=args.seconds,
                    rate=None,
                    category=cat.value,
                    payload_bytes=args.payload_bytes,
                )
                out[algorithm] = result.figures["broadcaster_cpu_us_per_event"] * 1000
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    result: dict[str, Any] = {
        "scenario": NAME,
        "events": args.events,
        "payload_bytes": args.payload_bytes,
    }
    payloads = _payloads(args.events, args.payload_bytes)
    for algorithm in ALGORITHMS:
        progress(f"isolated draft/seal/checksum, {algorithm}, {args.events} events")
        result[algorithm] = _isolated(algorithm, payloads, args.repeat)
    for algorithm in ALGORITHMS:
        progress(f"publish_many on a memory store, {algorithm}")
        cpu_ns = await _publish_memory(
            algorithm, args.events, args.payload_bytes, max(1, args.repeat // 2)
        )
        figures = result[algorithm]
        figures["publish_memory_cpu_ns"] = round(cpu_ns)
        figures["share_of_publish_memory"] = round(figures["checksum_ns"] / cpu_ns, 4)
    if not args.skip_real:
        for algorithm, cpu_ns in (await _publish_real(args)).items():
            figures = result[algorithm]
            figures["publish_real_cpu_ns"] = round(cpu_ns)
            figures["share_of_publish_real"] = round(figures["checksum_ns"] / cpu_ns, 4)
    sizes: dict[str, dict[str, int]] = {}
    for size in SIZES:
        factory = EventFactory()
        canonical = [
            seal(factory.draft(CATEGORY, "bench.tick", p), i).canonical
            for i, p in enumerate(_payloads(max(200, args.events // 20), size), 1)
        ]
        sizes[str(size)] = {
            algorithm: round(_checksum_ns(algorithm, canonical, args.repeat)[0])
            for algorithm in (*ALGORITHMS, "crc32c")
        }
    result["checksum_ns_by_payload_bytes"] = sizes
    result["load_avg_1m"] = load
    return result
