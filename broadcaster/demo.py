"""``broadcaster demo``: the whole system on embedded defaults.

Starts the broadcaster with its WebSocket fan-out server and a local
Realtime-protocol server on free ports and a fresh SQLite store, subscribes to
both paths with verifying consumers, publishes a mixed-category stream with a
progress display, and prints what was published, routed and delivered per
adapter and category, checksums verified, mismatches and lost events.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .consumer import ReceiptCollector, StoreReceiptWriter
from .core import Broadcaster
from .events import Category
from .settings import Settings

__all__ = ["DemoSummary", "run_demo"]

# Share of the demo stream per category.
_MIX: tuple[tuple[Category, float], ...] = (
    (Category.CRITICAL, 0.10),
    (Category.PERFORMANCE, 0.40),
    (Category.USER_ACTIVITY, 0.20),
    (Category.SYSTEM, 0.20),
    (Category.DEBUG, 0.10),
)
_TYPES = {
    Category.CRITICAL: ("order.created", "payment.captured"),
    Category.PERFORMANCE: ("cpu.sample", "latency.p99"),
    Category.USER_ACTIVITY: ("user.login", "page.view"),
    Category.SYSTEM: ("deploy.finished", "node.joined"),
    Category.DEBUG: ("trace.span",),
}


@dataclass
class DemoSummary:
    published: int = 0
    routed: dict[str, dict[str, int]] = field(default_factory=dict)
    delivered: dict[str, dict[str, int]] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    verified: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and not any(self.lost.values())


def _make_event(rng: random.Random, i: int) -> dict[str, Any]:
    category = rng.choices([c for c, _ in _MIX], weights=[w for _, w in _MIX])[0]
    user = f"user-{rng.randrange(500)}"
    return {
        "category": category.value,
        "event_type": rng.choice(_TYPES[category]),
        "payload": {"n": i, "user": user, "value": round(rng.random() * 100, 3), "note": "héllo"},
        "key": user,
        "source": "demo",
    }


class _Progress:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 1.0):
            return
        self.last = now
        if self.tty:
            self.out.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.out.write(text + "\n")
        self.out.flush()


async def run_demo(
    settings: Settings,
    *,
    seconds: float = 6.0,
    rate: float = 2000.0,
    out: TextIO = sys.stdout,
    seed: int = 7,
) -> DemoSummary:
    """Run the demo and print its summary table to ``out``."""
    from .consumer.realtime import RealtimeSubscriber
    from .consumer.websocket import WebSocketSubscriber

    rng = random.Random(seed)
    summary = DemoSummary()
    progress = _Progress(out)
    with tempfile.TemporaryDirectory(prefix="broadcaster-demo-") as tmp:
        demo_settings = settings.model_copy(
            update={"websocket_port": 0, "store_url": f"sqlite:///{Path(tmp) / 'demo.db'}"}
        )
        routed_ids: dict[str, set[int]] = defaultdict(set)
        async with Broadcaster(demo_settings) as b:
            ws_url = b.adapters["websocket"].url  # type: ignore[attr-defined]
            rt_url = b.local_realtime_url or demo_settings.supabase_url or ""
            key = (
                demo_settings.supabase_key.get_secret_value()
                if demo_settings.supabase_key
                else None
            )
            out.write(
                f"broadcaster demo: websocket {ws_url} | realtime {rt_url} | "
                f"store {demo_settings.store_url}\n"
            )
            receipts = StoreReceiptWriter(b.store)
            receipts.start()
            ws_collector = ReceiptCollector("websocket", consumer="demo", on_receipt=receipts.add)
            rt_collector = ReceiptCollector("realtime", consumer="demo", on_receipt=receipts.add)
            ws_sub = WebSocketSubscriber(ws_url, collector=ws_collector)
            rt_sub = RealtimeSubscriber(
                rt_url,
                key,
                channel_prefix=demo_settings.realtime_channel_prefix,
                collector=rt_collector,
            )
            async with ws_sub, rt_sub:
                started = time.monotonic()
                tick = 0.01
                per_tick = max(1, round(rate * tick))
                i = 0
                while (elapsed := time.monotonic() - started) < seconds:
                    batch = [_make_event(rng, i + k) for k in range(per_tick)]
                    i += per_tick
                    for receipt in await b.publish_many(batch):
                        for name in receipt.routed_to:
                            routed_ids[name].add(receipt.sequence_id)
                    summary.published = i
                    rate_text = f"{i / elapsed:7.0f}/s" if elapsed >= 0.5 else "      -/s"
                    progress.show(
                        f"[{elapsed:4.1f}s] published {i:>7} ({rate_text})"
                        f" | websocket received {ws_collector.stats.received:>7}"
                        f" | realtime received {rt_collector.stats.received:>7}"
                    )
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                await b.flush(timeout=30)
                # Delivery is acknowledged; give consumers a moment to read the tail.
                caught_up = asyncio.Event()

                def check(_obj: object = None, _ok: bool = True) -> None:
                    if len(ws_collector.seen) >= len(routed_ids["websocket"]) and len(
                        rt_collector.seen
                    ) >= len(routed_ids["realtime"]):
                        caught_up.set()

                ws_collector.on_event = rt_collector.on_event = check
                check()
                try:
                    await asyncio.wait_for(caught_up.wait(), timeout=10)
                except TimeoutError:
                    pass  # reported below as lost
                summary.seconds = time.monotonic() - started
                progress.show(
                    f"[{summary.seconds:4.1f}s] published {i:>7}"
                    f" | websocket received {ws_collector.stats.received:>7}"
                    f" | realtime received {rt_collector.stats.received:>7}",
                    final=True,
                )
            await receipts.close()
            snapshot = b.stats.snapshot()["categories"]
        for cat, data in snapshot.items():
            summary.routed[cat] = {a: v["routed"] for a, v in data["adapters"].items()}
            summary.delivered[cat] = {a: v["delivered"] for a, v in data["adapters"].items()}
        for name, collector in (("websocket", ws_collector), ("realtime", rt_collector)):
            summary.received[name] = collector.stats.received
            summary.verified[name] = collector.stats.verified
            summary.mismatches += collector.stats.mismatches
            summary.duplicates += collector.stats.duplicates
            summary.lost[name] = len(routed_ids[name] - collector.seen)
    _print_table(summary, snapshot, out)
    return summary


def _print_table(summary: DemoSummary, snapshot: dict[str, Any], out: TextIO) -> None:
    adapters = ("websocket", "realtime")
    header = f"{'category':<14}{'published':>10}" + "".join(
        f"{a + ' routed':>18}{a + ' delivered':>20}" for a in adapters
    )
    lines = ["", header, "-" * len(header)]
    for cat, data in snapshot.items():
        row = f"{cat:<14}{data['published']:>10}"
        for a in adapters:
            stats = data["adapters"].get(a, {"routed": 0, "delivered": 0})
            row += f"{stats['routed']:>18}{stats['delivered']:>20}"
        lines.append(row)
    lines.append("-" * len(header))
    lines.append(f"published          {summary.published}")
    for a in adapters:
        lines.append(
            f"{a:<18} received {summary.received[a]}, checksums verified {summary.verified[a]},"
            f" lost {summary.lost[a]}"
        )
    lines.append(f"checksum mismatches {summary.mismatches}")
    lines.append(f"duplicates          {summary.duplicates}")
    lines.append(f"lost                {sum(summary.lost.values())}")
    lines.append("result              " + ("OK" if summary.ok else "PROBLEM"))
    out.write("\n".join(lines) + "\n")
    out.flush()
