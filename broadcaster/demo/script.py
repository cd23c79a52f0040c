"""``broadcaster demo``: the whole system on embedded defaults (docs/cli.md).

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
4. runs two progressive rollouts of USER_ACTIVITY through ``POST /rollouts``
   (:mod:`.rollout`): 1 → 25 → 100 %, which rolls back on its own when the
   Realtime path starts damaging the category's events at 25 %, then a clean
   25 → 100 % that cuts the category over to Realtime;
5. prints the summary: published, routed and delivered per adapter and
   category (the main stream's), checksums verified, mismatches, duplicates
   and lost (routed to a path and never received by its consumer, after
   repair), and how the rollouts ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx
import structlog
from pydantic import SecretStr

from ..adapters.websocket import WebSocketAdapter
from ..admin import AdminServer, create_app, generate_token
from ..breaker_policy import BreakerConfig
from ..consumer import ReceiptCollector, StoreReceiptWriter
from ..consumer.realtime import RealtimeSubscriber
from ..consumer.websocket import WebSocketSubscriber
from ..core import Broadcaster
from ..metrics import BroadcasterMetrics
from ..rollout.manager import Rollouts
from ..security import TokenSet
from ..settings import Settings
from ..spawn import RealtimeServerProcess, child_env
from ..store import store_from_url
from .console import warnings_counted
from .outage import OutagePhase
from .reconciling import ReconcilePhase
from .remote import RemoteSubscriber
from .rollout import DamagingRealtimeAdapter, RolloutPhase
from .stream import FLIP_CATEGORY, Publisher
from .summary import ADAPTERS, DemoSummary, print_table
from .timeline import (
    CATCH_UP_TIMEOUT_S,
    RAMP_STEP_S,
    RECONCILE,
    RECOVERY_S,
    RECOVERY_TIMEOUT_S,
    REMOTE_DOWN_S,
    START_TIMEOUT_S,
    until,
)

__all__ = ["DemoSummary", "run_demo"]

log = structlog.get_logger("broadcaster.demo")

# The flag the demo flips through the admin API.
FLIP = {"enabled": True, "percentage": 50}


async def _receipts_of(b: Broadcaster, consumer: str) -> int:
    """Receipts the store keeps from ``consumer`` (one per event and path,
    however often they were posted)."""
    count, after = 0, 0
    while rows := await b.store.scan(after=after, limit=5000):
        count += sum(r.consumer == consumer for row in rows for r in row.receipts)
        after = rows[-1].sequence_id
    return count


def _demo_breaker(settings: Settings) -> Callable[[str], BreakerConfig]:
    def make(name: str) -> BreakerConfig:
        config = BreakerConfig.from_settings(settings, name)
        return dataclasses.replace(
            config,
            recovery_time_s=RECOVERY_S,
            ramp_step_s=RAMP_STEP_S,
            # A loaded machine must not turn an ordinary call into a "slow"
            # one and flap the ramp: the demo is about the outage.
            latency_threshold_ms=max(config.latency_threshold_ms, 500.0),
        )

    return make


class _Demo(OutagePhase, ReconcilePhase, RolloutPhase):
    """The script: each phase in its own module, run in order from here."""

    async def run(self) -> DemoSummary:
        with (
            tempfile.TemporaryDirectory(prefix="broadcaster-demo-") as tmp,
            warnings_counted(self.summary.warnings),
        ):
            child = RealtimeServerProcess(stderr=Path(tmp) / "realtime-server.log")
            try:
                await child.start()
                await self._with_server(child, Path(tmp))
            finally:
                await child.kill()
        self.summary.seconds = time.monotonic() - self.began
        self.out.write(f"demo finished in {self.summary.seconds:.1f} s\n")
        self.out.flush()
        return self.summary

    async def _with_server(self, child: RealtimeServerProcess, tmp: Path) -> None:
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
                **RECONCILE,
            }
        )
        assert settings.supabase_url is not None
        store = store_from_url(settings.store_url)
        # Subscribers may resume with ?since=N: the server replays from the store.
        ws = WebSocketAdapter.from_settings(settings, replay=store)
        rt = DamagingRealtimeAdapter(
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
            rollouts = Rollouts(b)
            app = create_app(b, TokenSet.of({"demo": token}), metrics=metrics, rollouts=rollouts)
            admin = await stack.enter_async_context(AdminServer(app, "127.0.0.1", 0))
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
                for name in ADAPTERS
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
                ws.url, admin.url, token, consumer="demo:remote", env=child_env()
            )
            await remote.start()
            stack.push_async_callback(remote.stop)

            publisher = Publisher(b, random.Random(self.seed), self.rate)
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
            # The main stream is counted before the rollouts add their own.
            snapshot = self._summarise(b, collectors, publisher)
            await self._rollouts(b, http, rt, rollouts)
            print_table(self.summary, snapshot, self.out)

    def _announce(
        self,
        b: Broadcaster,
        ws: WebSocketAdapter,
        child: RealtimeServerProcess,
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
            + "; then reconcile, repair, two rollouts of USER_ACTIVITY (one rolled back by an"
            " injected fault, one cut over) and the summary",
            f"demo-only timings: breaker recovery {RECOVERY_S:g} s, ramp steps {RAMP_STEP_S:g} s"
            f" ({'/'.join(str(s) for s in b.breakers['realtime'].config.ramp_steps)} %);"
            f" reconcile window {RECONCILE['reconcile_window_s']:g} s,"
            f" buffer {RECONCILE['reconcile_buffer_s']:g} s,"
            f" max delay {RECONCILE['reconcile_max_delay_s']:g} s",
            "",
        ]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    # -- the script ----------------------------------------------------------

    async def _script(
        self,
        b: Broadcaster,
        http: httpx.AsyncClient,
        child: RealtimeServerProcess,
        settings: Settings,
        collectors: dict[str, ReceiptCollector],
        rt_subs: list[RealtimeSubscriber],
        publisher: Publisher,
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
        path = f"/config/categories/{FLIP_CATEGORY.value}"
        self.note(f"{self.t()} flag flip through the admin API: PATCH {path} {FLIP}")
        response = await http.patch(path, json=FLIP)
        response.raise_for_status()
        body = response.json()
        flags = body["flags"]
        self.note(
            f"       -> {response.status_code}: {FLIP_CATEGORY.value} enabled={flags['enabled']}"
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
        if not await remote.wait_started(START_TIMEOUT_S):
            raise RuntimeError("the remote subscriber printed no event")
        last = await remote.kill()
        self.summary.remote["killed_after"] = last
        self.note(
            f"{self.t()} remote subscriber (a child process reporting through POST /receipts)"
            f" SIGKILLed after sequence id {last}"
        )
        await asyncio.sleep(REMOTE_DOWN_S)  # events published meanwhile: replayed on resume
        await remote.start(since=last)
        self.note(f"{self.t()}        started again with --since {last}")

    async def _finish_remote(
        self, b: Broadcaster, remote: RemoteSubscriber, publisher: Publisher
    ) -> None:
        """Let the remote subscriber read the tail, stop it (it posts its last
        receipts), and count what it got of the WebSocket path: from its
        first event on, every one exactly once."""
        await b.flush(timeout=RECOVERY_TIMEOUT_S)
        wanted = publisher.routed["websocket"]
        first = min(remote.seen) if remote.seen else 0
        expected = {s for s in wanted if s >= first}

        def caught_up() -> bool:
            return not expected.difference(remote.seen)

        await until(caught_up, CATCH_UP_TIMEOUT_S)
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

    def _report_flip(self, publisher: Publisher) -> None:
        flip = self.summary.flip_routing = {k: (v[0], v[1]) for k, v in publisher.flip.items()}
        self.note(
            f"{self.t()} {FLIP_CATEGORY.value} events routed to realtime: before the flip"
            f" {flip['before'][1]} of {flip['before'][0]}, after it {flip['after'][1]} of"
            f" {flip['after'][0]} (sticky 50 % by key)"
        )

    # -- progress ------------------------------------------------------------

    async def _show_progress(
        self, b: Broadcaster, publisher: Publisher, collectors: dict[str, ReceiptCollector]
    ) -> None:
        while True:
            await asyncio.sleep(0.2 if self.progress.tty else 1.0)
            self._show(b, publisher, collectors)

    def _show(
        self,
        b: Broadcaster,
        publisher: Publisher,
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

    # -- summary -------------------------------------------------------------

    def _summarise(
        self, b: Broadcaster, collectors: dict[str, ReceiptCollector], publisher: Publisher
    ) -> dict[str, Any]:
        """The summary of the main stream; returns the stats the table shows."""
        summary = self.summary
        summary.published = publisher.count
        snapshot: dict[str, Any] = b.stats.snapshot()["categories"]
        for cat, data in snapshot.items():
            summary.routed[cat] = {a: v["routed"] for a, v in data["adapters"].items()}
            summary.delivered[cat] = {a: v["delivered"] for a, v in data["adapters"].items()}
        for name, collector in collectors.items():
            summary.received[name] = collector.stats.received
            summary.verified[name] = collector.stats.verified
            summary.mismatches += collector.stats.mismatches
            summary.duplicates += collector.stats.duplicates
            summary.lost[name] = len(publisher.routed[name] - collector.seen)
        return snapshot


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
