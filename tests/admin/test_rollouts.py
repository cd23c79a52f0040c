"""``/rollouts`` over real HTTP: starting one, reading it, the operator's moves,
the refusals (409 for a second rollout of a category or a move its state does
not allow, 404, 422 naming the field), and the category's flags owned by its
rollout while it runs — and ``cutover`` as a flag of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore

TOKEN = "rollout-token-for-ops"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAN: dict[str, Any] = {
    "category": "USER_ACTIVITY",
    "steps": [1, 5, 25, 50, 100],
    "hold_s": 600,
    "gates": {
        "max_mismatch_rate": 0.0,
        "max_missing": 0,
        "max_breaker_trips": 0,
        "max_realtime_p99_ms": 250,
    },
}


@pytest.fixture
async def b() -> AsyncIterator[Broadcaster]:
    async with Broadcaster(
        load_settings(env_file=None, reconcile_interval_s=0),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    ) as broadcaster:
        yield broadcaster


@pytest.fixture
async def client(b: Broadcaster) -> AsyncIterator[httpx.AsyncClient]:
    async with AdminServer(create_app(b, TokenSet.of({"ops": TOKEN})), port=0) as server:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=10) as http:
            yield http


async def test_a_rollout_starts_and_reads_back(client: httpx.AsyncClient) -> None:
    response = await client.post("/rollouts", json=PLAN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["id"], body["state"], body["step"], body["percentage"]) == (1, "running", 1, 1)
    assert body["steps"] == PLAN["steps"] and body["gates"] == PLAN["gates"]
    assert (body["adapter"], body["cutover"], body["stages"]) == ("realtime", False, 5)
    assert body["reason"] == "started by ops" and body["remaining_hold_s"] == 600
    assert body["timeline"][0]["action"] == "start" and body["timeline"][0]["by"] == "ops"
    assert body["flags_before"]["enabled"] is False
    assert (await client.get("/rollouts/1")).json() == body
    listed = (await client.get("/rollouts")).json()["rollouts"]
    assert [r["id"] for r in listed] == [1]
    assert (await client.get("/rollouts", params={"category": "CRITICAL"})).json() == {
        "rollouts": []
    }
    flags = (await client.get("/config")).json()["flags"]["categories"]["USER_ACTIVITY"]
    assert flags == {"enabled": True, "percentage": 1, "adapters": ["realtime"], "cutover": False}
    (entry,) = (await client.get("/audit")).json()["entries"]
    assert entry["actor"] == "rollout:1" and entry["path"].startswith("POST /rollouts by ops")


async def test_one_rollout_per_category_at_a_time(client: httpx.AsyncClient) -> None:
    assert (await client.post("/rollouts", json=PLAN)).status_code == 201
    second = await client.post("/rollouts", json={**PLAN, "steps": [100]})
    assert second.status_code == 409
    assert second.json()["rollout_id"] == 1 and "rollout 1 running" in second.json()["detail"]
    other = await client.post("/rollouts", json={"category": "DEBUG", "steps": [10]})
    assert other.status_code == 201 and other.json()["id"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"steps": []}, "steps"),
        ({"steps": [50, 25]}, "steps"),
        ({"steps": [0, 100]}, "steps"),
        ({"steps": [1, "5"]}, "steps.1"),
        ({"steps": [1, 50], "cutover": True}, "cutover"),
        ({"category": "NOPE"}, "category"),
        ({"hold_s": -1}, "hold_s"),
        ({"gates": {"max_missing": -1}}, "gates.max_missing"),
        ({"gates": {"max_mismatch_rate": 2}}, "gates.max_mismatch_rate"),
        ({"gates": {"max_realtime_p99_ms": 0}}, "gates.max_realtime_p99_ms"),
        ({"gates": {"max_errors": 1}}, "gates.max_errors"),
        ({"speed": "fast"}, "speed"),
    ],
)
async def test_a_bad_plan_is_422_naming_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    response = await client.post("/rollouts", json={**PLAN, **change})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]][0] == field
    assert (await client.get("/rollouts")).json() == {"rollouts": []}


async def test_operator_moves_and_the_ones_a_state_does_not_allow(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/rollouts", json=PLAN)
    assert (await client.post("/rollouts/1/resume")).status_code == 409
    paused = await client.post("/rollouts/1/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    again = await client.post("/rollouts/1/pause")
    assert again.status_code == 409 and again.json()["detail"].startswith("rollout is paused")
    assert (await client.post("/rollouts/1/resume")).json()["state"] == "running"
    aborted = (await client.post("/rollouts/1/abort")).json()
    assert (aborted["state"], aborted["percentage"]) == ("aborted", 0)
    assert aborted["timeline"][-1]["action"] == "abort"
    assert (await client.post("/rollouts/1/abort")).status_code == 409
    for path in ("/rollouts/7", "/rollouts/7/pause", "/rollouts/7/abort"):
        method = client.get if path == "/rollouts/7" else client.post
        assert (await method(path)).status_code == 404, path
    assert (await client.get("/rollouts/0")).status_code == 422
    flags = (await client.get("/config")).json()["flags"]["categories"]["USER_ACTIVITY"]
    assert flags["enabled"] is False and flags["percentage"] == 0
    audit = (await client.get("/audit")).json()["entries"]
    assert [e["actor"] for e in audit] == ["rollout:1", "rollout:1"]
    assert audit[-1]["path"].startswith("POST /rollouts/1/abort by ops")


async def test_a_category_under_rollout_is_the_rollouts_to_change(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/rollouts", json=PLAN)
    path = "/config/categories/user_activity"
    refused = await client.patch(path, json={"percentage": 90})
    assert refused.status_code == 409 and refused.json()["rollout_id"] == 1
    assert "under rollout 1 (running)" in refused.json()["detail"]
    await client.post("/rollouts/1/pause")
    assert (await client.patch(path, json={"percentage": 90})).status_code == 409
    await client.post("/rollouts/1/abort")
    assert (await client.patch(path, json={"percentage": 90})).status_code == 200


async def test_cutover_is_a_flag_of_a_whole_category_with_a_new_adapter(
    client: httpx.AsyncClient, b: Broadcaster
) -> None:
    half = await client.patch("/config/categories/CRITICAL", json={"percentage": 50})
    assert half.status_code == 200
    refused = await client.patch("/config/categories/CRITICAL", json={"cutover": True})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["field"] == "cutover"
    assert "percentage 100" in refused.json()["detail"][0]["message"]
    primary_only = await client.patch(
        "/config/categories/PERFORMANCE", json={"percentage": 100, "cutover": True}
    )
    assert primary_only.status_code == 422
    assert "besides the primary (websocket)" in primary_only.json()["detail"][0]["message"]
    cut = await client.patch(
        "/config/categories/CRITICAL", json={"percentage": 100, "cutover": True}
    )
    assert cut.status_code == 200 and cut.json()["flags"]["cutover"] is True
    assert (await b.publish("CRITICAL", "order.created", {})).routed_to == ("realtime",)
    back = await client.patch("/config/categories/CRITICAL", json={"cutover": False})
    assert back.json()["audit"]["before"]["cutover"] is True
    routed = (await b.publish("CRITICAL", "order.created", {})).routed_to
    assert routed == ("websocket", "realtime")
