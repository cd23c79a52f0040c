"""SPEC 13 at the admin API, over real HTTP on loopback: tokens taken whole,
scopes decided per route before the body is read, bounded bodies, no 5xx
for out-of-range input, and the security headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import Route

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import MAX_BATCH, AdminServer, create_app
from broadcaster.admin.guard import OPEN, ROUTE_ACCESS, permits
from broadcaster.core import Broadcaster
from broadcaster.exceptions import ConfigError
from broadcaster.security import GRANTS, Permission, Scope, parse_token_settings
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore

#: A base64 secret: the '=' padding once split it into a name and the token '='.
ADMIN_SECRET = "V7oS/Oh28Z9l7Q/XLWBDhA=="
SCOPED = {
    "operator": "operator-token-0123456789",
    "read": "read-token-0123456789",
    "ingest": "ingest-token-0123456789",
    "consumer": "consumer-token-0123456789",
}
TOKENS_JSON = json.dumps(
    {f"{scope}-bot": {"token": secret, "scope": scope} for scope, secret in SCOPED.items()}
)
SECRETS = {Scope.ADMIN: ADMIN_SECRET, **{Scope(k): v for k, v in SCOPED.items()}}
MAX_BODY = 64 * 1024


class Service:
    def __init__(
        self, b: Broadcaster, app: FastAPI, server: AdminServer, client: httpx.AsyncClient
    ) -> None:
        self.b, self.app, self.server, self.client = b, app, server, client

    def auth(self, scope: Scope) -> dict[str, str]:
        return {"Authorization": f"Bearer {SECRETS[scope]}"}


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    settings = load_settings(
        env_file=None,
        reconcile_interval_s=0,
        broadcaster_admin_token=ADMIN_SECRET,
        broadcaster_tokens=TOKENS_JSON,
    )
    b = Broadcaster(
        settings,
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    await b.start()
    app = create_app(b, settings.api_tokens(), max_body_bytes=MAX_BODY)
    server = AdminServer(app, port=0)
    await server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield Service(b, app, server, client)
    await server.close()
    await b.close()


# -- tokens ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("admin", "tokens"),
    [
        (ADMIN_SECRET, None),
        ("tok,en-0123456789abcdef", None),
        ("name=secret-0123456789", None),
        (None, TOKENS_JSON),
        (ADMIN_SECRET, TOKENS_JSON),
    ],
)
async def test_bearer_equals_sign_is_refused_for_every_token_configuration(
    admin: str | None, tokens: str | None
) -> None:
    settings = load_settings(
        env_file=None, broadcaster_admin_token=admin, broadcaster_tokens=tokens
    )
    token_set = settings.api_tokens()
    b = Broadcaster(settings, adapters=[MemoryAdapter("websocket")], store=MemoryStore())
    async with b, AdminServer(create_app(b, token_set), port=0) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            for fake in ("=", "==", "en", "secret-0123456789", "name", "admin"):
                response = await client.get("/config", headers={"Authorization": f"Bearer {fake}"})
                assert response.status_code == 401, fake
            if admin is not None:  # the whole variable is the token, '=' and ',' included
                whole = await client.get("/config", headers={"Authorization": f"Bearer {admin}"})
                assert whole.status_code == 200


async def test_the_audit_names_the_token_not_its_secret(svc: Service) -> None:
    for scope, actor in ((Scope.ADMIN, "admin"), (Scope.OPERATOR, "operator-bot")):
        response = await svc.client.patch(
            "/config/categories/DEBUG", json={"enabled": True}, headers=svc.auth(scope)
        )
        assert response.status_code == 200
        assert response.json()["audit"]["actor"] == actor
    audit = (await svc.client.get("/audit", headers=svc.auth(Scope.READ))).text
    assert ADMIN_SECRET not in audit and SCOPED["operator"] not in audit


def test_short_tokens_and_unknown_scopes_stop_start_up() -> None:
    with pytest.raises(ConfigError, match="at least 16"):
        parse_token_settings("short", None)
    with pytest.raises(ConfigError, match="unknown scope 'root'"):
        parse_token_settings(None, json.dumps({"x": {"token": "x" * 16, "scope": "root"}}))


# -- scopes, route by route ---------------------------------------------------------


def test_every_route_has_an_access_decision(svc: Service) -> None:
    routes = [r for r in svc.app.routes if isinstance(r, APIRoute | Route)]
    assert len(routes) >= 15
    undecided = [r.path for r in routes if r.name not in ROUTE_ACCESS]
    assert undecided == [], "every admin route needs an entry in guard.ROUTE_ACCESS"
    assert set(ROUTE_ACCESS) == {r.name for r in routes}, "ROUTE_ACCESS names a route no more"


#: One request per route, with a body that passes validation.
REQUESTS: dict[str, tuple[str, str, Any]] = {
    "health": ("GET", "/health", None),
    "metrics_text": ("GET", "/metrics", None),
    "dashboard": ("GET", "/dashboard", None),
    "openapi": ("GET", "/openapi.json", None),
    "swagger_ui_html": ("GET", "/docs", None),
    "swagger_ui_redirect": ("GET", "/docs/oauth2-redirect", None),
    "redoc_html": ("GET", "/redoc", None),
    "get_config": ("GET", "/config", None),
    "patch_category": ("PATCH", "/config/categories/DEBUG", {"percentage": 5}),
    "put_override": ("PUT", "/config/override", {"override": None}),
    "audit": ("GET", "/audit", None),
    "stats": ("GET", "/stats", None),
    "instances": ("GET", "/instances", None),
    "post_events": ("POST", "/events", {"category": "DEBUG", "event_type": "t", "payload": {}}),
    "get_event": ("GET", "/events/1", None),
    "read_events": ("GET", "/events?after=0&categories=DEBUG&limit=5", None),
    "get_reconciliation": ("GET", "/reconciliation", None),
    "run_reconciliation": ("POST", "/reconciliation/run", None),
    "post_receipts": ("POST", "/receipts", []),
    # Rollout 1 (of SYSTEM) is started before the requests; this one is another.
    "start_rollout": ("POST", "/rollouts", {"category": "CRITICAL", "steps": [50, 100]}),
    "list_rollouts": ("GET", "/rollouts", None),
    "get_rollout": ("GET", "/rollouts/1", None),
    "pause_rollout": ("POST", "/rollouts/1/pause", None),
    "resume_rollout": ("POST", "/rollouts/1/resume", None),
    "abort_rollout": ("POST", "/rollouts/1/abort", None),
}


def test_the_request_table_covers_every_route() -> None:
    assert set(REQUESTS) == set(ROUTE_ACCESS)


@pytest.mark.parametrize("scope", list(Scope))
async def test_each_scope_may_call_exactly_what_it_grants(svc: Service, scope: Scope) -> None:
    await svc.b.publish("DEBUG", "seed", {})
    seeded = await svc.client.post(
        "/rollouts", json={"category": "SYSTEM", "steps": [100]}, headers=svc.auth(Scope.ADMIN)
    )
    assert seeded.status_code == 201 and seeded.json()["id"] == 1
    for name, (method, path, body) in REQUESTS.items():
        response = await svc.client.request(method, path, json=body, headers=svc.auth(scope))
        if permits(name, scope):
            assert response.status_code < 400, (scope, name, response.text)
        else:
            assert response.status_code == 403, (scope, name, response.text)
            assert scope.value in response.json()["detail"]


async def test_closed_routes_need_a_token_even_for_the_documentation(svc: Service) -> None:
    for name, (method, path, body) in REQUESTS.items():
        response = await svc.client.request(method, path, json=body)
        expected = 200 if ROUTE_ACCESS[name] is OPEN else 401
        assert response.status_code == expected, name
    assert (await svc.client.get("/no/such/path")).status_code == 401
    assert (await svc.client.get("/no/such/path", headers=svc.auth(Scope.READ))).status_code == 404


def test_operator_grants_are_the_spec_ones() -> None:
    assert GRANTS[Scope.OPERATOR] == {Permission.READ, Permission.OPERATE}
    assert GRANTS[Scope.INGEST] == {Permission.INGEST}
    assert GRANTS[Scope.CONSUMER] == {Permission.CONSUME}
    assert GRANTS[Scope.ADMIN] == set(Permission)


# -- bodies ----------------------------------------------------------------------------


async def raw_request(svc: Service, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send ``head`` and ``body`` on a fresh connection (the body may be only
    the start of what Content-Length promises); the status and the reply."""
    reader, writer = await asyncio.open_connection(svc.server.host, svc.server.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(status_line.split()[1]), rest
    finally:
        writer.close()


async def test_an_anonymous_body_is_refused_before_it_is_read(svc: Service) -> None:
    # 26 MB promised, a few bytes sent: the 401 comes without waiting for the rest.
    status, _ = await raw_request(
        svc,
        "POST /events HTTP/1.1\nHost: x\nContent-Type: application/json\n"
        "Content-Length: 27262976\n",
        b'[{"category":',
    )
    assert status == 401


async def test_a_body_over_the_cap_is_413_without_reading_it(svc: Service) -> None:
    auth = f"Authorization: Bearer {ADMIN_SECRET}\n"
    status, _ = await raw_request(
        svc,
        f"POST /events HTTP/1.1\nHost: x\n{auth}Content-Length: {MAX_BODY + 1}\n",
        b"[",
    )
    assert status == 413
    # Chunked, with no length said up front: refused once past the cap.
    chunk = b"[" + b" " * MAX_BODY
    status, _ = await raw_request(
        svc,
        f"POST /events HTTP/1.1\nHost: x\n{auth}Transfer-Encoding: chunked\n",
        b"%x\r\n%b\r\n" % (len(chunk), chunk),
    )
    assert status == 413
    assert await svc.b.store.last_sequence_id() == 0


async def test_a_huge_list_is_counted_before_it_is_validated(svc: Service) -> None:
    body = "[" + ",".join(["{}"] * (MAX_BATCH * 10)) + "]"
    response = await svc.client.post(
        "/events",
        content=body,
        headers={**svc.auth(Scope.INGEST), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["field"] == "body" and f"got {MAX_BATCH * 10}" in error["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (r'{"category":"DEBUG","event_type":"t","payload":{"\udfff":"a","\udffe":"b"}}', "payload"),
        (r'[{"category":"DEBUG","event_type":"t","payload":{"a":{"\ud800":1}}}]', "0.payload"),
        (r'{"category":"DEBUG","event_type":"t","payload":{"a":"\ud800"}}', "payload"),
        ('{"category":"DEBUG","event_type":"t","payload":{"a":NaN}}', "body"),
        ('{"category":"DEBUG","event_type":"t","payload":{"a":1}', "body"),
        (b'{"category":"DEBUG","event_type":"t","payload":{"a":"\xff"}}', "body"),
    ],
)
async def test_bodies_that_are_not_clean_json_are_422_naming_the_field(
    svc: Service, body: str | bytes, field: str
) -> None:
    response = await svc.client.post(
        "/events",
        content=body,
        headers={**svc.auth(Scope.INGEST), "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == field
    assert await svc.b.store.last_sequence_id() == 0


async def test_a_huge_adapter_list_is_422(svc: Service) -> None:
    response = await svc.client.patch(
        "/config/categories/DEBUG",
        json={"adapters": ["websocket"] * 2_000},
        headers=svc.auth(Scope.OPERATOR),
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "adapters"


# -- out-of-range input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/events/9223372036854775808",
        "/events/99999999999999999999999999",
        "/audit?after=99999999999999999999",
        "/audit?after=9223372036854775808&limit=1",
    ],
)
async def test_numbers_beyond_64_bits_are_422_not_500(svc: Service, path: str) -> None:
    response = await svc.client.get(path, headers=svc.auth(Scope.READ))
    assert response.status_code == 422, response.text
    # The connection is still usable afterwards.
    assert (await svc.client.get("/config", headers=svc.auth(Scope.READ))).status_code == 200


# -- headers ------------------------------------------------------------------------------


async def test_every_response_says_nosniff(svc: Service) -> None:
    answers = [
        await svc.client.get("/health"),
        await svc.client.get("/config"),
        await svc.client.get("/config", headers=svc.auth(Scope.INGEST)),
        await svc.client.get("/nothing", headers=svc.auth(Scope.READ)),
        await svc.client.get("/events/0", headers=svc.auth(Scope.READ)),
        await svc.client.get("/dashboard"),
    ]
    assert [a.status_code for a in answers] == [200, 401, 403, 404, 422, 200]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"


async def test_the_dashboard_is_framed_by_nobody_and_runs_only_its_own_code(svc: Service) -> None:
    page = await svc.client.get("/dashboard")
    assert page.headers["x-frame-options"] == "DENY"
    csp = dict(
        part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";")
    )
    assert csp["default-src"] == "'none'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["connect-src"] == "'self'"
    assert csp["script-src"].startswith("'sha256-") and "unsafe" not in csp["script-src"]
    assert csp["style-src"].startswith("'sha256-") and "unsafe" not in csp["style-src"]


async def test_get_config_shows_no_secret() -> None:
    settings = load_settings(
        env_file=None,
        broadcaster_admin_token=ADMIN_SECRET,
        broadcaster_tokens=TOKENS_JSON,
        supabase_key="supabase-service-key",
        event_signing_key="signing-key-0123456789",
        store_url="postgresql://app:db-password-42@db:5432/events",
    )
    b = Broadcaster(settings, adapters=[MemoryAdapter("websocket")], store=MemoryStore())
    async with b, AdminServer(create_app(b, settings.api_tokens()), port=0) as server:
        async with httpx.AsyncClient(base_url=server.url) as client:
            response = await client.get(
                "/config", headers={"Authorization": f"Bearer {ADMIN_SECRET}"}
            )
    assert response.status_code == 200
    text = response.text
    for secret in (ADMIN_SECRET, *SCOPED.values(), "supabase-service", "signing-key", "db-pass"):
        assert secret not in text
    assert response.json()["settings"]["store_url"] == "postgresql://app:********@db:5432/events"


def test_the_docs_table_of_scopes_is_the_applications(svc: Service) -> None:
    """docs/security.md's table, row by row, against the router and ROUTE_ACCESS."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    documented = {}
    for line in docs.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`") and " /" in cells[0]:
            documented[cells[0].strip("`")] = cells[1]
    expected = {}
    for route in svc.app.routes:
        if not isinstance(route, APIRoute | Route):
            continue
        access = ROUTE_ACCESS[route.name]
        for method in sorted((route.methods or set()) - {"HEAD"}):
            expected[f"{method} {route.path}"] = (
                "anyone, no token"
                if access is OPEN
                else ", ".join(f"`{s.value}`" for s in Scope if permits(route.name, s))
            )
    assert set(documented) == set(expected)
    for request, who in expected.items():
        assert documented[request].startswith(who), request
