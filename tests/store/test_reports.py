"""Store.record_reports on every backend: the receipts consumers reported
through ``POST /receipts``, checked against the stored events and stored in
one call."""

from __future__ import annotations

from broadcaster.events import EventFactory
from broadcaster.store import Store


async def test_reports_are_checked_against_the_stored_events_in_one_call(store: Store) -> None:
    """Store.record_reports: what POST /receipts hands over (the receipts
    consumers reported, not yet checked)."""
    factory = EventFactory()
    records = await store.append(
        [(factory.draft("CRITICAL", "e", {"i": i}), ("websocket", "realtime")) for i in range(3)]
    )
    one, two, three = records
    reports = [
        (one.sequence_id, "websocket", one.checksum, "web", 1_765_000_000_000, 1, True),
        (two.sequence_id, "websocket", "00", "web", 1_765_000_000_000, 1, True),
        (three.sequence_id, "realtime", three.checksum, "web", 1_765_000_000_000, 2, False),
        (999, "websocket", "ab", "web", 1_765_000_000_000, 1, True),
        (998, "websocket", "ab", "web", 1_765_000_000_000, 1, True),
    ]
    outcome = await store.record_reports(reports)
    assert (outcome.accepted, outcome.mismatches, outcome.unknown) == (3, 2, [998, 999])
    again = await store.record_reports(reports)  # idempotent: nothing new stored
    assert again == outcome
    assert (await store.stats()).receipts == 3
    stored = await store.get(three.sequence_id)
    assert stored is not None
    [receipt] = stored.receipts
    assert (receipt.checksum_ok, receipt.deliveries, receipt.event_type) == (False, 2, "e")
    assert [(c.consumer, c.adapter) for c in await store.consumers()] == [
        ("web", "realtime"),
        ("web", "websocket"),
    ]


async def test_pruned_through_is_the_highest_id_prune_deleted(store: Store) -> None:
    """What resume is refused by: pruning, not gaps of ids that never
    committed."""
    from broadcaster.store import DeliveryState

    assert await store.pruned_through() == 0
    factory = EventFactory()
    records = await store.append(
        [(factory.draft("CRITICAL", "e", {"i": i}), ("websocket",)) for i in range(6)]
    )
    ids = [r.sequence_id for r in records]
    await store.mark("websocket", ids[:2] + ids[3:5], DeliveryState.ACKED)
    assert await store.prune(through=ids[-1], older_than_ms=2**62) == 4
    # The third event was not delivered and stays; the mark is the highest gone.
    assert await store.pruned_through() == ids[4]
    assert await store.prune(through=ids[1], older_than_ms=2**62) == 0
    assert await store.pruned_through() == ids[4]


async def test_a_batch_reporting_an_event_twice_stores_one_receipt_with_its_deliveries(
    store: Store,
) -> None:
    """A consumer that got an event twice may report both deliveries in one
    batch: one receipt is kept per (event, adapter, consumer), as first
    written, counting the most deliveries reported; both reports count."""
    factory = EventFactory()
    [record] = await store.append([(factory.draft("CRITICAL", "e", {}), ("websocket",))])
    seq, checksum = record.sequence_id, record.checksum
    reports = [
        (seq, "websocket", checksum, "web", 1_765_000_000_000, 1, True),
        (seq, "websocket", "00", "web", 1_765_000_000_500, 3, True),
        (seq, "websocket", checksum, "web", 1_765_000_000_900, 2, True),
    ]
    outcome = await store.record_reports(reports)
    assert (outcome.accepted, outcome.mismatches, outcome.unknown) == (3, 1, [])
    assert (await store.stats()).receipts == 1
    stored = await store.get(seq)
    assert stored is not None
    [receipt] = stored.receipts
    assert (receipt.checksum, receipt.checksum_ok, receipt.deliveries) == (checksum, True, 3)
    assert receipt.received_at_ms == 1_765_000_000_000
    [info] = await store.consumers()
    assert (info.first_seen_ms, info.last_seen_ms) == (1_765_000_000_000, 1_765_000_000_900)
