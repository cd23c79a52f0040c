"""The Store contract: one suite that every backend (memory, sqlite, postgres) passes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest

from broadcaster.events import Category, EventDraft, EventFactory, EventRecord, seal
from broadcaster.store import (
    UNDELIVERED_STATES,
    ConsumerInfo,
    ConsumerReceipt,
    DeliveryState,
    EventFacts,
    MemoryStore,
    PlainPage,
    ScanRow,
    Store,
    StoreHealth,
    StoreStats,
    plain_counts,
    postgres,
    sqlite,
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


async def test_a_working_store_is_up_and_its_probe_says_so(store: Store) -> None:
    assert store.health() == StoreHealth(True, None)
    assert await store.probe() == StoreHealth(True, None)
    await store.append([(d, BOTH) for d in drafts(2)])
    await store.mark("websocket", [1, 2], DeliveryState.ACKED)
    assert store.health() == StoreHealth(True, None)


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


async def test_a_refused_event_is_settled_counted_and_prunable(store: Store) -> None:
    records = await store.append([(d, BOTH) for d in drafts(3)])
    ids = [r.sequence_id for r in records]
    await store.mark("websocket", ids, DeliveryState.ACKED)
    await store.mark("realtime", ids[:2], DeliveryState.ACKED)
    await store.mark("realtime", ids[2:], DeliveryState.REFUSED, "payload_too_large")
    # Never sent again: not undelivered, whatever recovery or backfill asks.
    assert await store.undelivered("realtime") == []
    stored = await store.get(ids[2])
    assert stored is not None
    assert stored.states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.REFUSED}
    assert stored.errors == {"realtime": "payload_too_large"}
    stats = await store.stats()
    assert stats.states["realtime"].get("refused") == 1
    assert stats.oldest_undelivered_ms["realtime"] is None
    created = stored.created_at_ms
    assert await store.prune(through=ids[-1], older_than_ms=created + 1) == 3


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
    # Idempotent per (consumer, event, adapter): the same receipt twice is one.
    await store.record_receipts([receipt, receipt])
    await store.record_receipts([bad])
    await store.record_receipts([bad, receipt])
    await store.record_receipts([])

    stored = await store.get(seq)
    assert stored is not None
    assert stored.states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.REPAIRED}
    assert stored.errors == {"realtime": "rejected: quota"}
    assert stored.receipts == (receipt, bad)
    assert (await store.stats()).receipts == 2


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


# -- reconciliation and retention ----------------------------------------------


def receipt_for(
    record: EventRecord, adapter: str, *, ok: bool = True, keys: str | None = None
) -> ConsumerReceipt:
    return ConsumerReceipt(
        sequence_id=record.sequence_id,
        adapter=adapter,
        event_type=record.event_type,
        received_at_ms=1_700_000_000_000 + record.sequence_id,
        checksum=record.checksum if ok else "bad",
        checksum_ok=ok,
        consumer="c1",
        payload_keys=keys,
    )


async def expected_stats(store: Store, ids: list[int]) -> StoreStats:
    """What stats() must say, derived from get() of every event still stored."""
    states: dict[str, dict[str, int]] = {}
    oldest: dict[str, int | None] = {}
    events = receipts = 0
    for seq in sorted(ids):
        stored = await store.get(seq)
        if stored is None:
            continue
        events += 1
        receipts += len(stored.receipts)
        for adapter, state in stored.states.items():
            per = states.setdefault(adapter, {})
            per[state.value] = per.get(state.value, 0) + 1
            oldest.setdefault(adapter, None)
            if state in UNDELIVERED_STATES and oldest[adapter] is None:
                oldest[adapter] = stored.created_at_ms
    return StoreStats(
        last_sequence_id=await store.last_sequence_id(),
        events=events,
        receipts=receipts,
        states=states,
        oldest_undelivered_ms=oldest,
    )


async def test_scan_pages_with_states_and_receipts(store: Store) -> None:
    factory = EventFactory()
    batch = [
        (factory.draft("CRITICAL", "order.created", {"order": 1, "Zoë": 2}), BOTH),
        (factory.draft("PERFORMANCE", "page.load", {"ms": 3}), WS),
        (factory.draft("DEBUG", "trace", {}), ("realtime",)),
        (factory.draft("SYSTEM", "disk.full", {"b": 1, "a": {"z": 1}}), BOTH),
        (factory.draft("USER_ACTIVITY", "login", {"user": "u"}), ()),
    ]
    records = await store.append(batch)
    more = await store.append([(d, BOTH) for d in drafts(4)])
    records += more
    ids = [r.sequence_id for r in records]
    await store.mark("websocket", [ids[0], ids[1]], DeliveryState.ACKED)
    await store.mark("realtime", [ids[0]], DeliveryState.FAILED, "timeout")
    await store.mark("realtime", [ids[2]], DeliveryState.PENDING)
    await store.mark("websocket", [ids[3]], DeliveryState.REPAIRED)
    first, second = records[0], records[3]
    keys = '["Zoë","order"]'
    dup = receipt_for(first, "websocket", keys=keys)
    again = replace(dup, received_at_ms=dup.received_at_ms + 5, deliveries=2)
    await store.record_receipts([dup, receipt_for(second, "realtime", ok=False), again])
    await store.record_receipts([receipt_for(first, "realtime")])  # no keys known

    rows = await store.scan()
    assert [r.sequence_id for r in rows] == ids
    for row, record, (_, routed) in zip(rows, records, batch + [(None, BOTH)] * 4, strict=True):
        stored = await store.get(record.sequence_id)
        assert stored is not None
        assert row == ScanRow(
            sequence_id=record.sequence_id,
            category=record.category.value,
            event_type=record.event_type,
            created_at_ms=stored.created_at_ms,
            checksum=record.checksum,
            payload_keys=record.payload_keys,
            routed_to=routed,
            states=stored.states,
            receipts=stored.receipts,
        )
    assert rows[0].payload_keys == keys
    assert rows[2].payload_keys == "[]"
    assert rows[3].payload_keys == '["a","b"]'
    assert rows[0].states == {"websocket": DeliveryState.ACKED, "realtime": DeliveryState.FAILED}
    assert rows[2].states == {"realtime": DeliveryState.PENDING}
    assert rows[4].routed_to == () and rows[4].states == {}
    # A second delivery raises the first receipt's count; payload_keys round-trips.
    assert rows[0].receipts == (replace(dup, deliveries=2), receipt_for(first, "realtime"))
    assert rows[3].receipts == (receipt_for(second, "realtime", ok=False),)
    assert rows[1].receipts == ()

    # Paging: after/limit split the same sequence without gaps or repeats.
    paged: list[ScanRow] = []
    after = 0
    while page := await store.scan(after=after, limit=2):
        assert len(page) <= 2
        paged += page
        after = page[-1].sequence_id
    assert paged == rows
    assert await store.scan(after=ids[6], limit=100) == rows[7:]
    assert await store.scan(after=ids[-1]) == []
    assert await store.scan(limit=0) == []
    # A scan row's dict is its own: changing it changes nothing stored.
    rows[0].states.clear()
    assert (await store.scan(limit=1))[0].states != {}


async def test_stats_counts_and_oldest_undelivered(store: Store) -> None:
    empty = await store.stats()
    assert empty == StoreStats(
        last_sequence_id=0, events=0, receipts=0, states={}, oldest_undelivered_ms={}
    )
    records = await store.append([(d, BOTH) for d in drafts(6)])
    records += await store.append([(d, WS) for d in drafts(3)])
    ids = [r.sequence_id for r in records]
    assert await store.stats() == await expected_stats(store, ids)

    await store.mark("websocket", ids[:5], DeliveryState.ACKED)
    await store.mark("websocket", ids[5:6], DeliveryState.FAILED, "boom")
    await store.mark("realtime", ids[:6], DeliveryState.ACKED)
    await store.mark("realtime", ids[2:3], DeliveryState.REPAIRED)  # acked -> repaired
    await store.mark("realtime", ids[3:4], DeliveryState.PENDING)  # acked -> undelivered
    await store.mark("realtime", ids[4:5], DeliveryState.ACKED)  # acked again: no change
    await store.record_receipts([receipt_for(records[0], "websocket")] * 3)
    await store.record_receipts([receipt_for(r, "realtime") for r in records[:2]])
    stats = await store.stats()
    assert stats == await expected_stats(store, ids)
    assert stats.events == 9 and stats.receipts == 3
    assert stats.last_sequence_id == ids[-1]
    assert stats.states == {
        "websocket": {"acked": 5, "failed": 1, "queued": 3},
        "realtime": {"acked": 4, "repaired": 1, "pending": 1},
    }
    first_ws = await store.get(ids[5])
    first_rt = await store.get(ids[3])
    assert first_ws is not None and first_rt is not None
    assert stats.oldest_undelivered_ms == {
        "websocket": first_ws.created_at_ms,
        "realtime": first_rt.created_at_ms,
    }

    # Concurrent marks (one group commit on the SQL stores) keep the counts exact.
    await asyncio.gather(
        *(store.mark("websocket", [seq], DeliveryState.ACKED) for seq in ids),
        store.mark("realtime", ids, DeliveryState.REPAIRED),
        store.mark("realtime", ids[:2], DeliveryState.FAILED, "late"),
    )
    stats = await store.stats()
    assert stats == await expected_stats(store, ids)
    assert stats.states == {
        "websocket": {"acked": 9},
        "realtime": {"repaired": 4, "failed": 2},
    }
    assert stats.oldest_undelivered_ms["websocket"] is None


@pytest.fixture
def small_prune_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several prune transactions even for a handful of events.
    monkeypatch.setattr(sqlite._retention, "PRUNE_CHUNK", 3)
    monkeypatch.setattr(postgres, "PRUNE_CHUNK", 3)


@pytest.mark.usefixtures("small_prune_chunks")
async def test_prune_deletes_only_delivered_old_events_through_the_bound(store: Store) -> None:
    old = await store.append([(d, BOTH) for d in drafts(10)])
    old += await store.append([(d, ()) for d in drafts(1)])  # routed nowhere: nothing owed
    await asyncio.sleep(0.005)  # the next events are created at least 1 ms later
    young = await store.append([(d, BOTH) for d in drafts(2)])
    ids = [r.sequence_id for r in old + young]
    young_stored = await store.get(young[0].sequence_id)
    assert young_stored is not None
    cutoff = young_stored.created_at_ms  # strictly before: the young ones stay

    await store.mark("websocket", ids, DeliveryState.ACKED)
    await store.mark("realtime", ids, DeliveryState.ACKED)
    await store.mark("realtime", [ids[2]], DeliveryState.FAILED, "nope")  # undelivered
    await store.mark("realtime", [ids[3]], DeliveryState.PENDING)  # undelivered
    await store.mark("realtime", [ids[4]], DeliveryState.REPAIRED)  # delivered
    await store.mark("websocket", [ids[5]], DeliveryState.FAILED)
    await store.mark("websocket", [ids[5]], DeliveryState.REPAIRED)  # failed, then repaired
    await store.record_receipts([receipt_for(r, "websocket") for r in old + young])
    await store.record_receipts([receipt_for(old[0], "realtime")])
    through = ids[8]  # ids[9] is delivered and old, but beyond the bound
    last = await store.last_sequence_id()

    assert await store.prune(through=through, older_than_ms=0) == 0  # nothing that old
    assert await store.prune(through=0, older_than_ms=cutoff + 10_000) == 0
    pruned = await store.prune(through=through, older_than_ms=cutoff)
    kept = {ids[2], ids[3], ids[9], ids[10], *ids[11:]}
    assert pruned == len(ids) - len(kept)
    for seq in ids:
        stored = await store.get(seq)
        assert (stored is not None) == (seq in kept), seq
    assert [r.sequence_id for r in await store.scan()] == sorted(kept)
    assert [r.sequence_id for r in await store.undelivered("realtime")] == ids[2:4]
    stats = await store.stats()
    assert stats == await expected_stats(store, ids)
    assert stats.events == len(kept)
    assert stats.receipts == len(kept)  # the pruned events' receipts went with them
    assert stats.last_sequence_id == last  # the high-water mark never goes back

    # Idempotent; a later bound and cutoff take what has become eligible, and
    # never an undelivered event however old.
    assert await store.prune(through=through, older_than_ms=cutoff) == 0
    assert await store.prune(through=ids[-1], older_than_ms=cutoff + 10_000) == 4
    assert [r.sequence_id for r in await store.scan()] == ids[2:4]

    # Ids are never reused, even after a reopen with the newest events gone.
    await store.close()
    await store.open()
    assert await store.last_sequence_id() == last
    (new,) = await store.append([(drafts(1)[0], WS)])
    assert new.sequence_id == last + 1
    assert (await store.stats()).events == 3


async def test_watermarks_persist(store: Store) -> None:
    assert await store.get_watermark("reconciled_through") == 0
    await store.set_watermark("reconciled_through", 41)
    await store.set_watermark("reconciled_through", 42)
    await store.set_watermark("other", 7)
    assert await store.get_watermark("reconciled_through") == 42
    await store.close()
    await store.open()
    if isinstance(store, sqlite.SQLiteStore | postgres.PostgresStore):
        assert await store.get_watermark("reconciled_through") == 42
        assert await store.get_watermark("other") == 7
        assert await store.get_watermark("never") == 0


async def _plain(store: Store, after: int, limit: int, *, before: int, window: int) -> PlainPage:
    """plain_page(), checked against the reference (plain_counts over scan())."""
    page = await store.plain_page(
        after=after, limit=limit, judged_before_ms=before, window_ms=window
    )
    rows = await store.scan(after=after, limit=limit)
    assert page.last == (rows[-1].sequence_id if rows else 0)
    reference = plain_counts(rows, judged_before_ms=before, window_ms=window) if rows else {}
    assert page.matched == reference
    return page


async def test_plain_page_counts_only_pages_where_every_pair_plainly_matches(
    store: Store,
) -> None:
    factory = EventFactory()
    window = 1000

    async def case(
        routed: Sequence[tuple[str, ...]], category: str = "SYSTEM"
    ) -> tuple[list[EventRecord], int]:
        """A page of events, each with one good receipt per routed adapter."""
        records = await store.append(
            [
                (factory.draft(category, "disk.full", {"b": i, "a": 1}), r)
                for i, r in enumerate(routed)
            ]
        )
        stored = await store.get(records[0].sequence_id)
        assert stored is not None
        created = stored.created_at_ms
        await store.record_receipts(
            [
                replace(
                    receipt_for(rec, a, keys=rec.payload_keys if i % 2 else None),
                    received_at_ms=created + window,
                )
                for i, (rec, r) in enumerate(zip(records, routed, strict=True))
                for a in r
            ]
        )
        return records, created

    def good(rec: EventRecord, adapter: str, created: int, **changes: object) -> ConsumerReceipt:
        return replace(receipt_for(rec, adapter), received_at_ms=created, **changes)

    async def check(records: list[EventRecord], created: int, expect: bool) -> None:
        after = records[0].sequence_id - 1
        page = await _plain(store, after, len(records), before=created, window=window)
        assert page.last == records[-1].sequence_id
        assert (page.matched is not None) is expect

    # Clean: every routed pair has one good receipt (keys reported or not), a
    # PENDING state with a receipt is irrelevant, an event routed nowhere adds nothing.
    records, created = await case([BOTH, WS, BOTH, ()])
    await store.mark("realtime", [records[0].sequence_id], DeliveryState.PENDING)
    page = await _plain(store, records[0].sequence_id - 1, 4, before=created, window=window)
    assert page.matched == {("SYSTEM", "websocket"): 3, ("SYSTEM", "realtime"): 2}
    # Too young to judge: stored after judged_before_ms.
    page = await _plain(store, records[0].sequence_id - 1, 4, before=created - 1, window=window)
    assert page.last == records[-1].sequence_id and page.matched is None
    # Late: received more than the window after the event.
    page = await _plain(store, records[0].sequence_id - 1, 4, before=created, window=window - 1)
    assert page.matched is None

    # One pair without a receipt.
    records, created = await store_case_missing_one(store, factory)
    await check(records, created, False)
    # ... which its receipt completes.
    await store.record_receipts([good(records[-1], "realtime", created)])
    await check(records, created, True)

    # Two consumers on one pair and nothing on another: receipts alone would balance.
    records, created = await store_case_missing_one(store, factory, created_dup=True)
    await check(records, created, False)

    # A receipt on an adapter the event was not routed to, in place of a missing one.
    records, created = await store_case_missing_one(store, factory, stray=True)
    await check(records, created, False)

    # Each way a single receipt can fail to match its event.
    for changes in (
        {"checksum_ok": False},
        {"checksum": "0" * 8},
        {"event_type": "other.type"},
        {"payload_keys": '["zzz"]'},
    ):
        records, created = await store_case_missing_one(store, factory)
        rec = records[-1]
        await store.record_receipts([good(rec, "realtime", created, **changes)])
        await check(records, created, False)

    # A repaired pair is judged "repaired", not "matched".
    records, created = await case([BOTH, BOTH])
    ids = [r.sequence_id for r in records]
    await check(records, created, True)
    await store.mark("realtime", ids[:1], DeliveryState.REPAIRED)
    await check(records, created, False)

    # An event routed twice to one adapter: judged pair by pair, unless the
    # store keeps such a routing as one pair (SQLite does).
    records, created = await case([("websocket", "websocket")])
    stored = await store.get(records[0].sequence_id)
    assert stored is not None
    await check(records, created, stored.routed_to == ("websocket",))

    # Past the last event: an empty page.
    last = await store.last_sequence_id()
    assert await _plain(store, last, 10, before=created, window=window) == PlainPage(0, {})


async def store_case_missing_one(
    store: Store, factory: EventFactory, *, created_dup: bool = False, stray: bool = False
) -> tuple[list[EventRecord], int]:
    """Two events routed to both adapters; every pair has one good receipt except
    the last event's realtime pair. ``created_dup`` adds a second consumer's
    receipt on the first event's realtime pair; ``stray`` adds a receipt on an
    adapter the first event was not routed to."""
    records = await store.append(
        [(factory.draft("CRITICAL", "order.created", {"n": i}), BOTH) for i in range(2)]
    )
    stored = await store.get(records[0].sequence_id)
    assert stored is not None
    created = stored.created_at_ms
    receipts = [
        replace(receipt_for(rec, a), received_at_ms=created)
        for rec in records
        for a in BOTH
        if not (rec is records[-1] and a == "realtime")
    ]
    if created_dup:
        receipts.append(
            replace(receipt_for(records[0], "realtime"), received_at_ms=created, consumer="c2")
        )
    if stray:
        receipts.append(replace(receipt_for(records[0], "email"), received_at_ms=created))
    await store.record_receipts(receipts)
    return records, created


ROUTINGS = [BOTH, WS, ("realtime",), ("realtime", "websocket")]


async def append_to_both(
    store: Store, model: MemoryStore, rng: random.Random, first: int, n: int
) -> int:
    """Append ``n`` events of random routings (payload ids from ``first``) to
    ``store`` and ``model`` alike; returns ``n``."""
    factory = EventFactory()
    batch = [
        (factory.draft("SYSTEM", "model", {"i": first + i}), rng.choice(ROUTINGS)) for i in range(n)
    ]
    if batch:
        await store.append(batch)
        await model.append(batch)
    return n


async def assert_reads_agree(store: Store, model: MemoryStore, last: int) -> None:
    """Stats, every event's states and errors, and each adapter's undelivered
    events read the same from ``store`` as from ``model``."""
    mine, theirs = await store.stats(), await model.stats()
    assert mine.states == {a: n for a, n in theirs.states.items() if n}
    for seq in range(1, last + 1):
        got, want = await store.get(seq), await model.get(seq)
        assert got is not None and want is not None
        assert (got.states, got.errors) == (want.states, want.errors), seq
    for adapter in BOTH:
        assert await store.undelivered(adapter) == await model.undelivered(adapter)


# Against the model itself the comparison could not fail: the other backends only.
@pytest.mark.parametrize("store", ["sqlite", "sqlite-worker", "postgres"], indirect=True)
@pytest.mark.parametrize("seed", range(6))
async def test_marks_in_shared_transactions_agree_with_the_memory_store(
    store: Store, seed: int
) -> None:
    """Random appends and concurrent marks (so several share one group commit;
    in SQLite with or without a tail of unwritten outbox rows, and acks that
    leave implied ACKED pairs): every read agrees with MemoryStore's."""
    rng = random.Random(seed)
    model = MemoryStore()
    await model.open()
    last = 0
    for _ in range(40):
        if rng.random() < 0.6:
            last += await append_to_both(store, model, rng, last, rng.randint(1, 4))
        requests = [
            (
                rng.choice(BOTH),
                rng.sample(range(1, last + 3), min(last + 2, rng.randint(1, 5))),
                rng.choice(list(DeliveryState)),
                rng.choice([None, None, "boom", "late"]),
            )
            for _ in range(rng.randint(1, 4))
        ]
        for backend in (store, model):
            await asyncio.gather(*(backend.mark(*request) for request in requests))
        await assert_reads_agree(store, model, last)
    await model.close()


@pytest.mark.parametrize("store", ["sqlite", "sqlite-worker", "postgres"], indirect=True)
@pytest.mark.parametrize("seed", range(4))
async def test_in_order_acks_sharing_transactions_agree_with_the_memory_store(
    store: Store, seed: int
) -> None:
    """What lanes do under steady traffic: each adapter acks its events in
    order, in runs, the adapters' acks sharing group commits, now and then a
    re-ack or an id not yet stored (in SQLite: transactions of plain acks
    write the tail only up to what they acknowledge, without those pairs).
    After every round every read agrees with MemoryStore's."""
    rng = random.Random(seed)
    model = MemoryStore()
    await model.open()
    last = 0
    acked_through = dict.fromkeys(BOTH, 0)
    for _ in range(30):
        last += await append_to_both(store, model, rng, last, rng.randint(0, 6))
        requests = []
        for adapter in BOTH:
            if rng.random() < 0.3:
                continue
            start = acked_through[adapter]
            end = rng.randint(start, last + 1)  # last + 1: not stored yet
            ids = list(range(start + 1, end + 1))
            if start and rng.random() < 0.2:
                ids.insert(0, rng.randint(1, start))  # a re-ack
            acked_through[adapter] = min(end, last)
            if ids:
                requests.append((adapter, ids, DeliveryState.ACKED))
        for backend in (store, model):
            await asyncio.gather(*(backend.mark(*request) for request in requests))
        await assert_reads_agree(store, model, last)
        # Scans too, but for created_at_ms (each backend stamps its own append).
        mine, theirs = [
            [replace(row, created_at_ms=0) for row in await backend.scan()]
            for backend in (store, model)
        ]
        assert mine == theirs
    await model.close()


async def test_consumers_are_registered_by_their_receipts_and_by_name(store: Store) -> None:
    assert await store.consumers() == []
    records = await store.append([(d, BOTH) for d in drafts(4)])
    a, b, c, d = records
    probe = await store.register_consumer("probe:x", "realtime", 1_000)
    # Watching from the next event to be stored: none of the four before it.
    assert (probe.from_sequence_id, probe.through_sequence_id, probe.receipts) == (5, 0, 0)
    again = await store.register_consumer("probe:x", "realtime", 2_000)
    assert again == replace(probe, last_seen_ms=2_000)
    await store.record_receipts(
        [
            replace(receipt_for(c, "websocket"), received_at_ms=30),
            replace(receipt_for(b, "websocket"), received_at_ms=20),
            replace(receipt_for(d, "realtime"), received_at_ms=40, consumer="probe:x"),
        ]
    )
    await store.record_receipts([replace(receipt_for(a, "websocket"), received_at_ms=50)])
    assert await store.consumers() == [
        ConsumerInfo("probe:x", "realtime", d.sequence_id, d.sequence_id, 40, 2_000, 1),
        ConsumerInfo("c1", "websocket", a.sequence_id, c.sequence_id, 20, 50, 3),
    ]


async def test_event_facts_are_what_receipts_are_checked_against(store: Store) -> None:
    records = await store.append([(d, BOTH) for d in drafts(2)])
    records += await store.append([(d, WS) for d in drafts(1, "PERFORMANCE")])
    ids = [r.sequence_id for r in records]
    facts = await store.event_facts([*ids, 999_999, ids[0]])
    assert facts == {
        r.sequence_id: EventFacts(r.event_type, r.checksum, routed)
        for r, routed in zip(records, (BOTH, BOTH, WS), strict=True)
    }
    assert await store.event_facts([]) == {}
    # Nearby ids (one range read in SQL backends) and ids with a hole between them.
    assert set(await store.event_facts([ids[0], ids[2]])) == {ids[0], ids[2]}
    assert set(await store.event_facts(ids[1:])) == set(ids[1:])


# -- reading history (resume, GET /events) ---------------------------------------


async def test_read_events_pages_in_order_with_filters(store: Store) -> None:
    assert await store.read_events(after=0, limit=10) == []
    assert await store.first_sequence_id() == 0
    records = await store.append(
        [(d, BOTH) for d in drafts(3, "CRITICAL")]
        + [(d, ("realtime",)) for d in drafts(2, "SYSTEM")]
        + [(d, WS) for d in drafts(2, "PERFORMANCE")]
        + [(d, ()) for d in drafts(1, "DEBUG")]
    )
    ids = [r.sequence_id for r in records]
    # Whatever the delivery state: acked, failed and pending events are history too.
    await store.mark("websocket", ids[:2], DeliveryState.ACKED)
    await store.mark("websocket", [ids[2]], DeliveryState.PENDING)
    await store.mark("realtime", [ids[3]], DeliveryState.FAILED, "down")

    assert await store.read_events(after=0, limit=100) == records
    assert await store.first_sequence_id() == ids[0]
    # Pages: the last id of one page is the cursor of the next.
    pages, after = [], 0
    while page := await store.read_events(after=after, limit=3):
        pages.append([r.sequence_id for r in page])
        after = page[-1].sequence_id
    assert pages == [ids[0:3], ids[3:6], ids[6:8]]
    assert await store.read_events(after=ids[-1], limit=10) == []
    assert await store.read_events(after=0, limit=0) == []

    def seqs(found: Sequence[EventRecord]) -> list[int]:
        return [r.sequence_id for r in found]

    websocket = await store.read_events(after=0, limit=100, adapter="websocket")
    assert seqs(websocket) == ids[0:3] + ids[5:7]
    assert seqs(await store.read_events(after=0, limit=100, adapter="realtime")) == ids[0:5]
    assert await store.read_events(after=0, limit=100, adapter="nowhere") == []
    critical = await store.read_events(after=ids[0], limit=100, categories={Category.CRITICAL})
    assert seqs(critical) == ids[1:3]
    mixed = await store.read_events(
        after=0, limit=3, categories=[Category.SYSTEM, Category.PERFORMANCE], adapter="websocket"
    )
    assert seqs(mixed) == ids[5:7]
    assert await store.read_events(after=0, limit=100, categories=()) == []
    # What comes back is the stored record, wire bytes and all.
    assert [r.wire for r in websocket] == [records[i].wire for i in (0, 1, 2, 5, 6)]


async def test_first_sequence_id_follows_pruning(store: Store) -> None:
    records = await store.append([(d, WS) for d in drafts(5)])
    ids = [r.sequence_id for r in records]
    await store.mark("websocket", ids, DeliveryState.ACKED)
    stored = await store.get(ids[-1])
    assert stored is not None
    cutoff = stored.created_at_ms + 1
    assert await store.prune(through=ids[2], older_than_ms=cutoff) == 3
    assert await store.first_sequence_id() == ids[3]
    assert [r.sequence_id for r in await store.read_events(after=0, limit=10)] == ids[3:]
    assert await store.prune(through=ids[-1], older_than_ms=cutoff) == 2
    assert await store.first_sequence_id() == 0  # nothing stored; the high mark stays
    assert await store.last_sequence_id() == ids[-1]


async def test_a_follower_reads_events_with_their_routing_in_order(store: Store) -> None:
    """What a service following the store reads (read_routed), and where it
    starts (committed_through)."""
    assert await store.committed_through() == 0
    assert await store.read_routed(after=0, limit=10) == []
    both, one = ("websocket", "realtime"), ("websocket",)
    records = await store.append([(d, both if i % 2 else one) for i, d in enumerate(drafts(5))])
    assert await store.committed_through() == 5
    page = await store.read_routed(after=1, limit=10, through=3)
    assert [(r.sequence_id, routed) for r, routed in page] == [(2, both), (3, one)]
    assert [r.wire for r, _ in page] == [r.wire for r in records[1:3]]
    assert [r.sequence_id for r, _ in await store.read_routed(after=0, limit=2)] == [1, 2]
    assert [r.sequence_id for r, _ in await store.read_routed(after=3, limit=10)] == [4, 5]
    assert await store.read_routed(after=0, limit=0) == []
