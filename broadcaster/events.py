"""Events: identity, validation, canonical bytes and the wire form.

Pure code: values in, values out, no I/O and no asyncio. The clock is passed in.

An event goes through three shapes:

* :class:`EventDraft` — what ``publish()`` accepted: validated fields, a ULID,
  a timestamp and the payload already encoded once (sorted keys, compact,
  UTF-8). No sequence id yet, so no checksum.
* :class:`EventRecord` — the draft sealed with its ``sequence_id`` and checksum.
  It holds the canonical bytes and the wire bytes (the JSON text frame), each
  built once and reused by the store and every adapter.
* :class:`Event` — the pydantic model of the wire object (SPEC 2), used where
  events come in from outside: consumers, the admin API, tools.

Signed events (SPEC 13): an :class:`EventFactory` given a :class:`SigningKey`
puts it on every draft, and :func:`seal` adds ``"signature": {"algorithm":
"hmac-sha256", "key_id": ..., "value": <hex>}`` after the checksum, an
HMAC-SHA256 of the canonical bytes. The canonical bytes and the checksum stay
what they are without a key. Consumers holding keys check signatures with
:func:`verify_signed_event_dict` or :meth:`Event.verify`.

Canonical bytes (SPEC 2) are the UTF-8 JSON of ``event_id, sequence_id,
category, event_type, timestamp, key, source, payload``, keys sorted at every
level, no whitespace, non-ASCII kept. They are assembled from pre-encoded
pieces; ``tests/test_events.py`` proves the assembly equals
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .checksums import (
    ALGORITHMS,
    CHECKSUM_FUNCTIONS,
    ChecksumAlgorithm,
    compute_checksum,
    unknown_algorithm,
)
from .exceptions import ChecksumMismatch, FrameError, InvalidEvent, SignatureMismatch

__all__ = [
    "CANONICAL_FIELDS",
    "Category",
    "ChecksumInfo",
    "DEFAULT_CHECKSUM",
    "DEFAULT_EVENT_MAX_BYTES",
    "Event",
    "EventDraft",
    "EventFactory",
    "EventRecord",
    "SIGNATURE_ALGORITHM",
    "SignatureInfo",
    "SigningKey",
    "UlidGenerator",
    "canonical_bytes_of",
    "canonical_json",
    "format_timestamp",
    "parse_frame",
    "payload_keys_of",
    "record_from_wire",
    "seal",
    "verify_event_dict",
    "verify_signed_event_dict",
]


class Category(StrEnum):
    """Event categories; each has its own routing flags and checksum algorithm."""

    CRITICAL = "CRITICAL"
    PERFORMANCE = "PERFORMANCE"
    USER_ACTIVITY = "USER_ACTIVITY"
    SYSTEM = "SYSTEM"
    DEBUG = "DEBUG"


#: SPEC 2: sha256 where exactness matters most, crc32 for high-volume categories.
DEFAULT_CHECKSUM: Final[Mapping[Category, ChecksumAlgorithm]] = {
    Category.CRITICAL: "sha256",
    Category.USER_ACTIVITY: "sha256",
    Category.PERFORMANCE: "crc32",
    Category.SYSTEM: "crc32",
    Category.DEBUG: "crc32",
}

DEFAULT_EVENT_MAX_BYTES: Final = 262_144

CANONICAL_FIELDS: Final = (
    "event_id",
    "sequence_id",
    "category",
    "event_type",
    "timestamp",
    "key",
    "source",
    "payload",
)

# Patterns anchored with ^...$ (pydantic's Rust regex has no \Z; Python's
# fullmatch is used below so a trailing newline cannot slip through).
_EVENT_TYPE_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,128}$"
_ULID_PATTERN: Final = r"^[0-9A-HJKMNP-TV-Z]{26}$"
_TIMESTAMP_PATTERN: Final = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
_EVENT_TYPE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_HEX_RE: Final = re.compile(r"[0-9a-f]+")
_isfinite: Final = math.isfinite
# Where orjson's float text can differ from json's (see canonical_json).
_SMALL_FLOAT_RE: Final = re.compile(rb"[0-9]e-|0\.0000").search
# The substrings every match of _SMALL_FLOAT_RE contains, one per branch, as
# literal-prefix searches: re finds a literal about twice as fast as
# ``bytes in bytes`` on an event's canonical bytes (CPython 3.11). Not
# ".0000": common floats such as 2.00001 contain it and would take the regex.
_E_MINUS: Final = re.compile(rb"e-").search
_ZERO_POINT_ZEROS: Final = re.compile(rb"0\.0000").search


def _small_float_text(encoded: bytes) -> bool:
    """Whether orjson's ``encoded`` may hold a float json writes differently
    (whether ``_SMALL_FLOAT_RE`` matches it).

    Two literal searches rule out most texts before the regex, which has no
    literal prefix to skip ahead with (~10x slower on an event's canonical
    bytes)."""
    return (
        _E_MINUS(encoded) is not None or _ZERO_POINT_ZEROS(encoded) is not None
    ) and _SMALL_FLOAT_RE(encoded) is not None


_HEX_LENGTH: Final = {"crc32": 8, "crc32c": 8, "sha256": 64}
MAX_KEY_LENGTH: Final = 512
MAX_SOURCE_LENGTH: Final = 128

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits per lookup: 10 bits -> 2 chars.
_PAIRS: Final = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_RANDOM_MAX: Final = (1 << 80) - 1


def _base32_10(value: int) -> str:
    """The low 50 bits of ``value`` as 10 Crockford base32 characters."""
    pairs = _PAIRS
    return (
        pairs[value >> 40 & 0x3FF]
        + pairs[value >> 30 & 0x3FF]
        + pairs[value >> 20 & 0x3FF]
        + pairs[value >> 10 & 0x3FF]
        + pairs[value & 0x3FF]
    )


def _base32_12(value: int) -> str:
    """The low 60 bits of ``value`` as 12 Crockford base32 characters."""
    return _PAIRS[value >> 50 & 0x3FF] + _base32_10(value)


def _urandom_80() -> int:
    return int.from_bytes(os.urandom(10))


class UlidGenerator:
    """Monotonic ULIDs: 48-bit millisecond time + 80 random bits.

    Within one millisecond the random part is incremented, so ids sort in
    creation order within a process (the ULID spec's monotonic mode). If the
    clock steps back, the last timestamp is kept, so order still holds.
    python-ulid parses and validates these (see the tests); it has no
    monotonic generator and its ``str()`` costs ~10 µs, too much per event.

    The text is cached up to the random part's low 20 bits, so an id within
    the same millisecond costs two table lookups; the cache is rebuilt when
    the millisecond changes or an increment carries past those 20 bits.
    """

    __slots__ = ("_high", "_last_ms", "_last_random", "_prefix", "_random", "_time_text")

    def __init__(self, random_bits: Callable[[], int] | None = None) -> None:
        self._random = random_bits or _urandom_80
        self._last_ms = -1
        self._last_random = 0
        self._time_text = ""
        #: ``_time_text`` + the random part above its low 20 bits, as text.
        self._prefix = ""
        self._high = -1

    def __call__(self, now_ms: int) -> str:
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._time_text = _base32_10(now_ms)
            self._high = -1
            # Leave headroom so increments within the millisecond cannot overflow.
            value = self._random() >> 1
        else:
            value = self._last_random + 1
            if value > _RANDOM_MAX:  # pragma: no cover - needs 2**79 ids in 1 ms
                raise OverflowError("ULID random part overflowed within one millisecond")
        self._last_random = value
        high = value >> 20
        if high != self._high:
            self._high = high
            self._prefix = self._time_text + _base32_12(high)
        return self._prefix + _PAIRS[(value >> 10) & 0x3FF] + _PAIRS[value & 0x3FF]


def format_timestamp(epoch_ms: int) -> str:
    """UTC ISO-8601 with milliseconds and ``Z``: ``2026-11-23T09:21:48.343Z``."""
    seconds, ms = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


#: The one signature algorithm (SPEC 13).
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


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A validated event waiting for its sequence id (see :func:`seal`)."""

    event_id: str
    category: Category
    event_type: str
    timestamp: str
    key: str | None
    source: str
    payload_json: bytes
    checksum_algorithm: ChecksumAlgorithm
    #: JSON array of the payload's sorted top-level keys (reconciliation's
    #: "semantic" criterion compares these).
    payload_keys: str = "[]"
    #: The key :func:`seal` signs with; None: unsigned.
    signing_key: SigningKey | None = None

    @property
    def routing_key(self) -> str:
        """The key sticky sampling hashes: ``key``, or ``event_id`` when null."""
        return self.key if self.key is not None else self.event_id


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A sealed event: sequence id, checksum, canonical and wire bytes."""

    sequence_id: int
    event_id: str
    category: Category
    event_type: str
    timestamp: str
    key: str | None
    source: str
    payload_json: bytes
    checksum_algorithm: ChecksumAlgorithm
    checksum: str
    canonical: bytes
    wire: bytes
    payload_keys: str = "[]"

    @property
    def routing_key(self) -> str:
        return self.key if self.key is not None else self.event_id

    def to_dict(self) -> dict[str, Any]:
        """The wire object as a fresh dict (safe to hand to serialisers)."""
        result: dict[str, Any] = orjson.loads(self.wire)
        return result

    def to_event(self) -> Event:
        return Event.model_validate(self.to_dict())


class ChecksumInfo(BaseModel):
    """``{"algorithm": ..., "value": "<lowercase hex>"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: ChecksumAlgorithm
    value: str

    @field_validator("value")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _HEX_RE.fullmatch(value):
            raise ValueError("must be lowercase hex")
        return value


class SignatureInfo(BaseModel):
    """``{"algorithm": "hmac-sha256", "key_id": ..., "value": "<64 lowercase hex>"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["hmac-sha256"]
    key_id: str = Field(min_length=1, max_length=MAX_KEY_ID_LENGTH)
    value: str

    @field_validator("value")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not _SIGNATURE_HEX_RE.fullmatch(value):
            raise ValueError("must be 64 lowercase hex characters")
        return value


class Event(BaseModel):
    """The wire object of SPEC 2, validated. Build one from a received frame
    with :func:`parse_frame`; check its integrity with :meth:`verify`.
    ``signature`` is present on events of a broadcaster with a signing key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(pattern=_ULID_PATTERN)
    sequence_id: int = Field(ge=1)
    category: Category
    event_type: str = Field(pattern=_EVENT_TYPE_PATTERN)
    timestamp: str = Field(pattern=_TIMESTAMP_PATTERN)
    key: str | None
    source: str = Field(min_length=1, max_length=MAX_SOURCE_LENGTH)
    payload: dict[str, Any]
    checksum: ChecksumInfo
    signature: SignatureInfo | None = None

    def canonical_bytes(self) -> bytes:
        return canonical_bytes_of(self.model_dump(include=set(CANONICAL_FIELDS)))

    def verify(self, signing_keys: Mapping[str, bytes] | None = None) -> None:
        """Raise :class:`ChecksumMismatch` unless the checksum matches; given
        ``signing_keys`` (key id -> key), raise :class:`SignatureMismatch`
        unless the event is signed with one of them."""
        canonical = self.canonical_bytes()
        actual = compute_checksum(self.checksum.algorithm, canonical)
        if actual != self.checksum.value:
            raise ChecksumMismatch(
                self.sequence_id, self.checksum.algorithm, self.checksum.value, actual
            )
        if signing_keys is not None:
            signature = self.signature.model_dump() if self.signature is not None else None
            problem = _signature_problem(signature, canonical, signing_keys)
            if problem is not None:
                raise SignatureMismatch(self.sequence_id, problem)


def payload_keys_of(payload: Mapping[str, Any]) -> str:
    """The payload's top-level keys, sorted, as a JSON array (``'["a","b"]'``)."""
    return orjson.dumps(sorted(payload)).decode()


def canonical_json(obj: Any) -> bytes:
    """``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    as UTF-8, computed with orjson where the two agree byte for byte.

    They differ only on floats below 1e-4: orjson writes ``1e-7`` and
    ``0.00005`` where json writes ``1e-07`` and ``5e-05``. Both forms contain
    a digit followed by ``e-``, or ``0.0000`` (checked over 200 000 random
    doubles and every decade in tests/test_events.py), so any output with
    either is re-encoded with :mod:`json`. Raises ``TypeError`` / ``ValueError``
    for what JSON cannot hold.
    """
    encoded = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    if _small_float_text(encoded):
        encoded = _json_canonical(obj)
    return encoded


def _json_canonical(obj: Any) -> bytes:
    """The reference: json's sorted, compact, non-ASCII-keeping UTF-8 text."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def canonical_bytes_of(obj: Mapping[str, Any]) -> bytes:
    """Canonical bytes of an event mapping (extra fields such as ``checksum`` ignored).

    Raises :class:`FrameError` naming the first of :data:`CANONICAL_FIELDS`
    missing, or when a field cannot be written as JSON.
    """
    try:
        # {f: obj[f] for f in CANONICAL_FIELDS} written out: the same lookups
        # in the same order (so the same first missing field), ~0.5 µs cheaper
        # than the comprehension. tests/test_events.py pins the two together.
        return canonical_json(
            {
                "event_id": obj["event_id"],
                "sequence_id": obj["sequence_id"],
                "category": obj["category"],
                "event_type": obj["event_type"],
                "timestamp": obj["timestamp"],
                "key": obj["key"],
                "source": obj["source"],
                "payload": obj["payload"],
            }
        )
    except KeyError as exc:
        raise FrameError(f"event lacks field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise FrameError(f"event is not JSON-serialisable: {exc}") from None


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


def parse_frame(data: str | bytes) -> Event:
    """Parse and validate one wire frame. Raises :class:`FrameError` naming the problem."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"frame is a JSON {type(obj).__name__}, not an object")
    try:
        return Event.model_validate(obj)
    except ValueError as exc:
        raise FrameError(f"frame is not a valid event: {exc}") from None


class _NotPlainJson(Exception):
    """A payload value outside the plain JSON types (see :func:`_small_floats_in`)."""


def _small_floats_in(values: Iterable[Any]) -> bool:
    """Whether ``values`` (walked recursively) hold a float in ``0 < |x| < 1e-4``,
    the only values whose orjson text differs from json's (see canonical_json).

    Raises :class:`_NotPlainJson` at anything but exactly ``dict``, ``list``,
    ``str``, ``int``, ``bool``, ``None`` and finite ``float``: NaN and Infinity,
    datetimes, UUIDs, enums, tuples, subclasses. For a plain payload,
    orjson.loads of the encoded bytes always gives back an equal object, so it
    needs no round trip; anything else takes the exact checks
    (:func:`_check_not_plain_payload`). Runs after orjson.dumps succeeded, so
    the depth is bounded and there are no cycles.
    """
    small = False
    for value in values:
        kind = type(value)
        if kind is str or kind is int or value is None or kind is bool:
            continue
        if kind is float:
            if not _isfinite(value):
                raise _NotPlainJson
            if -1e-4 < value < 1e-4 and value != 0.0:
                small = True
        elif kind is dict:
            small = _small_floats_in(value.values()) or small
        elif kind is list:
            small = _small_floats_in(value) or small
        else:
            raise _NotPlainJson
    return small


def _check_not_plain_payload(payload: dict[Any, Any], encoded: bytes) -> bool:
    """The exact checks for a payload holding more than plain JSON values;
    returns whether ``encoded`` needs the small-float re-encoding."""
    if orjson.loads(encoded) != payload:
        # orjson quietly writes NaN/Infinity as null and encodes datetimes,
        # UUIDs, enums and dataclasses; JSON holds none of them. Tuples and
        # other JSON-able sequences also land here and are accepted.
        try:
            json.dumps(payload, allow_nan=False)
        except ValueError:
            raise InvalidEvent("payload", "NaN and Infinity are not valid JSON") from None
        except TypeError as exc:
            raise InvalidEvent("payload", f"not JSON-serialisable: {exc}") from None
    return _small_float_text(encoded)


@dataclass(frozen=True, slots=True)
class _At:
    """One step of the path to a value inside a payload (a key or an index)."""

    parent: _At | None
    step: str | int


#: Path steps a message shows in full; deeper paths show their last ones.
_PATH_STEPS_SHOWN: Final = 8
#: A key longer than this is shown by its two ends.
_STEP_TEXT_MAX: Final = 40


def _step_text(step: str | int) -> str:
    text = repr(step)
    if len(text) > _STEP_TEXT_MAX:
        half = _STEP_TEXT_MAX // 2
        text = text[:half] + "…" + text[-half:]
    return f"[{text}]"


def _path_text(at: _At | None) -> str:
    """``payload['a'][0]``: where ``at`` is, as a Python-style subscript path."""
    steps: list[str | int] = []
    while at is not None:
        steps.append(at.step)
        at = at.parent
    steps.reverse()
    hidden = len(steps) - _PATH_STEPS_SHOWN
    shown = steps[hidden:] if hidden > 0 else steps
    prefix = f"payload[…{hidden} levels…]" if hidden > 0 else "payload"
    return prefix + "".join(_step_text(step) for step in shown)


def _lone_surrogate(payload: object) -> str | None:
    """The reason to refuse ``payload`` if a key or string in it holds a lone
    surrogate (no UTF-8 form, so no JSON text), naming where; else None.

    Iterative, and each container is visited once, so neither nesting beyond
    the stack nor a cycle (both of which orjson refuses too) can stop it.
    """
    stack: list[tuple[object, _At | None]] = [(payload, None)]
    visited: set[int] = set()
    while stack:
        value, at = stack.pop()
        if isinstance(value, str):
            if not (value.isascii() or _encodable(value)):
                where = _path_text(at)
                return f"string at {where} is not valid Unicode (lone surrogate)"
            continue
        if not isinstance(value, dict | list | tuple) or id(value) in visited:
            continue
        visited.add(id(value))
        children: list[tuple[str | int, object]]
        if isinstance(value, dict):
            children = list(value.items())
            for key, _ in children:
                if isinstance(key, str) and not (key.isascii() or _encodable(key)):
                    where = _path_text(_At(at, key))
                    return f"key {where} is not valid Unicode (lone surrogate)"
        else:
            children = list(enumerate(value))
        # Reversed, so that the first child is looked at first.
        stack.extend((child, _At(at, step)) for step, child in reversed(children))
    return None


def _check_json_payload(payload: object, max_bytes: int) -> bytes:
    if not isinstance(payload, dict):
        raise InvalidEvent("payload", f"must be a JSON object (dict), not {type(payload).__name__}")
    try:
        encoded = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:  # non-str keys, ints beyond 64 bits, lone surrogates, sets...
        # orjson refuses a lone surrogate in a key or a value alike, but its
        # message names neither; finding it costs a walk, paid on refusal only.
        reason = _lone_surrogate(payload) or f"not JSON-serialisable: {exc}"
        raise InvalidEvent("payload", reason) from None
    try:
        if type(payload) is not dict:
            raise _NotPlainJson
        small_float = _small_floats_in(payload.values())
    except _NotPlainJson:
        small_float = _check_not_plain_payload(payload, encoded)
    if small_float:
        encoded = _json_canonical(payload)
    if len(encoded) > max_bytes:
        raise InvalidEvent(
            "payload", f"encoded size {len(encoded)} bytes exceeds the limit of {max_bytes}"
        )
    return encoded


def _encodable(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8 (callers try the O(1)
    ``str.isascii`` first)."""
    try:
        value.encode()
    except UnicodeEncodeError:  # lone surrogates cannot be written as UTF-8 JSON
        return False
    return True


#: Category by exact name; a Category member finds itself too (a StrEnum
#: hashes and compares as its value), so the common cases take one lookup.
_CATEGORY_BY_NAME: Final[Mapping[str, Category]] = {c.value: c for c in Category}


def _category(value: object) -> Category:
    if isinstance(value, str):
        found = _CATEGORY_BY_NAME.get(value)
        if found is not None:
            return found
        try:
            return Category(value.upper())
        except ValueError:
            pass
    raise InvalidEvent(
        "category", f"unknown category {value!r}; expected one of {', '.join(Category)}"
    )


def _builder(cls: type) -> Any:
    """A plain class with the slots of the frozen dataclass ``cls``.

    A frozen dataclass's ``__init__`` sets each field with
    ``object.__setattr__`` (~2 µs for a record). Instead, an instance of the
    builder is filled with ordinary attribute stores and then becomes a ``cls``
    by ``__class__`` assignment, which CPython allows because the two layouts
    are the same (it raises ``TypeError`` if they ever differ). The result is a
    normal ``cls``: equal, hashable, frozen, picklable.
    """
    return type(f"_{cls.__name__}Builder", (), {"__slots__": cls.__dict__["__slots__"]})


_DraftBuilder: Final = _builder(EventDraft)
_RecordBuilder: Final = _builder(EventRecord)

#: Entries per memo of an :class:`EventFactory` (event types, payload key sets).
_MEMO_SIZE: Final = 1024
#: Longer payload-key lists are not memoised (bounds the memo's memory).
_MEMO_MAX_KEYS_TEXT: Final = 1024


class EventFactory:
    """Validates ``publish()`` input and turns it into :class:`EventDraft`\\ s.

    ``clock`` returns wall time in seconds (``time.time`` in production).
    ``checksums`` maps each category to its algorithm. With ``signing_key``,
    every draft carries it and :func:`seal` signs the event.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        checksums: Mapping[Category, ChecksumAlgorithm] = DEFAULT_CHECKSUM,
        max_payload_bytes: int = DEFAULT_EVENT_MAX_BYTES,
        ulids: UlidGenerator | None = None,
        signing_key: SigningKey | None = None,
    ) -> None:
        self._clock = clock
        self._signing_key = signing_key
        self._checksums = dict(DEFAULT_CHECKSUM) | dict(checksums)
        self._max_bytes = max_payload_bytes
        # The bound method: calling the instance costs ~0.4 µs more (tp_call).
        self._next_event_id = (ulids or UlidGenerator()).__call__
        self._ts_ms = -1
        self._ts_str = ""
        # Memos of the checks that depend on a value alone, bounded: producers
        # reuse a handful of event types and payload shapes.
        self._event_types: set[str] = set()
        self._payload_keys: dict[tuple[str, ...], str] = {}

    def set_checksum(self, category: Category, algorithm: ChecksumAlgorithm) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self._checksums[category] = algorithm

    def draft(
        self,
        category: str | Category,
        event_type: str,
        payload: object,
        *,
        key: str | None = None,
        source: str = "default",
    ) -> EventDraft:
        """Validate one event. Raises :class:`InvalidEvent` naming the field."""
        cat = _category(category)
        if type(event_type) is not str or event_type not in self._event_types:
            self._check_event_type(event_type)
        if key is not None and (
            not isinstance(key, str)
            or len(key) > MAX_KEY_LENGTH
            or not (key.isascii() or _encodable(key))
        ):
            raise InvalidEvent(
                "key", f"must be a valid Unicode string of at most {MAX_KEY_LENGTH} characters"
            )
        if (
            not isinstance(source, str)
            or not 0 < len(source) <= MAX_SOURCE_LENGTH
            or not (source.isascii() or _encodable(source))
        ):
            raise InvalidEvent(
                "source", f"must be a non-empty valid Unicode string of at most {MAX_SOURCE_LENGTH}"
            )
        encoded = _check_json_payload(payload, self._max_bytes)
        now_ms = int(self._clock() * 1000)
        if now_ms != self._ts_ms:
            self._ts_ms = now_ms
            self._ts_str = format_timestamp(now_ms)
        draft = _DraftBuilder()
        draft.event_id = self._next_event_id(now_ms)
        draft.category = cat
        draft.event_type = event_type
        draft.timestamp = self._ts_str
        draft.key = key
        draft.source = source
        draft.payload_json = encoded
        draft.checksum_algorithm = self._checksums[cat]
        keys: tuple[str, ...] = tuple(payload)  # type: ignore[arg-type]
        keys_text = self._payload_keys.get(keys)
        if keys_text is None:
            keys_text = payload_keys_of(payload)  # type: ignore[arg-type]
            if len(keys_text) <= _MEMO_MAX_KEYS_TEXT and len(self._payload_keys) < _MEMO_SIZE:
                self._payload_keys[keys] = keys_text
        draft.payload_keys = keys_text
        draft.signing_key = self._signing_key
        draft.__class__ = EventDraft
        result: EventDraft = draft
        return result

    def _check_event_type(self, event_type: object) -> None:
        if not isinstance(event_type, str) or not _EVENT_TYPE_RE.fullmatch(event_type):
            raise InvalidEvent(
                "event_type", f"{event_type!r} must be 1-128 characters of [A-Za-z0-9_.:-]"
            )
        if type(event_type) is str and len(self._event_types) < _MEMO_SIZE:
            self._event_types.add(event_type)


# Fields in sorted order: category, event_id, event_type, key, payload,
# sequence_id, source, timestamp. category, event_id, event_type and timestamp
# are validated to need no JSON escaping; key and source are JSON strings.
_CANONICAL: Final = (
    b'{"category":"%b","event_id":"%b","event_type":"%b","key":%b,"payload":%b,'
    b'"sequence_id":%d,"source":%b,"timestamp":"%b"}'
)
#: The wire object: the canonical one without its ``}``, then the checksum.
_WIRE: Final = b'%b,"checksum":{"algorithm":"%b","value":"%b"}}'
#: The same, then the signature (its head from :class:`SigningKey`).
_SIGNED_WIRE: Final = b'%b,"checksum":{"algorithm":"%b","value":"%b"}%b%b"}}'
_CATEGORY_BYTES: Final[Mapping[str, bytes]] = {c.value: c.value.encode() for c in Category}
_CATEGORY_OF: Final[Mapping[str, Category]] = {c.value: c for c in Category}
# Where record_from_wire cuts a sealed wire (see there).
_CHECKSUM_HEAD: Final = b',"checksum":{"algorithm":"'
_PAYLOAD_HEAD: Final = b',"payload":'
_PAYLOAD_END: Final = b',"sequence_id":'


def seal(draft: EventDraft, sequence_id: int) -> EventRecord:
    """Give ``draft`` its sequence id; build canonical bytes, checksum and wire
    bytes (with the signature when the draft carries a signing key)."""
    key = draft.key
    source = draft.source
    algorithm = draft.checksum_algorithm
    canonical = _CANONICAL % (
        _CATEGORY_BYTES[draft.category],
        draft.event_id.encode(),
        draft.event_type.encode(),
        b"null" if key is None else orjson.dumps(key),
        draft.payload_json,
        sequence_id,
        b'"default"' if source == "default" else orjson.dumps(source),
        draft.timestamp.encode(),
    )
    try:
        checksum = CHECKSUM_FUNCTIONS[algorithm](canonical)
    except KeyError:
        raise unknown_algorithm(algorithm) from None
    record = _RecordBuilder()
    record.sequence_id = sequence_id
    record.event_id = draft.event_id
    record.category = draft.category
    record.event_type = draft.event_type
    record.timestamp = draft.timestamp
    record.key = key
    record.source = source
    record.payload_json = draft.payload_json
    record.checksum_algorithm = algorithm
    record.checksum = checksum
    record.canonical = canonical
    signing_key = draft.signing_key
    if signing_key is None:
        record.wire = _WIRE % (canonical[:-1], algorithm.encode(), checksum.encode())
    else:
        record.wire = _SIGNED_WIRE % (
            canonical[:-1],
            algorithm.encode(),
            checksum.encode(),
            signing_key._wire_head,
            _hmac_hex(signing_key.secret, canonical).encode(),
        )
    record.payload_keys = draft.payload_keys
    record.__class__ = EventRecord
    result: EventRecord = record
    return result


def record_from_wire(wire: bytes, payload_keys: str | None = None) -> EventRecord:
    """Rebuild an :class:`EventRecord` from stored wire bytes (store, backfill).

    The wire bytes are kept as they are, so a signed event stays signed.
    ``payload_keys``: the stored column, when the caller has it.

    A wire :func:`seal` wrote is the canonical object without its ``}``, then
    the checksum (and signature): the canonical and payload bytes are cut out
    of it instead of re-encoded, which was most of the cost of reading an
    event back. They are kept only if the checksum of the cut bytes is the
    one the wire carries; any other wire is re-encoded from its parsed object."""
    obj = orjson.loads(wire)
    checksum = obj["checksum"]
    algorithm = checksum["algorithm"]
    cut = wire.rfind(_CHECKSUM_HEAD)
    start = wire.find(_PAYLOAD_HEAD) + len(_PAYLOAD_HEAD)
    end = wire.rfind(_PAYLOAD_END, 0, cut)
    function = CHECKSUM_FUNCTIONS.get(algorithm)
    canonical = wire[:cut] + b"}"
    if (
        cut < 0
        or end < start
        or function is None
        or function(canonical) != checksum["value"]
        or not wire.startswith(b'{"category":')
    ):
        canonical = canonical_bytes_of(obj)
        payload_json = canonical_json(obj["payload"])
    else:
        payload_json = wire[start:end]
    record = _RecordBuilder()
    record.sequence_id = obj["sequence_id"]
    record.event_id = obj["event_id"]
    record.category = _CATEGORY_OF[obj["category"]]
    record.event_type = obj["event_type"]
    record.timestamp = obj["timestamp"]
    record.key = obj["key"]
    record.source = obj["source"]
    record.payload_json = payload_json
    record.checksum_algorithm = algorithm
    record.checksum = checksum["value"]
    record.canonical = canonical
    record.wire = wire
    record.payload_keys = (
        payload_keys if payload_keys is not None else payload_keys_of(obj["payload"])
    )
    record.__class__ = EventRecord
    result: EventRecord = record
    return result
