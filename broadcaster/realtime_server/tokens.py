"""Access tokens of private channels, checked as Supabase's Realtime server
checks them, with an allow-list of roles standing in for RLS policies.

Supabase verifies the token a join carries (``access_token``, else the
connection's ``apikey``; ``lib/realtime_web/channels/realtime_channel.ex``,
``assign_access_token``) as a JWT signed with the project's JWT secret
(``lib/realtime_web/channels/auth/jwt_verification.ex``, ``verify``:
HS256/384/512 with the secret), requires an ``exp`` in the future and the
claims ``role`` and ``exp``
(``lib/realtime_web/channels/auth/channels_authorization.ex``,
``authorize_conn``), then asks the RLS policies on ``realtime.messages``
whether that role may read the topic (``realtime_channel.ex``,
``maybe_assign_policies``). Locally the policies are one rule: the token's
``role`` must be one of the allowed roles (default ``authenticated`` and
``service_role``), for reading and writing alike.

A refused join's reply (``realtime_channel.ex``, ``join``) and a channel shut
down later — the token expired (``handle_info(:confirm_token, ...)``), or an
``access_token`` message brought a bad one (``handle_in("access_token",
...)``) — carry Supabase's texts (:meth:`TokenRefusal.join_reason`,
:meth:`TokenRefusal.shutdown_message`).

Pure: values in, verdicts out; the caller passes the time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import unquote

import orjson

__all__ = [
    "DEFAULT_PRIVATE_ROLES",
    "TokenCheck",
    "TokenProblem",
    "TokenRefusal",
    "is_refresh",
    "mint_token",
    "service_role_key",
    "token_for_join",
]

#: Roles whose tokens may use private channels unless told otherwise:
#: signed-in users (an RLS policy for ``authenticated``) and the service key
#: (``service_role`` bypasses RLS).
DEFAULT_PRIVATE_ROLES: Final = ("authenticated", "service_role")

_HASHES: Final = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
_WHITESPACE: Final = re.compile(r"\s")
#: Supabase's new API keys: never verified as a JWT; the connection's own
#: token stands instead.
_API_KEY_PREFIX: Final = "sb_"


class TokenProblem(StrEnum):
    """What is wrong with a token."""

    MALFORMED = "malformed"
    SIGNER = "signer"
    SIGNATURE = "signature"
    EXPIRED = "expired"
    MISSING_CLAIMS = "missing_claims"
    UNAUTHORIZED = "unauthorized"
    NO_SECRET = "no_secret"


_MALFORMED: Final = "The token provided is not a valid JWT"
_MISSING_CLAIMS: Final = "Fields `role` and `exp` are required in JWT"
_NO_PERMISSION: Final = "You do not have permissions to read from this Channel topic: {channel}"
_NO_SECRET: Final = "this server has no JWT secret to verify access tokens with"
_EXPIRED: Final = "Token has expired {expired_s} seconds ago"

#: A refused join's reason, per problem.
_JOIN_REASONS: Final = {
    TokenProblem.MALFORMED: f"MalformedJWT: {_MALFORMED}",
    TokenProblem.SIGNER: "JwtSignerError: Failed to generate JWT signer, check your JWT "
    "secret or JWKS configuration",
    TokenProblem.SIGNATURE: "JwtSignatureError: Failed to validate JWT signature",
    TokenProblem.EXPIRED: f"InvalidJWTToken: {_EXPIRED}",
    TokenProblem.MISSING_CLAIMS: f"InvalidJWTToken: {_MISSING_CLAIMS}",
    TokenProblem.UNAUTHORIZED: f"Unauthorized: {_NO_PERMISSION}",
    TokenProblem.NO_SECRET: f"Unauthorized: {_NO_SECRET}",
}
#: The message that shuts a joined channel down, per problem. A bad signature
#: and an unknown algorithm read as Elixir's ``inspect`` of the error there.
_SHUTDOWN_MESSAGES: Final = {
    TokenProblem.MALFORMED: _MALFORMED,
    TokenProblem.SIGNER: ":error_generating_signer",
    TokenProblem.SIGNATURE: ":signature_error",
    TokenProblem.EXPIRED: _EXPIRED,
    TokenProblem.MISSING_CLAIMS: _MISSING_CLAIMS,
    TokenProblem.UNAUTHORIZED: _NO_PERMISSION,
    TokenProblem.NO_SECRET: _NO_SECRET,
}


@dataclass(frozen=True, slots=True)
class TokenRefusal:
    """A token that does not open a private channel, and why."""

    problem: TokenProblem
    #: Seconds since the token expired (for ``EXPIRED``).
    expired_s: int = 0

    def join_reason(self, channel: str) -> str:
        """The ``reason`` of the join's error reply; ``channel`` is the topic
        without its ``realtime:`` prefix."""
        return _JOIN_REASONS[self.problem].format(channel=channel, expired_s=self.expired_s)

    def shutdown_message(self, channel: str) -> str:
        """The ``message`` of the ``system`` error that shuts a joined channel down."""
        return _SHUTDOWN_MESSAGES[self.problem].format(channel=channel, expired_s=self.expired_s)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_object(part: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(_b64decode(part))
    except (binascii.Error, ValueError):
        return None
    return value if isinstance(value, dict) else None


class TokenCheck:
    """Checks access tokens against one JWT secret and one set of roles.

    ``secret`` None: no token can be checked, so every private join is
    refused (a Supabase project always has a secret; a local server may not
    be given one)."""

    def __init__(
        self, secret: str | bytes | None, roles: Iterable[str] = DEFAULT_PRIVATE_ROLES
    ) -> None:
        self._secret = secret.encode() if isinstance(secret, str) else secret
        self.roles = frozenset(roles)

    @property
    def has_secret(self) -> bool:
        return self._secret is not None

    def verify(self, token: str | None, now: float) -> dict[str, Any] | TokenRefusal:
        """The claims of ``token`` at time ``now`` (epoch seconds), or why it
        is refused: not a JWT, signed otherwise, expired, or lacking ``role``
        and ``exp``. The role is not judged here (see :meth:`authorize`)."""
        if self._secret is None:
            return TokenRefusal(TokenProblem.NO_SECRET)
        if not isinstance(token, str):
            return TokenRefusal(TokenProblem.MALFORMED)
        # ChannelsAuthorization.clean_token: URL-decoded, whitespace removed.
        parts = _WHITESPACE.sub("", unquote(token)).split(".")
        if len(parts) != 3:
            return TokenRefusal(TokenProblem.MALFORMED)
        header_b64, claims_b64, signature_b64 = parts
        claims = _json_object(claims_b64)
        header = _json_object(header_b64)
        if claims is None or header is None:
            return TokenRefusal(TokenProblem.MALFORMED)
        alg = header.get("alg")
        digest = _HASHES.get(alg) if isinstance(alg, str) else None
        if digest is None:
            return TokenRefusal(TokenProblem.SIGNER)
        try:
            signature = _b64decode(signature_b64)
        except (binascii.Error, ValueError):
            return TokenRefusal(TokenProblem.SIGNATURE)
        signed = f"{header_b64}.{claims_b64}".encode()
        expected = hmac.digest(self._secret, signed, digest)
        if not hmac.compare_digest(signature, expected):
            return TokenRefusal(TokenProblem.SIGNATURE)
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            # Joken's current_time: whole seconds.
            current = math.floor(now)
            if exp <= current:
                return TokenRefusal(TokenProblem.EXPIRED, current - math.floor(exp))
            if "role" in claims:
                return claims
        return TokenRefusal(TokenProblem.MISSING_CLAIMS)

    def authorize(self, token: str | None, now: float) -> dict[str, Any] | TokenRefusal:
        """:meth:`verify`, then the stand-in for RLS: the claims when their
        ``role`` is one of :attr:`roles`, else an ``UNAUTHORIZED`` refusal."""
        verdict = self.verify(token, now)
        if isinstance(verdict, TokenRefusal):
            return verdict
        if verdict.get("role") not in self.roles:
            return TokenRefusal(TokenProblem.UNAUTHORIZED)
        return verdict


def token_for_join(payload: Mapping[str, Any], apikey: str | None) -> str | None:
    """The token a join is judged by, as ``assign_access_token`` picks it:
    the payload's ``user_token``, else its ``access_token``, else the
    connection's ``apikey``; a new-style API key (``sb_...``) given as the
    token stands for the ``apikey``."""
    given = payload.get("access_token") or payload.get("user_token")
    if isinstance(given, str) and given.startswith(_API_KEY_PREFIX):
        return apikey
    for name in ("user_token", "access_token"):
        token = payload.get(name)
        if isinstance(token, str):
            return token
    return apikey


def is_refresh(token: object, current: str | None) -> bool:
    """Whether an ``access_token`` message carrying ``token`` asks for a new
    check: a string other than the current token and not a new-style API key
    (``handle_in("access_token", ...)`` in ``realtime_channel.ex`` ignores the rest)."""
    return isinstance(token, str) and token != current and not token.startswith(_API_KEY_PREFIX)


def mint_token(secret: str | bytes, claims: Mapping[str, Any]) -> str:
    """An HS256 JWT of ``claims`` signed with ``secret``: the form of a
    Supabase project's keys and of its users' access tokens."""
    key = secret.encode() if isinstance(secret, str) else secret
    header = _b64encode(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = _b64encode(orjson.dumps(dict(claims)))
    signature = hmac.digest(key, f"{header}.{body}".encode(), hashlib.sha256)
    return f"{header}.{body}.{_b64encode(signature)}"


#: How long a key made up for a local server stays valid.
_SERVICE_KEY_LIFETIME_S: Final = 10 * 365 * 86_400


def service_role_key(secret: str | bytes, now: float) -> str:
    """A service key as a Supabase project has one: a ``service_role`` JWT
    signed with the project's ``secret``, issued at ``now``, valid for years."""
    issued = math.floor(now)
    return mint_token(
        secret,
        {
            "iss": "supabase",
            "role": "service_role",
            "iat": issued,
            "exp": issued + _SERVICE_KEY_LIFETIME_S,
        },
    )
