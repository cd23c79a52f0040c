"""API tokens and their scopes (docs/security.md): who may call what.

Pure code: values in, values out. A token set is built once from
``BROADCASTER_ADMIN_TOKEN`` (one token, taken whole, named ``admin``) and
``BROADCASTER_TOKENS`` (a JSON object of named, scoped tokens); the admin API
and the WebSocket server ask it who presented a token and what that token may
do.

Each route of the admin API declares one :class:`Permission`; each
:class:`Scope` grants a set of them::

    admin     everything
    operator  read, operate    (configuration, rollouts, reconciliation runs)
    read      read             (every GET)
    ingest    ingest           (POST /events)
    consumer  consume          (POST /receipts, catch-up reads, subscribing)
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from .exceptions import ConfigError

__all__ = [
    "GRANTS",
    "MIN_TOKEN_LENGTH",
    "ApiToken",
    "Permission",
    "Scope",
    "TokenSet",
    "mask_url_password",
    "parse_token_settings",
]

#: Tokens shorter than this stop start-up: they can be guessed.
MIN_TOKEN_LENGTH: Final = 16


class Scope(StrEnum):
    """What a token is for (``BROADCASTER_TOKENS``' ``scope``)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    READ = "read"
    INGEST = "ingest"
    CONSUMER = "consumer"


class Permission(StrEnum):
    """What one request needs: each admin route declares one."""

    READ = "read"
    OPERATE = "operate"
    INGEST = "ingest"
    CONSUME = "consume"


GRANTS: Final[Mapping[Scope, frozenset[Permission]]] = {
    Scope.ADMIN: frozenset(Permission),
    Scope.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Scope.READ: frozenset({Permission.READ}),
    Scope.INGEST: frozenset({Permission.INGEST}),
    Scope.CONSUMER: frozenset({Permission.CONSUME}),
}


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A named token with its scope. ``repr`` never shows the secret."""

    name: str
    secret: bytes
    scope: Scope

    def allows(self, permission: Permission) -> bool:
        return permission in GRANTS[self.scope]

    def __repr__(self) -> str:
        return f"ApiToken(name={self.name!r}, scope={self.scope.value!r})"


class TokenSet:
    """The tokens a service accepts; :meth:`authenticate` finds one in
    constant time with respect to which token (if any) matches."""

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    @classmethod
    def of(cls, secrets: Mapping[str, str], scope: Scope = Scope.ADMIN) -> TokenSet:
        """Tokens built in code (demo, tests): name -> secret, one scope."""
        return cls(ApiToken(name, secret.encode(), scope) for name, secret in secrets.items())

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[ApiToken]:
        return iter(self._tokens)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._tokens]

    def authenticate(self, presented: str | bytes | None) -> ApiToken | None:
        """The token whose secret equals ``presented``; None for no match.
        Every token is compared, whatever matched, so the time taken says
        nothing about which one did."""
        if presented is None:
            return None
        given = (
            presented.encode("utf-8", "surrogateescape")
            if isinstance(presented, str)
            else presented
        )
        found = None
        for token in self._tokens:
            if hmac.compare_digest(given, token.secret) and found is None:
                found = token
        return found

    def first(self, scope: Scope) -> ApiToken | None:
        """The first token with ``scope`` (for tools that call the API)."""
        return next((t for t in self._tokens if t.scope is scope), None)


def _check_secret(variable: str, name: str, secret: object) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ConfigError(variable, "********", f"token {name!r}: expected a non-empty string")
    if len(secret) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            variable,
            "********",
            f"token {name!r} has {len(secret)} characters; at least {MIN_TOKEN_LENGTH} are"
            " required",
        )
    return secret.encode("utf-8", "surrogateescape")


def parse_token_settings(admin_token: str | None, tokens_json: str | None) -> TokenSet:
    """Build the token set from ``BROADCASTER_ADMIN_TOKEN`` (taken whole:
    ``=`` and ``,`` are part of it) and ``BROADCASTER_TOKENS`` (JSON:
    ``{"<name>": {"token": "...", "scope": "..."}}``). Raises
    :class:`ConfigError` with one line saying what is wrong, never the secret."""
    tokens: list[ApiToken] = []
    if admin_token is not None:
        secret = _check_secret("BROADCASTER_ADMIN_TOKEN", "admin", admin_token)
        tokens.append(ApiToken("admin", secret, Scope.ADMIN))
    if tokens_json is not None:
        tokens.extend(_parse_tokens_json(tokens_json))
    names = [t.name for t in tokens]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(
            "BROADCASTER_TOKENS",
            "********",
            f"token name {duplicate!r} is used twice ('admin' is BROADCASTER_ADMIN_TOKEN's)",
        )
    secrets = [t.secret for t in tokens]
    if len(set(secrets)) != len(secrets):
        raise ConfigError("BROADCASTER_TOKENS", "********", "two tokens have the same secret")
    return TokenSet(tokens)


def _parse_tokens_json(text: str) -> list[ApiToken]:
    variable = "BROADCASTER_TOKENS"
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(variable, "********", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            variable, "********", 'expected a JSON object {"<name>": {"token": ..., "scope": ...}}'
        )
    known = ", ".join(s.value for s in Scope)
    tokens = []
    for name, entry in data.items():
        if not name.strip() or len(name) > 64 or not name.isprintable():
            raise ConfigError(
                variable, "********", f"token name {name!r} must be 1-64 printable characters"
            )
        if not isinstance(entry, dict):
            raise ConfigError(
                variable, "********", f'token {name!r}: expected {{"token": ..., "scope": ...}}'
            )
        extra = set(entry) - {"token", "scope"}
        if extra:
            raise ConfigError(
                variable, "********", f"token {name!r}: unknown field(s) {', '.join(sorted(extra))}"
            )
        secret = _check_secret(variable, name, entry.get("token"))
        scope_name = entry.get("scope")
        try:
            scope = Scope(scope_name if isinstance(scope_name, str) else repr(scope_name))
        except ValueError:
            raise ConfigError(
                variable,
                "********",
                f"token {name!r}: unknown scope {scope_name!r}; known: {known}",
            ) from None
        tokens.append(ApiToken(name, secret, scope))
    return tokens


def mask_url_password(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:********@h/db``, and
    the value of a ``password=`` query parameter likewise. A URL without a
    password comes back unchanged."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if at and colon:
        netloc = f"{user}:********@{host}"
    fields = [p.partition("=") for p in parts.query.split("&")] if parts.query else []
    query = "&".join(
        f"{k}=********" if k.lower() == "password" and eq else f"{k}{eq}{v}" for k, eq, v in fields
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
