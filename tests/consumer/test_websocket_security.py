"""The WebSocket path with TLS (wss) and subscriber tokens (SPEC 13), on real
sockets with certificates made here (trustme): the fan-out server, the
``websockets`` client and ``broadcaster.consumer``.

A token that authenticates but whose scope may not subscribe (``read``) is
answered 403, as the admin API answers a scope that does not allow a request;
no token, or an unknown one, is answered 401."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from broadcaster.adapters.websocket import WebSocketAdapter
from broadcaster.consumer import ReceiptCollector, WebSocketSubscriber
from broadcaster.consumer.websocket import redact_url, subscription_url, tail
from broadcaster.events import Category, EventFactory, EventRecord, seal
from broadcaster.exceptions import AdapterRejected, AdapterUnavailable, ConfigError
from broadcaster.security import TokenSet, parse_token_settings
from broadcaster.settings import Settings, load_settings
from broadcaster.tls import client_ssl_context, server_ssl_context
from tests._tls import Certs, make_certs

ADMIN = "admin-secret-0123456789"
CONSUMER = "consumer-secret-0123456789"
READER = "reader-secret-0123456789"
TOKENS_JSON = json.dumps(
    {
        "sub": {"token": CONSUMER, "scope": "consumer"},
        "viewer": {"token": READER, "scope": "read"},
    }
)


def tokens() -> TokenSet:
    return parse_token_settings(ADMIN, TOKENS_JSON)


def make_records(n: int, *, start: int = 1) -> list[EventRecord]:
    factory = EventFactory()
    cats = list(Category)
    return [
        seal(factory.draft(cats[i % len(cats)], "user.login", {"i": i}), start + i)
        for i in range(n)
    ]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "tls")


@pytest.fixture
async def wss(certs: Certs) -> AsyncIterator[WebSocketAdapter]:
    context = server_ssl_context(certs.cert, certs.key, variable="WEBSOCKET")
    async with WebSocketAdapter(port=0, ssl=context) as server:
        yield server


@pytest.fixture
async def guarded() -> AsyncIterator[WebSocketAdapter]:
    async with WebSocketAdapter(port=0, tokens=tokens()) as server:
        yield server


async def deliver(adapter: WebSocketAdapter, subscribers: int, n: int) -> list[EventRecord]:
    async with asyncio.timeout(10):
        await adapter.wait_for_subscribers(subscribers)
    records = make_records(n)
    await adapter.send(records)
    return records


# -- wss -----------------------------------------------------------------------


async def test_wss_with_the_websockets_client(wss: WebSocketAdapter, certs: Certs) -> None:
    assert wss.url == f"wss://127.0.0.1:{wss.port}/events"
    async with connect(wss.url, ssl=certs.client_context()) as ws:
        records = await deliver(wss, 1, 3)
        async with asyncio.timeout(10):
            got = [orjson.loads(await ws.recv()) for _ in records]
    assert [g["sequence_id"] for g in got] == [1, 2, 3]


async def test_wss_with_the_consumer(wss: WebSocketAdapter, certs: Certs) -> None:
    collector = ReceiptCollector("websocket")
    async with WebSocketSubscriber(
        wss.url, collector=collector, ssl=client_ssl_context(certs.ca_file)
    ) as sub:
        await deliver(wss, 1, 5)
        stats = await sub.wait_for(5, timeout=10)
    assert stats.verified == 5 and stats.mismatches == 0


async def test_wss_refuses_a_client_that_does_not_trust_the_ca(wss: WebSocketAdapter) -> None:
    # The system trust store does not hold the test CA.
    sub = WebSocketSubscriber(
        wss.url, collector=ReceiptCollector("websocket"), reconnect=False, connect_timeout=10
    )
    with pytest.raises(AdapterUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        await sub.start()


async def test_plain_ws_to_the_wss_port_fails(wss: WebSocketAdapter) -> None:
    plain = wss.url.replace("wss://", "ws://")
    sub = WebSocketSubscriber(
        plain, collector=ReceiptCollector("websocket"), reconnect=False, connect_timeout=10
    )
    with pytest.raises(AdapterUnavailable):
        await sub.start()
    assert wss.subscriber_count == 0


def test_a_tls_context_needs_a_wss_url(certs: Certs) -> None:
    with pytest.raises(ValueError, match="needs a wss:// URL"):
        WebSocketSubscriber(
            "ws://127.0.0.1:1/events",
            collector=ReceiptCollector("websocket"),
            ssl=certs.client_context(),
        )
    with pytest.raises(ValueError, match="not a PEM CA bundle"):
        client_ssl_context(certs.key)


# -- subscriber tokens ---------------------------------------------------------


async def test_no_token_is_401_at_the_handshake(guarded: WebSocketAdapter) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(guarded.url):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    sub = WebSocketSubscriber(guarded.url, collector=ReceiptCollector("websocket"))
    with pytest.raises(AdapterRejected, match="HTTP 401"):
        await sub.start()  # refused at once: no retries for a token
    assert guarded.subscriber_count == 0


@pytest.mark.parametrize(
    ("token", "status"),
    [("not-a-known-token-at-all", 401), (READER, 403), (f"{CONSUMER}x", 401)],
    ids=["unknown", "read-scope", "near-miss"],
)
async def test_a_token_that_may_not_subscribe_is_refused(
    guarded: WebSocketAdapter, token: str, status: int
) -> None:
    for url, headers in [
        (guarded.url, {"Authorization": f"Bearer {token}"}),
        (f"{guarded.url}?access_token={token}", None),
    ]:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, additional_headers=headers):
                pass
        assert info.value.response.status_code == status
    sub = WebSocketSubscriber(guarded.url, collector=ReceiptCollector("websocket"), token=token)
    with pytest.raises(AdapterRejected, match=f"HTTP {status}"):
        await sub.start()


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", f"Basic {CONSUMER}")],
        [("Authorization", f"Bearer {CONSUMER}"), ("Authorization", f"Bearer {CONSUMER}")],
        [("Authorization", "Bearer ")],
    ],
    ids=["not-bearer", "two-headers", "empty"],
)
async def test_an_odd_authorization_header_is_401(
    guarded: WebSocketAdapter, headers: list[tuple[str, str]]
) -> None:
    # The header decides when present: a good query token does not rescue it.
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"{guarded.url}?access_token={CONSUMER}", additional_headers=headers):
            pass
    assert info.value.response.status_code == 401


async def test_a_consumer_token_in_the_header_subscribes(guarded: WebSocketAdapter) -> None:
    async with connect(
        guarded.url, additional_headers={"Authorization": f"Bearer {CONSUMER}"}
    ) as ws:
        await deliver(guarded, 1, 2)
        async with asyncio.timeout(10):
            got = [orjson.loads(await ws.recv()) for _ in range(2)]
    assert [g["sequence_id"] for g in got] == [1, 2]


async def test_a_consumer_token_in_the_query_subscribes(guarded: WebSocketAdapter) -> None:
    # What a browser does: it cannot set headers on a WebSocket handshake.
    url = subscription_url(f"{guarded.url}?access_token={CONSUMER}", ["critical"])
    async with connect(url) as ws:
        await deliver(guarded, 1, len(Category))  # one event per category
        assert [(s.token, s.categories) for s in guarded.subscribers()] == [("sub", ("CRITICAL",))]
        async with asyncio.timeout(10):
            got = orjson.loads(await ws.recv())
    assert got["category"] == "CRITICAL"


@pytest.mark.parametrize("token", [CONSUMER, ADMIN], ids=["consumer", "admin"])
async def test_the_consumer_sends_its_token(
    guarded: WebSocketAdapter, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    # DEBUG everywhere: websockets would log the handshake's headers.
    caplog.set_level(logging.DEBUG)
    collector = ReceiptCollector("websocket")
    with capture_logs() as logs:
        async with WebSocketSubscriber(guarded.url, collector=collector, token=token) as sub:
            await deliver(guarded, 1, 3)
            assert [s.token for s in guarded.subscribers()] == [
                "sub" if token == CONSUMER else "admin"
            ]
            stats = await sub.wait_for(3, timeout=10)
    assert stats.verified == 3
    assert token not in repr(logs) and token not in caplog.text
    assert "subscribed" in repr(logs)


async def test_tokens_are_never_logged(
    guarded: WebSocketAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        for token in (READER, "wrong-token-0123456789"):
            sub = WebSocketSubscriber(
                f"{guarded.url}?access_token={token}", collector=ReceiptCollector("websocket")
            )
            with pytest.raises(AdapterRejected) as info:
                await sub.start()
            assert token not in str(info.value)
    assert logs and not any(t in repr(logs) for t in (READER, "wrong-token-0123456789"))
    assert caplog.text and not any(t in caplog.text for t in (READER, "wrong-token-0123456789"))
    assert redact_url("wss://h/events?access_token=abc&categories=X") == (
        "wss://h/events?access_token=********&categories=X"
    )


async def test_a_token_refused_at_a_reconnect_ends_the_tail(guarded: WebSocketAdapter) -> None:
    # The service came back with other tokens: retrying cannot help.
    port = guarded.port
    out = io.StringIO()
    task = asyncio.create_task(tail(guarded.url, None, out, token=CONSUMER))
    records = await deliver(guarded, 1, 1)
    await guarded.close()
    rotated = parse_token_settings(
        None, json.dumps({"new": {"token": "n" * 20, "scope": "consumer"}})
    )
    async with WebSocketAdapter(port=port, tokens=rotated):
        with pytest.raises(AdapterRejected, match="HTTP 401"):
            async with asyncio.timeout(10):
                await task
    assert out.getvalue().startswith(f"{records[0].sequence_id} ")


# -- from settings -------------------------------------------------------------


def settings(**values: object) -> Settings:
    return load_settings(env_file=None, websocket_port=0, **values)


async def test_from_settings_serves_wss_with_a_token(certs: Certs) -> None:
    adapter = WebSocketAdapter.from_settings(
        settings(
            websocket_tls_cert=certs.cert,
            websocket_tls_key=certs.key,
            websocket_require_token=True,
            broadcaster_tokens=TOKENS_JSON,
        )
    )
    async with adapter:
        assert adapter.url.startswith("wss://")
        collector = ReceiptCollector("websocket")
        async with WebSocketSubscriber(
            adapter.url, collector=collector, ssl=certs.client_context(), token=CONSUMER
        ) as sub:
            await deliver(adapter, 1, 2)
            await sub.wait_for(2, timeout=10)
        sub = WebSocketSubscriber(adapter.url, collector=collector, ssl=certs.client_context())
        with pytest.raises(AdapterRejected, match="HTTP 401"):
            await sub.start()


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"broadcaster_tokens": json.dumps({"viewer": {"token": READER, "scope": "read"}})},
    ],
    ids=["no-tokens", "only-a-read-token"],
)
def test_a_token_requirement_no_token_can_meet_stops_start_up(values: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        WebSocketAdapter.from_settings(settings(websocket_require_token=True, **values))
    assert info.value.variable == "WEBSOCKET_REQUIRE_TOKEN"
    assert READER not in str(info.value)


def test_a_websocket_tls_file_that_does_not_load_stops_start_up(
    tmp_path: Path, certs: Certs
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError) as info:
        WebSocketAdapter.from_settings(
            settings(websocket_tls_cert=junk, websocket_tls_key=certs.key)
        )
    assert info.value.variable == "WEBSOCKET_TLS_CERT"
