"""Store and reconciliation benchmarks (issue 3), printed as JSON lines:

* ``store_write``: append (batches of ``--batch``) then mark ACKED for two
  adapters, per backend (memory, SQLite, PostgreSQL via pgserver if installed);
* ``reconcile``: reconciliation of ``--events`` stored events (2 adapters,
  one receipt each), run in a fresh process so its peak RSS is its own;
* ``publish``: publish rate through the broadcaster (null adapters) with the
  store on (SQLite) and off (memory), batched and with concurrent producers.

    python -m loadtests.bench_store --events 200000
    python -m loadtests.bench_store --events 1000000 --skip-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.core import Broadcaster
from broadcaster.events import EventFactory, EventRecord
from broadcaster.logs import configure_logging
from broadcaster.reconcile.matching import MatchPolicy, Outcome
from broadcaster.reconcile.reconciler import Reconciler
from broadcaster.settings import load_settings
from broadcaster.store import ConsumerReceipt, DeliveryState, Store, store_from_url

from ._common import python_env

__all__ = [
    "main",
    "postgres_server",
    "publish_figures",
    "reconcile_figures",
    "store_write_figures",
]

BOTH = ("websocket", "realtime")


class NullAdapter(MemoryAdapter):
    """Acknowledges at once and keeps nothing: measures everything but I/O."""

    async def send(self, batch: Sequence[EventRecord]) -> None:
        return None


def _drafts(n: int) -> list[Any]:
    factory = EventFactory()
    return [
        factory.draft("SYSTEM", "bench.tick", {"i": i, "host": "h1", "v": 0.5}, key=f"k{i % 1000}")
        for i in range(n)
    ]


async def _fill(store: Store, n: int, batch: int, receipts: bool) -> tuple[float, float]:
    drafts = _drafts(n)
    append_s = mark_s = 0.0
    for start in range(0, n, batch):
        chunk = drafts[start : start + batch]
        t0 = time.perf_counter()
        records = await store.append([(d, BOTH) for d in chunk])
        t1 = time.perf_counter()
        ids = [r.sequence_id for r in records]
        await asyncio.gather(*(store.mark(a, ids, DeliveryState.ACKED) for a in BOTH))
        t2 = time.perf_counter()
        append_s += t1 - t0
        mark_s += t2 - t1
        if receipts:
            now_ms = int(time.time() * 1000)
            await store.record_receipts(
                [
                    ConsumerReceipt(
                        r.sequence_id,
                        a,
                        r.event_type,
                        now_ms,
                        r.checksum,
                        True,
                        payload_keys=r.payload_keys,
                    )
                    for r in records
                    for a in BOTH
                ]
            )
    return append_s, mark_s


async def store_write_figures(url: str, name: str, n: int, batch: int) -> dict[str, Any]:
    async with store_from_url(url) as store:
        append_s, mark_s = await _fill(store, n, batch, receipts=False)
    return {
        "bench": "store_write",
        "backend": name,
        "events": n,
        "batch": batch,
        "append_events_per_s": round(n / append_s),
        "mark_state_changes_per_s": round(2 * n / mark_s),
    }


async def publish_figures(store_url: str, n: int, batch: int, producers: int) -> dict[str, Any]:
    settings = load_settings(env_file=None, store_url=store_url, log_level="WARNING")
    adapters = [NullAdapter("websocket"), NullAdapter("realtime")]
    result: dict[str, Any] = {"bench": "publish", "store": store_url.split(":")[0]}
    async with Broadcaster(settings, adapters=adapters) as b:
        b.set_routing(b.routing.with_override("all"))
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            await b.publish_many(
                [
                    {"category": "SYSTEM", "event_type": "bench", "payload": {"i": start + k}}
                    for k in range(batch)
                ]
            )
        await b.flush()
        result[f"publish_many_{batch}_per_s"] = round(n / (time.perf_counter() - t0))

        async def producer(p: int) -> None:
            for i in range(n // producers):
                await b.publish("SYSTEM", "bench", {"p": p, "i": i})

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(p) for p in range(producers)))
        await b.flush()
        result[f"publish_{producers}_producers_per_s"] = round(n / (time.perf_counter() - t0))
    return result


def _peak_rss_mib() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across
    # fork/exec, so a child would report the parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


async def _reconcile_only(url: str) -> dict[str, Any]:
    async with store_from_url(url) as store:
        policy = MatchPolicy.from_seconds(5, 30, 300)
        reconciler = Reconciler(store, policy, clock=lambda: time.time() + 60)
        t0 = time.perf_counter()
        report = await reconciler.run()
        seconds = time.perf_counter() - t0
    return {
        "bench": "reconcile",
        "pairs": sum(report.counts.values()),
        "matched": report.total(Outcome.MATCHED),
        "seconds": round(seconds, 4),
        "pairs_per_s": round(sum(report.counts.values()) / seconds),
        "peak_rss_mib": _peak_rss_mib(),
    }


def postgres_server() -> Any | None:
    """A throwaway PostgreSQL (pgserver), or None if pgserver is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns without XDG_RUNTIME_DIR
            import pgserver  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    # Not under a 0700 directory: as root, pgserver runs the server as another user.
    base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    base.chmod(0o755)
    return pgserver.get_server(base / "data", cleanup_mode="delete")


async def reconcile_figures(events: int, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fill a SQLite store in ``tmp`` with ``events`` events (2 adapters, acked,
    one receipt each), then reconcile it in a fresh process: (fill, reconcile)."""
    recon_url = f"sqlite:///{tmp / 'reconcile.db'}"
    async with store_from_url(recon_url) as store:
        t0 = time.perf_counter()
        await _fill(store, events, 1000, receipts=True)
        fill_s = time.perf_counter() - t0
    fill = {"bench": "reconcile_fill", "events": events, "seconds": round(fill_s, 1)}
    out = await asyncio.to_thread(
        lambda: (
            subprocess.run(
                [sys.executable, "-m", "loadtests.bench_store", "--reconcile-only", recon_url],
                check=True,
                capture_output=True,
                text=True,
                env=python_env(),
            ).stdout
        )
    )
    recon: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return fill, recon


async def _run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp_name:
        tmp = Path(tmp_name)
        n_write = min(args.events, 200_000)
        print(
            json.dumps(await store_write_figures("memory://", "memory", n_write, args.batch)),
            flush=True,
        )
        sqlite_url = f"sqlite:///{tmp / 'write.db'}"
        print(
            json.dumps(await store_write_figures(sqlite_url, "sqlite", n_write, args.batch)),
            flush=True,
        )
        if not args.skip_postgres:
            server = await asyncio.to_thread(postgres_server)
            if server is not None:
                try:
                    result = await store_write_figures(
                        server.get_uri(), "postgresql", n_write // 2, args.batch
                    )
                    print(json.dumps(result), flush=True)
                finally:
                    server.cleanup()
        fill, recon = await reconcile_figures(args.events, tmp)
        print(json.dumps(fill), flush=True)
        print(json.dumps(recon), flush=True)
        n_pub = min(args.events, 100_000)
        for url in ("memory://", f"sqlite:///{tmp / 'publish.db'}"):
            print(json.dumps(await publish_figures(url, n_pub, 100, 16)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--reconcile-only", metavar="STORE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure_logging("console", "WARNING")
    if args.reconcile_only:
        print(json.dumps(asyncio.run(_reconcile_only(args.reconcile_only))), flush=True)
        return 0
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
