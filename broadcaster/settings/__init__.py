"""Settings (docs/configuration.md): built once from the environment and ``.env``, then passed in.

Nothing here is read at import time. :func:`load_settings` is the one entry
point; it raises :class:`~broadcaster.exceptions.ConfigError` naming the
variable and value of the first invalid setting.

By role: the :class:`Settings` model (:mod:`~broadcaster.settings.model`),
the per-category and per-adapter families and their variables
(:mod:`~broadcaster.settings.families`), ``STORE_URL``
(:mod:`~broadcaster.settings.store_url`), and loading with its checks
across fields (:mod:`~broadcaster.settings.loading`).
"""

from .families import AdapterSettings, CategorySettings
from .loading import known_variables, load_settings, unknown_variables
from .model import Settings, default_instance_id
from .store_url import SQLITE_SYNCHRONOUS_MODES, StoreURL, parse_store_url

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
