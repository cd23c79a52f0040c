"""The :class:`Settings` model: every setting, its default and its checks,
and the views the rest of the package takes of it.

Built once (:func:`~broadcaster.settings.load_settings`), then passed in:
the producer's routing table, the store's URL, each adapter's and lane's
limits, the reconciler's windows and the admin API's tokens all come from
here. Flat variables map to fields by name (``WEBSOCKET_PORT`` →
``websocket_port``); the category and adapter families are
:mod:`~broadcaster.settings.families`'.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..checksums import ChecksumAlgorithm
from ..events import DEFAULT_EVENT_MAX_BYTES, Category
from ..exceptions import ConfigError
from ..realtime_plan import RealtimeLimits, RealtimePlan, resolve_limits
from ..routing import ADAPTER_NAMES, RoutingTable
from ..security import TokenSet, mask_url_password, parse_token_settings
from .families import (
    AdapterSettings,
    CategorySettings,
    FamilySource,
    default_adapters,
    default_categories,
)
from .store_url import parse_store_url

__all__ = ["Settings", "default_instance_id"]


def default_instance_id() -> str:
    """``<hostname>:<pid>``: the default ``INSTANCE_ID`` of this process."""
    return f"{platform.node()}:{os.getpid()}"


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
    categories: dict[Category, CategorySettings] = Field(default_factory=default_categories)
    adapters: dict[str, AdapterSettings] = Field(default_factory=default_adapters)

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
        family = FamilySource(settings_cls, dotenv_vars, env_vars)
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
