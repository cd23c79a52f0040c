"""Runtime flags: the routing switches an operator may change while the
broadcaster runs (docs/rest-api.md) — per category ``enabled``, ``percentage``,
``adapters`` and ``cutover``, and the global override.

Environment variables give the initial values. A change is validated like the
variables, persisted in the store together with its audit entry (one
transaction), and only then applied: the next published event routes by it and
in-process listeners (``Broadcaster.on_routing_change``) are told. On start the
persisted flags replace the environment's, so a change survives a restart.
If the store refuses the change, :class:`StoreUnavailable` propagates and
nothing changed. A progressive rollout changes a category through
:meth:`RuntimeFlags.change_category`, writing the change with its own state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypedDict, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from .events import Category
from .exceptions import ConfigError
from .routing import ADAPTER_NAMES, CategoryFlags, RoutingTable
from .settings import CategorySettings, Settings
from .store.base import AuditEntry, ConfigChange, Store

__all__ = ["CategoryFlags", "CategoryPatch", "FlagsSnapshot", "OverrideChange", "RuntimeFlags"]

log = structlog.get_logger("broadcaster.flags")

AdapterName = Literal["websocket", "realtime"]


class CategoryPatch(BaseModel):
    """Body of ``PATCH /config/categories/{category}``: any of the four fields;
    the ones left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool | None = None
    percentage: int | None = Field(default=None, ge=0, le=100, strict=True)
    # Bounded: there are only so many adapters, and a huge list is an attack.
    adapters: list[AdapterName] | None = Field(default=None, max_length=16)
    #: The category on its adapters other than the primary only (needs
    #: ``enabled`` and ``percentage`` 100).
    cutover: StrictBool | None = None

    @model_validator(mode="after")
    def _something(self) -> CategoryPatch:
        if self.model_dump(exclude_none=True) == {}:
            raise ValueError("give at least one of enabled, percentage, adapters, cutover")
        return self


class OverrideChange(BaseModel):
    """Body of ``PUT /config/override``: an adapter name, ``"all"`` or null."""

    model_config = ConfigDict(extra="forbid")

    override: Literal["websocket", "realtime", "all"] | None


class FlagsSnapshot(TypedDict):
    """Every runtime flag: what ``GET /config`` shows under ``flags``, and
    the runtime configuration document the store keeps."""

    #: Category name -> its flags, every category, in name order.
    categories: dict[str, CategoryFlags]
    #: ``websocket``, ``realtime``, ``all``, or None: routing by category.
    override: str | None


Listener = Callable[[RoutingTable], None]
T = TypeVar("T")


class RuntimeFlags:
    """The current runtime flags of one broadcaster; see the module doc.

    ``apply`` is called with the new routing table after each change (the
    broadcaster's ``set_routing``, which tells its listeners)."""

    def __init__(self, settings: Settings, store: Store, apply: Listener) -> None:
        self._settings = settings
        self._store = store
        self._apply = apply
        self._categories: dict[Category, CategorySettings] = dict(settings.categories)
        self._override: str | None = settings.dual_write_global_override
        self._lock = asyncio.Lock()

    # -- reading -------------------------------------------------------------

    def snapshot(self) -> FlagsSnapshot:
        """Every category's flags and the global override."""
        return _document(self._categories, self._override)

    def category(self, category: Category) -> CategoryFlags:
        """One category's flags."""
        return _category_doc(self._categories[category])

    def table(self) -> RoutingTable:
        return RoutingTable(
            enabled=self._settings.dual_write_enabled,
            primary=self._settings.dual_write_primary_adapter,
            override=self._override,
            categories={cat: cs.route() for cat, cs in self._categories.items()},
            adapters=ADAPTER_NAMES,
        )

    # -- changing ------------------------------------------------------------

    async def load(self, *, quiet: bool = False) -> bool:
        """Replace the environment's flags by the persisted ones, if any; True
        if they were applied. ``quiet``: apply (and log) only a change, for a
        process that re-reads them periodically (a :class:`~broadcaster.Publisher`).
        Raises :class:`ConfigError` if the persisted document is invalid."""
        doc = await self._store.runtime_config()
        if doc is None:
            return False
        categories = dict(self._categories)
        try:
            for name, values in dict(doc.get("categories", {})).items():
                cat = Category(name)
                categories[cat] = CategorySettings(
                    **{**values, "checksum": categories[cat].checksum}
                )
            override = doc.get("override")
            OverrideChange(override=override)
        except (ValueError, ValidationError, TypeError) as exc:
            raise ConfigError(
                "runtime_config", doc, f"persisted flags are invalid: {exc}"
            ) from None
        if quiet and (categories, override) == (self._categories, self._override):
            return False
        self._categories, self._override = categories, override
        self._publish()
        log.info("runtime flags loaded from the store", flags=self.snapshot())
        return True

    async def patch_category(
        self, category: Category, patch: CategoryPatch, *, actor: str, path: str
    ) -> AuditEntry:
        """Change one category's flags; returns the audit entry written."""

        async def save(change: ConfigChange) -> AuditEntry:
            return await self._store.save_runtime_config(
                change.config,
                actor=actor,
                path=change.path,
                before=change.before,
                after=change.after,
            )

        values = patch.model_dump(exclude_none=True)
        return await self.change_category(category, values, path=path, persist=save, actor=actor)

    async def change_category(
        self,
        category: Category,
        values: Mapping[str, Any],
        *,
        path: str,
        persist: Callable[[ConfigChange], Awaitable[T]],
        actor: str,
    ) -> T:
        """Change some of one category's flags (``values``: enabled,
        percentage, adapters, cutover), checked as the variables are. The new
        document goes to ``persist`` (which writes it with its audit entry,
        and whatever else belongs in that transaction) before the change is
        applied; if it raises, nothing changed. Returns what it returns.
        Raises ``ValueError`` (a pydantic ``ValidationError``) for values the
        category cannot take."""
        async with self._lock:
            current = self._categories[category]
            changes = dict(values)
            if "adapters" in changes:
                changes["adapters"] = tuple(changes["adapters"])
            updated = current.model_copy(update=changes)
            # model_copy skips validation: run it, so a change obeys the
            # same rules as the variable (known adapters, no duplicates).
            updated = CategorySettings.model_validate(updated.model_dump())
            primary = self._settings.dual_write_primary_adapter
            if updated.cutover and not set(updated.adapters) - {primary}:
                raise ValueError(
                    f"cutover needs an adapter besides the primary ({primary}) in adapters"
                )
            categories = {**self._categories, category: updated}
            change = ConfigChange(
                config=_document(categories, self._override),
                path=path,
                before=_category_doc(current),
                after=_category_doc(updated),
            )
            result = await persist(change)
            self._categories = categories
            self._publish()
        log.info(
            "category flags changed",
            category=category.value,
            actor=actor,
            before=change.before,
            after=change.after,
        )
        return result

    async def set_override(self, change: OverrideChange, *, actor: str, path: str) -> AuditEntry:
        """Set or clear the global override; returns the audit entry written."""
        async with self._lock:
            before = self._override
            entry = await self._persist(
                self._categories,
                change.override,
                actor,
                path,
                {"override": before},
                {"override": change.override},
            )
            self._override = change.override
            self._publish()
        log.warning("global override changed", actor=actor, before=before, after=change.override)
        return entry

    async def _persist(
        self,
        categories: Mapping[Category, CategorySettings],
        override: str | None,
        actor: str,
        path: str,
        before: Any,
        after: Any,
    ) -> AuditEntry:
        return await self._store.save_runtime_config(
            _document(categories, override), actor=actor, path=path, before=before, after=after
        )

    def _publish(self) -> None:
        self._apply(self.table())


def _category_doc(cs: CategorySettings) -> CategoryFlags:
    return CategoryFlags(
        enabled=cs.enabled,
        percentage=cs.percentage,
        adapters=list(cs.adapters),
        cutover=cs.cutover,
    )


def _document(
    categories: Mapping[Category, CategorySettings], override: str | None
) -> FlagsSnapshot:
    """The persisted runtime configuration: every category's flags and the override."""
    return FlagsSnapshot(
        categories={cat.value: _category_doc(cs) for cat, cs in sorted(categories.items())},
        override=override,
    )
