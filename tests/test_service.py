"""``broadcaster serve``: the whole service in one process — in-process for the
details, as a real child process for SIGTERM and ``reconcile --repair``."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from broadcaster.admin import AdminServer
from broadcaster.core import Broadcaster
from broadcaster.service import run_service
from broadcaster.settings import load_settings
from broadcaster.store import store_from_url
from broadcaster.store.base import DeliveryState

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TOKEN = "service-token-0123456789"


async def test_run_service_serves_the_admin_api_and_flushes_on_stop(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'svc.db'}"
    settings = load_settings(
        env_file=None,
        store_url=store_url,
        websocket_port=0,
        admin_port=0,
        reconcile_interval_s=0,
    )
    out = io.StringIO()
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Broadcaster, AdminServer]] = (
        asyncio.get_running_loop().create_future()
    )
    task = asyncio.create_task(
        run_service(settings, out=out, stop=stop, on_ready=lambda b, a: ready.set_result((b, a)))
    )
    b, admin = await asyncio.wait_for(ready, 30)
    text = out.getvalue()
    token = text.split("admin token (generated; set BROADCASTER_ADMIN_TOKEN to fix it): ")[1]
    token = token.split()[0]
    assert f"dashboard  {admin.url}/dashboard" in text and "websocket  ws://" in text
    async with httpx.AsyncClient(base_url=admin.url) as client:
        events = [
            {"category": "CRITICAL", "event_type": "svc", "payload": {"i": i}} for i in range(50)
        ]
        response = await client.post(
            "/events", json=events, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 201, response.text
        assert (await client.get("/health")).json()["status"] == "ok"
    stop.set()
    await asyncio.wait_for(task, 30)
    assert out.getvalue().endswith("broadcaster stopped\n")
    assert not b.running
    async with store_from_url(store_url) as store:
        for seq in range(1, 51):
            stored = await store.get(seq)
            assert stored is not None
            assert set(stored.states.values()) == {DeliveryState.ACKED}


@pytest.mark.parametrize("freeze", [False, True])
async def test_freeze_gc_freezes_what_startup_built(tmp_path: Path, freeze: bool) -> None:
    settings = load_settings(
        env_file=None,
        store_url=f"sqlite:///{tmp_path / 'svc.db'}",
        websocket_port=0,
        admin_port=0,
        reconcile_interval_s=0,
        broadcaster_admin_token=TOKEN,
    )
    stop = asyncio.Event()
    frozen: list[int] = []

    def ready(b: Broadcaster, admin: AdminServer) -> None:
        frozen.append(gc.get_freeze_count())
        stop.set()

    before = gc.get_freeze_count()
    try:
        await run_service(settings, out=io.StringIO(), stop=stop, on_ready=ready, freeze_gc=freeze)
    finally:
        gc.unfreeze()  # this process is shared with other tests
    # Frozen: at least the broadcaster, its adapters and clients (thousands of objects).
    assert (frozen[0] - before > 1000) if freeze else frozen == [before]


async def test_port_in_use_fails_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = load_settings(
            env_file=None,
            store_url=f"sqlite:///{tmp_path / 'svc.db'}",
            websocket_port=0,
            admin_port=taken.getsockname()[1],
            broadcaster_admin_token=TOKEN,
        )
        with pytest.raises(OSError, match="admin API cannot listen"):
            await run_service(settings, out=io.StringIO(), stop=asyncio.Event())


def bound_port(lines: list[str], name: str) -> int:
    """The port of the URL ``serve`` printed on its ``name`` line."""
    url = next(line.split()[1] for line in lines if line.startswith(name))
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


class Child:
    """``python -m broadcaster serve`` as a separate process."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.store_url = env.pop("STORE_URL", f"sqlite:///{tmp_path / 'child.db'}")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DUAL_WRITE_", "ADAPTER_", "BREAKER_", "RECONCILE_", "SUPABASE"))
        }
        self.env.update(
            STORE_URL=self.store_url,
            # Port 0: the service binds what is free and prints it; a port
            # picked here could be taken by another test before it binds.
            ADMIN_PORT="0",
            WEBSOCKET_PORT="0",
            BROADCASTER_ADMIN_TOKEN=TOKEN,
            RECONCILE_INTERVAL_S="0",
            LOG_FORMAT="json",
        )
        self.env.update(env)  # the test's settings win
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("metrics"):
                break
        if not any(line.startswith("admin") for line in self.lines):
            # Reap it and close its pipes here: left to the garbage collector
            # they fail whichever test runs next (an unclosed-file warning).
            self.proc.kill()
            _, err = self.proc.communicate(timeout=60)
            raise AssertionError(f"serve did not start: {self.lines} {err}")
        self.admin_port = bound_port(self.lines, "admin")
        # What it bound, for the CLI commands and restarts that use self.env.
        self.env["ADMIN_PORT"] = str(self.admin_port)
        self.env["WEBSOCKET_PORT"] = str(bound_port(self.lines, "websocket"))

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

    def stop(self) -> tuple[int, str, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


def test_sigterm_flushes_in_flight_events_and_exits_0(tmp_path: Path) -> None:
    child = Child(tmp_path)
    try:
        assert not any("admin token (generated" in line for line in child.lines)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        sent = 0
        with httpx.Client(base_url=child.url, timeout=30) as client:
            for batch in range(5):
                events = [
                    {"category": "SYSTEM", "event_type": "svc", "payload": {"b": batch, "i": i}}
                    for i in range(200)
                ]
                response = client.post("/events", json=events, headers=headers)
                assert response.status_code == 201, response.text
                sent += len(response.json())
    finally:
        code, out, err = child.stop()
    assert code == 0, err
    assert "broadcaster stopped" in out
    assert "Traceback" not in err

    async def check() -> None:
        async with store_from_url(child.store_url) as store:
            stats = await store.stats()
            assert stats.last_sequence_id == sent == 1000
            # Everything published before SIGTERM was acknowledged by both paths.
            for adapter in ("websocket", "realtime"):
                assert stats.states[adapter] == {"acked": 1000}, stats.states

    asyncio.run(check())


def test_reconcile_repair_goes_through_the_running_service(tmp_path: Path) -> None:
    # The only consumer records no receipts (and the probes are off), so once
    # past the (tiny) max delay every event is "missing" on both paths: repair
    # re-sends them all.
    child = Child(
        tmp_path,
        RECONCILE_PROBE="false",
        RECONCILE_WINDOW_S="0.001",
        RECONCILE_BUFFER_S="0",
        RECONCILE_MAX_DELAY_S="0.001",
    )
    try:
        # A consumer that watches both paths and never reports: from now on
        # an event nobody received is missing, not unobserved.
        async def watch() -> None:
            async with store_from_url(child.store_url) as store:
                for adapter in ("websocket", "realtime"):
                    await store.register_consumer("deaf", adapter, 0)

        asyncio.run(watch())
        with httpx.Client(base_url=child.url, timeout=30) as client:
            response = client.post(
                "/events",
                json=[{"category": "CRITICAL", "event_type": "r", "payload": {}}] * 5,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert response.status_code == 201
        report = child.cli("reconcile")  # offline, straight from the store: loss
        assert report.returncode == 1 and "unrepaired loss: 10" in report.stdout
        repair = child.cli("reconcile", "--repair")
        assert repair.returncode == 0, repair.stderr
        assert "repair queued on websocket: 5 events" in repair.stdout
        assert "repair queued on realtime: 5 events" in repair.stdout
        with httpx.Client(base_url=child.url, timeout=30) as client:
            trace = client.get("/events/1", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert trace["adapters"]["realtime"]["state"] in ("repaired", "queued", "acked")
        explicit = child.cli("reconcile", "--repair", "--admin-url", child.url, "--json")
        assert explicit.returncode == 0, explicit.stderr  # nothing missing any more
    finally:
        code, _, err = child.stop()
    assert code == 0, err
    # The service is gone: repair cannot run, and says why.
    gone = child.cli("reconcile", "--repair")
    assert gone.returncode == 1 and "not reachable" in gone.stderr
    env = {k: v for k, v in child.env.items() if k != "BROADCASTER_ADMIN_TOKEN"}
    no_token = subprocess.run(
        [
            sys.executable,
            "-m",
            "broadcaster",
            "--env-file",
            "/dev/null",
            "reconcile",
            "--repair",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert no_token.returncode == 2 and "BROADCASTER_ADMIN_TOKEN" in no_token.stderr
