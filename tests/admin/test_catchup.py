"""``GET /events?after=N``, the catch-up read over HTTP (SPEC 8, 12), over
real HTTP on loopback: pages in order with a cursor, filters, bounds, scopes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.settings import load_settings
from broadcaster.store.sqlite import SQLiteStore

TOKENS = {
    "reader": ("read", "read-token-0123456789"),
    "consumer": ("consumer", "consumer-token-0123456789"),
    "ingest": ("ingest", "ingest-token-0123456789"),
}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


@pytest.fixture
async def svc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Broadcaster, httpx.AsyncClient]]:
    # CRITICAL to both paths; SYSTEM to the primary (websocket) only.
    monkeypatch.setenv("DUAL_WRITE_SYSTEM_ADAPTERS", "websocket")
    settings = load_settings(
        env_file=None,
        reconcile_interval_s=0,
        broadcaster_tokens=json.dumps(
            {name: {"token": secret, "scope": scope} for name, (scope, secret) in TOKENS.items()}
        ),
    )
    b = Broadcaster(
        settings,
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=SQLiteStore(tmp_path / "catchup.db"),
    )
    async with b, AdminServer(create_app(b, settings.api_tokens()), port=0) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            yield b, client


async def page(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/events", params=params, headers=auth("consumer"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


async def test_pages_in_order_with_the_next_cursor(
    svc: tuple[Broadcaster, httpx.AsyncClient],
) -> None:
    b, client = svc
    receipts = [await b.publish("CRITICAL", "order.created", {"i": i}) for i in range(25)]
    await b.flush(timeout=10)
    ids = [r.sequence_id for r in receipts]
    seen: list[int] = []
    after, pages = 0, 0
    while True:
        body = await page(client, after=after, limit=10)
        seen += [e["sequence_id"] for e in body["events"]]
        pages += 1
        after = body["next"]
        if not body["more"]:
            break
    assert seen == ids and pages == 3
    assert after == ids[-1]  # where to poll from next
    empty = await page(client, after=ids[-1])
    assert empty == {"events": [], "next": ids[-1], "more": False}
    # Each event is the object the WebSocket path sends: the stored wire.
    first = await page(client, after=0, limit=1)
    stored = await b.store.get(ids[0])
    assert stored is not None
    assert first["events"] == [orjson.loads(stored.record.wire)]
    assert (await page(client))["events"][0]["sequence_id"] == ids[0]  # after=0 by default


async def test_filters_by_category_and_adapter(
    svc: tuple[Broadcaster, httpx.AsyncClient],
) -> None:
    b, client = svc
    critical = [await b.publish("CRITICAL", "c", {}) for _ in range(3)]
    system = [await b.publish("SYSTEM", "s", {}) for _ in range(3)]
    assert all(r.routed_to == ("websocket",) for r in system)

    def ids(body: dict[str, Any]) -> list[int]:
        return [e["sequence_id"] for e in body["events"]]

    assert ids(await page(client, categories="system")) == [r.sequence_id for r in system]
    both = await page(client, categories=["CRITICAL", "SYSTEM"], limit=4)
    assert ids(both) == [r.sequence_id for r in critical + system][:4] and both["more"]
    realtime = await page(client, adapter="realtime")
    assert ids(realtime) == [r.sequence_id for r in critical]
    ws_system = await page(client, adapter="websocket", categories="SYSTEM,DEBUG")
    assert ids(ws_system) == [r.sequence_id for r in system]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("after=-1", "after"),
        ("after=9223372036854775808", "after"),
        ("after=abc", "after"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=99999999999999999999", "limit"),
        ("categories=CRITICAL,BOGUS", "categories"),
        ("categories=", "categories"),
        ("adapter=kafka", "adapter"),
    ],
)
async def test_bad_parameters_are_422_naming_the_field(
    svc: tuple[Broadcaster, httpx.AsyncClient], query: str, field: str
) -> None:
    _, client = svc
    response = await client.get(f"/events?{query}", headers=auth("consumer"))
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["detail"]] == [f"query.{field}"]


async def test_the_largest_limit_and_cursor_are_accepted(
    svc: tuple[Broadcaster, httpx.AsyncClient],
) -> None:
    _, client = svc
    body = await page(client, after=2**63 - 1, limit=10_000)
    assert body == {"events": [], "next": 2**63 - 1, "more": False}


async def test_consumer_and_read_tokens_may_read_others_may_not(
    svc: tuple[Broadcaster, httpx.AsyncClient],
) -> None:
    b, client = svc
    await b.publish("CRITICAL", "c", {})
    for name in ("consumer", "reader"):
        response = await client.get("/events", headers=auth(name))
        assert response.status_code == 200, (name, response.text)
    refused = await client.get("/events", headers=auth("ingest"))
    assert refused.status_code == 403
    assert (await client.get("/events")).status_code == 401
    # The single-event trace stays a read: a consumer token may not see it.
    assert (await client.get("/events/1", headers=auth("consumer"))).status_code == 403
