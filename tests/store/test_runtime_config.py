"""The Store contract for the runtime configuration and its audit trail, on
every backend (memory, sqlite, postgres): what the admin API relies on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from broadcaster.store import AuditEntry, Store

__all__: list[str] = []

CONFIG: dict[str, Any] = {
    "categories": {"CRITICAL": {"enabled": True, "adapters": ["websocket", "realtime"]}},
    "flags": {"dual_write": True, "ratio": 0.25, "note": "Zoë ✓", "off": None},
}


async def save(store: Store, n: int, *, actor: str = "ops") -> list[AuditEntry]:
    """``n`` successive changes of flag ``step``, each audited."""
    entries = []
    for i in range(n):
        entries.append(
            await store.save_runtime_config(
                {"step": i},
                actor=actor,
                path=f"PATCH /config/flags/step/{i}",
                before=None if i == 0 else {"step": i - 1},
                after={"step": i},
            )
        )
    return entries


async def test_new_store_has_no_config_and_no_audit(store: Store) -> None:
    assert await store.runtime_config() is None
    assert await store.audit_log() == []
    assert await store.audit_log(after=10, limit=5) == []


async def test_save_then_load(store: Store) -> None:
    started_ms = int(time.time() * 1000)
    entry = await store.save_runtime_config(
        CONFIG,
        actor="alice",
        path="PATCH /config/categories/CRITICAL",
        before=None,
        after=CONFIG["categories"]["CRITICAL"],
    )
    assert entry.id >= 1
    assert started_ms <= entry.at_ms <= int(time.time() * 1000)
    assert (entry.actor, entry.path) == ("alice", "PATCH /config/categories/CRITICAL")
    assert entry.before is None
    assert entry.after == CONFIG["categories"]["CRITICAL"]
    assert await store.runtime_config() == CONFIG
    assert await store.audit_log() == [entry]


async def test_save_replaces_the_whole_document(store: Store) -> None:
    await store.save_runtime_config(CONFIG, actor="a", path="PUT /config", before=None, after=1)
    await store.save_runtime_config({"flags": {}}, actor="b", path="PUT /config", before=1, after=2)
    assert await store.runtime_config() == {"flags": {}}
    await store.save_runtime_config({}, actor="c", path="DELETE /config", before=2, after=None)
    assert await store.runtime_config() == {}  # saved empty is not "never saved"
    assert [e.actor for e in await store.audit_log()] == ["a", "b", "c"]


async def test_values_come_back_as_json_decodes_them(store: Store) -> None:
    entry = await store.save_runtime_config(
        {"t": (1, 2), "nested": {"z": [{"y": None}]}, "ü": "\u0000"},
        actor="a",
        path="p",
        before={"t": (1,)},
        after=[True, 1.5, "x"],
    )
    assert entry.before == {"t": [1]}
    assert entry.after == [True, 1.5, "x"]
    assert await store.runtime_config() == {
        "t": [1, 2],
        "nested": {"z": [{"y": None}]},
        "ü": "\u0000",
    }
    (logged,) = await store.audit_log()
    assert logged == entry
    # What is returned is a copy: changing it changes nothing stored.
    loaded = await store.runtime_config()
    assert loaded is not None
    loaded["t"].append(3)
    logged.after.append("changed")
    assert (await store.runtime_config())["t"] == [1, 2]  # type: ignore[index]
    assert (await store.audit_log())[0].after == [True, 1.5, "x"]


async def test_audit_log_pages_oldest_first_with_increasing_ids(store: Store) -> None:
    entries = await save(store, 7)
    ids = [e.id for e in entries]
    assert ids == sorted(ids) and len(set(ids)) == 7
    assert await store.audit_log() == entries
    assert await store.audit_log(limit=3) == entries[:3]
    assert await store.audit_log(after=ids[2]) == entries[3:]
    assert await store.audit_log(after=ids[2], limit=2) == entries[3:5]
    assert await store.audit_log(after=ids[-1]) == []
    assert await store.audit_log(limit=0) == []
    # Paging with the last id seen visits every entry exactly once.
    seen: list[AuditEntry] = []
    cursor = 0
    while page := await store.audit_log(after=cursor, limit=2):
        seen += page
        cursor = page[-1].id
    assert seen == entries
    assert [e.after for e in entries] == [{"step": i} for i in range(7)]


async def test_default_limit_is_100(store: Store) -> None:
    entries = await save(store, 105)
    assert await store.audit_log() == entries[:100]
    assert await store.audit_log(after=entries[99].id) == entries[100:]


async def test_concurrent_saves_each_get_their_own_entry(store: Store) -> None:
    results = await asyncio.gather(
        *(
            store.save_runtime_config(
                {"writer": i}, actor=f"w{i}", path="PUT /config", before=None, after={"w": i}
            )
            for i in range(20)
        )
    )
    assert len({e.id for e in results}) == 20
    log = await store.audit_log()
    assert sorted(results, key=lambda e: e.id) == log
    # The document is the one of the last committed change.
    assert await store.runtime_config() == {"writer": int(log[-1].actor[1:])}


async def test_config_and_audit_survive_a_restart(store: Store) -> None:
    first = await save(store, 3)
    await store.close()
    await store.open()
    assert await store.runtime_config() == {"step": 2}
    assert await store.audit_log() == first
    later = await store.save_runtime_config(
        {"step": 3}, actor="ops", path="p", before={"step": 2}, after={"step": 3}
    )
    assert later.id > first[-1].id
    assert await store.audit_log(after=first[-1].id) == [later]


class Unserialisable:
    pass


@pytest.mark.parametrize(
    ("config", "before", "after", "error"),
    [
        ({"ok": True}, None, {"bad": Unserialisable()}, TypeError),
        ({"ok": True}, {"bad": {1, 2}}, None, TypeError),
        ({"bad": b"bytes"}, None, None, TypeError),
        ({"ok": True}, None, float("inf"), ValueError),
        ({"bad": float("nan")}, None, None, ValueError),
        ([("not", "a mapping")], None, None, TypeError),
    ],
    ids=["after-object", "before-set", "config-bytes", "after-inf", "config-nan", "config-list"],
)
async def test_unserialisable_value_writes_neither_config_nor_audit(
    store: Store, config: Any, before: Any, after: Any, error: type[Exception]
) -> None:
    (kept,) = await save(store, 1)
    with pytest.raises(error):
        await store.save_runtime_config(config, actor="x", path="p", before=before, after=after)
    assert await store.runtime_config() == {"step": 0}
    assert await store.audit_log() == [kept]
    # The store is still usable, and the next id still increases.
    ok = await store.save_runtime_config(
        {"step": 1}, actor="ops", path="p", before=None, after=None
    )
    assert ok.id > kept.id
