"""``broadcaster demo``: the whole system on embedded defaults (SPEC 9).

Everything runs locally and goes away at the end: a fresh SQLite store in a
temporary directory, the WebSocket fan-out server, a local Realtime-protocol
server as a child process (``python -m broadcaster.realtime_server``, with
``SUPABASE_URL`` pointing at it), and the admin API with its dashboard on a
free port. Verifying consumers subscribe to both paths and record receipts in
the store, as a real consumer would, so the reconciler can match them.

The script, while a mixed-category stream is published:

1. flips a flag through the admin API (a real ``PATCH`` with the bearer
   token: USER_ACTIVITY on, 50 %) and shows the routing change and its audit
   entry; then SIGKILLs the remote subscriber (``broadcaster subscribe
   --report`` in a child process, posting its receipts to ``POST
   /receipts``) and starts it again with ``--since`` its last event: at the
   end it has every event of its path once, without repair;
2. SIGKILLs the Realtime server and restarts it a few seconds later, printing
   the breaker's phases as they happen: open (failover, events pending),
   half-open, closed, the ramp, the backfill. The breaker runs on a demo-only
   fast config (recovery 1 s, ramp steps 0.5 s) instead of the production 30 s.
   The Realtime consumer loses its connection too and reconnects a moment
   after the broadcaster (once the breaker has closed): broadcast keeps no
   history, so what was sent in between (the half-open probes, the start of
   the backfill) never reaches it;
3. reconciles (demo-only short window, buffer and max delay), which finds
   those events missing, repairs them, and reconciles again until nothing is
   missing (bounded);
4. prints the summary: published, routed and delivered per adapter and
   category, checksums verified, mismatches, duplicates and lost (routed to a
   path and never received by its consumer, after repair).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import random
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import structlog
from pydantic import SecretStr

from ..adapters.realtime import RealtimeAdapter
from ..adapters.websocket import WebSocketAdapter
from ..admin import AdminServer, create_app, generate_token
from ..breaker_policy import BreakerConfig, Transition
from ..consumer import ReceiptCollector, StoreReceiptWriter
from ..consumer.realtime import RealtimeSubscriber
from ..consumer.websocket import WebSocketSubscriber
from ..core import Broadcaster
from ..events import Category
from ..metrics import BroadcasterMetrics
from ..reconcile.matching import Outcome, Report
from ..security import TokenSet
from ..settings import Settings
from ..store import store_from_url
from .remote import RemoteSubscriber

__all__ = ["DemoSummary", "run_demo"]

log = structlog.get_logger("broadcaster.demo")

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
_ADAPTERS = ("websocket", "realtime")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_REALTIME_CLIENT_MODULES = ("client", "channel", "push", "timer", "presence")

# Demo-only timings: the production defaults (30 s recovery, 10 s ramp steps,
# 30 s reconcile buffer, 5 min max delay) would not fit in a short demo.
_RECOVERY_S = 1.0
_RAMP_STEP_S = 0.5
_RECONCILE = {"reconcile_window_s": 1.0, "reconcile_buffer_s": 0.5, "reconcile_max_delay_s": 2.0}
# The flag the demo flips through the admin API.
_FLIP_CATEGORY = Category.USER_ACTIVITY
_FLIP = {"enabled": True, "percentage": 50}
# Bounded waits: generous, so a slow or loaded machine still finishes.
_START_TIMEOUT_S = 30.0
_RECOVERY_TIMEOUT_S = 60.0
_CATCH_UP_TIMEOUT_S = 20.0
_REPAIR_TIMEOUT_S = 60.0
# Closed at full share, events pending and no backfill progress for this long:
# the backfill has stopped.
_STALL_S = 5.0
# How long the remote subscriber stays dead before it resumes.
_REMOTE_DOWN_S = 0.5


@dataclass
class DemoSummary:
    """What one demo run did. ``ok`` decides the exit status."""

    published: int = 0
    routed: dict[str, dict[str, int]] = field(default_factory=dict)
    delivered: dict[str, dict[str, int]] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    verified: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    seconds: float = 0.0
    #: ``http://HOST:PORT/dashboard#token=TOKEN``
    dashboard_url: str = ""
    #: The audit entry of the flag flip, as ``GET /audit`` returned it.
    flag_audit: dict[str, Any] | None = None
    #: USER_ACTIVITY events published and how many were routed to realtime,
    #: before and after the flip: ``{"before": (published, to_realtime), ...}``.
    flip_routing: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The realtime breaker's transitions, in order (``"closed->open"`` ...).
    transitions: list[str] = field(default_factory=list)
    #: Ramp shares (percent of live traffic) seen after the breaker closed.
    ramp_shares: list[int] = field(default_factory=list)
    #: Pending events delivered to realtime by the backfill.
    backfilled: int = 0
    #: Reconciliation totals per outcome, before and after repair.
    reconcile_before: dict[str, int] = field(default_factory=dict)
    reconcile_after: dict[str, int] = field(default_factory=dict)
    #: Events re-sent by repair, per adapter (summed over repair rounds).
    repaired: dict[str, int] = field(default_factory=dict)
    #: Per category and adapter: events re-sent by repair and then received.
    resent: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Log lines kept off the screen during the run (warnings, the Realtime
    #: client's reconnect errors), by message.
    warnings: dict[str, int] = field(default_factory=dict)

    #: The remote subscriber (a child process, killed and resumed): events it
    #: printed, WebSocket events it never got, events it got twice, where it
    #: was killed, and receipts the store has from it (by POST /receipts).
    remote: dict[str, int] = field(default_factory=dict)

    #: Why the demo could not run to the end (then ``ok`` is False).
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Ran to the end, no checksum mismatch (consumers or reconciler), nothing lost."""
        return (
            self.error is None
            and self.mismatches == 0
            and self.reconcile_after.get(Outcome.MISMATCH.value, 0) == 0
            and not any(self.lost.values())
            and self.remote.get("missed", 0) == 0
        )


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
    """One status line: updated in place on a TTY, a line a second otherwise.
    :meth:`note` prints a line above it (phases, results)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.last = 0.0
        self.current = ""

    def show(self, text: str, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 1.0):
            return
        self.last = now
        if self.tty:
            # A line wider than the terminal would wrap and could not be redrawn.
            text = text[: max(20, shutil.get_terminal_size().columns - 1)]
            self.out.write("\r\033[K" + text + ("\n" if final else ""))
            self.current = "" if final else text
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + "\n" + self.current)
        else:
            self.out.write(text + "\n")
        self.out.flush()


@contextlib.contextmanager
def _warnings_counted(counts: MutableMapping[str, int]) -> Iterator[None]:
    """While the demo runs, WARNING log lines are counted instead of printed
    (the summary lists them): the deliberate outage makes several — connection
    lost, failover started, deliveries failed — and the demo narrates those
    phases itself. So are the Realtime client's reconnect errors. Other errors
    still print. When logging is set to INFO or DEBUG, nothing is held back."""
    if structlog.get_logger().get_effective_level() < logging.WARNING:
        yield
        return

    def count_warnings(
        _logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if method in ("warning", "warn"):
            key = str(event.get("event"))
            counts[key] = counts.get(key, 0) + 1
            raise structlog.DropEvent
        return event

    def count_client_errors(record: logging.LogRecord) -> bool:
        # "Connection attempt failed: [Errno 111] ...": counted by its first part.
        key = "realtime client: " + record.getMessage().split(":")[0]
        counts[key] = counts.get(key, 0) + 1
        return False

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[count_warnings, *processors])
    # The official Realtime client logs each failed reconnect (while its server
    # is down, on purpose) as an error through stdlib logging.
    # (A logger's filters see only its own records: one per client module.)
    client_logs = [logging.getLogger(f"realtime._async.{m}") for m in _REALTIME_CLIENT_MODULES]
    for client_log in client_logs:
        client_log.addFilter(count_client_errors)
    try:
        yield
    finally:
        structlog.configure(processors=processors)
        for client_log in client_logs:
            client_log.removeFilter(count_client_errors)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _RealtimeChild:
    """The local Realtime server as a child process, so that it can be killed
    for real: ``python -m broadcaster.realtime_server --port N`` prints its URL
    on its first stdout line; its log goes to ``log_path``. It accepts only
    ``key`` (made up per run), given in its environment rather than on its
    command line, which every local user can read."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.key = secrets.token_urlsafe(32)
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        env = _child_env()
        env["SUPABASE_KEY"] = self.key
        with self.log_path.open("ab") as log_file:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "broadcaster.realtime_server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
            )
        assert self.proc.stdout is not None
        line = ""
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                line = (await self.proc.stdout.readline()).decode().strip()
        except TimeoutError:
            pass
        if line != self.url:
            await self.kill()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(
                f"the local Realtime server did not start on port {self.port}: "
                + (" | ".join(tail) or "no output")
            )

    async def kill(self) -> None:
        """SIGKILL: no close frames, no goodbye."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _receipts_of(b: Broadcaster, consumer: str) -> int:
    """Receipts the store keeps from ``consumer`` (one per event and path,
    however often they were posted)."""
    count, after = 0, 0
    while rows := await b.store.scan(after=after, limit=5000):
        count += sum(r.consumer == consumer for row in rows for r in row.receipts)
        after = rows[-1].sequence_id
    return count


def _child_env() -> dict[str, str]:
    """The environment of the demo's child processes: this one, with the
    child importing this very package, wherever it was imported from."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def _demo_breaker(settings: Settings) -> Callable[[str], BreakerConfig]:
    def make(name: str) -> BreakerConfig:
        config = BreakerConfig.from_settings(settings, name)
        return dataclasses.replace(
            config,
            recovery_time_s=_RECOVERY_S,
            ramp_step_s=_RAMP_STEP_S,
            # A loaded machine must not turn an ordinary call into a "slow"
            # one and flap the ramp: the demo is about the outage.
            latency_threshold_ms=max(config.latency_threshold_ms, 500.0),
        )

    return make


def _totals(report: Report) -> dict[str, int]:
    totals = {o.value: report.total(o) for o in Outcome}
    totals["duplicate"] = sum(report.duplicates.values())
    return totals


def _describe_report(report: Report) -> str:
    totals = _totals(report)
    text = ", ".join(f"{name} {n}" for name, n in totals.items())
    missing: Counter[str] = Counter()
    for (_, adapter, outcome), n in report.counts.items():
        if outcome == Outcome.MISSING.value:
            missing[adapter] += n
    per_adapter = ", ".join(f"{a} {missing[a]}" for a in _ADAPTERS if missing[a])
    return text + (f"  (missing on {per_adapter})" if per_adapter else "")


def _received(collectors: dict[str, ReceiptCollector], wanted: dict[str, set[int]]) -> bool:
    return all(ids <= collectors[a].seen for a, ids in wanted.items())


async def _until(predicate: Callable[[], bool], within_s: float, poll_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds (True) or ``within_s`` passes (False)."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


class _Publisher:
    """Publishes the mixed stream at ``rate`` until stopped; keeps what was
    routed where, and USER_ACTIVITY's routing before and after the flip."""

    def __init__(self, b: Broadcaster, rng: random.Random, rate: float) -> None:
        self.b = b
        self.rng = rng
        self.rate = rate
        self.count = 0
        self.last_sequence_id = 0
        self.last_at = 0.0  # wall clock of the last publish
        self.routed: dict[str, set[int]] = defaultdict(set)
        self.flip: dict[str, list[int]] = {"before": [0, 0], "after": [0, 0]}
        self.stopping = False

    async def run(self) -> None:
        started = time.monotonic()
        per_tick = max(1, round(self.rate * 0.01))
        initial = self.b.routing
        while not self.stopping:
            batch = [_make_event(self.rng, self.count + k) for k in range(per_tick)]
            # publish_many routes with the table in force when it is called (a
            # flag change swaps the table whole): the phase is exact.
            phase = self.flip["before" if self.b.routing is initial else "after"]
            receipts = await self.b.publish_many(batch)
            self.count += len(batch)
            for receipt in receipts:
                for name in receipt.routed_to:
                    self.routed[name].add(receipt.sequence_id)
                if receipt.category is _FLIP_CATEGORY:
                    phase[0] += 1
                    phase[1] += "realtime" in receipt.routed_to
            self.last_sequence_id = receipts[-1].sequence_id
            self.last_at = time.time()
            await asyncio.sleep(max(0.0, started + self.count / self.rate - time.monotonic()))


class _Demo:
    def __init__(
        self, settings: Settings, seconds: float, rate: float, out: TextIO, seed: int, outage: bool
    ) -> None:
        self.settings = settings
        self.seconds = seconds
        self.rate = rate
        self.out = out
        self.seed = seed
        self.outage = outage
        self.progress = _Progress(out)
        self.summary = DemoSummary()
        self.began = time.monotonic()
        self.started = self.began  # reset when publishing starts
        self.kill_at: float | None = None
        self.rt_offline = False
        # Last sequence id published before the realtime consumer came back.
        self.rejoined_after = 0

    def note(self, text: str) -> None:
        self.progress.note(text)

    def t(self) -> str:
        return f"[{time.monotonic() - self.started:4.1f}s]"

    async def run(self) -> DemoSummary:
        with (
            tempfile.TemporaryDirectory(prefix="broadcaster-demo-") as tmp,
            _warnings_counted(self.summary.warnings),
        ):
            child = _RealtimeChild(_free_port(), Path(tmp) / "realtime-server.log")
            try:
                await child.start()
                await self._with_server(child, Path(tmp))
            finally:
                await child.kill()
        self.summary.seconds = time.monotonic() - self.began
        self.out.write(f"demo finished in {self.summary.seconds:.1f} s\n")
        self.out.flush()
        return self.summary

    async def _with_server(self, child: _RealtimeChild, tmp: Path) -> None:
        settings = self.settings.model_copy(
            update={
                "websocket_port": 0,
                "store_url": f"sqlite:///{tmp / 'demo.db'}",
                "supabase_url": child.url,
                "supabase_key": SecretStr(child.key),
                "reconcile_interval_s": 0.0,  # the demo reconciles itself, at the end
                # The demo's own subscribers connect plainly, without a token.
                "websocket_tls_cert": None,
                "websocket_tls_key": None,
                "websocket_require_token": False,
                "retention_s": 0.0,
                **_RECONCILE,
            }
        )
        assert settings.supabase_url is not None
        store = store_from_url(settings.store_url)
        # Subscribers may resume with ?since=N: the server replays from the store.
        ws = WebSocketAdapter.from_settings(settings, replay=store)
        rt = RealtimeAdapter(
            settings.supabase_url,
            child.key,
            channel_prefix=settings.realtime_channel_prefix,
            batch_ms=settings.realtime_batch_ms,
            batch_max=settings.realtime_batch_max,
            batch_bytes=settings.realtime_batch_bytes,
            max_messages_per_s=settings.realtime_max_messages_per_s,
            # Demo-only: reconnect quickly once the server is back.
            reconnect_max_s=0.3,
            poll_s=0.1,
        )
        token = generate_token()
        async with contextlib.AsyncExitStack() as stack:
            b = await stack.enter_async_context(
                Broadcaster(
                    settings,
                    adapters=[ws, rt],
                    store=store,
                    breaker_config=_demo_breaker(settings),
                )
            )
            metrics = BroadcasterMetrics(b)
            stack.callback(metrics.close)
            admin = await stack.enter_async_context(
                AdminServer(
                    create_app(b, TokenSet.of({"demo": token}), metrics=metrics), "127.0.0.1", 0
                )
            )
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=admin.url,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30.0,
                )
            )
            self.summary.dashboard_url = f"{admin.url}/dashboard#token={token}"
            self._announce(b, ws, child, admin.url, token, settings)

            receipts = StoreReceiptWriter(b.store)
            receipts.start()
            stack.push_async_callback(receipts.close)
            collectors = {
                name: ReceiptCollector(name, consumer="demo", on_receipt=receipts.add)
                for name in _ADAPTERS
            }
            ws_sub = WebSocketSubscriber(ws.url, collector=collectors["websocket"])
            await stack.enter_async_context(ws_sub)
            rt_subs: list[RealtimeSubscriber] = []

            async def close_rt_subs() -> None:
                for sub in rt_subs:
                    await sub.close()

            stack.push_async_callback(close_rt_subs)
            rt_subs.append(self._rt_subscriber(child, settings, collectors["realtime"]))
            await rt_subs[-1].start()
            remote = RemoteSubscriber(
                ws.url, admin.url, token, consumer="demo:remote", env=_child_env()
            )
            await remote.start()
            stack.push_async_callback(remote.stop)

            publisher = _Publisher(b, random.Random(self.seed), self.rate)
            self.started = time.monotonic()
            tasks = [
                asyncio.create_task(publisher.run(), name="demo-publisher"),
                asyncio.create_task(self._show_progress(b, publisher, collectors)),
                asyncio.create_task(self._watch_breaker(b)),
            ]

            async def stop_tasks() -> None:
                publisher.stopping = True
                for task in tasks[1:]:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                await self._script(b, http, child, settings, collectors, rt_subs, publisher, remote)
                publisher.stopping = True
                await tasks[0]
                await stop_tasks()
                self._show(b, publisher, collectors, final=True)
                self._report_flip(publisher)
                await self._finish_remote(b, remote, publisher)
                await self._reconcile(b, receipts, collectors, publisher, settings)
            finally:
                await stop_tasks()
            await self._summarise(b, collectors, publisher)

    def _rt_subscriber(
        self, child: _RealtimeChild, settings: Settings, collector: ReceiptCollector
    ) -> RealtimeSubscriber:
        return RealtimeSubscriber(
            child.url,
            child.key,
            channel_prefix=settings.realtime_channel_prefix,
            collector=collector,
            reconnect_max_s=0.5,
            poll_s=0.1,
        )

    def _announce(
        self,
        b: Broadcaster,
        ws: WebSocketAdapter,
        child: _RealtimeChild,
        admin_url: str,
        token: str,
        settings: Settings,
    ) -> None:
        seconds = self.seconds
        lines = [
            "broadcaster demo: the whole system, locally, on embedded defaults",
            f"  store      {settings.store_url}",
            f"  websocket  {ws.url}",
            f"  realtime   {child.url}  (local Realtime server, child process {child.pid};"
            " SUPABASE_URL points here)",
            f"  admin API  {admin_url}  (bearer token {token})",
            f"  dashboard  {self.summary.dashboard_url}",
            "             live while the demo runs; it stops with the demo",
            f"  metrics    {admin_url}/metrics",
            f"plan: ~{seconds:g} s of mixed events at {self.rate:g}/s; flag flip at"
            f" {self._flip_at():.1f} s"
            + (
                f"; realtime server killed at {self._kill_at():.1f} s and restarted"
                f" {self._outage_s():.1f} s later"
                if self.outage
                else ""
            )
            + "; then reconcile, repair and the summary",
            f"demo-only timings: breaker recovery {_RECOVERY_S:g} s, ramp steps {_RAMP_STEP_S:g} s"
            f" ({'/'.join(str(s) for s in b.breakers['realtime'].config.ramp_steps)} %);"
            f" reconcile window {_RECONCILE['reconcile_window_s']:g} s,"
            f" buffer {_RECONCILE['reconcile_buffer_s']:g} s,"
            f" max delay {_RECONCILE['reconcile_max_delay_s']:g} s",
            "",
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def _flip_at(self) -> float:
        return 0.2 * self.seconds

    def _kill_at(self) -> float:
        return 0.4 * self.seconds

    def _outage_s(self) -> float:
        """From the kill to the restart (the server then takes ~1 s to start)."""
        return min(3.0, max(1.0, 0.15 * self.seconds))

    async def _sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))

    # -- the script ----------------------------------------------------------

    async def _script(
        self,
        b: Broadcaster,
        http: httpx.AsyncClient,
        child: _RealtimeChild,
        settings: Settings,
        collectors: dict[str, ReceiptCollector],
        rt_subs: list[RealtimeSubscriber],
        publisher: _Publisher,
        remote: RemoteSubscriber,
    ) -> None:
        await self._sleep_until(self._flip_at())
        await self._flip(http)
        await self._sleep_until((self._flip_at() + self._kill_at()) / 2)
        await self._crash_remote(remote)
        end_at = self.seconds
        if self.outage:
            await self._sleep_until(self._kill_at())
            await self._fail_and_recover(b, child, settings, collectors, rt_subs, publisher)
            # Some live traffic after the consumer is back, on both paths.
            end_at = max(end_at, time.monotonic() - self.started + 1.0)
        await self._sleep_until(end_at)

    async def _flip(self, http: httpx.AsyncClient) -> None:
        path = f"/config/categories/{_FLIP_CATEGORY.value}"
        self.note(f"{self.t()} flag flip through the admin API: PATCH {path} {_FLIP}")
        response = await http.patch(path, json=_FLIP)
        response.raise_for_status()
        body = response.json()
        flags = body["flags"]
        self.note(
            f"       -> {response.status_code}: {_FLIP_CATEGORY.value} enabled={flags['enabled']}"
            f" percentage={flags['percentage']} adapters={','.join(flags['adapters'])},"
            " in force for the next event"
        )
        audit = (await http.get("/audit")).raise_for_status().json()["entries"]
        entry = next(e for e in reversed(audit) if e["id"] == body["audit"]["id"])
        self.summary.flag_audit = entry
        self.note(
            f"       audit #{entry['id']} at {entry['at']} by {entry['actor']!r}: {entry['path']}"
            f"  before {entry['before']}  after {entry['after']}"
        )

    async def _crash_remote(self, remote: RemoteSubscriber) -> None:
        """SIGKILL the remote subscriber mid-stream; start it again with
        --since where it stopped, while publishing goes on."""
        if not await remote.wait_started(_START_TIMEOUT_S):
            raise RuntimeError("the remote subscriber printed no event")
        last = await remote.kill()
        self.summary.remote["killed_after"] = last
        self.note(
            f"{self.t()} remote subscriber (a child process reporting through POST /receipts)"
            f" SIGKILLed after sequence id {last}"
        )
        await asyncio.sleep(_REMOTE_DOWN_S)  # events published meanwhile: replayed on resume
        await remote.start(since=last)
        self.note(f"{self.t()}        started again with --since {last}")

    async def _finish_remote(
        self, b: Broadcaster, remote: RemoteSubscriber, publisher: _Publisher
    ) -> None:
        """Let the remote subscriber read the tail, stop it (it posts its last
        receipts), and count what it got of the WebSocket path: from its
        first event on, every one exactly once."""
        await b.flush(timeout=_RECOVERY_TIMEOUT_S)
        wanted = publisher.routed["websocket"]
        first = min(remote.seen) if remote.seen else 0
        expected = {s for s in wanted if s >= first}

        def caught_up() -> bool:
            return not expected.difference(remote.seen)

        await _until(caught_up, _CATCH_UP_TIMEOUT_S)
        await remote.stop()
        info = self.summary.remote
        info["received"] = sum(remote.seen.values())
        info["missed"] = len(expected - remote.seen.keys())
        info["duplicates"] = sum(n - 1 for n in remote.seen.values())
        info["receipts"] = await _receipts_of(b, remote.consumer)
        self.note(
            f"{self.t()} remote subscriber: received {info['received']} events in"
            f" {remote.runs} runs, missed {info['missed']}, duplicates {info['duplicates']},"
            f" without repair; {info['receipts']} receipts reached the store through"
            " POST /receipts (those it still held when it was killed died with it)"
        )

    def _report_flip(self, publisher: _Publisher) -> None:
        flip = self.summary.flip_routing = {k: (v[0], v[1]) for k, v in publisher.flip.items()}
        self.note(
            f"{self.t()} {_FLIP_CATEGORY.value} events routed to realtime: before the flip"
            f" {flip['before'][1]} of {flip['before'][0]}, after it {flip['after'][1]} of"
            f" {flip['after'][0]} (sticky 50 % by key)"
        )

    async def _fail_and_recover(
        self,
        b: Broadcaster,
        child: _RealtimeChild,
        settings: Settings,
        collectors: dict[str, ReceiptCollector],
        rt_subs: list[RealtimeSubscriber],
        publisher: _Publisher,
    ) -> None:
        breaker = b.breakers["realtime"]
        lane = b.lane("realtime")
        self.note(f"{self.t()} killing the Realtime server (SIGKILL, pid {child.pid})")
        self.kill_at = time.monotonic()
        await child.kill()
        # Its consumer lost its connection too. It reconnects a moment after
        # the broadcaster does: what is sent in between (the half-open probes,
        # the start of the backfill) never reaches it.
        self.rt_offline = True
        await rt_subs[-1].close()
        self.note(
            "       the realtime consumer is disconnected too; it reconnects a moment after the"
            " broadcaster (broadcast keeps no history)"
        )
        if not await _until(lambda: breaker.state != "closed", _RECOVERY_TIMEOUT_S):
            self.note("       the realtime breaker did not open")
        await asyncio.sleep(max(0.0, self.kill_at + self._outage_s() - time.monotonic()))
        pending = b.breaker_states()["realtime"]["pending"]
        self.note(
            f"{self.t()} restarting the Realtime server on port {child.port}"
            f" ({pending} events pending for realtime so far)"
        )
        await child.start()
        back = time.monotonic()
        self.note(
            f"{self.t()} Realtime server back (pid {child.pid}) after a"
            f" {back - self.kill_at:.1f} s outage"
        )
        if not await _until(lambda: breaker.state == "closed", _RECOVERY_TIMEOUT_S):
            self.note(f"{self.t()} the realtime breaker did not close")
        await self._rejoin(child, settings, collectors["realtime"], rt_subs)
        self.rejoined_after = publisher.last_sequence_id
        self.rt_offline = False
        self.note(f"{self.t()} the realtime consumer is back")

        progress = (-1, -1, 0.0)  # (pending, backfilled, since)

        def recovered() -> bool:
            # Closed at full share with nothing pending: the backfill is done.
            # Or nothing moved for a while with events still pending: report
            # that rather than wait for the timeout.
            nonlocal progress
            shares = self.summary.ramp_shares  # seen (and printed) by _watch_breaker
            if breaker.state != "closed" or not shares or shares[-1] != 100:
                progress = (-1, -1, 0.0)
                return False
            now = (lane.pending, b.stats.backfilled["realtime"])
            if now != progress[:2]:
                progress = (*now, time.monotonic())
            return lane.pending == 0 or time.monotonic() - progress[2] > _STALL_S

        if not await _until(recovered, _RECOVERY_TIMEOUT_S):
            self.note(f"{self.t()} realtime did not recover within {_RECOVERY_TIMEOUT_S:g} s")
        elif lane.pending:
            self.note(
                f"{self.t()} backfill stopped with {lane.pending} events still pending for"
                f" realtime ({b.stats.backfilled['realtime']} delivered)"
            )
        else:
            self.note(
                f"{self.t()} backfill done: {b.stats.backfilled['realtime']} pending events"
                f" delivered to realtime, {time.monotonic() - back:.1f} s after the server"
                " came back"
            )
        self.summary.backfilled = b.stats.backfilled["realtime"]

    async def _rejoin(
        self,
        child: _RealtimeChild,
        settings: Settings,
        collector: ReceiptCollector,
        rt_subs: list[RealtimeSubscriber],
    ) -> None:
        for attempt in range(3):
            sub = self._rt_subscriber(child, settings, collector)
            rt_subs.append(sub)
            try:
                await sub.start()
                return
            except Exception:
                if attempt == 2:
                    raise
                await sub.close()
                await asyncio.sleep(0.5)

    async def _watch_breaker(self, b: Broadcaster) -> None:
        """Print the realtime breaker's transitions and ramp steps as they happen."""
        breaker = b.breakers["realtime"]
        seen = breaker.policy.epoch
        share, state = breaker.share, breaker.state
        while True:
            await asyncio.sleep(0.01)
            epoch = breaker.policy.epoch
            if epoch != seen:
                for transition in breaker.policy.history[-(epoch - seen) :]:
                    self._transition(transition)
                seen = epoch
            now_share, now_state = breaker.share, breaker.state
            if now_state == "closed" and (now_share != share or state != "closed"):
                self.summary.ramp_shares.append(now_share)
                self.note(
                    f"{self.t()} ramp: realtime gets {now_share} % of live traffic"
                    + (": dual-write fully restored" if now_share == 100 else "")
                )
            share, state = now_share, now_state

    def _transition(self, transition: Transition) -> None:
        self.summary.transitions.append(transition.key)
        texts = {
            "closed->open": "realtime breaker OPEN ({reason}): failover, events go to"
            " websocket only and wait as PENDING for realtime",
            "open->half_open": "realtime breaker HALF-OPEN: probing",
            "half_open->open": "realtime breaker OPEN again ({reason});"
            f" next probe in {_RECOVERY_S:g} s",
            "half_open->closed": "realtime breaker CLOSED ({reason}): restoring dual-write"
            " gradually and backfilling",
        }
        text = texts.get(transition.key, transition.key + " ({reason})")
        reason = transition.reason
        if len(reason) > 70:
            reason = reason[:67] + "..."
        self.note(f"{self.t()} {text.format(reason=reason)}")

    # -- progress ------------------------------------------------------------

    async def _show_progress(
        self, b: Broadcaster, publisher: _Publisher, collectors: dict[str, ReceiptCollector]
    ) -> None:
        while True:
            await asyncio.sleep(0.2 if self.progress.tty else 1.0)
            self._show(b, publisher, collectors)

    def _show(
        self,
        b: Broadcaster,
        publisher: _Publisher,
        collectors: dict[str, ReceiptCollector],
        *,
        final: bool = False,
    ) -> None:
        elapsed = time.monotonic() - self.started
        rate = f"{publisher.count / elapsed:5.0f}/s" if elapsed >= 0.5 and not final else ""
        state = b.breaker_states()["realtime"]
        breaker = state["state"]
        if breaker == "closed" and state["share"] < 100:
            breaker += f" {state['share']}%"
        if state["pending"]:
            breaker += f", {state['pending']} pending"
        rt = collectors["realtime"].stats.received
        self.progress.show(
            f"[{elapsed:4.1f}s] published {publisher.count:>6} {rate:>7}"
            f" | received: websocket {collectors['websocket'].stats.received:>6}"
            f", realtime {rt:>6}{' (offline)' if self.rt_offline else ''}"
            f" | realtime breaker {breaker}",
            final=final,
        )

    # -- reconciliation ------------------------------------------------------

    async def _reconcile(
        self,
        b: Broadcaster,
        receipts: StoreReceiptWriter,
        collectors: dict[str, ReceiptCollector],
        publisher: _Publisher,
        settings: Settings,
    ) -> None:
        await b.flush(timeout=_RECOVERY_TIMEOUT_S)
        # Everything is acknowledged; let the consumers read the tail. On the
        # realtime path only what was sent after its consumer came back can arrive.
        last = publisher.last_sequence_id
        tail_rt = {s for s in publisher.routed["realtime"] if s > self.rejoined_after}

        def caught_up() -> bool:
            return (
                publisher.routed["websocket"] <= collectors["websocket"].seen
                and tail_rt <= collectors["realtime"].seen
            )

        await _until(caught_up, _CATCH_UP_TIMEOUT_S)
        await receipts.flush()
        # An event is judged missing once it is older than the max delay.
        wait = publisher.last_at + settings.reconcile_max_delay_s + 0.2 - time.time()
        self.note(
            f"{self.t()} published {publisher.count} events (last sequence id {last});"
            f" reconciling in {max(0.0, wait):.1f} s, once the newest event is older than"
            f" the max delay ({settings.reconcile_max_delay_s:g} s)"
        )
        await asyncio.sleep(max(0.0, wait))
        report = await b.reconcile()
        self.summary.reconcile_before = _totals(report)
        self.note(f"{self.t()} reconciliation before repair: {_describe_report(report)}")
        deadline = time.monotonic() + _REPAIR_TIMEOUT_S
        while report.unrepaired_loss and time.monotonic() < deadline:
            missing = {a: set(ids) for a, ids in report.missing.items()}
            queued = await b.repair(report)
            for adapter, n in queued.items():
                self.summary.repaired[adapter] = self.summary.repaired.get(adapter, 0) + n
            self.note(
                f"{self.t()} repair: re-sending "
                + ", ".join(f"{n} to {a}" for a, n in queued.items())
            )
            await b.flush(timeout=_RECOVERY_TIMEOUT_S)
            await _until(functools.partial(_received, collectors, missing), _CATCH_UP_TIMEOUT_S)
            await receipts.flush()
            report = await b.reconcile()
        self.summary.reconcile_after = _totals(report)
        for (category, adapter, outcome), n in report.counts.items():
            if outcome == Outcome.REPAIRED.value:
                self.summary.resent.setdefault(category, {})[adapter] = n
        self.note(f"{self.t()} reconciliation after repair:  {_describe_report(report)}")

    # -- summary -------------------------------------------------------------

    async def _summarise(
        self, b: Broadcaster, collectors: dict[str, ReceiptCollector], publisher: _Publisher
    ) -> None:
        summary = self.summary
        summary.published = publisher.count
        snapshot = b.stats.snapshot()["categories"]
        for cat, data in snapshot.items():
            summary.routed[cat] = {a: v["routed"] for a, v in data["adapters"].items()}
            summary.delivered[cat] = {a: v["delivered"] for a, v in data["adapters"].items()}
        for name, collector in collectors.items():
            summary.received[name] = collector.stats.received
            summary.verified[name] = collector.stats.verified
            summary.mismatches += collector.stats.mismatches
            summary.duplicates += collector.stats.duplicates
            summary.lost[name] = len(publisher.routed[name] - collector.seen)
        _print_table(summary, snapshot, self.out)


async def run_demo(
    settings: Settings,
    *,
    seconds: float = 10.0,
    rate: float = 2000.0,
    out: TextIO = sys.stdout,
    seed: int = 7,
    outage: bool = True,
) -> DemoSummary:
    """Run the demo (see the module doc) and print its summary table to ``out``.

    ``seconds`` is how long the stream is published (longer if the recovery
    takes longer), ``rate`` its target in events per second. ``outage=False``
    skips killing the Realtime server. A demo that cannot run (a port, the
    child server) prints why and returns a summary whose ``ok`` is False."""
    demo = _Demo(settings, seconds, rate, out, seed, outage)
    try:
        return await demo.run()
    except Exception as exc:
        log.debug("demo failed", exc_info=True)
        demo.summary.error = f"{type(exc).__name__}: {exc}"
        out.write(f"\ndemo failed: {demo.summary.error}\n")
        out.flush()
        return demo.summary


def _state_path(transitions: list[str]) -> str:
    """``["closed->open", "open->half_open", ...]`` as one path, with repeated
    cycles folded: ``closed -> (open -> half_open) x3 -> closed``."""
    if not transitions:
        return "-"
    states = [transitions[0].split("->")[0]] + [t.split("->")[1] for t in transitions]
    parts: list[str] = []
    i = 0
    while i < len(states):
        pair = states[i : i + 2]
        n = 1
        while len(pair) == 2 and states[i + 2 * n : i + 2 * n + 2] == pair:
            n += 1
        if n > 1:
            parts.append(f"({pair[0]} -> {pair[1]}) x{n}")
            i += 2 * n
        else:
            parts.append(states[i])
            i += 1
    return " -> ".join(parts)


def _print_table(summary: DemoSummary, snapshot: dict[str, Any], out: TextIO) -> None:
    cols = ("routed", "delivered", "repaired")
    width = 10
    block = width * len(cols) + 2
    top = " " * 24 + "".join(f"  {a:<{block - 2}}" for a in _ADAPTERS)
    header = f"{'category':<14}{'published':>10}" + "".join(
        "  " + "".join(f"{c:>{width}}" for c in cols) for _ in _ADAPTERS
    )
    lines = ["", top.rstrip(), header, "-" * len(header)]
    for cat, data in snapshot.items():
        row = f"{cat:<14}{data['published']:>10}"
        for a in _ADAPTERS:
            stats = data["adapters"].get(a, {"routed": 0, "delivered": 0})
            repaired = summary.resent.get(cat, {}).get(a, 0)
            row += f"  {stats['routed']:>{width}}{stats['delivered']:>{width}}{repaired:>{width}}"
        lines.append(row)
    lines.append("-" * len(header))
    lines.append(
        "delivered: acknowledged by the adapter, repair re-sends included;"
        " repaired: re-sent after its consumer missed it"
    )
    lines.append("")
    lines.append(f"published          {summary.published}")
    for a in _ADAPTERS:
        lines.append(
            f"{a:<18} received {summary.received[a]}, checksums verified {summary.verified[a]},"
            f" lost {summary.lost[a]}"
        )
    remote = summary.remote
    if "received" in remote:
        lines.append(
            f"remote subscriber  killed after {remote['killed_after']}, resumed with --since:"
            f" received {remote['received']}, missed {remote['missed']},"
            f" duplicates {remote['duplicates']}; receipts by POST /receipts {remote['receipts']}"
        )
    if summary.transitions:
        lines.append(f"realtime breaker   {_state_path(summary.transitions)}")
        lines.append(
            f"ramp               {' -> '.join(f'{s}%' for s in summary.ramp_shares) or '-'};"
            f" backfilled {summary.backfilled}"
        )
    ua = summary.flip_routing
    if ua:
        lines.append(
            f"flag flip          {_FLIP_CATEGORY.value} to realtime: {ua['before'][1]} of"
            f" {ua['before'][0]} before, {ua['after'][1]} of {ua['after'][0]} after"
        )
    before, after = summary.reconcile_before, summary.reconcile_after
    if before:
        lines.append(
            f"reconciliation     missing {before.get('missing', 0)} before repair,"
            f" {after.get('missing', 0)} after; repaired {after.get('repaired', 0)};"
            f" mismatch {after.get('mismatch', 0)}"
        )
    if summary.warnings:
        lines.append(
            f"log lines held     {sum(summary.warnings.values())} warnings and Realtime client"
            " reconnect errors (LOG_LEVEL=DEBUG prints them live):"
        )
        for message, n in sorted(summary.warnings.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{n:>22} x {message}")
    lines.append(f"checksum mismatches {summary.mismatches}")
    lines.append(f"duplicates          {summary.duplicates}")
    lines.append(f"lost                {sum(summary.lost.values())}")
    lines.append("result              " + ("OK" if summary.ok else "PROBLEM"))
    out.write("\n".join(lines) + "\n")
    out.flush()
