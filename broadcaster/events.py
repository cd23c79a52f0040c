"""Events: identity, validation, canonical bytes and the wire form.

Pure code: values in, values out, no I/O and no asyncio. The clock is passed in.

An event goes through three shapes:

* :class:`EventDraft` — what ``publish()`` accepted: validated fields, a ULID,
  a timestamp and the payload already encoded once (sorted keys, compact,
  UTF-8). No sequence id yet, so no checksum.
* :class:`EventRecord` — the draft sealed with its ``sequence_id`` and checksum.
  It holds the canonical bytes and the wire bytes (the JSON text frame), each
  built once and reused by the store and every adapter.
* :class:`Event` — the pydantic model of the wire object (docs/wire-format.md), used where
  events come in from outside: consumers, the admin API, tools.

Signed events (docs/security.md): an :class:`EventFactory` given a :class:`SigningKey`
puts it on every draft, and :func:`seal` adds ``"signature": {"algorithm":
"hmac-sha256", "key_id": ..., "value": <hex>}`` after the checksum, an
HMAC-SHA256 of the canonical bytes. The canonical bytes and the checksum stay
what they are without a key. Consumers holding keys check signatures with
:func:`verify_signed_event_dict` or :meth:`Event.verify`.

Canonical bytes (docs/wire-format.md) are the UTF-8 JSON of ``event_id, sequence_id,
category, event_type, timestamp, key, source, payload``, keys sorted at every
level, no whitespace, non-ASCII kept. They are assembled from pre-encoded
pieces; ``tests/test_events.py`` proves the assembly equals
``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``.

The pieces live in modules of their own, re-exported here: identity
(:mod:`.event_ids`), canonical JSON and payload checks (:mod:`.event_json`),
signatures and received-event checks (:mod:`.event_integrity`). This module
keeps the three shapes and the hot path from input to wire bytes; it stays
a little over 500 lines because that path (draft, seal, record_from_wire)
shares its private builders and byte templates, and reads best in one place.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from .event_ids import UlidGenerator, format_timestamp
from .event_integrity import (
    _SIGNATURE_HEX_RE,
    MAX_KEY_ID_LENGTH,
    SIGNATURE_ALGORITHM,
    SigningKey,
    _hmac_hex,
    _signature_problem,
    verify_event_dict,
    verify_signed_event_dict,
)
from .event_json import (
    _check_json_payload,
    _encodable,
    canonical_bytes_of,
    canonical_json,
    payload_keys_of,
)
from .exceptions import ChecksumMismatch, FrameError, InvalidEvent, SignatureMismatch

__all__ = [
    "slots_builder",
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


#: sha256 where exactness matters most, crc32 for high-volume categories.
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
MAX_KEY_LENGTH: Final = 512
MAX_SOURCE_LENGTH: Final = 128


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
    """The wire object (docs/wire-format.md), validated. Build one from a received frame
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


def slots_builder(cls: type) -> Any:
    """A plain class with the slots of the frozen dataclass ``cls``.

    A frozen dataclass's ``__init__`` sets each field with
    ``object.__setattr__``, slow for a record. Instead, an instance of the
    builder is filled with ordinary attribute stores and then becomes a ``cls``
    by ``__class__`` assignment, which CPython allows because the two layouts
    are the same (it raises ``TypeError`` if they ever differ). The result is a
    normal ``cls``: equal, hashable, frozen, picklable.
    """
    return type(f"_{cls.__name__}Builder", (), {"__slots__": cls.__dict__["__slots__"]})


_DraftBuilder: Final = slots_builder(EventDraft)
_RecordBuilder: Final = slots_builder(EventRecord)

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
        # The bound method: calling the instance costs more (tp_call).
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
