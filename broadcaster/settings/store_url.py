"""``STORE_URL``: which store the events are written to, checked and taken
apart.

The store sits between the producer and the lanes; its URL is checked with
the rest of the settings, so that a bad one stops every command before
anything starts.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple
from urllib.parse import parse_qs, urlsplit

from ..exceptions import ConfigError

__all__ = ["SQLITE_SYNCHRONOUS_MODES", "StoreURL", "parse_store_url"]

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
