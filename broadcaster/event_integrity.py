"""Event integrity: signing keys and signatures (docs/security.md), and the checks a
consumer runs on a received event's checksum and signature.

Pure code: values in, values out, no I/O.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from .checksums import CHECKSUM_FUNCTIONS
from .event_json import _encodable, canonical_bytes_of
from .exceptions import FrameError

__all__ = [
    "MAX_KEY_ID_LENGTH",
    "SIGNATURE_ALGORITHM",
    "SigningKey",
    "verify_event_dict",
    "verify_signed_event_dict",
]

_HEX_LENGTH: Final = {"crc32": 8, "crc32c": 8, "sha256": 64}

#: The one signature algorithm (docs/security.md).
SIGNATURE_ALGORITHM: Final = "hmac-sha256"
#: Longest key id, as ``EVENT_SIGNING_KEY_ID`` allows.
MAX_KEY_ID_LENGTH: Final = 64
_SIGNATURE_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")


def _secret_bytes(secret: str | bytes) -> bytes:
    # surrogateescape: an environment variable's bytes that are not UTF-8
    # come back as they were (as security.py does for tokens).
    return secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogateescape")


def _hmac_hex(secret: bytes, canonical: bytes) -> str:
    return hmac.digest(secret, canonical, "sha256").hex()


@dataclass(frozen=True, slots=True, init=False)
class SigningKey:
    """A key that signs events: ``key_id`` is written on the wire so that a
    consumer holding several keys (rotation) knows which one to check with;
    ``secret`` never is, and is left out of ``repr``.

    ``secret`` may be given as text (``EVENT_SIGNING_KEY``), which is used as
    its UTF-8 bytes. Raises ``ValueError`` for an empty secret, or a key id
    that is empty, longer than 64 characters or not valid Unicode.
    """

    key_id: str
    secret: bytes = field(repr=False)
    #: The wire bytes from ``,"signature":`` up to the value's opening quote.
    _wire_head: bytes = field(repr=False, compare=False)

    def __init__(self, key_id: str, secret: str | bytes) -> None:
        if not isinstance(key_id, str) or not 0 < len(key_id) <= MAX_KEY_ID_LENGTH:
            raise ValueError(f"key id must be 1-{MAX_KEY_ID_LENGTH} characters, not {key_id!r}")
        if not (key_id.isascii() or _encodable(key_id)):
            raise ValueError(f"key id {key_id!r} is not valid Unicode")
        secret_bytes = _secret_bytes(secret)
        if not secret_bytes:
            raise ValueError("signing key must not be empty")
        head = b',"signature":{"algorithm":"%b","key_id":%b,"value":"' % (
            SIGNATURE_ALGORITHM.encode(),
            orjson.dumps(key_id),
        )
        object.__setattr__(self, "key_id", key_id)
        object.__setattr__(self, "secret", secret_bytes)
        object.__setattr__(self, "_wire_head", head)


def _signature_problem(
    signature: object, canonical: bytes, keys: Mapping[str, bytes]
) -> str | None:
    """Why ``signature`` (a received event's ``signature`` field) does not
    prove ``canonical`` was signed with one of ``keys``; None when it does."""
    if signature is None:
        return "no signature"
    if not isinstance(signature, dict):
        return f"signature is a {type(signature).__name__}, not an object"
    algorithm = signature.get("algorithm")
    key_id = signature.get("key_id")
    value = signature.get("value")
    if algorithm != SIGNATURE_ALGORITHM:
        return f"unknown signature algorithm {algorithm!r}"
    if not isinstance(key_id, str) or not isinstance(value, str):
        return "signature lacks a key_id or value string"
    secret = keys.get(key_id)
    if secret is None:
        return f"unknown key id {key_id!r}"
    expected = _hmac_hex(secret, canonical).encode()
    # compare_digest: the time taken must not tell a forger how much matched.
    # Bytes, because it takes text only when ASCII.
    if not hmac.compare_digest(value.encode("utf-8", "replace"), expected):
        return f"signature does not match (key id {key_id!r})"
    return None


#: The checksum function of each algorithm a received event may name, looked
#: up once per event (compute_checksum would add a call and a second lookup).
_VERIFIERS: Final[Mapping[str, Callable[[bytes], str]]] = {
    algorithm: CHECKSUM_FUNCTIONS[algorithm] for algorithm in _HEX_LENGTH
}


def verify_event_dict(obj: Mapping[str, Any]) -> tuple[bool, str, str]:
    """Check a received event object's checksum; fast path for consumers.

    Returns ``(ok, expected, actual)``. Raises :class:`FrameError` when the
    object lacks fields or names an unknown algorithm.
    """
    checksum = obj.get("checksum")
    if not isinstance(checksum, dict):
        raise FrameError("event lacks a checksum object")
    algorithm = checksum.get("algorithm")
    expected = checksum.get("value")
    function = _VERIFIERS.get(algorithm) if isinstance(algorithm, str) else None
    if function is None or not isinstance(expected, str):
        raise FrameError(f"event checksum is malformed: {checksum!r}")
    actual = function(canonical_bytes_of(obj))
    return actual == expected, expected, actual


def verify_signed_event_dict(
    obj: Mapping[str, Any], signing_keys: Mapping[str, bytes]
) -> tuple[bool, str, str, str | None]:
    """:func:`verify_event_dict` for a consumer holding ``signing_keys`` (key
    id -> key): ``(ok, expected, actual, signature_problem)``, where the last
    is None for an event signed with one of the keys, else why not (no
    signature, an unknown key id, a value that does not match).

    Each verdict stands alone: a changed payload fails both. Raises
    :class:`FrameError` as :func:`verify_event_dict` does.
    """
    # verify_event_dict's lines, not a shared helper: an unsigned consumer
    # pays no extra call per event.
    checksum = obj.get("checksum")
    if not isinstance(checksum, dict):
        raise FrameError("event lacks a checksum object")
    algorithm = checksum.get("algorithm")
    expected = checksum.get("value")
    function = _VERIFIERS.get(algorithm) if isinstance(algorithm, str) else None
    if function is None or not isinstance(expected, str):
        raise FrameError(f"event checksum is malformed: {checksum!r}")
    canonical = canonical_bytes_of(obj)
    actual = function(canonical)
    problem = _signature_problem(obj.get("signature"), canonical, signing_keys)
    return actual == expected, expected, actual, problem
