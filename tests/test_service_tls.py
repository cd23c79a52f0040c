"""``broadcaster serve`` with the SPEC 13 transport settings: https for the
admin API, wss and subscriber tokens for the WebSocket path, and start-up
refused (exit 2, one line) when no configured token could subscribe."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import httpx
import pytest

from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.admin import AdminServer
from broadcaster.cli import main
from broadcaster.consumer import ReceiptCollector, WebSocketSubscriber
from broadcaster.core import Broadcaster
from broadcaster.exceptions import AdapterRejected
from broadcaster.service import run_service
from broadcaster.settings import load_settings
from tests._tls import make_certs

pytestmark = pytest.mark.slow

ADMIN = "admin-secret-0123456789"
CONSUMER = "consumer-secret-0123456789"


async def test_run_service_serves_https_and_wss_with_tokens(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    settings = load_settings(
        env_file=None,
        store_url="memory://",
        websocket_port=0,
        admin_port=0,
        reconcile_interval_s=0,
        broadcaster_admin_token=ADMIN,
        broadcaster_tokens=json.dumps({"tail": {"token": CONSUMER, "scope": "consumer"}}),
        admin_tls_cert=certs.cert,
        admin_tls_key=certs.key,
        websocket_tls_cert=certs.cert,
        websocket_tls_key=certs.key,
        websocket_require_token=True,
    )
    out = io.StringIO()
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Broadcaster, AdminServer]] = (
        asyncio.get_running_loop().create_future()
    )
    task = asyncio.create_task(
        run_service(settings, out=out, stop=stop, on_ready=lambda b, a: ready.set_result((b, a)))
    )
    try:
        b, admin = await asyncio.wait_for(ready, 30)
        ws = b.adapters["websocket"]
        assert isinstance(ws, WebSocketAdapter)
        ws_url = ws.url
        assert admin.url.startswith("https://") and ws_url.startswith("wss://")
        assert f"admin      {admin.url}" in out.getvalue()
        assert f"websocket  {ws_url}" in out.getvalue()
        async with httpx.AsyncClient(base_url=admin.url, verify=certs.client_context()) as http:
            assert (await http.get("/health")).status_code == 200
        collector = ReceiptCollector("websocket")
        async with WebSocketSubscriber(
            ws_url, collector=collector, ssl=certs.client_context(), token=CONSUMER
        ) as sub:
            receipt = await b.publish("CRITICAL", "tls.check", {"ok": True})
            await sub.wait_for(1, timeout=10)
        assert collector.stats.verified == 1 and receipt.sequence_id == 1
        anonymous = WebSocketSubscriber(ws_url, collector=collector, ssl=certs.client_context())
        with pytest.raises(AdapterRejected, match="HTTP 401"):
            await anonymous.start()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_serve_refuses_a_token_requirement_no_token_can_meet(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STORE_URL", "memory://")
    monkeypatch.setenv("ADMIN_PORT", "0")
    monkeypatch.setenv("WEBSOCKET_PORT", "0")
    monkeypatch.setenv("WEBSOCKET_REQUIRE_TOKEN", "true")
    assert main(["--env-file", "/dev/null", "serve"]) == 2
    err = [
        line for line in capsys.readouterr().err.splitlines() if "WEBSOCKET_REQUIRE_TOKEN" in line
    ]
    assert len(err) == 1 and err[0].startswith("configuration error: WEBSOCKET_REQUIRE_TOKEN=true")
