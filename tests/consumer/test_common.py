"""ReceiptCollector and StoreReceiptWriter: verify, count, report, never lose receipts."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
import structlog

from broadcaster.consumer import ReceiptCollector, StoreReceiptWriter
from broadcaster.events import EventFactory, EventRecord, SigningKey, seal
from broadcaster.exceptions import StoreUnavailable
from broadcaster.store.base import ConsumerReceipt
from broadcaster.store.memory import MemoryStore
from tests._fakes import FlakyStore


def wire_objects(
    n: int, category: str = "CRITICAL", *, signing_key: SigningKey | None = None
) -> list[dict[str, Any]]:
    factory = EventFactory(signing_key=signing_key)
    return [
        orjson.loads(seal(factory.draft(category, "order.created", {"i": i}), i + 1).wire)
        for i in range(n)
    ]


class Collected:
    def __init__(self) -> None:
        self.receipts: list[ConsumerReceipt] = []
        self.events: list[tuple[Mapping[str, Any], bool]] = []

    def on_receipt(self, receipt: ConsumerReceipt) -> None:
        self.receipts.append(receipt)

    def on_event(self, obj: Mapping[str, Any], ok: bool) -> None:
        self.events.append((obj, ok))


def collector(seen: Collected, **kwargs: Any) -> ReceiptCollector:
    return ReceiptCollector(
        "realtime",
        consumer="c1",
        on_event=seen.on_event,
        on_receipt=seen.on_receipt,
        clock=lambda: 1_700_000_000.25,
        **kwargs,
    )


# -- ReceiptCollector ------------------------------------------------------------------


def test_good_event_is_verified_and_reported() -> None:
    seen = Collected()
    c = collector(seen)
    (obj,) = wire_objects(1)
    assert c.handle(obj) is True
    assert (c.stats.received, c.stats.verified, c.stats.mismatches, c.stats.malformed) == (
        1,
        1,
        0,
        0,
    )
    assert c.stats.by_category == {"CRITICAL": 1}
    assert seen.receipts == [
        ConsumerReceipt(
            sequence_id=1,
            adapter="realtime",
            event_type="order.created",
            received_at_ms=1_700_000_000_250,
            checksum=obj["checksum"]["value"],
            checksum_ok=True,
            consumer="c1",
            payload_keys='["i"]',
        )
    ]
    assert seen.events == [(obj, True)]
    assert c.seen == {1}


def test_mismatch_is_counted_and_reported_not_dropped() -> None:
    seen = Collected()
    c = collector(seen)
    (obj,) = wire_objects(1)
    claimed = obj["checksum"]["value"]
    obj["payload"]["i"] = 999
    assert c.handle(obj) is False
    assert (c.stats.received, c.stats.verified, c.stats.mismatches) == (1, 0, 1)
    (receipt,) = seen.receipts
    assert receipt.checksum_ok is False
    assert receipt.checksum != claimed  # the checksum actually computed on receipt
    assert len(receipt.checksum) == len(claimed)
    assert seen.events == [(obj, False)]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.pop("checksum"),
        lambda o: o["checksum"].__setitem__("algorithm", "md5"),
        lambda o: o.pop("payload"),
        lambda o: o.pop("sequence_id"),
        lambda o: o.__setitem__("sequence_id", "1"),
    ],
)
def test_malformed_event_is_counted_without_receipt(mutate: Any) -> None:
    seen = Collected()
    c = collector(seen)
    (obj,) = wire_objects(1)
    mutate(obj)
    assert c.handle(obj) is False
    assert (c.stats.received, c.stats.malformed, c.stats.verified, c.stats.mismatches) == (
        1,
        1,
        0,
        0,
    )
    assert seen.receipts == [] and seen.events == []
    assert c.seen == set()


def test_duplicates_are_counted_and_still_reported() -> None:
    seen = Collected()
    c = collector(seen)
    objs = wire_objects(3)
    for obj in [*objs, objs[1], objs[1], objs[2]]:
        assert c.handle(obj)
    assert c.stats.received == 6
    assert c.stats.verified == 6
    assert c.stats.duplicates == 3
    assert c.seen == {1, 2, 3}
    assert [r.sequence_id for r in seen.receipts] == [1, 2, 3, 2, 2, 3]


def test_duplicate_tracking_can_be_turned_off() -> None:
    c = ReceiptCollector("websocket", track_seen=False)
    (obj,) = wire_objects(1)
    assert c.handle(obj) and c.handle(obj)
    assert c.stats.duplicates == 0
    assert c.seen == set()
    assert c.stats.verified == 2


def test_counts_by_category() -> None:
    c = ReceiptCollector("websocket")
    for obj in wire_objects(2, "SYSTEM") + wire_objects(1, "DEBUG"):
        c.handle(obj)
    assert c.stats.by_category == {"SYSTEM": 2, "DEBUG": 1}


def test_without_callbacks_the_collector_still_counts() -> None:
    c = ReceiptCollector("websocket")
    assert c.consumer == "default"
    (obj,) = wire_objects(1)
    assert c.handle(obj)
    obj["event_type"] = "changed"
    assert not c.handle(obj)
    assert (c.stats.verified, c.stats.mismatches) == (1, 1)


# -- signatures (SPEC 13) ----------------------------------------------------------

K1 = SigningKey("k1", "first-key")
K2 = SigningKey("k2", "second-key")


def test_a_consumer_holding_the_key_verifies_signed_events() -> None:
    seen = Collected()
    c = collector(seen, signing_keys={"k1": "first-key"})
    objs = wire_objects(3, signing_key=K1)
    assert all(c.handle(obj) for obj in objs)
    assert (c.stats.verified, c.stats.mismatches, c.stats.bad_signatures) == (3, 0, 0)
    assert [ok for _, ok in seen.events] == [True, True, True]
    assert all(r.checksum_ok for r in seen.receipts)


def test_a_consumer_holding_two_keys_accepts_either_while_keys_rotate() -> None:
    c = ReceiptCollector("websocket", signing_keys={"k1": "first-key", "k2": b"second-key"})
    for obj in wire_objects(2, signing_key=K1) + wire_objects(2, signing_key=K2):
        assert c.handle(obj)
    assert (c.stats.verified, c.stats.bad_signatures) == (4, 0)


@pytest.mark.parametrize(
    ("signing_key", "reason"),
    [
        (None, "no signature"),
        (SigningKey("k3", "third-key"), "unknown key id 'k3'"),
        (SigningKey("k1", "not-the-first-key"), "signature does not match (key id 'k1')"),
    ],
)
def test_an_event_not_signed_with_a_held_key_is_counted_logged_and_reported_bad(
    signing_key: SigningKey | None, reason: str
) -> None:
    seen = Collected()
    c = collector(seen, signing_keys={"k1": "first-key", "k2": "second-key"})
    (obj,) = wire_objects(1, signing_key=signing_key)
    with structlog.testing.capture_logs() as logs:
        assert c.handle(obj) is False
    assert (c.stats.received, c.stats.verified, c.stats.bad_signatures) == (1, 0, 1)
    assert (c.stats.mismatches, c.stats.malformed) == (0, 0)
    assert [(e["event"], e["sequence_id"], e["reason"]) for e in logs] == [
        ("bad signature", 1, reason)
    ]
    # Reported, never dropped: reconciliation counts it as a mismatch.
    (receipt,) = seen.receipts
    assert receipt.checksum_ok is False
    assert receipt.checksum == obj["checksum"]["value"]
    assert seen.events == [(obj, False)]


def test_a_changed_payload_is_a_checksum_mismatch_not_a_bad_signature() -> None:
    c = ReceiptCollector("websocket", signing_keys={"k1": "first-key"})
    (obj,) = wire_objects(1, signing_key=K1)
    obj["payload"]["i"] = 999
    assert c.handle(obj) is False
    assert (c.stats.mismatches, c.stats.bad_signatures, c.stats.verified) == (1, 0, 0)


def test_without_keys_signatures_are_ignored_and_checksums_still_verified() -> None:
    c = ReceiptCollector("websocket")
    signed, unsigned = wire_objects(1, signing_key=K1)[0], wire_objects(1)[0]
    forged = wire_objects(1, signing_key=SigningKey("k1", "forger"))[0]
    assert c.handle(signed) and c.handle(unsigned) and c.handle(forged)
    assert (c.stats.verified, c.stats.bad_signatures) == (3, 0)
    signed["payload"]["i"] = 5
    assert not c.handle(signed)
    assert c.stats.mismatches == 1


def test_an_empty_signing_key_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="signing key must not be empty"):
        ReceiptCollector("websocket", signing_keys={"k1": ""})


# -- StoreReceiptWriter ----------------------------------------------------------------


async def stored_receipts(store: MemoryStore, *seqs: int) -> list[ConsumerReceipt]:
    out: list[ConsumerReceipt] = []
    for seq in seqs:
        stored = await store.get(seq)
        assert stored is not None
        out.extend(stored.receipts)
    return out


async def seeded_store(store: MemoryStore, n: int) -> list[EventRecord]:
    factory = EventFactory()
    return await store.append([(factory.draft("DEBUG", "t", {}), ("realtime",)) for _ in range(n)])


def make_receipt(seq: int) -> ConsumerReceipt:
    return ConsumerReceipt(seq, "realtime", "t", seq, "00000000", True)


async def test_flush_writes_buffered_receipts() -> None:
    store = FlakyStore()
    await seeded_store(store, 3)
    writer = StoreReceiptWriter(store)
    receipts = [make_receipt(s) for s in (1, 2, 3)]
    for r in receipts:
        writer.add(r)
    assert await stored_receipts(store, 1, 2, 3) == []  # nothing before flush
    await writer.flush()
    assert await stored_receipts(store, 1, 2, 3) == receipts
    await writer.flush()  # nothing left: no second write, no duplicates
    assert store.receipt_writes == 1
    assert await stored_receipts(store, 1, 2, 3) == receipts


async def test_receipts_survive_a_failing_store() -> None:
    store = FlakyStore()
    await seeded_store(store, 4)
    writer = StoreReceiptWriter(store)
    writer.add(make_receipt(1))
    writer.add(make_receipt(2))
    store.down = True
    with pytest.raises(StoreUnavailable):
        await writer.flush()
    writer.add(make_receipt(3))
    with pytest.raises(StoreUnavailable):
        await writer.flush()
    writer.add(make_receipt(4))
    store.down = False
    await writer.flush()
    assert [r.sequence_id for r in await stored_receipts(store, 1, 2, 3, 4)] == [1, 2, 3, 4]
    assert store.receipt_writes == 3


async def test_collector_feeds_writer() -> None:
    store = MemoryStore()
    records = await seeded_store(store, 2)
    writer = StoreReceiptWriter(store)
    c = ReceiptCollector("realtime", on_receipt=writer.add)
    for record in records:
        c.handle(orjson.loads(record.wire))
    await writer.flush()
    receipts = await stored_receipts(store, 1, 2)
    assert [(r.sequence_id, r.checksum_ok, r.checksum) for r in receipts] == [
        (rec.sequence_id, True, rec.checksum) for rec in records
    ]


async def test_periodic_flusher_retries_until_the_store_recovers() -> None:
    store = FlakyStore()
    await seeded_store(store, 2)
    writer = StoreReceiptWriter(store, interval_s=0.005)
    store.down = True
    writer.start()
    writer.start()  # a second start does not add a second flusher
    writer.add(make_receipt(1))
    async with asyncio.timeout(30):
        await store.wait_receipt_writes(2)  # it kept trying after a failure
    assert await stored_receipts(store, 1) == []
    writer.add(make_receipt(2))
    store.down = False
    async with asyncio.timeout(30):
        await store.wait_receipt_writes(store.receipt_writes + 1)  # the next try
    assert [r.sequence_id for r in await stored_receipts(store, 1, 2)] == [1, 2]
    await writer.close()


async def test_close_stops_the_flusher_and_flushes_the_rest() -> None:
    store = FlakyStore()
    await seeded_store(store, 1)
    writer = StoreReceiptWriter(store, interval_s=60)
    writer.start()
    writer.add(make_receipt(1))
    await writer.close()
    assert [r.sequence_id for r in await stored_receipts(store, 1)] == [1]
    calls = store.receipt_writes
    await writer.close()  # idempotent, nothing more to write
    assert store.receipt_writes == calls


async def test_close_without_start_flushes() -> None:
    store = MemoryStore()
    await seeded_store(store, 1)
    writer = StoreReceiptWriter(store)
    writer.add(make_receipt(1))
    await writer.close()
    assert len(await stored_receipts(store, 1)) == 1


async def test_close_with_a_failing_store_keeps_receipts_and_raises() -> None:
    store = FlakyStore()
    await seeded_store(store, 1)
    writer = StoreReceiptWriter(store, interval_s=60)
    writer.start()
    writer.add(make_receipt(1))
    store.down = True
    with pytest.raises(StoreUnavailable):
        await writer.close()
    store.down = False
    await writer.flush()
    assert len(await stored_receipts(store, 1)) == 1


def test_payload_keys_can_be_left_out_of_verified_receipts() -> None:
    # A matching checksum proves the keys; reconciliation takes None as "not
    # reported" and judges by the checksum.
    seen = Collected()
    c = collector(seen, keys_when_verified=False)
    good, bad = wire_objects(2)
    bad["payload"] = {"changed": True}
    assert c.handle(good) is True and c.handle(bad) is False
    assert [r.payload_keys for r in seen.receipts] == [None, '["changed"]']
