"""POST /receipts (SPEC 12) over real HTTP: consumers in other processes
report what they received; the service checks each receipt against the
stored event, keeps it once per (consumer, event, adapter), and says which
events it does not know."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.admin.receipts import MAX_RECEIPTS
from broadcaster.core import Broadcaster
from broadcaster.reconcile.matching import Outcome
from broadcaster.settings import load_settings
from broadcaster.store.sqlite import SQLiteStore

ADMIN = "receipts-admin-token-0123"
CONSUMER = "receipts-consumer-token-0123"
TOKENS = json.dumps({"web": {"token": CONSUMER, "scope": "consumer"}})
AUTH = {"Authorization": f"Bearer {CONSUMER}"}


class Service:
    def __init__(self, b: Broadcaster, client: httpx.AsyncClient) -> None:
        self.b, self.client = b, client

    async def post(self, body: Any) -> httpx.Response:
        return await self.client.post("/receipts", json=body, headers=AUTH)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Service]:
    settings = load_settings(
        env_file=None,
        reconcile_interval_s=0,
        reconcile_window_s=5,
        reconcile_buffer_s=0,
        reconcile_max_delay_s=5,
        broadcaster_admin_token=ADMIN,
        broadcaster_tokens=TOKENS,
    )
    b = Broadcaster(
        settings,
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=SQLiteStore(tmp_path / "receipts.db"),
    )
    async with b, AdminServer(create_app(b, settings.api_tokens()), port=0) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            yield Service(b, client)


def receipt(seq: int, checksum: str, adapter: str = "websocket", **more: Any) -> dict[str, Any]:
    return {
        "sequence_id": seq,
        "adapter": adapter,
        "checksum": checksum,
        "consumer": "web-1",
    } | more


async def test_receipts_are_checked_against_the_store_and_kept_once(svc: Service) -> None:
    one = await svc.b.publish("CRITICAL", "order.created", {"order": 1})
    two = await svc.b.publish("SYSTEM", "deploy.done", {"v": 2})
    batch = [
        receipt(one.sequence_id, one.checksum.value, received_at=1_765_000_000_000),
        receipt(two.sequence_id, "deadbeef", adapter="realtime"),  # not what was sent
        receipt(404, "00000000"),
        receipt(405, "00000000"),
        receipt(404, "00000000", adapter="realtime"),
    ]
    answer = await svc.post(batch)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 2, "mismatches": 1, "unknown": [404, 405]}
    # Posted again (a client unsure whether it arrived): nothing changes.
    assert (await svc.post(batch)).json() == {"accepted": 2, "mismatches": 1, "unknown": [404, 405]}
    assert (await svc.b.store.stats()).receipts == 2
    stored = await svc.b.store.get(one.sequence_id)
    assert stored is not None
    [kept] = stored.receipts
    assert (kept.consumer, kept.event_type, kept.received_at_ms, kept.checksum_ok) == (
        "web-1",
        "order.created",
        1_765_000_000_000,
        True,
    )
    other = await svc.b.store.get(two.sequence_id)
    assert other is not None and [r.checksum_ok for r in other.receipts] == [False]
    assert await svc.b.store.get(404) is None


async def test_a_second_delivery_is_a_duplicate_and_receipts_make_events_matched(
    svc: Service,
) -> None:
    sent = [await svc.b.publish("CRITICAL", "e", {"i": i}) for i in range(3)]
    await svc.b.flush(timeout=5)
    batch = [receipt(r.sequence_id, r.checksum.value, a) for r in sent for a in r.routed_to]
    assert (await svc.post(batch)).json()["accepted"] == 6
    again = receipt(sent[0].sequence_id, sent[0].checksum.value, delivery=2)
    assert (await svc.post([again])).json()["accepted"] == 1
    report = await svc.b.reconcile()
    assert report.total(Outcome.MATCHED) == 6 and report.unrepaired_loss == 0
    assert report.as_dict()["totals"]["duplicate"] == 1  # type: ignore[index]
    assert [c["consumer"] for c in report.consumers] == ["web-1", "web-1"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sequence_id": 1}, "body"),
        ([receipt(1, "ab")] * 2 + [[]], "2"),
        ([{"adapter": "websocket", "checksum": "ab", "consumer": "c"}], "0.sequence_id"),
        ([receipt(0, "ab")], "0.sequence_id"),
        ([receipt(True, "ab")], "0.sequence_id"),
        ([receipt(2**63, "ab")], "0.sequence_id"),
        ([receipt(1, "ab", adapter="email")], "0.adapter"),
        ([receipt(1, "AB")], "0.checksum"),
        ([receipt(1, "ab\n")], "0.checksum"),
        ([receipt(1, "ab"), receipt(2, "a" * 129)], "1.checksum"),
        ([receipt(1, "ab") | {"sequence_id": 1.0}], "0.sequence_id"),
        ([receipt(1, "")], "0.checksum"),
        ([receipt(1, "ab") | {"consumer": ""}], "0.consumer"),
        ([receipt(1, "ab") | {"consumer": "a\nb"}], "0.consumer"),
        ([receipt(1, "ab", received_at="now")], "0.received_at"),
        ([receipt(1, "ab", delivery=0)], "0.delivery"),
        ([receipt(1, "ab", colour="red")], "0.colour"),
    ],
)
async def test_bad_receipts_are_422_naming_the_field_and_nothing_is_stored(
    svc: Service, body: Any, field: str
) -> None:
    await svc.b.publish("CRITICAL", "e", {})
    answer = await svc.post(body)
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["field"] == field
    assert (await svc.b.store.stats()).receipts == 0


async def test_optional_fields_may_be_null_and_a_repeated_key_counts_once(
    svc: Service,
) -> None:
    """Null ``received_at``/``delivery`` take their defaults; an object that
    names a field twice is read as JSON parsers do, the last one counting."""
    sent = await svc.b.publish("CRITICAL", "e", {})
    await svc.b.flush(timeout=5)
    good = receipt(sent.sequence_id, sent.checksum.value, received_at=None, delivery=None)
    assert (await svc.post([good])).json() == {"accepted": 1, "mismatches": 0, "unknown": []}
    twice = json.dumps(receipt(sent.sequence_id, sent.checksum.value))[:-1]
    body = f'[{twice}, "adapter": "realtime"}}]'.encode()
    answer = await svc.client.post("/receipts", content=body, headers=AUTH)
    assert answer.json() == {"accepted": 1, "mismatches": 0, "unknown": []}
    stored = await svc.b.store.get(sent.sequence_id)
    assert stored is not None
    assert sorted(r.adapter for r in stored.receipts) == ["realtime", "websocket"]


async def test_bodies_that_are_not_a_list_of_receipts(svc: Service) -> None:
    not_json = await svc.client.post("/receipts", content=b"[{", headers=AUTH)
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["field"] == "body"
    too_many = await svc.post([receipt(1, "ab")] * (MAX_RECEIPTS + 1))
    assert too_many.status_code == 422
    assert f"got {MAX_RECEIPTS + 1}" in too_many.json()["detail"][0]["message"]
    assert (await svc.post([])).json() == {"accepted": 0, "mismatches": 0, "unknown": []}


async def test_only_consumer_and_admin_tokens_may_report(svc: Service) -> None:
    for token, status in ((CONSUMER, 200), (ADMIN, 200), ("nope-nope-nope-nope", 401)):
        answer = await svc.client.post(
            "/receipts", json=[], headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == status


async def test_a_consumers_own_refusal_is_a_mismatch_even_with_the_right_checksum(
    svc: Service,
) -> None:
    sent = await svc.b.publish("CRITICAL", "e", {})
    answer = await svc.post([receipt(sent.sequence_id, sent.checksum.value, verified=False)])
    assert answer.json() == {"accepted": 1, "mismatches": 1, "unknown": []}
    stored = await svc.b.store.get(sent.sequence_id)
    assert stored is not None and [r.checksum_ok for r in stored.receipts] == [False]
    bad = await svc.post([receipt(sent.sequence_id, sent.checksum.value, verified="no")])
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "0.verified"
