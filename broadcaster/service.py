"""``broadcaster serve``: the broadcaster as a service.

One process runs the WebSocket server, the Realtime adapter (with an embedded
local Realtime server when ``SUPABASE_URL`` is unset), the store (followed:
it delivers what any process appended), the reconcile schedule
(``RECONCILE_INTERVAL_S``, pruning after ``RETENTION_S``), the admin REST
API, with ``RECONCILE_PROBE`` a probe consumer per adapter
(:mod:`broadcaster.probes`), and the rollout controller (on the instance
that writes to Realtime: :mod:`broadcaster.rollout`). SIGTERM or SIGINT stops it in order: the admin
API first (no new events accepted), then the broadcaster waits for in-flight
events to be acknowledged or recorded pending, the probes stop and write
their last receipts, and the broadcaster closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from .admin import AdminServer, create_app, generate_token
from .cluster import REALTIME_LEASE, Membership
from .core import Broadcaster
from .exceptions import FlushTimeout, StoreError, StoreUnavailable
from .local_realtime import realtime_settings
from .metrics import BroadcasterMetrics
from .probes import Probes
from .reconcile.schedule import ReconcileSchedule
from .rollout.manager import DEFAULT_INTERVAL_S, RolloutController, Rollouts
from .security import TokenSet, mask_url_password
from .settings import Settings, parse_store_url

__all__ = ["run_service"]

log = structlog.get_logger("broadcaster.service")

# How long start-up waits for the probes' first connections before it
# announces the service anyway.
_PROBE_CONNECT_WAIT_S = 5.0


async def run_service(
    settings: Settings,
    *,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    drain_timeout_s: float = 30.0,
    on_ready: Callable[[Broadcaster, AdminServer], None] | None = None,
    freeze_gc: bool = False,
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives, then shut down
    gracefully. Prints the endpoints (and a generated admin token) to ``out``.
    Raises :class:`OSError` if a port cannot be bound and the store's errors
    if it cannot be opened.

    ``freeze_gc=True`` (what ``broadcaster serve`` does, as the owner of its
    process) calls :func:`gc.freeze` once everything is started: the objects
    built at startup (modules, pydantic models, clients: tens of thousands)
    live until shutdown, and every full collection walked them all, a stall
    of the event loop every few seconds under load (figures in
    loadtests/HISTORY.md). Frozen, a full collection walks only what is
    newer. Leave it off
    when the process is shared (tests, an application embedding the service).
    """
    stop = stop if stop is not None else asyncio.Event()
    tokens = settings.api_tokens()
    generated = None
    if not len(tokens):  # no token configured at all: one for this run, printed below
        generated = generate_token()
        tokens = TokenSet.of({"admin": generated})
    loop = asyncio.get_running_loop()
    # Signals can only be handled on the main thread; run elsewhere (a test's
    # thread, an embedding application), ``stop`` is the only way to end it.
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with (
            _one_service_per_sqlite_store(settings),
            realtime_settings(settings) as pushing,
            Broadcaster(pushing, follow_store=True, deferred=_deferred(settings)) as b,
        ):
            told: dict[str, Any] = {}
            cluster = Membership(
                b,
                instance_id=settings.instance_id,
                lease_s=settings.instance_lease_s,
                lease=bool(_deferred(settings)),
                info=lambda: _heartbeat_info(b, told),
            )
            await cluster.start()
            schedule = ReconcileSchedule.from_settings(b, settings)
            if schedule is not None:
                schedule.start()
            rollouts = Rollouts(b)
            # Rollouts are evaluated as often as reconciliation runs, by the
            # instance that writes to Realtime: the breaker they judge is its.
            controller = RolloutController(
                rollouts,
                interval_s=settings.reconcile_interval_s or DEFAULT_INTERVAL_S,
                drives=lambda: cluster.holding,
            )
            controller.start()
            probes = _probes(settings, b)
            try:
                metrics = BroadcasterMetrics(b)
                try:
                    async with AdminServer(
                        create_app(
                            b,
                            tokens,
                            metrics=metrics,
                            max_body_bytes=settings.admin_max_body_bytes,
                            probes=probes.health if probes is not None else None,
                            cluster=cluster,
                            rollouts=rollouts,
                        ),
                        settings.admin_host,
                        settings.admin_port,
                        tls_cert=settings.admin_tls_cert,
                        tls_key=settings.admin_tls_key,
                    ) as admin:
                        told["admin"] = admin.url
                        if probes is not None:
                            await _start_probes(probes)
                        if freeze_gc:
                            gc.freeze()
                        _announce(out, b, admin, generated, local=settings.supabase_url is None)
                        if on_ready is not None:
                            on_ready(b, admin)
                        await stop.wait()
                        log.info("shutting down: admin API first, then flushing in-flight events")
                finally:
                    metrics.close()
                try:
                    await b.flush(timeout=drain_timeout_s)
                except FlushTimeout as exc:  # reported; what is left stays in the store
                    log.warning("shutdown flush incomplete", error=str(exc))
                if probes is not None:
                    # What was just acknowledged is still on its way to them.
                    await probes.settle()
            finally:
                # First: another instance takes the Realtime lease at once.
                await cluster.close()
                await controller.stop()
                if schedule is not None:
                    await schedule.stop()
                # Before the broadcaster: their receipts go to its store.
                if probes is not None:
                    await probes.close()
        log.info("broadcaster stopped")
        out.write("broadcaster stopped\n")
        out.flush()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _one_service_per_sqlite_store(settings: Settings) -> AsyncIterator[None]:
    """Hold ``<database>.serve.lock`` (``flock``) while serving a SQLite store.

    Why: a service follows its store and re-sends what is undelivered at
    start; two on one file would each deliver every event. The lock is the
    kernel's, so it goes with the process, SIGKILL included."""
    spec = parse_store_url(settings.store_url)
    if spec.kind != "sqlite":
        yield
        return
    path = Path(f"{spec.path}.serve.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreUnavailable(f"sqlite {spec.path}: cannot open {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise StoreError(
                f"another broadcaster serve ({holder}) already serves {spec.path}:"
                " one service instance per SQLite store (use PostgreSQL for several)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _deferred(settings: Settings) -> tuple[str, ...]:
    """The lanes that wait for a lease: Realtime's, where several instances
    may share the store (PostgreSQL). One instance is all a SQLite store
    can have (see _one_service_per_sqlite_store): it always writes."""
    if parse_store_url(settings.store_url).kind == "postgresql":
        return (REALTIME_LEASE,)
    return ()


def _heartbeat_info(b: Broadcaster, told: Mapping[str, Any]) -> dict[str, Any]:
    """What this instance tells the others: where it serves, to how many
    WebSocket subscribers, and how far it has read the store."""
    ws = b.adapters.get("websocket")
    health = ws.health().extra if ws is not None else {}
    return {
        "websocket": getattr(ws, "url", None),
        "subscribers": health.get("subscribers", 0),
        "handed_through": b.handed_through,
        **told,
    }


def _probes(settings: Settings, b: Broadcaster) -> Probes | None:
    if not settings.reconcile_probe:
        return None
    return Probes.for_service(b.settings, b.store, b.adapters)


async def _start_probes(probes: Probes) -> None:
    """Start the probes; wait a little for their first connections, so that
    what is published once the banner is out reaches them, but never long:
    a probe that cannot connect keeps retrying in the background."""
    probes.start()
    if not await probes.wait_connected(_PROBE_CONNECT_WAIT_S):
        log.warning(
            "probes not all connected yet; they keep retrying",
            probes={name: h["last_error"] for name, h in probes.health().items()},
        )


def _announce(
    out: TextIO, b: Broadcaster, admin: AdminServer, generated: str | None, *, local: bool
) -> None:
    ws = getattr(b.adapters.get("websocket"), "url", None)
    realtime = b.settings.supabase_url
    if local:
        realtime = f"{realtime} (local stand-in: SUPABASE_URL is not set)"
    lines = [
        f"websocket  {ws}",
        f"realtime   {realtime}",
        f"store      {mask_url_password(b.settings.store_url)}",
        f"admin      {admin.url}",
        f"dashboard  {admin.url}/dashboard",
        f"metrics    {admin.url}/metrics",
    ]
    if generated is not None:
        lines.append(f"admin token (generated; set BROADCASTER_ADMIN_TOKEN to fix it): {generated}")
    out.write("\n".join(lines) + "\n")
    out.flush()
