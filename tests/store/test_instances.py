"""The store's part in running several service instances, on every backend:
heartbeats that expire, and a lease that at most one instance holds."""

from __future__ import annotations

import asyncio

from broadcaster.store import Store


async def test_instances_are_listed_until_their_heartbeat_expires(store: Store) -> None:
    await store.heartbeat("a", {"websocket": "ws://a/events", "subscribers": 2}, expire_after_s=60)
    await store.heartbeat("b", {"subscribers": 0}, expire_after_s=60)
    first = await store.instances(expire_after_s=60)
    assert [(i.instance_id, i.info) for i in first] == [
        ("a", {"websocket": "ws://a/events", "subscribers": 2}),
        ("b", {"subscribers": 0}),
    ]
    await store.heartbeat("a", {"subscribers": 3}, expire_after_s=60)
    again = {i.instance_id: i for i in await store.instances(expire_after_s=60)}
    assert again["a"].info == {"subscribers": 3}
    assert again["a"].started_at_ms == first[0].started_at_ms
    assert again["a"].heartbeat_at_ms >= first[0].heartbeat_at_ms
    # A heartbeat older than the limit: the instance is gone (and forgotten
    # by the next heartbeat of another).
    # "b" beats just before the query; on a busy machine the gap between the
    # two may pass a short limit, so the limit grows until it does not. "a",
    # older than every limit tried, never shows.
    limit = 0.01
    while True:
        await asyncio.sleep(2 * limit)
        await store.heartbeat("b", {}, expire_after_s=limit)
        alive = [i.instance_id for i in await store.instances(expire_after_s=limit)]
        assert "a" not in alive
        if alive or limit > 10:
            break
        limit *= 2
    assert alive == ["b"]
    assert [i.instance_id for i in await store.instances(expire_after_s=60)] == ["b"]


async def test_one_holder_at_a_time_renewals_keep_it_and_expiry_frees_it(store: Store) -> None:
    a = await store.claim_lease("realtime", "a", ttl_s=60)
    assert a.granted and a.holder == "a"
    b = await store.claim_lease("realtime", "b", ttl_s=60)
    assert not b.granted and b.holder == "a" and b.expires_at_ms == a.expires_at_ms
    renewed = await store.claim_lease("realtime", "a", ttl_s=60)
    assert renewed.granted and renewed.expires_at_ms >= a.expires_at_ms
    assert (await store.claim_lease("other", "b", ttl_s=60)).granted  # leases are by name
    # a's claim runs out: b takes it, and a cannot renew what it lost.
    await store.claim_lease("realtime", "a", ttl_s=0.01)
    await asyncio.sleep(0.03)
    assert (await store.claim_lease("realtime", "b", ttl_s=60)).granted
    lost = await store.claim_lease("realtime", "a", ttl_s=60)
    assert not lost.granted and lost.holder == "b"


async def test_a_released_lease_is_free_at_once_and_only_its_holder_releases(
    store: Store,
) -> None:
    await store.claim_lease("realtime", "a", ttl_s=60)
    await store.release_lease("realtime", "b")  # not b's: nothing happens
    assert not (await store.claim_lease("realtime", "b", ttl_s=60)).granted
    await store.release_lease("realtime", "a")
    assert (await store.claim_lease("realtime", "b", ttl_s=60)).granted


async def test_of_many_claims_at_once_exactly_one_wins(store: Store) -> None:
    results = await asyncio.gather(
        *(store.claim_lease("realtime", f"i{n}", ttl_s=60) for n in range(8))
    )
    winners = [r.holder for r in results if r.granted]
    assert len(winners) == 1
    assert all(r.holder == winners[0] for r in results)
