"""The admin REST API over real HTTP on loopback: a started Broadcaster, the
FastAPI app served by uvicorn (AdminServer), httpx as the client."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import MAX_BATCH, AdminServer, create_app, generate_token
from broadcaster.admin.health import HealthView
from broadcaster.admin.stats import StatsView
from broadcaster.core import Broadcaster
from broadcaster.events import Category
from broadcaster.exceptions import ConfigError
from broadcaster.routing import bucket
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings
from broadcaster.store.base import ConsumerReceipt, Store
from broadcaster.store.memory import MemoryStore
from broadcaster.store.sqlite import SQLiteStore
from tests._fakes import FlakyStore
from tests._shapes import assert_shape

TOKEN = "s3cret-token-for-ops"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Service:
    def __init__(self, b: Broadcaster, server: AdminServer, client: httpx.AsyncClient) -> None:
        self.b, self.server, self.client = b, server, client
        self.ws = b.adapters["websocket"]
        self.rt = b.adapters["realtime"]


async def serve(store: Store, **settings: Any) -> tuple[Broadcaster, AdminServer]:
    b = Broadcaster(
        load_settings(env_file=None, reconcile_interval_s=0, **settings),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=store,
    )
    await b.start()
    server = AdminServer(
        create_app(b, TokenSet.of({"ops": TOKEN, "ci": "other-token-for-ci"})), port=0
    )
    await server.start()
    return b, server


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    store = FlakyStore()
    b, server = await serve(store)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield Service(b, server, client)
    await server.close()
    await b.close()


# -- authentication ------------------------------------------------------------


async def test_health_and_metrics_need_no_token(svc: Service) -> None:
    health = await svc.client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert_shape(body, HealthView)
    assert body["status"] == "ok"
    assert body["adapters"]["realtime"]["breaker"] == "closed"
    assert body["adapters"]["websocket"]["connected"] is True
    metrics = await svc.client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "broadcaster_events_published_total" in metrics.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/config"),
        ("PATCH", "/config/categories/CRITICAL"),
        ("PUT", "/config/override"),
        ("GET", "/stats"),
        ("POST", "/events"),
        ("GET", "/events/1"),
        ("GET", "/reconciliation"),
        ("POST", "/reconciliation/run"),
        ("GET", "/audit"),
    ],
)
async def test_every_other_path_needs_a_valid_bearer_token(
    svc: Service, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await svc.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_token_name_is_the_audited_actor(svc: Service) -> None:
    response = await svc.client.patch(
        "/config/categories/DEBUG",
        json={"enabled": True},
        headers={"Authorization": "Bearer other-token-for-ci"},
    )
    assert response.status_code == 200
    assert response.json()["audit"]["actor"] == "ci"


def test_generated_tokens_differ_and_are_long() -> None:
    first, second = generate_token(), generate_token()
    assert first != second and len(first) >= 32


def test_create_app_needs_a_token() -> None:
    b = Broadcaster(load_settings(env_file=None), adapters=[], store=MemoryStore())
    with pytest.raises(ConfigError):
        create_app(b, TokenSet([]))


# -- runtime flags -------------------------------------------------------------


def key_outside(category: str, percentage: int) -> str:
    return next(k for k in (f"k{i}" for i in range(1000)) if bucket(category, k) >= percentage)


async def test_patch_takes_effect_for_the_next_event_and_is_audited(svc: Service) -> None:
    b, client = svc.b, svc.client
    key = key_outside("PERFORMANCE", 50)  # not sampled at the default 50 %
    changes: list[Any] = []
    b.on_routing_change(changes.append)
    before = await b.publish("PERFORMANCE", "e", {}, key=key)
    assert before.routed_to == ("websocket",)
    with capture_logs() as logs:
        response = await client.patch(
            "/config/categories/performance",
            json={"percentage": 100, "adapters": ["websocket", "realtime"]},
            headers=AUTH,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["flags"] == {
        "enabled": True,
        "percentage": 100,
        "adapters": ["websocket", "realtime"],
        "cutover": False,
    }
    after = await b.publish("PERFORMANCE", "e", {}, key=key)
    assert after.routed_to == ("websocket", "realtime")
    assert len(changes) == 1  # in-process subscribers were told
    assert any(e["event"] == "category flags changed" and e["actor"] == "ops" for e in logs)

    config = (await client.get("/config", headers=AUTH)).json()
    assert config["flags"]["categories"]["PERFORMANCE"]["percentage"] == 100
    assert config["settings"]["categories"]["PERFORMANCE"]["percentage"] == 100
    assert config["settings"]["broadcaster_admin_token"] is None  # unset here; masked if set

    audit = (await client.get("/audit", headers=AUTH)).json()
    [entry] = audit["entries"]
    assert entry["actor"] == "ops"
    assert entry["path"] == "PATCH /config/categories/PERFORMANCE"
    assert entry["before"] == {
        "enabled": True,
        "percentage": 50,
        "adapters": ["websocket"],
        "cutover": False,
    }
    assert entry["after"]["percentage"] == 100
    assert entry["at"].endswith("Z") and audit["next"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"percentage": 150}, "percentage"),
        ({"percentage": -1}, "percentage"),
        ({"percentage": "50"}, "percentage"),
        ({"enabled": "yes"}, "enabled"),
        ({"adapters": ["kafka"]}, "adapters.0"),
        ({"adapters": "websocket"}, "adapters"),
        ({"colour": "red"}, "colour"),
        ({}, "body"),
        ([1, 2], "body"),
    ],
)
async def test_bad_patch_is_422_naming_the_field_and_changes_nothing(
    svc: Service, body: Any, field: str
) -> None:
    before = svc.b.flags.snapshot()
    response = await svc.client.patch("/config/categories/CRITICAL", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["detail"]], response.json()
    assert svc.b.flags.snapshot() == before
    assert (await svc.client.get("/audit", headers=AUTH)).json()["entries"] == []


def test_the_published_patch_schema_bounds_percentage_to_0_100() -> None:
    """What the OpenAPI document tells clients of PATCH /config/categories/{category}
    is the rule the 422s above enforce: an integer percentage from 0 to 100."""
    b = Broadcaster(
        load_settings(env_file=None),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    document = create_app(b, TokenSet.of({"ops": TOKEN})).openapi()
    body = document["paths"]["/config/categories/{category}"]["patch"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert schema["additionalProperties"] is False
    (integer,) = [s for s in schema["properties"]["percentage"]["anyOf"] if s["type"] == "integer"]
    assert (integer["minimum"], integer["maximum"]) == (0, 100)


async def test_bad_json_is_422(svc: Service) -> None:
    response = await svc.client.patch(
        "/config/categories/CRITICAL",
        content=b"{not json",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "body" and error["message"].startswith("invalid JSON: "), error


@pytest.mark.parametrize("path", ["/events", "/config/categories/CRITICAL"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_bad_json_without_a_valid_token_is_401_not_422(
    svc: Service, path: str, headers: dict[str, str]
) -> None:
    # The body is decoded before any dependency runs: the token is checked
    # again when it fails, so a caller without one learns nothing more.
    method = "POST" if path == "/events" else "PATCH"
    response = await svc.client.request(
        method, path, content=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"category": "NOPE", "event_type": "t", "payload": {}},
            [("category", "Input should be 'CRITICAL'")],
        ),
        (
            [{"category": "DEBUG", "event_type": "t", "payload": {}}, {"category": "DEBUG"}],
            [("1.event_type", "Field required"), ("1.payload", "Field required")],
        ),
        (42, [("body", "expected an event (an object) or a list")]),
    ],
)
async def test_event_errors_name_the_field_of_the_shape_sent(
    svc: Service, body: Any, expected: list[tuple[str, str]]
) -> None:
    # One event or a list: errors of the other alternative are not reported
    # (they were: "Input should be a valid list" for a bad single event).
    response = await svc.client.post("/events", json=body, headers=AUTH)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [d["field"] for d in detail] == [field for field, _ in expected], detail
    for d, (_, message) in zip(detail, expected, strict=True):
        assert d["message"].startswith(message), d


async def test_unknown_category_is_404(svc: Service) -> None:
    response = await svc.client.patch(
        "/config/categories/BOGUS", json={"percentage": 1}, headers=AUTH
    )
    assert response.status_code == 404
    assert "BOGUS" in response.json()["detail"] and "CRITICAL" in response.json()["detail"]


async def test_override_routes_everything_and_null_clears(svc: Service) -> None:
    b, client = svc.b, svc.client
    response = await client.put("/config/override", json={"override": "realtime"}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert (await b.publish("CRITICAL", "e", {})).routed_to == ("realtime",)
    await client.put("/config/override", json={"override": "all"}, headers=AUTH)
    assert (await b.publish("DEBUG", "e", {})).routed_to == ("websocket", "realtime")
    await client.put("/config/override", json={"override": None}, headers=AUTH)
    assert (await b.publish("DEBUG", "e", {})).routed_to == ("websocket",)
    entries = (await client.get("/audit", headers=AUTH)).json()["entries"]
    assert [(e["before"], e["after"]) for e in entries] == [
        ({"override": None}, {"override": "realtime"}),
        ({"override": "realtime"}, {"override": "all"}),
        ({"override": "all"}, {"override": None}),
    ]
    for bad in ({"override": "kafka"}, {}, {"override": "all", "x": 1}):
        response = await client.put("/config/override", json=bad, headers=AUTH)
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] in ("override", "x")


async def test_store_down_gives_503_and_nothing_changes(svc: Service) -> None:
    store = svc.b.store
    assert isinstance(store, FlakyStore)
    store.down = True
    before = svc.b.flags.snapshot()
    response = await svc.client.patch(
        "/config/categories/DEBUG", json={"enabled": True}, headers=AUTH
    )
    assert response.status_code == 503
    assert "unreachable" in response.json()["detail"]
    assert svc.b.flags.snapshot() == before
    store.down = False
    assert (await svc.client.get("/audit", headers=AUTH)).json()["entries"] == []


async def test_audit_pages(svc: Service) -> None:
    for p in range(5):
        response = await svc.client.patch(
            "/config/categories/DEBUG", json={"percentage": p}, headers=AUTH
        )
        assert response.status_code == 200
    first = (await svc.client.get("/audit?limit=2", headers=AUTH)).json()
    assert [e["after"]["percentage"] for e in first["entries"]] == [0, 1]
    second = (await svc.client.get(f"/audit?limit=2&after={first['next']}", headers=AUTH)).json()
    assert [e["after"]["percentage"] for e in second["entries"]] == [2, 3]
    bad = await svc.client.get("/audit?limit=0", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.limit"


async def test_flags_survive_a_restart(tmp_path: Path) -> None:
    url = tmp_path / "admin.db"
    b, server = await serve(SQLiteStore(str(url)))
    try:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.patch(
                "/config/categories/USER_ACTIVITY",
                json={"enabled": True, "percentage": 30},
                headers=AUTH,
            )
            assert response.status_code == 200
            await client.put("/config/override", json={"override": "websocket"}, headers=AUTH)
    finally:
        await server.close()
        await b.close()
    # A new process: env vars say USER_ACTIVITY is off; the persisted change wins.
    b, server = await serve(SQLiteStore(str(url)))
    try:
        flags = b.flags.snapshot()
        assert flags["categories"]["USER_ACTIVITY"] == {
            "enabled": True,
            "percentage": 30,
            "adapters": ["realtime"],
            "cutover": False,
        }
        assert flags["override"] == "websocket"
        assert b.routing.override == "websocket"
        async with httpx.AsyncClient(base_url=server.url) as client:
            audit = (await client.get("/audit", headers=AUTH)).json()["entries"]
        assert [e["path"] for e in audit] == [
            "PATCH /config/categories/USER_ACTIVITY",
            "PUT /config/override",
        ]
    finally:
        await server.close()
        await b.close()


# -- events ------------------------------------------------------------------


async def test_post_one_event_returns_its_receipt(svc: Service) -> None:
    response = await svc.client.post(
        "/events",
        json={"category": "CRITICAL", "event_type": "order.created", "payload": {"order": 7}},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["sequence_id"] == 1 and receipt["routed_to"] == ["websocket", "realtime"]
    assert receipt["checksum"]["algorithm"] == "sha256"
    await svc.b.flush(timeout=5)
    assert isinstance(svc.ws, MemoryAdapter) and svc.ws.events[0].event_type == "order.created"


async def test_post_a_batch_returns_receipts_in_order(svc: Service) -> None:
    events = [
        {"category": c.value, "event_type": "t", "payload": {"i": i}, "key": f"k{i}"}
        for i, c in enumerate(Category)
    ]
    response = await svc.client.post("/events", json=events, headers=AUTH)
    assert response.status_code == 201, response.text
    receipts = response.json()
    assert [r["sequence_id"] for r in receipts] == [1, 2, 3, 4, 5]
    assert [r["category"] for r in receipts] == [c.value for c in Category]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"category": "NOPE", "event_type": "t", "payload": {}}, "category"),
        ({"category": "DEBUG", "event_type": "", "payload": {}}, "event_type"),
        ({"category": "DEBUG", "event_type": "t", "payload": []}, "payload"),
        ({"category": "DEBUG", "payload": {}}, "event_type"),
        ({"category": "DEBUG", "event_type": "t", "payload": {}, "extra": 1}, "extra"),
        (
            [
                {"category": "DEBUG", "event_type": "t", "payload": {}},
                {"category": "DEBUG", "event_type": "t", "payload": {"x": float("1e400")}},
            ],
            None,
        ),
    ],
)
async def test_invalid_events_are_422_and_none_is_stored(
    svc: Service, body: Any, field: str | None
) -> None:
    if field is None:  # a non-finite number cannot be JSON: send the raw text
        raw = (
            b'[{"category":"DEBUG","event_type":"t","payload":{}},'
            b'{"category":"DEBUG","event_type":"t","payload":{"x":NaN}}]'
        )
        response = await svc.client.post(
            "/events", content=raw, headers={**AUTH, "Content-Type": "application/json"}
        )
    else:
        response = await svc.client.post("/events", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    fields = [d["field"] for d in response.json()["detail"]]
    if field is not None:
        assert any(f.endswith(field) for f in fields), fields
    assert await svc.b.store.last_sequence_id() == 0


async def test_payload_too_large_is_422_naming_payload(svc: Service) -> None:
    big = {"blob": "x" * (svc.b.settings.event_max_bytes + 1)}
    response = await svc.client.post(
        "/events",
        json=[
            {"category": "DEBUG", "event_type": "t", "payload": {}},
            {"category": "DEBUG", "event_type": "t", "payload": big},
        ],
        headers=AUTH,
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"field": "1.payload", "message": response.json()["detail"][0]["message"]}
    ]
    assert await svc.b.store.last_sequence_id() == 0


async def test_batch_over_the_limit_is_refused(svc: Service) -> None:
    events = [{"category": "DEBUG", "event_type": "t", "payload": {}}] * (MAX_BATCH + 1)
    response = await svc.client.post("/events", json=events, headers=AUTH)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "body" and str(MAX_BATCH) in error["message"]
    assert await svc.b.store.last_sequence_id() == 0


async def test_event_trace(svc: Service) -> None:
    receipt = await svc.b.publish("CRITICAL", "order.paid", {"order": 1}, key="o1")
    await svc.b.flush(timeout=5)
    stored = await svc.b.store.get(receipt.sequence_id)
    assert stored is not None
    await svc.b.store.record_receipts(
        [
            ConsumerReceipt(
                receipt.sequence_id, "websocket", "order.paid", 1, stored.record.checksum, True
            )
        ]
    )
    response = await svc.client.get(f"/events/{receipt.sequence_id}", headers=AUTH)
    assert response.status_code == 200
    trace = response.json()
    assert trace["event"]["event_id"] == receipt.event_id
    assert trace["event"]["checksum"]["value"] == receipt.checksum.value
    assert trace["routed_to"] == ["websocket", "realtime"]
    assert trace["adapters"]["realtime"]["state"] == "acked"
    assert trace["receipts"][0]["adapter"] == "websocket"
    assert trace["receipts"][0]["checksum_ok"] is True
    missing = await svc.client.get("/events/99", headers=AUTH)
    assert missing.status_code == 404 and "not published yet" in missing.json()["detail"]
    assert (await svc.client.get("/events/0", headers=AUTH)).status_code == 422
    assert (await svc.client.get("/events/abc", headers=AUTH)).status_code == 422


# -- stats and reconciliation ---------------------------------------------------


async def test_stats(svc: Service) -> None:
    for i in range(10):
        await svc.b.publish("CRITICAL", "e", {"i": i})
    await svc.b.flush(timeout=5)
    stats = (await svc.client.get("/stats", headers=AUTH)).json()
    critical = stats["categories"]["CRITICAL"]
    assert critical["published"] == 10
    assert critical["adapters"]["realtime"] == {
        "routed": 10,
        "delivered": 10,
        "failed": 0,
        "mismatches": 0,
    }
    assert critical["dual_write_success_rate"] == 1.0
    assert stats["categories"]["DEBUG"]["dual_write_success_rate"] == 1.0
    assert stats["adapters"]["realtime"]["breaker"] == "closed"
    assert stats["store"]["last_sequence_id"] == 10
    assert stats["reconciliation"]["reconciled_through"] == 0
    assert stats["reconciliation"]["lag_s"] >= 0
    assert stats["reconciliation"]["last"] is None
    assert_shape(stats, StatsView)
    await svc.b.reconcile()
    reconciled = (await svc.client.get("/stats", headers=AUTH)).json()
    assert_shape(reconciled, StatsView)
    assert reconciled["reconciliation"]["last"] is not None
    assert reconciled["reconciliation"]["unrepaired_loss"] == 0


async def test_reconciliation_report_and_run_with_repair(svc: Service) -> None:
    assert (await svc.client.get("/reconciliation", headers=AUTH)).json() == {
        "report": None,
        "unrepaired_loss": None,
    }
    await svc.b.publish("SYSTEM", "e", {})
    await svc.b.flush(timeout=5)
    run = await svc.client.post("/reconciliation/run?repair=true", headers=AUTH)
    assert run.status_code == 200
    body = run.json()
    # Just published: still inside the buffer, so nothing is judged missing yet.
    assert body["unrepaired_loss"] == 0 and body["repair"] == {}
    last = (await svc.client.get("/reconciliation", headers=AUTH)).json()
    assert last["report"] == body["report"]
    bad = await svc.client.post("/reconciliation/run?repair=maybe", headers=AUTH)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "query.repair"


async def test_openapi_document_is_served(svc: Service) -> None:
    doc = (await svc.client.get("/openapi.json", headers=AUTH)).json()
    for path in ("/config/categories/{category}", "/events", "/audit", "/reconciliation/run"):
        assert path in doc["paths"]


# -- server ----------------------------------------------------------------------


async def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        b = Broadcaster(load_settings(env_file=None), adapters=[], store=MemoryStore())
        server = AdminServer(create_app(b, TokenSet.of({"a": TOKEN})), port=port)
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await server.start()
        await server.close()  # nothing started: a no-op
