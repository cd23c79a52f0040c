"""The per-category and per-adapter settings, and the variables they are read
from.

Routing flags per category (``DUAL_WRITE_<CAT>_<FIELD>``: whether a
category is dual-written, at what share, to which adapters, with which
checksum) decide where the producer's events go; breaker thresholds per
adapter (``ADAPTER_<NAME>_<FIELD>``) guard each lane. A custom settings
source gathers those variable families into ``categories`` and
``adapters``; :func:`variable_for` names the variable of each value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from ..checksums import ChecksumAlgorithm
from ..events import DEFAULT_CHECKSUM, Category
from ..routing import ADAPTER_NAMES, CategoryRoute

__all__ = [
    "ADAPTER_FIELDS",
    "CATEGORY_FIELDS",
    "AdapterSettings",
    "CategorySettings",
    "FamilySource",
    "default_adapters",
    "default_categories",
    "variable_for",
]


class CategorySettings(BaseModel):
    """One category's flags. Also validates admin API changes.

    ``cutover`` is a runtime flag only (no variable): a category gets there
    through a rollout or the admin API, once the new path has proven itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool
    percentage: int = Field(ge=0, le=100)
    adapters: tuple[str, ...]
    checksum: ChecksumAlgorithm
    cutover: bool = False

    @field_validator("adapters", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("adapters")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in ADAPTER_NAMES:
                raise ValueError(f"unknown adapter {name!r}; known: {', '.join(ADAPTER_NAMES)}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _cut_over_whole(self) -> CategorySettings:
        # Retiring the legacy path for a share of the events would leave the
        # rest on it alone: cutover is all of a category's events or none.
        if self.cutover and not (self.enabled and self.percentage == 100 and self.adapters):
            raise ValueError(
                "cutover needs the category enabled, at percentage 100, with an adapter"
            )
        return self

    def route(self) -> CategoryRoute:
        return CategoryRoute(self.enabled, self.percentage, self.adapters, self.cutover)


_CATEGORY_DEFAULTS: dict[Category, dict[str, Any]] = {
    Category.CRITICAL: {"enabled": True, "percentage": 100, "adapters": ("websocket", "realtime")},
    Category.PERFORMANCE: {"enabled": True, "percentage": 50, "adapters": ("websocket",)},
    Category.USER_ACTIVITY: {"enabled": False, "percentage": 0, "adapters": ("realtime",)},
    Category.SYSTEM: {"enabled": True, "percentage": 100, "adapters": ("websocket", "realtime")},
    Category.DEBUG: {"enabled": False, "percentage": 0, "adapters": ()},
}


class AdapterSettings(BaseModel):
    """Breaker thresholds of one adapter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_threshold: float = Field(default=0.05, ge=0, le=1)
    latency_threshold_ms: float = Field(gt=0)


_ADAPTER_DEFAULTS: dict[str, dict[str, Any]] = {
    "websocket": {"latency_threshold_ms": 200.0},
    "realtime": {"latency_threshold_ms": 150.0},
}

#: The fields of a category's variables (``DUAL_WRITE_<CAT>_<FIELD>``).
CATEGORY_FIELDS: Final = ("enabled", "percentage", "adapters", "checksum")
#: The fields of an adapter's variables (``ADAPTER_<NAME>_<FIELD>``).
ADAPTER_FIELDS: Final = ("error_threshold", "latency_threshold_ms")


def default_categories() -> dict[Category, CategorySettings]:
    """Every category's flags as they are with no variable set."""
    return {
        cat: CategorySettings(**values, checksum=DEFAULT_CHECKSUM[cat])
        for cat, values in _CATEGORY_DEFAULTS.items()
    }


def default_adapters() -> dict[str, AdapterSettings]:
    """Every adapter's breaker thresholds as they are with no variable set."""
    return {name: AdapterSettings(**values) for name, values in _ADAPTER_DEFAULTS.items()}


class FamilySource(PydanticBaseSettingsSource):
    """Gathers ``DUAL_WRITE_<CAT>_<FIELD>`` and ``ADAPTER_<NAME>_<FIELD>`` variables."""

    def __init__(self, settings_cls: type[BaseSettings], *variables: Mapping[str, str | None]):
        super().__init__(settings_cls)
        merged: dict[str, str] = {}
        for mapping in variables:  # later mappings win
            for name, value in mapping.items():
                if value is not None:
                    merged[name.upper()] = value
        self._vars = merged

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise AssertionError("unused: __call__ is overridden")  # pragma: no cover

    def __call__(self) -> dict[str, Any]:
        categories: dict[str, dict[str, Any]] = {}
        for cat in Category:
            values = {**_CATEGORY_DEFAULTS[cat], "checksum": DEFAULT_CHECKSUM[cat]}
            for field_name in CATEGORY_FIELDS:
                raw = self._vars.get(f"DUAL_WRITE_{cat.value}_{field_name.upper()}")
                if raw is not None:
                    values[field_name] = raw.strip().lower() if field_name == "checksum" else raw
            categories[cat.value] = values
        adapters: dict[str, dict[str, Any]] = {}
        for name in ADAPTER_NAMES:
            avalues: dict[str, Any] = dict(_ADAPTER_DEFAULTS[name])
            for field_name in ADAPTER_FIELDS:
                raw = self._vars.get(f"ADAPTER_{name.upper()}_{field_name.upper()}")
                if raw is not None:
                    avalues[field_name] = raw
            adapters[name] = avalues
        return {"categories": categories, "adapters": adapters}


def variable_for(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a setting's location in :class:`Settings`
    (``("categories", "CRITICAL", "percentage")`` is
    ``DUAL_WRITE_CRITICAL_PERCENTAGE``)."""
    if loc and loc[0] == "categories" and len(loc) >= 3:
        return f"DUAL_WRITE_{str(loc[1]).upper()}_{str(loc[2]).upper()}"
    if loc and loc[0] == "adapters" and len(loc) >= 3:
        return f"ADAPTER_{str(loc[1]).upper()}_{str(loc[2]).upper()}"
    return str(loc[0]).upper() if loc else "?"
