"""MemoryStore: the Store contract, in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from broadcaster.events import EventFactory, parse_frame
from broadcaster.store.base import AuditEntry, ConsumerReceipt, DeliveryState
from broadcaster.store.memory import MemoryStore


class Clock:
    def __init__(self, seconds: float = 1_700_000_000.5) -> None:
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory()


def receipt(seq: int, adapter: str = "websocket", ok: bool = True) -> ConsumerReceipt:
    return ConsumerReceipt(
        sequence_id=seq,
        adapter=adapter,
        event_type="t",
        received_at_ms=1,
        checksum="00000000",
        checksum_ok=ok,
    )


async def test_new_store_is_empty() -> None:
    async with MemoryStore() as store:
        assert await store.last_sequence_id() == 0
        assert await store.get(1) is None
        assert await store.undelivered("websocket") == []


async def test_append_assigns_increasing_sequence_ids_and_seals(factory: EventFactory) -> None:
    store = MemoryStore(clock=Clock())
    drafts = [factory.draft("CRITICAL", "t", {"i": i}) for i in range(3)]
    records = await store.append([(d, ("websocket", "realtime")) for d in drafts])
    assert [r.sequence_id for r in records] == [1, 2, 3]
    assert [r.event_id for r in records] == [d.event_id for d in drafts]
    for record in records:
        parse_frame(record.wire).verify()
    more = await store.append([(factory.draft("DEBUG", "t", {}), ("websocket",))])
    assert more[0].sequence_id == 4
    assert await store.last_sequence_id() == 4


async def test_empty_append_consumes_no_sequence_id(factory: EventFactory) -> None:
    store = MemoryStore()
    assert await store.append([]) == []
    assert await store.last_sequence_id() == 0
    (record,) = await store.append([(factory.draft("DEBUG", "t", {}), ("websocket",))])
    assert record.sequence_id == 1


async def test_get_returns_the_trace(factory: EventFactory) -> None:
    store = MemoryStore(clock=Clock(1_700_000_000.5))
    (record,) = await store.append(
        [(factory.draft("SYSTEM", "t", {"a": 1}), ("websocket", "realtime"))]
    )
    stored = await store.get(record.sequence_id)
    assert stored is not None
    assert stored.record == record
    assert stored.routed_to == ("websocket", "realtime")
    assert stored.created_at_ms == 1_700_000_000_500
    assert stored.states == {"websocket": DeliveryState.QUEUED, "realtime": DeliveryState.QUEUED}
    assert stored.errors == {}
    assert stored.receipts == ()


async def test_mark_changes_state_and_keeps_errors(factory: EventFactory) -> None:
    store = MemoryStore()
    records = await store.append(
        [(factory.draft("SYSTEM", "t", {}), ("websocket", "realtime")) for _ in range(3)]
    )
    await store.mark("realtime", [1, 2], DeliveryState.FAILED, error="timeout")
    await store.mark("websocket", [1, 2, 3], DeliveryState.ACKED)
    await store.mark("realtime", [2], DeliveryState.ACKED)
    one, two, three = [await store.get(r.sequence_id) for r in records]
    assert one is not None and two is not None and three is not None
    assert one.states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.FAILED}
    assert one.errors == {"realtime": "timeout"}
    assert two.states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.ACKED}
    assert two.errors == {"realtime": "timeout"}  # the last error stays as evidence
    assert three.states["realtime"] == DeliveryState.QUEUED


async def test_mark_ignores_unknown_sequence_ids_and_unrouted_adapters(
    factory: EventFactory,
) -> None:
    store = MemoryStore()
    await store.append([(factory.draft("SYSTEM", "t", {}), ("websocket",))])
    await store.mark("realtime", [1], DeliveryState.ACKED, error="x")
    await store.mark("websocket", [99], DeliveryState.ACKED)
    stored = await store.get(1)
    assert stored is not None
    assert stored.states == {"websocket": DeliveryState.QUEUED}
    assert stored.errors == {}
    assert await store.get(99) is None


async def test_undelivered_lists_queued_failed_and_pending_in_order(
    factory: EventFactory,
) -> None:
    store = MemoryStore()
    await store.append(
        [(factory.draft("SYSTEM", "t", {}), ("websocket", "realtime")) for _ in range(6)]
    )
    await store.append([(factory.draft("SYSTEM", "t", {}), ("websocket",))])  # 7: not for realtime
    await store.mark("realtime", [1], DeliveryState.ACKED)
    await store.mark("realtime", [2], DeliveryState.FAILED, error="boom")
    await store.mark("realtime", [3], DeliveryState.PENDING)
    await store.mark("realtime", [4], DeliveryState.REPAIRED)
    # 5 and 6 stay QUEUED
    seqs = [r.sequence_id for r in await store.undelivered("realtime")]
    assert seqs == [2, 3, 5, 6]
    assert [r.sequence_id for r in await store.undelivered("realtime", after=3)] == [5, 6]
    assert [r.sequence_id for r in await store.undelivered("realtime", limit=2)] == [2, 3]
    assert [r.sequence_id for r in await store.undelivered("realtime", after=2, limit=1)] == [3]
    assert await store.undelivered("realtime", after=6) == []
    assert [r.sequence_id for r in await store.undelivered("websocket")] == list(range(1, 8))
    assert await store.undelivered("kafka") == []


async def test_receipts_are_one_per_consumer_and_count_deliveries(
    factory: EventFactory,
) -> None:
    store = MemoryStore()
    await store.append([(factory.draft("SYSTEM", "t", {}), ("websocket",)) for _ in range(2)])
    first, other = receipt(1), receipt(2, adapter="realtime", ok=False)
    await store.record_receipts([first, other])
    await store.record_receipts([first])  # posted again: nothing changes
    one = await store.get(1)
    assert one is not None and one.receipts == (first,)
    await store.record_receipts([replace(first, received_at_ms=9, deliveries=2)])
    one, two = await store.get(1), await store.get(2)
    assert one is not None and two is not None
    assert one.receipts == (replace(first, deliveries=2),)
    assert two.receipts == (other,)


async def test_get_returns_a_snapshot(factory: EventFactory) -> None:
    store = MemoryStore()
    await store.append([(factory.draft("SYSTEM", "t", {}), ("websocket",))])
    snapshot = await store.get(1)
    assert snapshot is not None
    snapshot.states["websocket"] = DeliveryState.ACKED
    snapshot.errors["websocket"] = "tampered"
    fresh = await store.get(1)
    assert fresh is not None
    assert fresh.states == {"websocket": DeliveryState.QUEUED}
    assert fresh.errors == {}
    await store.mark("websocket", [1], DeliveryState.ACKED)
    assert snapshot.states["websocket"] == DeliveryState.ACKED  # unchanged copy, not a view
    assert (await store.get(1)).states == {"websocket": DeliveryState.ACKED}  # type: ignore[union-attr]


async def test_open_and_close_are_idempotent(factory: EventFactory) -> None:
    store = MemoryStore()
    await store.open()
    await store.append([(factory.draft("SYSTEM", "t", {}), ("websocket",))])
    await store.close()
    await store.close()
    assert await store.last_sequence_id() == 1


async def test_runtime_config_starts_empty() -> None:
    store = MemoryStore()
    assert await store.runtime_config() is None
    assert await store.audit_log() == []


async def test_save_runtime_config_replaces_the_document_and_audits_it() -> None:
    clock = Clock(1_700_000_000.5)
    store = MemoryStore(clock=clock)
    first = await store.save_runtime_config(
        {"categories": {"CRITICAL": {"enabled": True}}},
        actor="ops",
        path="PATCH /config/categories/CRITICAL",
        before=None,
        after={"enabled": True},
    )
    assert first == AuditEntry(
        id=1,
        at_ms=1_700_000_000_500,
        actor="ops",
        path="PATCH /config/categories/CRITICAL",
        before=None,
        after={"enabled": True},
    )
    clock.seconds += 2
    second = await store.save_runtime_config(
        {"flags": {"x": 1}}, actor="admin", path="PUT /config", before={"a": 1}, after={"a": 2}
    )
    assert (second.id, second.at_ms) == (2, 1_700_000_002_500)
    # Replaced, not merged.
    assert await store.runtime_config() == {"flags": {"x": 1}}
    assert await store.audit_log() == [first, second]


async def test_audit_log_pages_by_id() -> None:
    store = MemoryStore()
    for i in range(5):
        await store.save_runtime_config({"i": i}, actor="a", path="p", before=i - 1, after=i)
    assert [e.id for e in await store.audit_log()] == [1, 2, 3, 4, 5]
    assert [e.id for e in await store.audit_log(after=2)] == [3, 4, 5]
    assert [e.id for e in await store.audit_log(after=1, limit=2)] == [2, 3]
    assert [e.after for e in await store.audit_log(limit=2)] == [0, 1]
    assert await store.audit_log(after=5) == []
    assert await store.audit_log(limit=0) == []
    assert [e.id for e in await store.audit_log(after=-3, limit=1)] == [1]


async def test_runtime_config_values_are_json_copies() -> None:
    store = MemoryStore()
    config: dict[str, object] = {"flags": {"x": [1, 2]}, "t": (1, 2)}
    entry = await store.save_runtime_config(
        config, actor="a", path="p", before={"k": (3,)}, after=config
    )
    config["flags"] = "mutated"  # the caller's object is not the stored one
    assert entry.before == {"k": [3]}  # read back as JSON decodes it
    loaded = await store.runtime_config()
    assert loaded == {"flags": {"x": [1, 2]}, "t": [1, 2]}
    assert loaded is not None
    loaded["flags"] = "mutated too"
    assert await store.runtime_config() == {"flags": {"x": [1, 2]}, "t": [1, 2]}
    (logged,) = await store.audit_log()
    assert logged.after == {"flags": {"x": [1, 2]}, "t": [1, 2]}


@pytest.mark.parametrize(
    ("config", "before", "after", "error"),
    [
        ({"ok": 1}, None, {"bad": object()}, TypeError),
        ({"ok": 1}, {1, 2}, None, TypeError),
        ({"bad": float("nan")}, None, None, ValueError),
        (["not", "a", "mapping"], None, None, TypeError),
    ],
)
async def test_unserialisable_values_write_nothing(
    config: object, before: object, after: object, error: type[Exception]
) -> None:
    store = MemoryStore()
    kept = await store.save_runtime_config({"v": 1}, actor="a", path="p", before=None, after=1)
    with pytest.raises(error):
        await store.save_runtime_config(
            config,  # type: ignore[arg-type]
            actor="a",
            path="p",
            before=before,
            after=after,
        )
    assert await store.runtime_config() == {"v": 1}
    assert await store.audit_log() == [kept]
    again = await store.save_runtime_config({"v": 2}, actor="a", path="p", before=1, after=2)
    assert again.id == 2
