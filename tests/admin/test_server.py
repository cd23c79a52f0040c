"""AdminServer on real sockets: https with a certificate made here (trustme),
the header-read deadline and the connection cap (SPEC 13). A small FastAPI
app stands in for the admin API: what is tested is the server around it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from uvicorn.server import ServerState

from broadcaster.admin import AdminServer
from broadcaster.admin._header_timeout import UVICORN_INTERNALS
from broadcaster.admin.server import HEADER_TIMEOUT_S, MAX_CONNECTIONS, MAX_HEADER_BYTES
from broadcaster.exceptions import ConfigError
from tests._tls import Certs, make_certs

#: Short enough to keep the tests quick; the deadline itself is awaited as
#: the server's close, never slept for.
SHORT = 0.3


def tiny_app(release: asyncio.Event | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/who")
    async def who(request: Request) -> dict[str, object]:
        assert request.client is not None
        return {"port": request.client.port, "scheme": request.url.scheme}

    @app.get("/slow")
    async def slow(request: Request) -> dict[str, object]:
        assert release is not None and request.client is not None
        await release.wait()
        return {"port": request.client.port}

    return app


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "tls")


@pytest.fixture
async def https_server(certs: Certs) -> AsyncIterator[AdminServer]:
    async with AdminServer(
        tiny_app(), port=0, tls_cert=certs.cert, tls_key=certs.key, header_timeout=SHORT
    ) as server:
        yield server


async def open_raw(
    server: AdminServer, certs: Certs | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = certs.client_context() if certs is not None else None
    return await asyncio.open_connection(server.host, server.port, ssl=context)


async def closed_by_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Everything the server sent until it closed the connection."""
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass  # the server went first


# -- TLS -----------------------------------------------------------------------


async def test_https_for_a_client_that_trusts_the_ca(
    https_server: AdminServer, certs: Certs
) -> None:
    assert https_server.url == f"https://127.0.0.1:{https_server.port}"
    async with httpx.AsyncClient(base_url=https_server.url, verify=certs.client_context()) as c:
        response = await c.get("/who")
    assert response.status_code == 200
    assert response.json()["scheme"] == "https"


async def test_a_client_that_does_not_trust_the_ca_is_refused(https_server: AdminServer) -> None:
    async with httpx.AsyncClient(base_url=https_server.url) as client:  # system trust store
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get("/who")


async def test_plain_http_to_the_tls_port_gets_no_answer(https_server: AdminServer) -> None:
    plain = https_server.url.replace("https://", "http://")
    async with httpx.AsyncClient(base_url=plain) as client:
        with pytest.raises(httpx.TransportError):
            await client.get("/who")


async def test_plain_http_without_tls_settings() -> None:
    async with AdminServer(tiny_app(), port=0) as server:
        assert server.url.startswith("http://")
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/who")).json()["scheme"] == "http"


def test_a_file_that_is_not_a_certificate_stops_start_up(tmp_path: Path, certs: Certs) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        AdminServer(tiny_app(), port=0, tls_cert=junk, tls_key=certs.key)
    assert info.value.variable == "ADMIN_TLS_CERT"
    with pytest.raises(ConfigError, match="ADMIN_TLS_KEY"):  # a key that does not match
        AdminServer(tiny_app(), port=0, tls_cert=certs.cert, tls_key=make_certs(tmp_path).key)


# -- header-read deadline ------------------------------------------------------


def test_the_deadline_and_cap_defaults() -> None:
    assert 1 <= HEADER_TIMEOUT_S <= 30
    assert MAX_CONNECTIONS >= 1000
    with pytest.raises(ValueError, match="header_timeout"):
        AdminServer(tiny_app(), port=0, header_timeout=0)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_half_sent_requests_are_closed_after_the_header_timeout(
    certs: Certs, tls: bool
) -> None:
    async with AdminServer(
        tiny_app(),
        port=0,
        header_timeout=SHORT,
        tls_cert=certs.cert if tls else None,
        tls_key=certs.key if tls else None,
    ) as server:
        trust = certs if tls else None

        async def half_sent(i: int) -> tuple[bytes, float]:
            opened = time.monotonic()  # before the server's clock for it starts
            reader, writer = await open_raw(server, trust)
            if i % 2:  # half of them send part of a request, the rest nothing
                writer.write(b"GET /who HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                # On a busy machine the deadline may already have passed.
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
            reply = await closed_by_server(reader, writer)
            return reply, time.monotonic() - opened

        results = await asyncio.gather(*(half_sent(i) for i in range(20)))
        assert [reply for reply, _ in results] == [b""] * 20  # closed, with no response
        assert all(waited >= SHORT * 0.9 for _, waited in results)  # not before the deadline
        # The server is as good as new for complete requests.
        async with httpx.AsyncClient(
            base_url=server.url, verify=certs.client_context() if tls else True
        ) as client:
            assert (await client.get("/who")).status_code == 200


async def test_complete_requests_and_keep_alive_outlive_the_header_timeout() -> None:
    release = asyncio.Event()
    async with (
        AdminServer(tiny_app(release), port=0, header_timeout=SHORT) as server,
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        slow = asyncio.create_task(client.get("/slow"))
        # A half-sent request's close proves the deadline has passed while the
        # complete one was still being served.
        reader, writer = await open_raw(server, None)
        writer.write(b"GET /who HTTP/1.1\r\n")
        assert await closed_by_server(reader, writer) == b""
        release.set()
        first = await slow
        assert first.status_code == 200
        # The next requests reuse the same (keep-alive) connection.
        again = [await client.get("/who") for _ in range(3)]
        assert [r.json()["port"] for r in again] == [first.json()["port"]] * 3


async def test_headers_over_the_cap_get_400() -> None:
    async with AdminServer(tiny_app(), port=0) as server:
        reader, writer = await open_raw(server, None)
        writer.write(b"GET /who HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1))
        reply = await closed_by_server(reader, writer)
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_a_request_over_the_connection_cap_gets_503() -> None:
    async with AdminServer(tiny_app(), port=0, max_connections=2) as server:
        async with httpx.AsyncClient(base_url=server.url) as holder:
            # A finished request: its keep-alive connection stays open and counted.
            assert (await holder.get("/who")).status_code == 200
            async with httpx.AsyncClient(base_url=server.url) as other:
                assert (await other.get("/who")).status_code == 503


async def test_the_uvicorn_internals_it_relies_on_exist() -> None:
    # broadcaster/admin/_header_timeout.py uses these non-public parts of
    # uvicorn; a release that renames one must fail here, not in production.
    config = uvicorn.Config(tiny_app(), http="h11", ws="none", log_config=None)
    for module_name, class_name, attribute in UVICORN_INTERNALS:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name, None)
        assert cls is not None, f"uvicorn {uvicorn.__version__}: {module_name}.{class_name} is gone"
        instance = cls(config=config, server_state=ServerState(), app_state={})
        assert hasattr(instance, attribute), (
            f"uvicorn {uvicorn.__version__}: {class_name}.{attribute} is gone"
        )
    protocol = getattr(importlib.import_module(UVICORN_INTERNALS[0][0]), UVICORN_INTERNALS[0][1])
    conn = protocol(config=config, server_state=ServerState(), app_state={}).conn
    assert isinstance(conn, h11.Connection) and conn.their_state is h11.IDLE
