"""Settings (docs/configuration.md): built once from the environment and ``.env``, then passed in.

Nothing here is read at import time. :func:`load_settings` is the one entry
point; it raises :class:`~broadcaster.exceptions.ConfigError` naming the
variable and value of the first invalid setting.

Flat variables map to fields by name (``WEBSOCKET_PORT`` → ``websocket_port``).
The per-category and per-adapter families (``DUAL_WRITE_<CAT>_<FIELD>``,
``ADAPTER_<NAME>_<FIELD>``) are gathered by a custom settings source into
``categories`` and ``adapters``.
"""

from __future__ import annotations

import difflib
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .checksums import ChecksumAlgorithm
from .events import DEFAULT_CHECKSUM, DEFAULT_EVENT_MAX_BYTES, Category
from .exceptions import ConfigError
from .realtime_plan import RealtimeLimits, RealtimePlan, resolve_limits
from .routing import ADAPTER_NAMES, OVERRIDE_ALL, CategoryRoute, RoutingTable
from .security import TokenSet, mask_url_password, parse_token_settings

__all__ = [
    "SQLITE_SYNCHRONOUS_MODES",
    "AdapterSettings",
    "CategorySettings",
    "Settings",
    "StoreURL",
    "default_instance_id",
    "known_variables",
    "load_settings",
    "parse_store_url",
    "unknown_variables",
]

#: The ``synchronous`` modes a ``sqlite:`` STORE_URL may ask for.
SQLITE_SYNCHRONOUS_MODES: Final = ("OFF", "NORMAL", "FULL", "EXTRA")
_SQLITE_OPTIONS: Final = ("busy_timeout_ms", "synchronous", "wal_frames_max")


class StoreURL(NamedTuple):
    """A ``STORE_URL`` taken apart by :func:`parse_store_url`."""

    kind: Literal["memory", "sqlite", "postgresql"]
    url: str
    #: sqlite: the database file (relative to the working directory unless absolute).
    path: str = ""
    #: sqlite: one of :data:`SQLITE_SYNCHRONOUS_MODES`.
    synchronous: str = "NORMAL"
    busy_timeout_ms: int = 5000
    #: sqlite: None leaves the store's default.
    wal_frames_max: int | None = None


def parse_store_url(url: str) -> StoreURL:
    """Check and take apart a ``STORE_URL``; raise :class:`ConfigError`
    (a ``ValueError``) saying what is wrong with it. ``memory://``;
    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
    (SQLAlchemy's convention) with options ``?synchronous=``,
    ``?busy_timeout_ms=``, ``?wal_frames_max=``; ``postgresql://…`` or
    ``postgres://…`` (a libpq URL, checked when the store connects)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "memory":
        return StoreURL("memory", url)
    if scheme in ("postgresql", "postgres"):
        return StoreURL("postgresql", url)
    if scheme != "sqlite":
        raise ConfigError(
            "STORE_URL",
            url,
            f"unsupported STORE_URL {url!r}: expected memory://, sqlite:///path or postgresql://...",
        )
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigError(
            "STORE_URL",
            url,
            f"unsupported STORE_URL {url!r}: sqlite URLs have no host (sqlite:///path)",
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigError(
            "STORE_URL", url, f"unsupported STORE_URL {url!r}: no database path (sqlite:///path)"
        )
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(options) - set(_SQLITE_OPTIONS)
    if unknown:
        raise ConfigError(
            "STORE_URL",
            url,
            f"unsupported STORE_URL {url!r}: unknown option(s) {', '.join(sorted(unknown))};"
            f" known: {', '.join(_SQLITE_OPTIONS)}",
        )
    synchronous = options.get("synchronous", ["NORMAL"])[-1].upper()
    if synchronous not in SQLITE_SYNCHRONOUS_MODES:
        known = ", ".join(m.lower() for m in SQLITE_SYNCHRONOUS_MODES)
        raise ConfigError(
            "STORE_URL",
            url,
            f"unsupported STORE_URL {url!r}: synchronous={synchronous.lower()!r},"
            f" expected one of {known}",
        )
    busy = _url_number(url, options, "busy_timeout_ms", least=0)
    frames = _url_number(url, options, "wal_frames_max", least=1)
    return StoreURL("sqlite", url, path, synchronous, 5000 if busy is None else busy, frames)


def _url_number(url: str, options: dict[str, list[str]], name: str, *, least: int) -> int | None:
    """Option ``name`` of a STORE_URL as a whole number >= ``least``; None if absent."""
    if name not in options:
        return None
    given = options[name][-1]
    try:
        number = int(given)
    except ValueError:
        number = least - 1
    if number < least:
        raise ConfigError(
            "STORE_URL",
            url,
            f"unsupported STORE_URL {url!r}: {name}={given!r}, expected a whole number"
            f" of at least {least}",
        )
    return number


def default_instance_id() -> str:
    """``<hostname>:<pid>``: the default ``INSTANCE_ID`` of this process."""
    return f"{platform.node()}:{os.getpid()}"


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

_CATEGORY_FIELDS = ("enabled", "percentage", "adapters", "checksum")
_ADAPTER_FIELDS = ("error_threshold", "latency_threshold_ms")


def _default_categories() -> dict[Category, CategorySettings]:
    return {
        cat: CategorySettings(**values, checksum=DEFAULT_CHECKSUM[cat])
        for cat, values in _CATEGORY_DEFAULTS.items()
    }


def _default_adapters() -> dict[str, AdapterSettings]:
    return {name: AdapterSettings(**values) for name, values in _ADAPTER_DEFAULTS.items()}


class _FamilySource(PydanticBaseSettingsSource):
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
            for field_name in _CATEGORY_FIELDS:
                raw = self._vars.get(f"DUAL_WRITE_{cat.value}_{field_name.upper()}")
                if raw is not None:
                    values[field_name] = raw.strip().lower() if field_name == "checksum" else raw
            categories[cat.value] = values
        adapters: dict[str, dict[str, Any]] = {}
        for name in ADAPTER_NAMES:
            avalues: dict[str, Any] = dict(_ADAPTER_DEFAULTS[name])
            for field_name in _ADAPTER_FIELDS:
                raw = self._vars.get(f"ADAPTER_{name.upper()}_{field_name.upper()}")
                if raw is not None:
                    avalues[field_name] = raw
            adapters[name] = avalues
        return {"categories": categories, "adapters": adapters}


class Settings(BaseSettings):
    """Every setting (docs/configuration.md). Build with :func:`load_settings`, or directly
    with keyword arguments in tests (``Settings(_env_file=None, ...)``)."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    dual_write_enabled: bool = True
    dual_write_primary_adapter: str = "websocket"
    dual_write_global_override: str | None = None
    categories: dict[Category, CategorySettings] = Field(default_factory=_default_categories)
    adapters: dict[str, AdapterSettings] = Field(default_factory=_default_adapters)

    breaker_recovery_time_s: float = Field(default=30.0, gt=0)
    breaker_half_open_requests: int = Field(default=5, ge=1)
    breaker_latency_multiplier: float = Field(default=2.0, ge=1)

    reconcile_window_s: float = Field(default=5.0, gt=0)
    reconcile_buffer_s: float = Field(default=30.0, ge=0)
    reconcile_max_delay_s: float = Field(default=300.0, gt=0)
    reconcile_interval_s: float = Field(default=30.0, ge=0)
    retention_s: float = Field(default=86_400.0, ge=0)
    #: ``serve`` runs a verifying subscriber per adapter that writes receipts (docs/deploying.md).
    reconcile_probe: bool = True
    #: This service instance's name (docs/deploying.md); its probes report as ``probe:<id>``.
    instance_id: str = Field(default_factory=default_instance_id, min_length=1, max_length=128)
    #: Seconds a claim of the Realtime writer's lease lasts (docs/deploying.md).
    instance_lease_s: float = Field(default=5.0, gt=0, le=3600)

    websocket_host: str = "127.0.0.1"
    websocket_port: int = Field(default=8765, ge=0, le=65535)

    supabase_url: str | None = None
    supabase_key: SecretStr | None = None
    #: The project's JWT secret: the local Realtime server checks private
    #: channels' access tokens with it (docs/realtime-server.md).
    supabase_jwt_secret: SecretStr | None = None
    realtime_channel_prefix: str = Field(default="events", min_length=1)
    realtime_batch_ms: float = Field(default=5.0, ge=0)
    realtime_batch_max: int = Field(default=100, ge=1)
    realtime_batch_bytes: int = Field(default=200_000, ge=1024)
    realtime_max_messages_per_s: float = Field(default=0.0, ge=0)
    #: The Supabase plan whose Realtime quotas the adapter stays within (None: no assumption).
    realtime_plan: RealtimePlan | None = None
    #: Subscribers the adapter budgets for on each channel under ``realtime_plan``:
    #: Supabase counts every copy it delivers against the message quota.
    realtime_subscribers: int = Field(default=1, ge=0, le=1_000_000)
    #: Join the channels as private ones (``config.private``), authorised by the access token.
    realtime_private_channels: bool = False

    store_url: str = "sqlite:///./broadcaster.db"

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        # Checked here, so that `config check` and every command refuse it
        # (exit 2) before anything starts, not when the store is built.
        try:
            parse_store_url(value)
        except ConfigError as exc:
            raise ValueError(exc.reason) from None
        return value

    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8080, ge=0, le=65535)
    broadcaster_admin_token: SecretStr | None = None
    #: Named, scoped tokens: JSON (docs/security.md), checked by :meth:`api_tokens`.
    broadcaster_tokens: SecretStr | None = None
    admin_max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    admin_tls_cert: Path | None = None
    admin_tls_key: Path | None = None
    websocket_tls_cert: Path | None = None
    websocket_tls_key: Path | None = None
    websocket_require_token: bool = False
    event_signing_key: SecretStr | None = None
    event_signing_key_id: str = Field(default="default", min_length=1, max_length=64)

    event_max_bytes: int = Field(default=DEFAULT_EVENT_MAX_BYTES, ge=1)
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: The commands' event loop (``broadcaster.loop``): uvloop where installed.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    @field_validator("dual_write_primary_adapter", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("dual_write_global_override", mode="before")
    @classmethod
    def _override(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, str):
            value = value.strip().lower()
            return None if value in ("", "null", "none") else value
        return value

    @field_validator("instance_id", mode="before")
    @classmethod
    def _instance_id_or_default(cls, value: object) -> object:
        # Blank (as .env.example leaves it) means "not set": the computed default.
        if isinstance(value, str) and not value.strip():
            return default_instance_id()
        return value

    @field_validator("instance_id")
    @classmethod
    def _printable(cls, value: str) -> str:
        # It ends up in logs, receipts and /health: no control characters.
        if not value.isprintable():
            raise ValueError("must be printable characters only")
        return value

    @field_validator("realtime_plan", mode="before")
    @classmethod
    def _plan(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return None if value in ("", "none", "null") else value
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _case(cls, value: object, info: Any) -> object:
        if isinstance(value, str):
            return value.lower() if info.field_name == "log_format" else value.upper()
        return value

    @field_validator(
        "supabase_url",
        "supabase_key",
        "supabase_jwt_secret",
        "broadcaster_admin_token",
        "broadcaster_tokens",
        "admin_tls_cert",
        "admin_tls_key",
        "websocket_tls_cert",
        "websocket_tls_key",
        "event_signing_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("admin_tls_cert", "admin_tls_key", "websocket_tls_cert", "websocket_tls_key")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        # Checked here so that a typo stops start-up (exit 2) with the
        # variable named, rather than failing inside the TLS library.
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    @field_validator("supabase_url")
    @classmethod
    def _supabase_url(cls, value: str | None) -> str | None:
        # Checked here: a bad one would only show as endless reconnect errors.
        if value is None:
            return None
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s) URL, such as https://<project>.supabase.co")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        dotenv_vars = getattr(dotenv_settings, "env_vars", {})
        env_vars = env_settings.env_vars if isinstance(env_settings, EnvSettingsSource) else {}
        family = _FamilySource(settings_cls, dotenv_vars, env_vars)
        return (init_settings, env_settings, dotenv_settings, family)

    # -- derived views -------------------------------------------------------

    def routing_table(self) -> RoutingTable:
        return RoutingTable(
            enabled=self.dual_write_enabled,
            primary=self.dual_write_primary_adapter,
            override=self.dual_write_global_override,
            categories={cat: cs.route() for cat, cs in self.categories.items()},
            adapters=ADAPTER_NAMES,
        )

    def checksum_algorithms(self) -> dict[Category, ChecksumAlgorithm]:
        return {cat: cs.checksum for cat, cs in self.categories.items()}

    def realtime_url(self) -> str | None:
        """The Realtime endpoint the official client connects to, as supabase-py
        derives it: ``<SUPABASE_URL>/realtime/v1``."""
        if self.supabase_url is None:
            return None
        return self.supabase_url.rstrip("/") + "/realtime/v1"

    def realtime_limits(self) -> RealtimeLimits:
        """The Realtime adapter's caps: ``REALTIME_PLAN`` combined with
        ``REALTIME_SUBSCRIBERS``, ``REALTIME_MAX_MESSAGES_PER_S``,
        ``REALTIME_BATCH_MAX`` and ``REALTIME_BATCH_BYTES``
        (:func:`~broadcaster.realtime_plan.resolve_limits`
        says which wins). ``REALTIME_BATCH_MAX`` counts as set only when given."""
        explicit = "realtime_batch_max" in self.model_fields_set
        return resolve_limits(
            self.realtime_plan,
            max_messages_per_s=self.realtime_max_messages_per_s,
            batch_max=self.realtime_batch_max if explicit else None,
            batch_bytes=self.realtime_batch_bytes,
            subscribers=self.realtime_subscribers,
        )

    def api_tokens(self) -> TokenSet:
        """The tokens of ``BROADCASTER_ADMIN_TOKEN`` and ``BROADCASTER_TOKENS``
        (empty when neither is set). Raises :class:`ConfigError`."""
        return parse_token_settings(
            _secret(self.broadcaster_admin_token), _secret(self.broadcaster_tokens)
        )

    def effective(self) -> dict[str, Any]:
        """The effective configuration as plain JSON-able data, secrets masked
        (keys, tokens, the signing key and the password in ``STORE_URL``)."""
        data = self.model_dump(mode="json")
        for secret in _SECRET_FIELDS:
            if data.get(secret):
                data[secret] = "********"
        data["store_url"] = mask_url_password(self.store_url)
        return data


#: Settings whose values are never shown.
_SECRET_FIELDS: Final = (
    "supabase_key",
    "supabase_jwt_secret",
    "broadcaster_admin_token",
    "broadcaster_tokens",
    "event_signing_key",
)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _variable_for(loc: tuple[int | str, ...]) -> str:
    if loc and loc[0] == "categories" and len(loc) >= 3:
        return f"DUAL_WRITE_{str(loc[1]).upper()}_{str(loc[2]).upper()}"
    if loc and loc[0] == "adapters" and len(loc) >= 3:
        return f"ADAPTER_{str(loc[1]).upper()}_{str(loc[2]).upper()}"
    return str(loc[0]).upper() if loc else "?"


def _check_cross_fields(settings: Settings) -> None:
    if settings.dual_write_primary_adapter not in ADAPTER_NAMES:
        raise ConfigError(
            "DUAL_WRITE_PRIMARY_ADAPTER",
            settings.dual_write_primary_adapter,
            f"unknown adapter; known: {', '.join(ADAPTER_NAMES)}",
        )
    override = settings.dual_write_global_override
    if override is not None and override != OVERRIDE_ALL and override not in ADAPTER_NAMES:
        raise ConfigError(
            "DUAL_WRITE_GLOBAL_OVERRIDE",
            override,
            f"names no adapter; expected one of {', '.join(ADAPTER_NAMES)}, 'all' or 'null'",
        )
    for kind in ("admin", "websocket"):
        cert = getattr(settings, f"{kind}_tls_cert")
        key = getattr(settings, f"{kind}_tls_key")
        if (cert is None) != (key is None):
            missing = f"{kind.upper()}_TLS_KEY" if key is None else f"{kind.upper()}_TLS_CERT"
            given = f"{kind.upper()}_TLS_CERT" if key is None else f"{kind.upper()}_TLS_KEY"
            raise ConfigError(missing, "(unset)", f"required with {given}")
    settings.api_tokens()
    if settings.reconcile_max_delay_s < settings.reconcile_window_s:
        raise ConfigError(
            "RECONCILE_MAX_DELAY_S",
            settings.reconcile_max_delay_s,
            "must be at least RECONCILE_WINDOW_S",
        )


#: Prefixes of this product's variables: a name with one of them that is no
#: setting is most likely a misspelled one.
_PREFIXES: Final = (
    "DUAL_WRITE_",
    "ADAPTER_",
    "BREAKER_",
    "RECONCILE_",
    "REALTIME_",
    "SUPABASE_",
    "WEBSOCKET_",
    "ADMIN_",
    "STORE_",
    "EVENT_",
    "INSTANCE_",
    "BROADCASTER_",
    "RETENTION_",
)


def known_variables() -> frozenset[str]:
    """Every environment variable :class:`Settings` reads."""
    names: set[str] = set()
    for field in Settings.model_fields:
        if field == "categories":
            names.update(
                _variable_for(("categories", cat.value, name))
                for cat in Category
                for name in _CATEGORY_FIELDS
            )
        elif field == "adapters":
            names.update(
                _variable_for(("adapters", adapter, name))
                for adapter in ADAPTER_NAMES
                for name in _ADAPTER_FIELDS
            )
        else:
            names.add(field.upper())
    return frozenset(names)


def unknown_variables(names: Iterable[str]) -> list[tuple[str, str | None]]:
    """Those of ``names`` that look like settings (one of the product's
    prefixes) but are none, in order, each with the closest known name (None:
    nothing close): ``DUAL_WRITE_CRITCAL_PERCENTAGE`` is most likely
    ``DUAL_WRITE_CRITICAL_PERCENTAGE``, and ignored as it is."""
    known = known_variables()
    found: list[tuple[str, str | None]] = []
    for name in dict.fromkeys(n.upper() for n in names):
        if name.startswith(_PREFIXES) and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            found.append((name, close[0] if close else None))
    return found


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build the settings from the environment, ``env_file`` and ``overrides``.

    Raises :class:`ConfigError` naming the first invalid variable and value.
    """
    try:
        settings = Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        value = error.get("input")
        reason = error.get("msg", "invalid")
        if isinstance(value, dict):  # a whole family failed; show the field's own value
            value = "?"
        raise ConfigError(_variable_for(tuple(error["loc"])), value, reason) from None
    _check_cross_fields(settings)
    return settings
