"""The system under test for the end-to-end scenarios.

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

:meth:`Stack.phase` runs producers for a while and returns the figures
(:mod:`loadtests._phases`, whose :class:`PhaseResult` is re-exported here).
Background reconciliation is off (``RECONCILE_INTERVAL_S=0``) so results do
not depend on whether a run happened to span a reconcile tick.

The stand-ins for the second path are in :mod:`loadtests._second_paths`.
This module starts, talks to and stops the stack's processes.
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
from collections.abc import Sequence
from contextlib import AsyncExitStack
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
    ProcessCpu,
    free_port,
    progress,
    running_loop_name,
    spawn,
)
from ._phases import PhaseResult, PhasesMixin
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


class Stack(PhasesMixin):
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
        # full collections then skip the objects built at startup, which would
        # otherwise stall the loop every few seconds at high event rates.
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
