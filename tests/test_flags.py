"""RuntimeFlags: validation, persistence before application, loading."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from broadcaster.events import Category
from broadcaster.exceptions import ConfigError
from broadcaster.flags import (
    CategoryFlags,
    CategoryPatch,
    FlagsSnapshot,
    OverrideChange,
    RuntimeFlags,
)
from broadcaster.routing import RoutingTable
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore
from tests._shapes import assert_shape


def make(store: MemoryStore) -> tuple[RuntimeFlags, list[RoutingTable]]:
    applied: list[RoutingTable] = []
    return RuntimeFlags(load_settings(env_file=None), store, applied.append), applied


def test_patch_model_names_the_field() -> None:
    with pytest.raises(ValidationError) as info:
        CategoryPatch.model_validate({"percentage": 101})
    assert info.value.errors()[0]["loc"] == ("percentage",)
    with pytest.raises(ValidationError):
        CategoryPatch.model_validate({})
    with pytest.raises(ValidationError):
        OverrideChange.model_validate({"override": "kafka"})
    assert CategoryPatch(adapters=["realtime"]).adapters == ["realtime"]


@pytest.mark.parametrize("percentage", [-1, 101, 150, "50"])
def test_a_category_patch_refuses_a_percentage_outside_0_to_100_naming_it(
    percentage: object,
) -> None:
    """The body of PATCH /config/categories/{category}: the admin API answers
    422 with these errors' fields (``percentage``), and nothing changes."""
    with pytest.raises(ValidationError) as info:
        CategoryPatch.model_validate({"percentage": percentage})
    assert [e["loc"] for e in info.value.errors()] == [("percentage",)]


@pytest.mark.parametrize("percentage", [0, 1, 99, 100])
def test_a_category_patch_takes_every_percentage_from_0_to_100(percentage: int) -> None:
    assert CategoryPatch.model_validate({"percentage": percentage}).percentage == percentage


async def test_change_is_persisted_then_applied() -> None:
    store = MemoryStore()
    flags, applied = make(store)
    assert flags.table() == load_settings(env_file=None).routing_table()
    entry = await flags.patch_category(
        Category.DEBUG,
        CategoryPatch(enabled=True, percentage=100, adapters=["realtime", "realtime"]),
        actor="ops",
        path="PATCH /config/categories/DEBUG",
    )
    assert entry.after == {
        "enabled": True,
        "percentage": 100,
        "adapters": ["realtime"],
        "cutover": False,
    }
    assert applied[-1].route(Category.DEBUG, "k") == ("websocket", "realtime")
    doc = await store.runtime_config()
    assert doc is not None and doc["categories"]["DEBUG"]["percentage"] == 100
    await flags.set_override(OverrideChange(override="all"), actor="ops", path="PUT")
    assert applied[-1].override == "all"
    assert flags.snapshot()["override"] == "all"


async def test_load_applies_persisted_flags_and_rejects_bad_ones() -> None:
    store = MemoryStore()
    flags, applied = make(store)
    assert await flags.load() is False and applied == []
    good: dict[str, Any] = {
        "categories": {"USER_ACTIVITY": {"enabled": True, "percentage": 5, "adapters": []}},
        "override": "websocket",
    }
    await store.save_runtime_config(good, actor="t", path="p", before=None, after=None)
    assert await flags.load() is True
    assert flags.category(Category.USER_ACTIVITY)["percentage"] == 5
    assert applied[-1].override == "websocket"
    for bad in (
        {"categories": {"NOPE": {"enabled": True, "percentage": 5, "adapters": []}}},
        {"categories": {"DEBUG": {"enabled": True, "percentage": 500, "adapters": []}}},
        {"override": "kafka"},
    ):
        await store.save_runtime_config(bad, actor="t", path="p", before=None, after=None)
        fresh, _ = make(store)
        with pytest.raises(ConfigError) as info:
            await fresh.load()
        assert info.value.variable == "runtime_config"


async def test_the_flags_views_and_the_persisted_document_have_their_documented_shape() -> None:
    store = MemoryStore()
    flags, _ = make(store)
    assert_shape(flags.snapshot(), FlagsSnapshot)
    assert set(flags.snapshot()["categories"]) == {c.value for c in Category}
    entry = await flags.patch_category(
        Category.CRITICAL, CategoryPatch(cutover=True), actor="ops", path="PATCH"
    )
    assert_shape(flags.category(Category.CRITICAL), CategoryFlags)
    assert_shape(entry.before, CategoryFlags)
    assert_shape(entry.after, CategoryFlags)
    assert await store.runtime_config() == flags.snapshot()
