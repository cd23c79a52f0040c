"""Routing (SPEC 3): the override, the switches, sticky monotonic sampling."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broadcaster.events import Category
from broadcaster.routing import ADAPTER_NAMES, OVERRIDE_ALL, CategoryRoute, RoutingTable, bucket

categories = st.sampled_from(list(Category))
keys = st.text(max_size=64)
percentages = st.integers(min_value=0, max_value=100)


def documented_bucket(category: str, key: str) -> int:
    """The formula of the routing module doc, written out independently."""
    digest = hashlib.sha256((category + ":" + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], byteorder="big") % 100


def table(
    *,
    enabled: bool = True,
    primary: str = "websocket",
    override: str | None = None,
    route: CategoryRoute | None = None,
) -> RoutingTable:
    if route is None:
        route = CategoryRoute(True, 100, ("websocket", "realtime"))
    routes = {cat: route for cat in Category}
    return RoutingTable(enabled=enabled, primary=primary, override=override, categories=routes)


def sampled(category: Category, key: str, percentage: int) -> bool:
    t = table(route=CategoryRoute(True, percentage, ("websocket", "realtime")))
    return "realtime" in t.route(category, key)


# -- bucket -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "key", "expected"),
    [
        # Literal values: a change of hash function, encoding or byte order fails here.
        ("CRITICAL", "order-42", 74),
        ("PERFORMANCE", "user-1", 80),
        ("SYSTEM", "", 1),
        ("DEBUG", "é", 34),
    ],
)
def test_bucket_pinned_values(category: str, key: str, expected: int) -> None:
    assert bucket(category, key) == expected
    assert documented_bucket(category, key) == expected


@given(st.sampled_from([c.value for c in Category]), keys)
def test_bucket_follows_documented_formula(category: str, key: str) -> None:
    value = bucket(category, key)
    assert 0 <= value < 100
    assert value == documented_bucket(category, key)


def test_bucket_depends_on_category() -> None:
    differing = [i for i in range(200) if bucket("CRITICAL", f"k{i}") != bucket("SYSTEM", f"k{i}")]
    assert len(differing) > 150


# -- the three sampling properties -------------------------------------------


@given(categories, keys, percentages)
def test_sampling_is_deterministic(category: Category, key: str, percentage: int) -> None:
    first = sampled(category, key, percentage)
    # A freshly built table (a "new process") gives the same answer.
    assert sampled(category, key, percentage) == first
    assert first == (bucket(category.value, key) < percentage)


def key_in_bucket(category: Category, wanted: int) -> str:
    """The first of ``key-0``, ``key-1``, ... whose documented bucket is ``wanted``."""
    return next(
        key
        for key in (f"key-{i}" for i in itertools.count())
        if documented_bucket(category.value, key) == wanted
    )


@pytest.mark.parametrize("percentage", [1, 37, 50, 99])
@pytest.mark.parametrize("category", [Category.PERFORMANCE, Category.CRITICAL])
def test_a_key_whose_bucket_equals_the_percentage_is_not_sampled(
    category: Category, percentage: int
) -> None:
    """Sampling takes buckets 0 .. percentage-1, exactly ``percentage`` of the
    100: the key in bucket ``percentage`` is the first one left out, the key
    in bucket ``percentage - 1`` the last one in."""
    at_edge = key_in_bucket(category, percentage)
    below = key_in_bucket(category, percentage - 1)
    assert not sampled(category, at_edge, percentage)
    assert sampled(category, below, percentage)


@given(categories, keys, percentages, percentages)
def test_sampling_is_monotonic(category: Category, key: str, p: int, q: int) -> None:
    low, high = sorted((p, q))
    if sampled(category, key, low):
        assert sampled(category, key, high)


def _share(category: Category, keyset: list[str], percentage: int) -> float:
    t = table(route=CategoryRoute(True, percentage, ("websocket", "realtime")))
    hits = sum(1 for k in keyset if len(t.route(category, k)) == 2)
    return 100.0 * hits / len(keyset)


_USER_KEYS = [f"user-{i}" for i in range(10_000)]


@pytest.mark.parametrize("percentage", [1, 5, 10, 25, 30, 50, 75, 90, 99])
@pytest.mark.parametrize("category", [Category.PERFORMANCE, Category.CRITICAL])
def test_sampled_share_matches_percentage_sequential_keys(
    category: Category, percentage: int
) -> None:
    assert abs(_share(category, _USER_KEYS, percentage) - percentage) <= 2


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), percentage=st.integers(1, 99), category=categories)
def test_sampled_share_matches_percentage_random_keys(
    seed: int, percentage: int, category: Category
) -> None:
    rng = random.Random(seed)
    keyset = list({"".join(rng.choices("abcdefXYZ0123-_é", k=12)) for _ in range(10_000)})
    assert len(keyset) > 9_900
    assert abs(_share(category, keyset, percentage) - percentage) <= 2


# -- the rules of SPEC 3 -----------------------------------------------------


@given(categories, keys, st.sampled_from(ADAPTER_NAMES), st.booleans())
def test_override_adapter_sends_to_that_adapter_only(
    category: Category, key: str, adapter: str, enabled: bool
) -> None:
    t = table(override=adapter, enabled=enabled, route=CategoryRoute(False, 0, ()))
    assert t.route(category, key) == (adapter,)


@given(categories, keys, st.booleans())
def test_override_all_sends_to_every_configured_adapter(
    category: Category, key: str, enabled: bool
) -> None:
    t = table(override=OVERRIDE_ALL, enabled=enabled, route=CategoryRoute(False, 0, ()))
    assert t.route(category, key) == ADAPTER_NAMES


def test_override_all_uses_the_configured_adapter_set() -> None:
    routes = {cat: CategoryRoute(True, 100, ("websocket",)) for cat in Category}
    t = RoutingTable(True, "websocket", "all", routes, adapters=("websocket",))
    assert t.route(Category.CRITICAL, "k") == ("websocket",)


@given(categories, keys, percentages)
def test_master_switch_off_sends_to_primary_only(
    category: Category, key: str, percentage: int
) -> None:
    t = table(enabled=False, route=CategoryRoute(True, percentage, ("websocket", "realtime")))
    assert t.route(category, key) == ("websocket",)


@given(keys, percentages)
def test_disabled_category_sends_to_primary_only(key: str, percentage: int) -> None:
    t = table().with_category(Category.PERFORMANCE, CategoryRoute(False, percentage, ("realtime",)))
    assert t.route(Category.PERFORMANCE, key) == ("websocket",)
    # other categories are untouched
    assert t.route(Category.CRITICAL, key) == ("websocket", "realtime")


@given(keys)
def test_percentage_zero_sends_to_primary_only(key: str) -> None:
    t = table(route=CategoryRoute(True, 0, ("websocket", "realtime")))
    assert t.route(Category.PERFORMANCE, key) == ("websocket",)


@given(keys)
def test_percentage_hundred_samples_every_key(key: str) -> None:
    t = table(route=CategoryRoute(True, 100, ("realtime",)))
    assert t.route(Category.PERFORMANCE, key) == ("websocket", "realtime")


@given(keys, st.integers(1, 99))
def test_sampled_goes_to_category_adapters_plus_primary(key: str, percentage: int) -> None:
    t = table(route=CategoryRoute(True, percentage, ("realtime",)))
    expected = (
        ("websocket", "realtime")
        if documented_bucket("PERFORMANCE", key) < percentage
        else ("websocket",)
    )
    assert t.route(Category.PERFORMANCE, key) == expected


@pytest.mark.parametrize(
    ("primary", "adapters", "expected"),
    [
        ("websocket", ("realtime", "websocket"), ("websocket", "realtime")),
        ("realtime", ("websocket", "realtime"), ("realtime", "websocket")),
        ("websocket", ("websocket",), ("websocket",)),
        ("websocket", ("realtime",), ("websocket", "realtime")),
        ("realtime", (), ("realtime",)),
        ("websocket", ("realtime", "realtime"), ("websocket", "realtime")),
        ("realtime", ("realtime", "websocket", "realtime"), ("realtime", "websocket")),
    ],
)
def test_sampled_route_is_primary_first_without_duplicates(
    primary: str, adapters: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    t = table(primary=primary, route=CategoryRoute(True, 100, adapters))
    assert t.route(Category.PERFORMANCE, "any") == expected


def test_sampled_route_drops_unconfigured_adapters() -> None:
    routes = {cat: CategoryRoute(True, 100, ("websocket", "realtime")) for cat in Category}
    t = RoutingTable(True, "websocket", None, routes, adapters=("websocket",))
    assert t.route(Category.CRITICAL, "k") == ("websocket",)


def test_sampling_uses_the_routing_key_given() -> None:
    t = table(route=CategoryRoute(True, 50, ("realtime",)))
    ins = [k for k in _USER_KEYS[:200] if documented_bucket("PERFORMANCE", k) < 50]
    outs = [k for k in _USER_KEYS[:200] if documented_bucket("PERFORMANCE", k) >= 50]
    assert ins and outs
    assert all(t.route(Category.PERFORMANCE, k) == ("websocket", "realtime") for k in ins)
    assert all(t.route(Category.PERFORMANCE, k) == ("websocket",) for k in outs)


# -- copies -------------------------------------------------------------------


def test_with_category_returns_a_new_table() -> None:
    original = table()
    new_route = CategoryRoute(False, 0, ())
    changed = original.with_category(Category.CRITICAL, new_route)
    assert changed is not original
    assert changed.categories[Category.CRITICAL] == new_route
    assert original.categories[Category.CRITICAL] == CategoryRoute(
        True, 100, ("websocket", "realtime")
    )
    assert changed.route(Category.CRITICAL, "k") == ("websocket",)
    assert original.route(Category.CRITICAL, "k") == ("websocket", "realtime")
    for name in ("enabled", "primary", "override", "adapters"):
        assert getattr(changed, name) == getattr(original, name)


def test_with_category_recomputes_the_sampled_set() -> None:
    original = table()
    changed = original.with_category(Category.SYSTEM, CategoryRoute(True, 100, ("websocket",)))
    assert changed.route(Category.SYSTEM, "k") == ("websocket",)
    assert original.route(Category.SYSTEM, "k") == ("websocket", "realtime")


def test_with_override_returns_a_new_table() -> None:
    original = table()
    killed = original.with_override("realtime")
    assert killed is not original
    assert killed.override == "realtime" and original.override is None
    assert killed.route(Category.CRITICAL, "k") == ("realtime",)
    assert original.route(Category.CRITICAL, "k") == ("websocket", "realtime")
    restored = killed.with_override(None)
    assert restored == original
    assert restored.route(Category.CRITICAL, "k") == ("websocket", "realtime")


def test_table_is_immutable() -> None:
    t = table()
    with pytest.raises(AttributeError):
        t.override = "all"  # type: ignore[misc]


# -- cutover ----------------------------------------------------------------


@given(categories, keys)
def test_a_cut_over_category_goes_to_its_new_adapters_alone(category: Category, key: str) -> None:
    cut = CategoryRoute(True, 100, ("websocket", "realtime"), cutover=True)
    assert table(route=cut).route(category, key) == ("realtime",)
    # The primary stays the primary for a category that is not cut over.
    assert table().route(category, key) == ("websocket", "realtime")


def test_cutover_yields_to_the_switches_and_the_override() -> None:
    cut = CategoryRoute(True, 100, ("realtime",), cutover=True)
    assert table(route=cut, override="websocket").route(Category.CRITICAL, "k") == ("websocket",)
    assert table(route=cut, enabled=False).route(Category.CRITICAL, "k") == ("websocket",)
    off = CategoryRoute(False, 100, ("realtime",), cutover=True)
    assert table(route=off).route(Category.CRITICAL, "k") == ("websocket",)


def test_a_cut_over_category_with_no_other_adapter_stays_on_the_primary() -> None:
    # Never nowhere: with only the primary configured, the primary keeps it.
    lonely = CategoryRoute(True, 100, ("websocket",), cutover=True)
    assert table(route=lonely).route(Category.SYSTEM, "k") == ("websocket",)
    only_primary = RoutingTable(
        enabled=True,
        primary="websocket",
        override=None,
        categories={c: CategoryRoute(True, 100, ("realtime",), cutover=True) for c in Category},
        adapters=("websocket",),
    )
    assert only_primary.route(Category.SYSTEM, "k") == ("websocket",)


def test_copies_keep_the_configured_adapters_and_the_override() -> None:
    only_websocket = RoutingTable(
        enabled=True,
        primary="websocket",
        override="all",
        categories={cat: CategoryRoute(True, 100, ("websocket", "realtime")) for cat in Category},
        adapters=("websocket",),
    )
    changed = only_websocket.with_category(Category.SYSTEM, CategoryRoute(True, 50, ()))
    assert (changed.override, changed.adapters) == ("all", ("websocket",))
    assert changed.route(Category.SYSTEM, "k") == ("websocket",)
    released = only_websocket.with_override(None)
    assert released.adapters == ("websocket",)
    assert released.route(Category.CRITICAL, "k") == ("websocket",)  # realtime not configured
