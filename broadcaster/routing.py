"""Routing: which adapters get an event (docs/configuration.md). Pure code, no I/O.

A category may be *cut over* (``cutover``, set by a progressive rollout or an
operator once the new path has proven itself): its events go to its adapters
other than the primary, and the legacy path gets nothing new of it.

Sticky sampling hashes ``"<CATEGORY>:<key>"`` with SHA-256 and takes the first
8 bytes, big-endian, modulo 100 as the bucket (0-99). An event is sampled when
``bucket < percentage``. The hash is fixed by this documentation, so the same
key gets the same answer in every process, on every machine and across
releases, and a key sampled at 30 % stays sampled at 50 % (monotonic).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypedDict

from .events import Category

__all__ = [
    "ADAPTER_NAMES",
    "OVERRIDE_ALL",
    "CategoryFlags",
    "CategoryRoute",
    "RoutingTable",
    "bucket",
]

#: The adapters this product ships. Routing names outside this set are rejected.
ADAPTER_NAMES: tuple[str, ...] = ("websocket", "realtime")
#: Override value that sends every event to every configured adapter.
OVERRIDE_ALL = "all"


def bucket(category: str, key: str) -> int:
    """Stable bucket 0-99 of ``category`` and ``key`` (see the module doc)."""
    digest = hashlib.sha256(f"{category}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


@dataclass(frozen=True, slots=True)
class CategoryRoute:
    """One category's flags: ``enabled``, ``percentage`` (0-100), ``adapters``
    and ``cutover`` (the legacy path retired for it)."""

    enabled: bool
    percentage: int
    adapters: tuple[str, ...]
    cutover: bool = False


class CategoryFlags(TypedDict):
    """One category's flags as JSON-able data: what ``GET /config`` shows of
    it, the runtime configuration keeps, and a rollout writes and restores."""

    #: Whether the category is dual-written at all.
    enabled: bool
    #: Share of its events (by sticky bucket, 0-100) sent beyond the primary.
    percentage: int
    #: The adapters a sampled event is written to (the primary gets every event).
    adapters: list[str]
    #: On its adapters other than the primary only.
    cutover: bool


@dataclass(frozen=True)
class RoutingTable:
    """An immutable snapshot of the routing flags; swap it whole to change them.

    ``adapters`` lists the configured adapters (the set ``all`` expands to);
    ``primary`` is the legacy path that every non-overridden event reaches.
    """

    enabled: bool
    primary: str
    override: str | None
    categories: Mapping[Category, CategoryRoute]
    adapters: tuple[str, ...] = ADAPTER_NAMES
    _sampled: dict[Category, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _everywhere: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sampled = {}
        for category, route in self.categories.items():
            names = dict.fromkeys((self.primary, *route.adapters))  # ordered, no duplicates
            chosen = tuple(n for n in names if n in self.adapters)
            if route.cutover:
                # Never nowhere: a cut-over category left with no other
                # adapter configured stays on the primary.
                chosen = tuple(n for n in chosen if n != self.primary) or (self.primary,)
            sampled[category] = chosen
        object.__setattr__(self, "_sampled", sampled)
        everywhere = tuple(dict.fromkeys((self.primary, *self.adapters)))
        object.__setattr__(self, "_everywhere", everywhere)

    def route(self, category: Category, routing_key: str) -> tuple[str, ...]:
        """The adapters an event of ``category`` with ``routing_key`` is routed to.

        Rules in order (docs/configuration.md): the global override; the master switch and the
        category's ``enabled``; a cut-over category's adapters without the
        primary; sticky sampling. The primary comes first.
        """
        if self.override is not None:
            return self._everywhere if self.override == OVERRIDE_ALL else (self.override,)
        route = self.categories[category]
        if not self.enabled or not route.enabled:
            return (self.primary,)
        if route.cutover:
            return self._sampled[category]
        if route.percentage <= 0:
            return (self.primary,)
        if route.percentage >= 100 or bucket(category.value, routing_key) < route.percentage:
            return self._sampled[category]
        return (self.primary,)

    def with_category(self, category: Category, route: CategoryRoute) -> RoutingTable:
        return RoutingTable(
            enabled=self.enabled,
            primary=self.primary,
            override=self.override,
            categories={**self.categories, category: route},
            adapters=self.adapters,
        )

    def with_override(self, override: str | None) -> RoutingTable:
        return RoutingTable(
            enabled=self.enabled,
            primary=self.primary,
            override=override,
            categories=self.categories,
            adapters=self.adapters,
        )
