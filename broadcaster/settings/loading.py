"""Loading the settings: :func:`load_settings`, the checks across fields, and
the variables a misspelling would leave unread.

The one way in for every command and for ``Broadcaster.from_env``:
:func:`load_settings` raises :class:`~broadcaster.exceptions.ConfigError`
naming the variable and value of the first invalid setting, before
anything of the flow starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from ..events import Category
from ..exceptions import ConfigError
from ..routing import ADAPTER_NAMES, OVERRIDE_ALL
from .families import ADAPTER_FIELDS, CATEGORY_FIELDS, variable_for
from .model import Settings

__all__ = ["known_variables", "load_settings", "unknown_variables"]


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
                variable_for(("categories", cat.value, name))
                for cat in Category
                for name in CATEGORY_FIELDS
            )
        elif field == "adapters":
            names.update(
                variable_for(("adapters", adapter, name))
                for adapter in ADAPTER_NAMES
                for name in ADAPTER_FIELDS
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
        raise ConfigError(variable_for(tuple(error["loc"])), value, reason) from None
    _check_cross_fields(settings)
    return settings
