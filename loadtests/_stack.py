"""The system under test for the end-to-end scenarios, and its producers.

:class:`Stack` lays the system out in three processes, as in a deployment
where the Realtime service is remote and consumers are other programs:

* this process: the :class:`~broadcaster.core.Broadcaster` with both real
  adapters (the ``WebSocketAdapter`` fan-out server and the ``RealtimeAdapter``
  on the official ``realtime`` client) and the store ON (SQLite in a temp dir,
  or ``store_url``);
* ``python -m broadcaster.realtime_server``: the local Realtime-protocol server;
* ``python -m loadtests.subscriber --control``: one subscriber per path, with
  the project's verifying consumers, measuring publish→receive latency.

``realtime_limits`` makes the Realtime server enforce a Supabase plan's
quotas (``--limits``); :meth:`Stack.server_counters` reads what it counted
and refused (from its process, on SIGUSR1). ``receipts=True`` adds the admin
API and has the subscriber post a receipt for every event it gets, so that
:meth:`Broadcaster.reconcile` sees what it received.

``second_path`` swaps what stands in the Realtime adapter's place (its name,
``realtime``, stays, so routing, lanes and reports are unchanged): ``websocket``
a second WebSocket fan-out server, whose subscriber is the same subscriber
process, or ``none``, :class:`DropAdapter` (no transport; no subscriber for
that path: phases must then wait for ``websocket`` alone). Neither starts a
Realtime server. The ``publish-overhead`` scenario compares them.

:meth:`Stack.phase` runs producers for a while — paced by a shared
:class:`~loadtests._common.TokenBucket` or as fast as they can — waits until
the subscribers hold every event of the phase, and returns the figures.
Background reconciliation is off (``RECONCILE_INTERVAL_S=0``) so results do
not depend on whether a run happened to span a reconcile tick.

The stand-ins for the second path are in :mod:`loadtests._second_paths`.
This module stays a little over 500 lines: the stack's processes, its
producers and its phase figures start, run and stop together.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from broadcaster.adapters import Adapter, RealtimeAdapter, WebSocketAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.realtime_server import LocalRealtimeServer
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings

from ._common import (
    REALTIME_KEY,
    Bins,
    ProcessCpu,
    TokenBucket,
    free_port,
    progress,
    running_loop_name,
    spawn,
    summarise,
)
from ._second_paths import (
    FANOUT_BUFFER_BYTES,
    SECOND_PATHS,
    DropAdapter,
    SecondWebSocketAdapter,
    padding,
)
from .realtime_child import ChildRealtimeAdapter
from .subscriber import RECEIPTS_TOKEN_ENV

__all__ = [
    "FANOUT_BUFFER_BYTES",
    "SECOND_PATHS",
    "DropAdapter",
    "PhaseResult",
    "SecondWebSocketAdapter",
    "Stack",
    "end_process",
    "padding",
]

ADAPTERS = ("websocket", "realtime")


@dataclass
class PhaseResult:
    """What one phase measured. ``figures`` is JSON-ready; the rest feeds plots."""

    name: str
    figures: dict[str, Any]
    started_t: float
    #: Producer side, wall-time bins of publish-call latency (ms) per event published.
    published: Bins
    #: Subscriber side, per adapter: [[t, count, p50_ms, p99_ms], ...], t wall-clock.
    received: dict[str, list[list[float]]] = field(default_factory=dict)
    #: Producer side, the latency of every publish call, seconds (to pool phases).
    call_latencies: list[float] = field(default_factory=list)
    #: With ``alternate_s``: per call, whether single-write was in force when it began.
    call_single: list[bool] = field(default_factory=list)
    #: With ``call_cpu``: the thread CPU time of every publish call, seconds.
    call_cpu: list[float] = field(default_factory=list)


def end_process(proc: subprocess.Popen[str]) -> None:
    """Terminate ``proc`` if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except BrokenPipeError:
                pass


class Stack:
    """Realtime server + broadcaster + subscriber process. ``async with``."""

    def __init__(
        self,
        *,
        store_url: str | None = None,
        bin_s: float = 0.25,
        max_pending: int = 20_000,
        embedded_realtime: bool = False,
        settings: dict[str, Any] | None = None,
        second_path: str = "realtime",
        realtime_limits: str = "none",
        server_log: Path | None = None,
        receipts: bool = False,
    ) -> None:
        if second_path not in SECOND_PATHS:
            raise ValueError(f"second_path must be one of {SECOND_PATHS}, not {second_path!r}")
        self.second_path = second_path
        self._limits = realtime_limits
        self._server_log = server_log
        self._receipts_token = secrets.token_urlsafe(24) if receipts else None
        self._embedded_server: LocalRealtimeServer | None = None
        self._store_url = store_url
        self._settings = dict(settings or {})
        self._embedded = embedded_realtime
        self._bin_s = bin_s
        self._max_pending = max_pending
        self._exit = AsyncExitStack()
        self.server: subprocess.Popen[str] | None = None
        self.sub: subprocess.Popen[str] | None = None
        self.b: Broadcaster | None = None
        self.report: dict[str, Any] = {}

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self._stop(report=False)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop(report=exc is None)

    async def _start(self) -> None:
        rt_port, ws_port = free_port(), free_port()
        rt_url = f"http://127.0.0.1:{rt_port}"
        real = self.second_path in ("realtime", "realtime-process")
        second: list[str] = []
        if real:
            where = "in this process" if self._embedded else "in its own process"
            progress(f"starting the Realtime server (port {rt_port}, {where}) and the subscribers")
            second = ["--realtime", rt_url]
        elif self.second_path == "websocket":
            progress("starting the subscribers (second path: a WebSocket fan-out)")
            second = ["--realtime-ws", f"ws://127.0.0.1:{rt_port}/events"]
        else:
            progress("starting the subscriber (second path: none, events dropped)")
        # Started at once (their imports take a while); the subscriber waits
        # for "start", sent once the Realtime server and the broadcaster listen.
        if real and not self._embedded:
            self.server = spawn(
                "-m",
                "broadcaster.realtime_server",
                "--port",
                str(rt_port),
                "--limits",
                self._limits,
                stderr=self._server_log,
            )
        admin_port = free_port()
        receipts: list[str] = []
        sub_env: dict[str, str] = {}
        if self._receipts_token is not None:
            receipts = ["--receipts", f"http://127.0.0.1:{admin_port}"]
            sub_env[RECEIPTS_TOKEN_ENV] = self._receipts_token
        self.sub = spawn(
            "-m",
            "loadtests.subscriber",
            "--ws",
            f"ws://127.0.0.1:{ws_port}/events",
            *second,
            *receipts,
            "--bin",
            str(self._bin_s),
            "--control",
            # The subscriber runs on the loop this process runs on.
            "--loop",
            running_loop_name(),
            stdin=True,
            env=sub_env,
        )
        if real and self.server is None:
            embedded = LocalRealtimeServer(
                host="127.0.0.1", port=rt_port, key=REALTIME_KEY, limits=self._limits
            )
            await embedded.start()
            self._embedded_server = embedded
            self._exit.push_async_callback(embedded.close)
        elif self.server is not None:
            assert self.server.stdout is not None
            line = await asyncio.to_thread(self.server.stdout.readline)  # its URL: listening
            if not line.strip():
                raise RuntimeError("the Realtime server did not start")
        tmp = self._exit.enter_context(tempfile.TemporaryDirectory(prefix="loadtests-"))
        fields: dict[str, Any] = {
            "websocket_port": ws_port,
            "supabase_url": rt_url,
            "supabase_key": REALTIME_KEY,
            "store_url": self._store_url or f"sqlite:///{Path(tmp) / 'bench.db'}",
            "log_level": "WARNING",
            "reconcile_interval_s": 0,
        }
        settings = load_settings(env_file=None, **(fields | self._settings))
        fanout = WebSocketAdapter(
            settings.websocket_host, settings.websocket_port, max_buffer_bytes=FANOUT_BUFFER_BYTES
        )
        second_adapter: Adapter
        if self.second_path == "websocket":
            second_adapter = SecondWebSocketAdapter(
                settings.websocket_host, rt_port, max_buffer_bytes=FANOUT_BUFFER_BYTES
            )
        elif self.second_path == "none":
            second_adapter = DropAdapter()
        elif self.second_path == "realtime-process":
            second_adapter = ChildRealtimeAdapter(rt_url)
        else:
            second_adapter = RealtimeAdapter.from_settings(settings)
        adapters = [fanout, second_adapter]
        self.b = await self._exit.enter_async_context(
            Broadcaster(settings, adapters=adapters, max_pending=self._max_pending)
        )
        self.b.set_routing(self.b.routing.with_override("all"))
        if self._receipts_token is not None:
            app = create_app(self.b, TokenSet.of({"subscriber": self._receipts_token}))
            await self._exit.enter_async_context(AdminServer(app, "127.0.0.1", admin_port))
        # As `broadcaster serve` does once started (run_service(freeze_gc=True)):
        # full collections then skip the ~62 000 objects built at startup
        # (otherwise a 20-50 ms stall every few seconds at 10 000 events/s).
        gc.freeze()
        self._exit.callback(gc.unfreeze)
        assert self.sub.stdin is not None
        self.sub.stdin.write("start\n")
        self.sub.stdin.flush()
        line = await self._readline()
        if line.strip() != "ready":
            raise RuntimeError(f"subscriber did not start: {line!r}")
        progress("broadcaster and subscribers ready")

    async def _readline(self) -> str:
        assert self.sub is not None and self.sub.stdout is not None
        return await asyncio.to_thread(self.sub.stdout.readline)

    async def _command(self, command: str) -> dict[str, Any]:
        assert self.sub is not None and self.sub.stdin is not None
        self.sub.stdin.write(command + "\n")
        self.sub.stdin.flush()
        line = await self._readline()
        result: dict[str, Any] = json.loads(line)
        return result

    async def wait_received(
        self, phase: str, count: int, adapters: Sequence[str], timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Wait until the subscriber holds ``count`` distinct events of ``phase``
        from each of ``adapters`` (or ``timeout_s`` passed); returns
        ``{"reached": bool, "counts": {adapter: n}}``."""
        return await self._command(f"wait {phase} {count} {timeout_s} {','.join(adapters)}")

    async def receipts_posted(self, timeout_s: float = 30.0) -> dict[str, int]:
        """With ``receipts=True``: wait until the subscriber has posted every
        receipt it made so far; returns its counts (made, posted, dropped, rejected)."""
        if self._receipts_token is None:
            raise RuntimeError("the stack was made without receipts=True")
        return await self._command(f"receipts {timeout_s}")

    async def server_counters(self) -> dict[str, Any]:
        """What the Realtime server counted and refused so far (its
        ``snapshot()``: messages, refusals per quota, the judged rate)."""
        if self._embedded_server is not None:
            return self._embedded_server.snapshot()
        server = self.server
        if server is None or server.stdout is None:
            raise RuntimeError("no Realtime server in this stack")
        server.send_signal(signal.SIGUSR1)
        line = await asyncio.to_thread(server.stdout.readline)
        counters: dict[str, Any] = json.loads(line)
        return counters

    async def _stop(self, *, report: bool) -> None:
        try:
            if report and self.sub is not None and self.sub.poll() is None:
                self.report = await self._command("report")
        finally:
            try:
                await self._exit.aclose()
            finally:
                for proc in (self.sub, self.server):
                    if proc is not None:
                        end_process(proc)

    @property
    def broadcaster(self) -> Broadcaster:
        assert self.b is not None, "use 'async with Stack()'"
        return self.b

    def cpu_meter(self) -> ProcessCpu:
        """CPU seconds of the processes over a phase (the broadcaster's
        includes the Realtime server's when that is embedded)."""
        assert self.sub is not None
        pids = {"broadcaster": os.getpid(), "subscriber": self.sub.pid}
        if self.server is not None:
            pids["realtime_server"] = self.server.pid
        return ProcessCpu(pids)

    def single_write(self, single: bool) -> None:
        """Route every event to the WebSocket path only, or to both (override ``all``)."""
        b = self.broadcaster
        b.set_routing(b.routing.with_override("websocket" if single else "all"))

    async def phase(
        self,
        name: str,
        *,
        seconds: float,
        rate: float | None,
        producers: int = 4,
        max_batch: int = 100,
        single_calls: bool = False,
        category: str = "SYSTEM",
        payload_bytes: int = 200,
        adapters: Sequence[str] = ADAPTERS,
        drain_timeout_s: float = 60.0,
        alternate_s: float | None = None,
        call_cpu: bool = False,
    ) -> PhaseResult:
        """Publish for ``seconds`` at ``rate`` events/s (None: as fast as
        possible) from ``producers`` tasks, in ``publish_many`` calls of up to
        ``max_batch`` events (``single_calls``: one ``publish()`` per event),
        then wait until ``adapters`` delivered every event to the subscriber.

        ``alternate_s``: switch between dual- and single-write every so many
        seconds, starting with dual, and note per call which was in force when
        it began (``call_single``; routing is decided before ``publish()``'s
        first await, so the note is exact); ends in dual-write. ``call_cpu``
        (with ``single_calls``): also the loop thread's CPU time during each
        call (``call_cpu``), to tell a call's own work from its waiting.

        Figures: events, achieved (publish) and delivered (end-to-end) rates,
        publish-call latency, per-adapter latency/lost/duplicates, CPU seconds
        per process and the broadcaster's CPU µs per event.
        """
        b = self.broadcaster
        pad = padding(payload_bytes)
        # Burst: what the producers may publish at once to catch up after a
        # stall (a slow commit), never more than the batches they would send.
        bucket = TokenBucket(rate, burst=producers * max_batch if rate else 1.0)
        published = Bins(self._bin_s)
        call_latencies: list[float] = []
        call_single: list[bool] = []
        call_cpus: list[float] = []
        thread_time = time.thread_time if call_cpu else None
        single_now = [False]
        counts = [0] * producers
        calls = [0] * producers
        cpu = self.cpu_meter()
        started_t = time.time()
        started = time.monotonic()
        deadline = started + seconds
        cpu.start()

        async def produce(p: int) -> None:
            i = 0
            clock, perf = time.time, time.perf_counter
            while True:
                n = await bucket.take(1 if single_calls else max_batch, deadline)
                if not n:
                    break
                t = clock()
                single = single_now[0]
                if single_calls:
                    payload = {"t": t, "phase": name, "p": p, "i": i, "pad": pad}
                    c0 = thread_time() if thread_time is not None else 0.0
                    t0 = perf()
                    await b.publish(category, "bench.tick", payload)
                    dt = perf() - t0
                    if thread_time is not None:
                        call_cpus.append(thread_time() - c0)
                else:
                    events = [
                        {
                            "category": category,
                            "event_type": "bench.tick",
                            "payload": {"t": t, "phase": name, "p": p, "i": i + k, "pad": pad},
                        }
                        for k in range(n)
                    ]
                    t0 = perf()
                    await b.publish_many(events)
                    dt = perf() - t0
                i += n
                calls[p] += 1
                call_latencies.append(dt)
                call_single.append(single)
                published.add_many(clock(), [dt * 1000] * n)
            counts[p] = i

        async def alternate(period: float) -> None:
            try:
                while True:
                    await asyncio.sleep(period)
                    single_now[0] = not single_now[0]
                    self.single_write(single_now[0])
            finally:
                self.single_write(False)

        switcher = None
        if alternate_s is not None:
            self.single_write(False)
            switcher = asyncio.create_task(alternate(alternate_s))
        try:
            await asyncio.gather(*(produce(p) for p in range(producers)))
        finally:
            if switcher is not None:
                switcher.cancel()
                await asyncio.gather(switcher, return_exceptions=True)
        published_s = time.monotonic() - started
        events = sum(counts)
        await b.flush(timeout=drain_timeout_s)
        answer = await self.wait_received(name, events, adapters, drain_timeout_s)
        used = cpu.stop()
        progress(
            f"phase {name}: {events} events in {published_s:.2f}s "
            f"({events / published_s:.0f}/s), delivered {answer['counts']}"
        )
        return PhaseResult(
            name,
            {
                "events": events,
                "seconds": round(published_s, 3),
                "achieved_events_per_s": round(events / published_s),
                "publish_calls": sum(calls),
                "mean_batch": round(events / max(1, sum(calls)), 1),
                "publish_call_ms": {
                    k: v for k, v in summarise(call_latencies, 1000).items() if k != "max"
                },
                "cpu_s": used,
                "broadcaster_cpu_us_per_event": round(
                    used["broadcaster"] / max(1, events) * 1e6, 1
                ),
                "delivered": answer["counts"],
            },
            started_t,
            published,
            call_latencies=call_latencies,
            call_single=call_single if alternate_s is not None else [],
            call_cpu=call_cpus,
        )

    @property
    def reconnects(self) -> dict[str, int]:
        """After the stack closed: the WebSocket paths on which the subscriber
        was dropped (a fan-out closes one too slow to keep up) and how many
        times; events sent while it was away count as lost."""
        return {k: n for k, n in self.report.get("reconnects", {}).items() if n}

    def complete(self, results: Sequence[PhaseResult]) -> None:
        """After the stack closed: merge the subscriber's report into each
        phase's figures (latency per adapter, lost, duplicates, end-to-end rate)."""
        report = self.report
        reconnects = self.reconnects
        if reconnects:
            progress(
                f"the subscriber's WebSocket paths were dropped and reconnected {reconnects}:"
                " events sent while it was away count as lost in their phase"
            )
        for result in results:
            figures = result.figures
            events = figures["events"]
            last = result.started_t
            lost_total = 0
            for adapter in ADAPTERS:
                seen = report.get(f"{result.name}/{adapter}")
                if adapter not in figures["delivered"]:
                    continue
                if seen is None:
                    seen = {"received": 0, "duplicates": 0, "last_t": result.started_t, "bins": []}
                lost = events - seen["received"]
                lost_total += lost
                figures[adapter] = {
                    "received": seen["received"],
                    "lost": lost,
                    "duplicates": seen["duplicates"],
                    "p50_ms": seen.get("p50_ms", float("nan")),
                    "p99_ms": seen.get("p99_ms", float("nan")),
                    "p999_ms": seen.get("p999_ms", float("nan")),
                    "max_ms": seen.get("max_ms", float("nan")),
                }
                last = max(last, seen["last_t"])
                result.received[adapter] = seen["bins"]
            figures["lost"] = lost_total
            if lost_total and reconnects:
                # Not the broadcaster's loss: the fan-out dropped the measuring
                # subscriber (too slow; the broadcaster logs it) and what it
                # sent meanwhile went to no one here.
                figures["subscriber_reconnects"] = reconnects
            figures["delivered_events_per_s"] = round(events / max(1e-9, last - result.started_t))
            figures["checksum_mismatches"] = sum(report.get("mismatches", {}).values())
            del figures["delivered"]
