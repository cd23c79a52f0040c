"""Probe consumers of ``broadcaster serve`` (SPEC 12): real subscribers of the
service's own WebSocket server and Realtime channels that write receipts as
``probe:<INSTANCE_ID>``, so that reconciliation judges events matched with no
other consumer running. Through real sockets, in-process service; the
``serve`` + ``reconcile`` round trip in child processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from broadcaster.admin import AdminServer
from broadcaster.admin.health import HealthView
from broadcaster.cli import main
from broadcaster.consumer import RealtimeSubscriber, ReceiptCollector, ReceiptPoster
from broadcaster.core import Broadcaster
from broadcaster.probes import probe_consumer, probe_ssl_context
from broadcaster.realtime_server import LocalRealtimeServer
from broadcaster.reconcile.matching import Outcome
from broadcaster.service import run_service
from broadcaster.settings import Settings, load_settings
from broadcaster.spawn import RealtimeServerProcess, free_port
from broadcaster.store import store_from_url
from tests._shapes import assert_shape
from tests._tls import make_certs
from tests.test_service import bound_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ADMIN = "probe-admin-token-0123456789"
CONSUMER = "probe-consumer-token-0123456789"
INSTANCE = "test-instance-1"


@dataclass
class Service:
    b: Broadcaster
    admin: AdminServer
    client: httpx.AsyncClient

    async def health(self) -> dict[str, Any]:
        response = await self.client.get("/health")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        return body

    async def post_events(self, events: list[dict[str, Any]]) -> list[int]:
        response = await self.client.post(
            "/events", json=events, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert response.status_code == 201, response.text
        return [r["sequence_id"] for r in response.json()]


def service_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store_url": f"sqlite:///{tmp_path / 'probes.db'}",
        "websocket_port": 0,
        "admin_port": 0,
        "reconcile_interval_s": 0,
        "broadcaster_admin_token": ADMIN,
        "instance_id": INSTANCE,
    }
    values.update(overrides)
    return load_settings(env_file=None, **values)


@asynccontextmanager
async def running(settings: Settings, verify: Any = True) -> AsyncIterator[Service]:
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Broadcaster, AdminServer]] = (
        asyncio.get_running_loop().create_future()
    )
    task = asyncio.create_task(
        run_service(
            settings, out=io.StringIO(), stop=stop, on_ready=lambda b, a: ready.set_result((b, a))
        )
    )
    try:
        b, admin = await asyncio.wait_for(ready, 30)
        async with httpx.AsyncClient(base_url=admin.url, verify=verify, timeout=30) as client:
            yield Service(b, admin, client)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait for ``condition()`` (sync or async) to be true, yielding to the
    loop between checks: the probes run on this loop."""
    async with asyncio.timeout(timeout):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover


async def receipts_by_adapter(store_url: str) -> dict[str, dict[int, list[Any]]]:
    """Receipts in the store per adapter: sequence id -> receipts."""
    found: dict[str, dict[int, list[Any]]] = {}
    async with store_from_url(store_url) as store:
        seq = 1
        while (stored := await store.get(seq)) is not None:
            for r in stored.receipts:
                found.setdefault(r.adapter, {}).setdefault(seq, []).append(r)
            seq += 1
    return found


EVENTS = [
    *({"category": "CRITICAL", "event_type": "probe.c", "payload": {"i": i}} for i in range(20)),
    *({"category": "SYSTEM", "event_type": "probe.s", "payload": {"i": i}} for i in range(20)),
]


async def test_probes_receipt_every_event_on_both_paths(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    async with running(settings) as svc:
        health = await svc.health()
        probes = health["probes"]
        assert set(probes) == {"websocket", "realtime"}
        assert all(p["connected"] for p in probes.values()), probes
        # The adapters' keys are unchanged beside it.
        assert set(health) == {"status", "store", "adapters", "probes", "cluster"}
        assert_shape(health, HealthView)
        assert health["status"] == "ok"
        ids = await svc.post_events(EVENTS)

        async def seen_all() -> bool:
            got = (await svc.health())["probes"]
            return all(p["received"] >= len(ids) for p in got.values())

        await until(seen_all, "the probes did not receive every event")
        probes = (await svc.health())["probes"]
        for p in probes.values():
            assert (p["received"], p["verified"], p["mismatches"]) == (40, 40, 0)
    # Stopped: every receipt was written before the store closed.
    receipts = await receipts_by_adapter(settings.store_url)
    for adapter in ("websocket", "realtime"):
        assert sorted(receipts[adapter]) == ids
        for rs in receipts[adapter].values():
            assert [(r.consumer, r.checksum_ok) for r in rs] == [(probe_consumer(INSTANCE), True)]
    # Registered as watching both paths, through the last event.
    async with store_from_url(settings.store_url) as store:
        consumers = {(c.consumer, c.adapter): c for c in await store.consumers()}
    for adapter in ("websocket", "realtime"):
        info = consumers[(probe_consumer(INSTANCE), adapter)]
        assert (info.from_sequence_id, info.through_sequence_id) == (1, ids[-1])


async def test_reconcile_probe_false_starts_none(tmp_path: Path) -> None:
    settings = service_settings(tmp_path, reconcile_probe=False)
    async with running(settings) as svc:
        health = await svc.health()
        assert "probes" not in health
        adapter = svc.b.adapters["websocket"]
        assert adapter.health().extra["subscribers"] == 0
        await svc.post_events(EVENTS[:5])
    assert await receipts_by_adapter(settings.store_url) == {}


async def test_probes_over_wss_with_a_required_token_and_signed_events(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    settings = service_settings(
        tmp_path,
        broadcaster_tokens=json.dumps({"tail": {"token": CONSUMER, "scope": "consumer"}}),
        admin_tls_cert=certs.cert,
        admin_tls_key=certs.key,
        websocket_tls_cert=certs.cert,
        websocket_tls_key=certs.key,
        websocket_require_token=True,
        event_signing_key="probe-signing-key-0123456789",
        event_signing_key_id="k1",
    )
    async with running(settings, verify=certs.client_context()) as svc:
        assert svc.b.adapters["websocket"].health().detail.startswith("wss://")
        probes = (await svc.health())["probes"]
        assert all(p["connected"] for p in probes.values()), probes
        ids = await svc.post_events(EVENTS)

        async def seen_all() -> bool:
            got = (await svc.health())["probes"]
            return all(p["received"] >= len(ids) for p in got.values())

        await until(seen_all, "the probes did not receive every event")
        for p in (await svc.health())["probes"].values():
            # Verified counts only events whose signature checked out too.
            assert (p["verified"], p["mismatches"]) == (len(ids), 0)
    receipts = await receipts_by_adapter(settings.store_url)
    assert sorted(receipts["websocket"]) == sorted(receipts["realtime"]) == ids


async def test_probes_with_the_admin_token_when_no_consumer_token_exists(tmp_path: Path) -> None:
    settings = service_settings(tmp_path, websocket_require_token=True)
    async with running(settings) as svc:
        probes = (await svc.health())["probes"]
        assert probes["websocket"]["connected"], probes
        await svc.post_events(EVENTS[:3])

        async def seen() -> bool:
            return bool((await svc.health())["probes"]["websocket"]["verified"] == 3)

        await until(seen, "the websocket probe did not verify the events")


async def test_a_probe_that_cannot_connect_retries_until_it_can(tmp_path: Path) -> None:
    # SUPABASE_URL names a Realtime server that is not up yet: the service
    # starts anyway, the probe retries (and says why on /health), and joins
    # once the server is there.
    port, admin_port = free_port(), free_port()
    key = "realtime-key-0123456789"
    settings = service_settings(
        tmp_path,
        supabase_url=f"http://127.0.0.1:{port}",
        supabase_key=key,
        admin_port=admin_port,
        # The adapter was down at start too: its pending events go soon after.
        breaker_recovery_time_s=0.2,
    )
    service = asyncio.create_task(_enter(settings))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as client:

        async def refused() -> bool:
            try:
                body = (await client.get("/health")).json()
            except httpx.TransportError:
                return False  # the admin API is not listening yet
            probe = body.get("probes", {}).get("realtime", {})
            return probe.get("last_error") is not None and not probe["connected"]

        await until(refused, "the realtime probe never reported a failed connection")
        server = LocalRealtimeServer(host="127.0.0.1", port=port, key=key)
        await server.start()
        try:
            svc, exit_stack = await asyncio.wait_for(service, 30)
            try:

                async def joined() -> bool:
                    return bool((await svc.health())["probes"]["realtime"]["connected"])

                await until(joined, "the realtime probe did not connect once it could")
                ids = await svc.post_events(EVENTS[:5])

                async def seen() -> bool:
                    return bool((await svc.health())["probes"]["realtime"]["verified"] == 5)

                await until(seen, "the realtime probe did not receive the events")
            finally:
                await exit_stack.aclose()
        finally:
            await server.close()
    receipts = await receipts_by_adapter(settings.store_url)
    assert sorted(receipts["realtime"]) == ids


async def _enter(settings: Settings) -> tuple[Service, AsyncExitStack]:
    stack = AsyncExitStack()
    svc = await stack.enter_async_context(running(settings))
    return svc, stack


def test_probe_ssl_context_trusts_only_the_given_certificate(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    context = probe_ssl_context(certs.cert)
    assert context.verify_mode.name == "CERT_REQUIRED" and not context.check_hostname
    (tmp_path / "empty.pem").write_text("no certificate here\n")
    with pytest.raises(ValueError, match="no PEM certificate"):
        probe_ssl_context(tmp_path / "empty.pem")


# -- serve and reconcile in child processes --------------------------------------------


class Serve:
    """``python -m broadcaster serve`` as a child process, on free ports."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.store_url = f"sqlite:///{tmp_path / 'serve.db'}"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DUAL_WRITE_", "ADAPTER_", "BREAKER_", "RECONCILE_", "SUPABASE"))
        }
        self.env.update(
            STORE_URL=self.store_url,
            # Port 0: bound by the service, as it prints (nothing can take it
            # between a pick here and the bind there).
            ADMIN_PORT="0",
            WEBSOCKET_PORT="0",
            BROADCASTER_ADMIN_TOKEN=ADMIN,
            RECONCILE_INTERVAL_S="0",
            # Judged as soon as reconcile runs: a receipt is matched at once
            # (however slow a loaded test machine delivers: the window is
            # wide), and nothing is old enough to be missing without one.
            RECONCILE_BUFFER_S="0",
            RECONCILE_WINDOW_S="600",
            RECONCILE_MAX_DELAY_S="600",
            LOG_FORMAT="json",
            **env,
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=REPO,
        )
        lines = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            lines.append(line)
            if line.startswith("metrics"):
                break
        if not any(line.startswith("admin") for line in lines):
            self.proc.kill()
            _, err = self.proc.communicate(timeout=60)
            raise AssertionError(f"serve did not start: {lines} {err}")
        self.ws_url = next(line.split()[1] for line in lines if line.startswith("websocket"))
        self.admin_port = bound_port(lines, "admin")
        self.env["ADMIN_PORT"] = str(self.admin_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=120,
        )

    def publish(self, n: int, batch: int = 1000) -> list[dict[str, Any]]:
        """``n`` events through ``POST /events``, half CRITICAL, half SYSTEM
        (both routed to both adapters by default); their receipts."""
        receipts: list[dict[str, Any]] = []
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for start in range(0, n, batch):
                events = [
                    {
                        "category": "CRITICAL" if i % 2 else "SYSTEM",
                        "event_type": "e2e",
                        "payload": {"i": i},
                    }
                    for i in range(start, min(n, start + batch))
                ]
                response = client.post(
                    "/events", json=events, headers={"Authorization": f"Bearer {ADMIN}"}
                )
                assert response.status_code == 201, response.text
                receipts.extend(response.json())
        return receipts

    def probes(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/health", timeout=30).json()["probes"]
        return body

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Block until ``condition()`` (the service is another process)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(what)
        time.sleep(0.05)


def reconcile_report(serve: Serve) -> tuple[int, dict[str, Any]]:
    result = serve.cli("reconcile", "--json")
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


#: Events each end-to-end run posts: several batches of receipts (at most
#: 1 000 each) from every consumer.
E2E_EVENTS = 2_500


def matched_per_adapter(report: dict[str, Any]) -> dict[str, int]:
    matched: dict[str, int] = {}
    for adapters in report["categories"].values():
        for adapter, row in adapters.items():
            matched[adapter] = matched.get(adapter, 0) + row["matched"]
    return matched


def test_serve_with_only_its_probes_reconciles_every_event_matched(tmp_path: Path) -> None:
    serve = Serve(tmp_path, INSTANCE_ID="e2e-probes")
    try:
        receipts = serve.publish(E2E_EVENTS)
        last = receipts[-1]["sequence_id"]
        wait_for(
            lambda: all(p["received"] >= len(receipts) for p in serve.probes().values()),
            "the probes did not receive every event",
        )
        probes = serve.probes()
    finally:
        code, err = serve.stop()
    assert code == 0, err
    assert "Task was destroyed" not in err and "ResourceWarning" not in err
    assert all(p["mismatches"] == 0 for p in probes.values()), probes
    routed: dict[str, int] = {}
    for r in receipts:
        for adapter in r["routed_to"]:
            routed[adapter] = routed.get(adapter, 0) + 1
    assert routed == {"websocket": E2E_EVENTS, "realtime": E2E_EVENTS} and last == E2E_EVENTS
    code, report = reconcile_report(serve)
    assert code == 0, report
    assert matched_per_adapter(report) == routed
    assert report["totals"]["missing"] == 0 and report["totals"]["mismatch"] == 0


def test_subscribe_report_in_its_own_process_reports_under_its_consumer_name(
    tmp_path: Path,
) -> None:
    # serve and `subscribe --report` in separate processes, default settings
    # otherwise (the probes on): every event is matched on each routed path,
    # and the subscriber's receipts are in the store.
    serve = Serve(tmp_path, INSTANCE_ID="e2e-report")
    sub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broadcaster",
            "--env-file",
            "/dev/null",
            "subscribe",
            "--url",
            serve.ws_url,
            "--report",
            "--consumer",
            "sub-e2e",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=serve.env,
        cwd=REPO,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert sub.stdout is not None
    stdout = sub.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        # Until the subscriber prints one, it may not be connected yet.
        warmups = 0
        while True:
            serve.publish(1)
            warmups += 1
            try:
                lines.get(timeout=0.5)
                break
            except queue.Empty:
                assert warmups < 120, "the subscriber never received an event"
        receipts = serve.publish(E2E_EVENTS)
        last = receipts[-1]["sequence_id"]
        while not lines.get(timeout=60).startswith(f"{last} "):
            pass
        sub.send_signal(signal.SIGINT)  # Ctrl-C: it posts what it holds, then exits
        _, err = sub.communicate(timeout=60)
        wait_for(
            lambda: all(p["received"] >= last for p in serve.probes().values()),
            "the probes did not receive every event",
        )
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
        code, serve_err = serve.stop()
    assert sub.returncode == 0, err
    assert code == 0, serve_err
    summary = [line for line in err.splitlines() if line.startswith("receipts as sub-e2e")]
    assert len(summary) == 1 and "dropped 0, rejected 0" in summary[0], err
    # Every event, warm-ups included, went to both paths and was matched there.
    code, report = reconcile_report(serve)
    assert code == 0, report
    assert matched_per_adapter(report) == {"websocket": last, "realtime": last}, report["totals"]
    assert report["totals"]["missing"] == 0 and report["totals"]["mismatch"] == 0
    watching = {(c["consumer"], c["adapter"]): c for c in report["consumers"]}
    assert watching[("sub-e2e", "websocket")]["through_sequence_id"] == last
    assert watching[("probe:e2e-report", "realtime")]["through_sequence_id"] == last
    found = asyncio.run(receipts_by_adapter(serve.store_url))
    from_sub = {
        seq for seq, rs in found["websocket"].items() if any(r.consumer == "sub-e2e" for r in rs)
    }
    # Connected throughout the E2E_EVENTS (and for the warm-up it printed).
    assert set(range(last - E2E_EVENTS + 1, last + 1)) <= from_sub


async def test_a_realtime_consumer_reports_through_a_receipt_poster(tmp_path: Path) -> None:
    # broadcaster.consumer's Realtime subscriber, elsewhere in a deployment:
    # its collector feeds a ReceiptPoster that posts to the service.
    settings = service_settings(tmp_path, reconcile_probe=False)
    async with running(settings) as svc:
        # serve started a local stand-in and pushes to it (SUPABASE_URL unset).
        url, key = svc.b.settings.supabase_url, svc.b.settings.supabase_key
        assert settings.supabase_url is None and url is not None and key is not None
        async with ReceiptPoster(svc.admin.url, ADMIN, interval_s=0.05) as poster:
            collector = ReceiptCollector("realtime", consumer="browser-1", on_receipt=poster.add)
            async with RealtimeSubscriber(url, key.get_secret_value(), collector=collector):
                ids = await svc.post_events(EVENTS)
                await until(lambda: poster.stats.posted == len(ids), "receipts not posted")
        assert poster.stats.mismatches == 0 and poster.stats.unknown == 0
    receipts = await receipts_by_adapter(settings.store_url)
    assert sorted(receipts["realtime"]) == ids and "websocket" not in receipts
    assert {r.consumer for rs in receipts["realtime"].values() for r in rs} == {"browser-1"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--consumer", "x"], "--consumer and --admin-url need --report"),
        (["--admin-url", "http://127.0.0.1:1"], "--consumer and --admin-url need --report"),
        (["--report", "--consumer", "x" * 129, "--token", ADMIN], "--consumer: 1-128"),
        (["--report"], "no token for POST /receipts"),
    ],
)
def test_subscribe_report_arguments(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert main(["--env-file", "/dev/null", "subscribe", *argv]) == 2
    assert says in capsys.readouterr().err


async def test_a_killed_realtime_server_shows_as_missing_then_repaired_never_silent(
    tmp_path: Path,
) -> None:
    server = RealtimeServerProcess(key="realtime-key-0123456789")
    port, key = server.port, server.key
    settings = service_settings(
        tmp_path,
        supabase_url=f"http://127.0.0.1:{port}",
        supabase_key=key,
        breaker_recovery_time_s=0.2,
        reconcile_window_s=1,
        reconcile_buffer_s=0,
        reconcile_max_delay_s=1,
    )
    await server.start()
    batch = [
        {"category": "CRITICAL", "event_type": "rt.kill", "payload": {"i": i}} for i in range(20)
    ]
    try:
        async with running(settings) as svc:

            async def probe(key_: str) -> Any:
                return (await svc.health())["probes"]["realtime"][key_]

            async def verified(n: int) -> bool:
                return bool(await probe("verified") >= n)

            await until(lambda: probe("connected"), "the realtime probe never connected")
            ids = await svc.post_events(batch)
            await until(lambda: verified(20), "the probe did not get the first events")
            await server.kill()  # SIGKILL, mid-stream
            ids += await svc.post_events(batch)  # while the server is dead
            await server.start()
            await until(lambda: probe("connected"), "the probe did not reconnect", timeout=60)
            ids += await svc.post_events(batch)
            await svc.b.flush(timeout=60)
            await asyncio.sleep(1.5)  # past the 1 s max delay: what nobody got is missing
            await svc.b.store.record_receipts([])  # the probes' writer flushes on its own tick

            async def judged() -> Any:
                report = await svc.b.reconcile()
                return report if report.total(Outcome.AWAITING) == 0 else None

            await until(judged, "reconciliation kept awaiting")
            before = await svc.b.reconcile()
            missing = set(before.missing.get("realtime", []))
            assert missing <= set(ids[20:]) and before.total(Outcome.UNOBSERVED) == 0
            queued = await svc.b.repair(before)
            await svc.b.flush(timeout=60)

            async def repaired() -> bool:
                # Pending: held while the breaker ramps back, backfilled after.
                report = await svc.b.reconcile()
                return report.unrepaired_loss == 0 and report.total(Outcome.PENDING) == 0

            await until(repaired, "repair did not bring the missing events to the probe")
            after = await svc.b.reconcile()
    finally:
        await server.kill()
    realtime = {
        outcome: n for (_, adapter, outcome), n in after.counts.items() if adapter == "realtime"
    }
    # Every event on the path ends received by the probe: on time, late, or
    # missing first and then repaired; none unobserved, none missing.
    assert sum(realtime.values()) == len(ids) == 60
    assert set(realtime) <= {"matched", "late", "repaired"}
    assert realtime.get("repaired", 0) == len(missing) == queued.get("realtime", 0)
