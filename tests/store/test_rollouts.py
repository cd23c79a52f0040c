"""The Store contract for progressive rollouts, on every backend: one row per
rollout with a version that a save must name, at most one running or paused
rollout per category, and the configuration change written in the same
transaction as the rollout, audited as the rollout."""

from __future__ import annotations

import asyncio

import pytest

from broadcaster.exceptions import RolloutConflict
from broadcaster.store import Store
from broadcaster.store.base import ACTIVE_ROLLOUT_STATES, ConfigChange, rollout_actor

__all__: list[str] = []

DOC = {"plan": {"steps": [1, 25, 100]}, "state": "running", "note": "Zoë ✓"}


def change(percentage: int, path: str = "rollout 1: step") -> ConfigChange:
    return ConfigChange(
        config={"categories": {"USER_ACTIVITY": {"percentage": percentage}}, "override": None},
        path=path,
        before={"percentage": 0},
        after={"percentage": percentage},
    )


async def test_a_rollout_is_created_with_its_change_audited_as_the_rollout(store: Store) -> None:
    assert await store.rollouts() == []
    written = await store.create_rollout("USER_ACTIVITY", DOC, change=change(1))
    row = written.row
    assert (row.category, row.state, row.version, row.doc) == ("USER_ACTIVITY", "running", 1, DOC)
    assert row.created_at_ms == row.updated_at_ms > 0
    assert written.audit is not None
    assert written.audit.actor == rollout_actor(row.id) == f"rollout:{row.id}"
    assert (written.audit.path, written.audit.after) == ("rollout 1: step", {"percentage": 1})
    assert await store.audit_log() == [written.audit]
    assert await store.runtime_config() == change(1).config
    assert await store.rollout(row.id) == row
    assert await store.rollouts() == [row] == await store.rollouts(active_only=True)
    assert await store.rollout(row.id + 1) is None


async def test_a_category_has_one_active_rollout_at_a_time(store: Store) -> None:
    first = (await store.create_rollout("USER_ACTIVITY", DOC, change=change(1))).row
    other = (await store.create_rollout("CRITICAL", DOC)).row  # another category: fine
    assert other.id > first.id
    with pytest.raises(RolloutConflict) as info:
        await store.create_rollout("USER_ACTIVITY", DOC, change=change(5))
    assert info.value.rollout_id == first.id
    assert f"rollout {first.id} running" in str(info.value)
    # Nothing of the refused one was written: no row, no config, no audit.
    assert [r.id for r in await store.rollouts()] == [first.id, other.id]
    assert await store.runtime_config() == change(1).config
    assert len(await store.audit_log()) == 1
    # Paused is active too; once it ends, a new one may start.
    paused = await store.save_rollout(first.id, DOC, state="paused", version=1)
    with pytest.raises(RolloutConflict):
        await store.create_rollout("USER_ACTIVITY", DOC)
    await store.save_rollout(first.id, DOC, state="aborted", version=paused.row.version)
    again = (await store.create_rollout("USER_ACTIVITY", DOC)).row
    assert again.id > other.id  # ids are never reused
    assert [r.id for r in await store.rollouts(active_only=True)] == [other.id, again.id]


async def test_of_two_starts_at_once_exactly_one_wins(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_rollout("SYSTEM", DOC, change=change(i)) for i in range(1, 6)),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1
    assert all(isinstance(r, RolloutConflict) for r in results if r not in won)
    assert len(await store.audit_log()) == 1


async def test_a_save_names_the_version_it_read(store: Store) -> None:
    row = (await store.create_rollout("USER_ACTIVITY", DOC)).row
    moved = await store.save_rollout(
        row.id, {**DOC, "stage": 1}, state="running", version=1, change=change(25)
    )
    assert moved.row.version == 2 and moved.row.doc["stage"] == 1
    assert moved.row.created_at_ms == row.created_at_ms
    assert moved.row.updated_at_ms >= row.updated_at_ms
    assert moved.audit is not None and moved.audit.actor == f"rollout:{row.id}"
    assert await store.runtime_config() == change(25).config
    # Someone saved it since version 1 was read: refused, nothing written.
    with pytest.raises(RolloutConflict) as info:
        await store.save_rollout(row.id, DOC, state="aborted", version=1, change=change(0))
    assert info.value.rollout_id == row.id and "changed since it was read" in str(info.value)
    assert await store.rollout(row.id) == moved.row
    assert await store.runtime_config() == change(25).config
    assert [e.id for e in await store.audit_log()] == [moved.audit.id]
    # A save without a change leaves the configuration and the audit alone.
    held = await store.save_rollout(row.id, {**DOC, "held_ms": 5}, state="running", version=2)
    assert held.audit is None and held.row.version == 3
    assert len(await store.audit_log()) == 1
    with pytest.raises(RolloutConflict, match="no rollout 99"):
        await store.save_rollout(99, DOC, state="running", version=1)


async def test_of_two_saves_of_one_version_exactly_one_wins(store: Store) -> None:
    row = (await store.create_rollout("USER_ACTIVITY", DOC)).row
    results = await asyncio.gather(
        store.save_rollout(row.id, DOC, state="rolled_back", version=1, change=change(0)),
        store.save_rollout(row.id, DOC, state="aborted", version=1, change=change(0)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["RolloutConflict", "RolloutWrite"]
    assert (await store.rollout(row.id)).version == 2  # type: ignore[union-attr]
    assert len(await store.audit_log()) == 1


async def test_a_document_json_cannot_hold_writes_nothing(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.create_rollout("USER_ACTIVITY", {"held": float("nan")}, change=change(1))
    with pytest.raises(TypeError):
        await store.create_rollout("USER_ACTIVITY", DOC, change=ConfigChange({}, "p", {1}, None))
    assert await store.rollouts() == [] and await store.audit_log() == []


async def test_rollouts_survive_a_restart(store: Store) -> None:
    row = (await store.create_rollout("USER_ACTIVITY", DOC, change=change(1))).row
    saved = (await store.save_rollout(row.id, DOC, state="paused", version=1)).row
    await store.close()
    await store.open()
    assert await store.rollouts() == [saved]
    with pytest.raises(RolloutConflict):
        await store.create_rollout("USER_ACTIVITY", DOC)


def test_the_active_states_are_the_policys() -> None:
    from broadcaster.rollout.policy import ACTIVE_STATES

    assert {s.value for s in ACTIVE_STATES} == ACTIVE_ROLLOUT_STATES
