"""The Store contract: one suite that every backend (memory, sqlite, postgres) passes."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from broadcaster.events import EventDraft, EventFactory, seal
from broadcaster.store import (
    UNDELIVERED_STATES,
    ConsumerReceipt,
    DeliveryState,
    Store,
)

__all__: list[str] = []

BOTH = ("websocket", "realtime")
WS = ("websocket",)


def drafts(n: int, category: str = "CRITICAL") -> list[EventDraft]:
    factory = EventFactory()
    return [
        factory.draft(category, "order.created", {"order": i, "name": "Zoë"}, key=f"k{i}")
        for i in range(n)
    ]


async def test_new_store_is_empty(store: Store) -> None:
    assert await store.last_sequence_id() == 0
    assert await store.get(1) is None
    assert await store.undelivered("websocket") == []
    assert await store.append([]) == []
    assert await store.last_sequence_id() == 0


async def test_append_assigns_increasing_ids_and_seals(store: Store) -> None:
    batch = drafts(3, "CRITICAL") + drafts(2, "PERFORMANCE")
    first = await store.append([(d, BOTH) for d in batch])
    second = await store.append([(d, WS) for d in drafts(4, "SYSTEM")])
    ids = [r.sequence_id for r in first + second]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # no gaps without failures
    assert await store.last_sequence_id() == ids[-1]
    for draft, record in zip(batch, first, strict=True):
        assert record == seal(draft, record.sequence_id)
        record.to_event().verify()  # the checksum matches the canonical bytes
        stored = await store.get(record.sequence_id)
        assert stored is not None
        assert stored.record == record
        assert stored.routed_to == BOTH
        assert stored.states == dict.fromkeys(BOTH, DeliveryState.QUEUED)
        assert stored.errors == {}
        assert stored.receipts == ()
        assert stored.created_at_ms > 0


async def test_append_is_all_or_nothing(store: Store) -> None:
    before = await store.append([(d, BOTH) for d in drafts(2)])
    good = drafts(3)
    # A draft that cannot be sealed (unknown checksum algorithm) in the middle.
    bad = replace(good[1], checksum_algorithm="md5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="md5"):
        await store.append([(good[0], BOTH), (bad, BOTH), (good[2], BOTH)])
    last = before[-1].sequence_id
    for seq in range(last + 1, last + 4):
        assert await store.get(seq) is None
    assert [r.sequence_id for r in await store.undelivered("websocket")] == [
        r.sequence_id for r in before
    ]
    after = await store.append([(good[0], BOTH)])
    assert after[0].sequence_id > last


async def test_mark_and_undelivered(store: Store) -> None:
    routed = [BOTH if i % 2 == 0 else WS for i in range(10)]
    records = await store.append(list(zip(drafts(10), routed, strict=True)))
    ids = [r.sequence_id for r in records]
    both_ids = ids[0::2]  # routed to websocket and realtime
    await store.mark("websocket", ids[:4], DeliveryState.ACKED)
    await store.mark("websocket", [ids[4]], DeliveryState.REPAIRED)
    await store.mark("websocket", [ids[5]], DeliveryState.FAILED, "timeout")
    await store.mark("websocket", [ids[6]], DeliveryState.PENDING)
    await store.mark("realtime", both_ids[:2], DeliveryState.ACKED)
    # Unknown ids and adapters an event was not routed to are ignored.
    await store.mark("realtime", [ids[1], 999_999], DeliveryState.ACKED)
    await store.mark("websocket", [], DeliveryState.ACKED)

    ws = [r.sequence_id for r in await store.undelivered("websocket")]
    assert ws == ids[5:]  # failed, pending and queued still need delivery
    rt = [r.sequence_id for r in await store.undelivered("realtime")]
    assert rt == both_ids[2:]
    assert await store.undelivered("nobody") == []

    assert [r.sequence_id for r in await store.undelivered("websocket", limit=2)] == ids[5:7]
    assert [r.sequence_id for r in await store.undelivered("websocket", after=ids[6])] == ids[7:]
    paged = [r.sequence_id for r in await store.undelivered("websocket", after=ids[6], limit=1)]
    assert paged == [ids[7]]
    # What undelivered() returns is the stored event, checksum intact.
    for record in await store.undelivered("realtime"):
        record.to_event().verify()
        assert record == records[ids.index(record.sequence_id)]

    stored = await store.get(ids[1])
    assert stored is not None
    assert stored.routed_to == WS
    assert stored.states == {"websocket": DeliveryState.ACKED}  # realtime not added


async def test_undelivered_states_match_base(store: Store) -> None:
    records = await store.append([(d, WS) for d in drafts(len(DeliveryState))])
    for record, state in zip(records, DeliveryState, strict=True):
        await store.mark("websocket", [record.sequence_id], state)
    got = {r.sequence_id for r in await store.undelivered("websocket")}
    expected = {
        r.sequence_id
        for r, s in zip(records, DeliveryState, strict=True)
        if s in UNDELIVERED_STATES
    }
    assert got == expected


async def test_get_trace_with_errors_and_receipts(store: Store) -> None:
    (record,) = await store.append([(drafts(1)[0], BOTH)])
    seq = record.sequence_id
    await store.mark("realtime", [seq], DeliveryState.FAILED, "rejected: quota")
    await store.mark("realtime", [seq], DeliveryState.REPAIRED)  # the last error is kept
    await store.mark("websocket", [seq], DeliveryState.ACKED)
    receipt = ConsumerReceipt(
        sequence_id=seq,
        adapter="websocket",
        event_type="order.created",
        received_at_ms=1_700_000_000_123,
        checksum=record.checksum,
        checksum_ok=True,
        consumer="c1",
    )
    bad = replace(receipt, adapter="realtime", checksum="00", checksum_ok=False)
    await store.record_receipts([receipt, receipt])  # a duplicate is evidence: kept
    await store.record_receipts([bad])
    await store.record_receipts([])

    stored = await store.get(seq)
    assert stored is not None
    assert stored.states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.REPAIRED}
    assert stored.errors == {"realtime": "rejected: quota"}
    assert stored.receipts == (receipt, receipt, bad)


async def test_concurrent_marks_all_apply(store: Store) -> None:
    records = await store.append([(d, BOTH) for d in drafts(200)])
    ids = [r.sequence_id for r in records]
    await asyncio.gather(
        *(store.mark("websocket", [seq], DeliveryState.ACKED) for seq in ids),
        *(store.mark("realtime", ids[i : i + 10], DeliveryState.ACKED) for i in range(0, 100, 10)),
    )
    assert await store.undelivered("websocket") == []
    assert [r.sequence_id for r in await store.undelivered("realtime")] == ids[100:]


async def test_concurrent_appends_get_unique_ids(store: Store) -> None:
    batches = await asyncio.gather(*(store.append([(d, WS) for d in drafts(25)]) for _ in range(8)))
    for batch in batches:
        ids = [r.sequence_id for r in batch]
        assert ids == sorted(ids)
    every = sorted(r.sequence_id for batch in batches for r in batch)
    assert every == list(range(every[0], every[0] + 200))
    assert await store.last_sequence_id() == every[-1]


async def test_ids_not_reused_after_reopen(store: Store) -> None:
    first = await store.append([(d, WS) for d in drafts(5)])
    await store.close()
    await store.close()  # idempotent
    await store.open()
    assert await store.last_sequence_id() == first[-1].sequence_id
    second = await store.append([(d, WS) for d in drafts(5)])
    assert second[0].sequence_id > first[-1].sequence_id
    stored = await store.get(first[0].sequence_id)
    assert stored is not None and stored.record == first[0]


async def test_concurrent_marks_keep_call_order_per_adapter(store: Store) -> None:
    (record,) = await store.append([(drafts(1)[0], BOTH)])
    seq = record.sequence_id
    # Issued together (one group commit): the later call wins for each adapter.
    await asyncio.gather(
        store.mark("websocket", [seq], DeliveryState.FAILED, "reset"),
        store.mark("realtime", [seq], DeliveryState.ACKED),
        store.mark("websocket", [seq], DeliveryState.ACKED),
        store.mark("realtime", [seq], DeliveryState.PENDING),
    )
    stored = await store.get(seq)
    assert stored is not None
    assert stored.states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.PENDING}
    assert stored.errors == {"websocket": "reset"}


async def test_a_delivered_event_can_become_undelivered_again(store: Store) -> None:
    records = await store.append([(d, WS) for d in drafts(3)])
    ids = [r.sequence_id for r in records]
    await store.mark("websocket", ids, DeliveryState.ACKED)
    assert await store.undelivered("websocket") == []
    # E.g. reconciliation finds the consumer never got it: re-queue one...
    await store.mark("websocket", [ids[1]], DeliveryState.FAILED, "missing at consumer")
    assert [r.sequence_id for r in await store.undelivered("websocket")] == [ids[1]]
    # ...repair it, and upgrade another from acked to repaired in place.
    await store.mark("websocket", [ids[1], ids[2]], DeliveryState.REPAIRED)
    assert await store.undelivered("websocket") == []
    states = [await store.get(seq) for seq in ids]
    assert [s.states["websocket"] if s else None for s in states] == [
        DeliveryState.ACKED,
        DeliveryState.REPAIRED,
        DeliveryState.REPAIRED,
    ]
    assert states[1] is not None and states[1].errors == {"websocket": "missing at consumer"}
