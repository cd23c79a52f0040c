"""``receipts``: how fast ``POST /receipts`` takes consumers' receipts.

Method. A broadcaster (adapters that acknowledge at once) with its admin API
runs in this process on SQLite, then on a throwaway PostgreSQL (pgserver,
unless ``--skip-postgres`` or not installed). ``--events`` events are
published first, routed to both adapters. A client in another process (one
HTTP connection, as a consumer's reporter has) then posts a receipt for every
(event, adapter) pair in batches of ``--batch``, each batch waiting for the
previous answer. ``receipts_per_s`` is receipts posted ÷ wall time of the
posting, answers included; the client checks every answer accepted its whole
batch. Then the same receipts, as another consumer, go straight to
``Store.record_reports`` in batches of the same size, one after the other:
``store_only_per_s`` is what the store alone takes, the ceiling of the HTTP
figure. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings
from broadcaster.store import store_from_url

from .._common import load_average, progress, python_env
from .._stores import postgres_server

NAME = "receipts"
HELP = "POST /receipts throughput into SQLite and PostgreSQL from one client"
DEFAULTS: dict[str, Any] = {"events": 100_000, "batch": 1000}
SMOKE: dict[str, Any] = {"events": 2_000, "batch": 1000}
PLOTS = False

TOKEN = "receipts-bench-token-0123"

_CLIENT = r"""
import json, sys, time
import httpx
url, token, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = json.loads(sys.stdin.read())
bodies = []
for i in range(0, len(pairs), batch):
    bodies.append(json.dumps([
        {"sequence_id": s, "adapter": a, "checksum": c, "consumer": "bench"}
        for s, a, c in pairs[i:i + batch]
    ]).encode())
headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
    client.post("/receipts", content=b"[]").raise_for_status()  # connect first
    started = time.perf_counter()
    accepted = 0
    for body in bodies:
        answer = client.post("/receipts", content=body)
        answer.raise_for_status()
        accepted += answer.json()["accepted"]
    seconds = time.perf_counter() - started
print(json.dumps({"accepted": accepted, "seconds": seconds}))
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="events published (two receipts each)")
    parser.add_argument("--batch", type=int, help="receipts per request (default 1000)")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite only")


async def _measure(url: str, events: int, batch: int) -> dict[str, Any]:
    settings = load_settings(env_file=None, reconcile_interval_s=0)
    b = Broadcaster(
        settings,
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=store_from_url(url),
    )
    async with b, AdminServer(create_app(b, TokenSet.of({"bench": TOKEN})), port=0) as server:
        pairs: list[tuple[int, str, str]] = []
        for start in range(0, events, 1000):
            n = min(1000, events - start)
            receipts = await b.publish_many(
                [
                    {"category": "CRITICAL", "event_type": "e", "payload": {"i": start + i}}
                    for i in range(n)
                ]
            )
            pairs += [(r.sequence_id, a, r.checksum.value) for r in receipts for a in r.routed_to]
        await b.flush(timeout=60)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            server.url,
            TOKEN,
            str(batch),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=python_env(),
        )
        out, _ = await proc.communicate(json.dumps(pairs).encode())
        if proc.returncode != 0:
            raise RuntimeError(f"the receipts client failed (exit code {proc.returncode})")
        result = json.loads(out)
        stored = (await b.store.stats()).receipts
        reports = [(s, a, c, "direct", 1, 1, True) for s, a, c in pairs]
        started = time.perf_counter()
        for i in range(0, len(reports), batch):
            await b.store.record_reports(reports[i : i + batch])
        direct_s = time.perf_counter() - started
    if result["accepted"] != len(pairs) or stored != len(pairs):
        raise RuntimeError(
            f"{len(pairs)} receipts posted, {result['accepted']} accepted, {stored} stored"
        )
    return {
        "receipts": len(pairs),
        "seconds": round(result["seconds"], 3),
        "receipts_per_s": round(len(pairs) / result["seconds"]),
        "store_only_per_s": round(len(pairs) / direct_s),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = load_average()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="loadtests-receipts-") as tmp:
        progress(f"SQLite: {args.events} events, receipts in batches of {args.batch}")
        figures["sqlite"] = await _measure(
            f"sqlite:///{Path(tmp) / 'r.db'}", args.events, args.batch
        )
        progress(f"sqlite: {figures['sqlite']}")
        server = None if args.skip_postgres else await asyncio.to_thread(postgres_server)
        if server is not None:
            try:
                progress(f"PostgreSQL: {args.events} events")
                figures["postgresql"] = await _measure(server.get_uri(), args.events, args.batch)
                progress(f"postgresql: {figures['postgresql']}")
            finally:
                server.cleanup()
    return {
        "scenario": NAME,
        "events": args.events,
        "batch": args.batch,
        **figures,
        "load_avg_1m": load,
    }
