"""The shapes of an event and the values they share.

Pure code: no I/O and no asyncio. :class:`EventDraft` is what the producer
accepted (:mod:`.event_factory` builds it), :class:`EventRecord` the draft
sealed with its sequence id (:mod:`.event_seal` builds it), and the store and
every adapter pass it on; :class:`Event` is the validated wire object that
consumers, the admin API and tools read back. :func:`slots_builder` is how the
hot path builds the two frozen records without their slow ``__init__``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .checksums import ChecksumAlgorithm, compute_checksum
from .event_integrity import (
    _SIGNATURE_HEX_RE,
    MAX_KEY_ID_LENGTH,
    SigningKey,
    _signature_problem,
)
from .event_json import canonical_bytes_of
from .exceptions import ChecksumMismatch, FrameError, SignatureMismatch

__all__ = [
    "CANONICAL_FIELDS",
    "Category",
    "ChecksumInfo",
    "DEFAULT_CHECKSUM",
    "DEFAULT_EVENT_MAX_BYTES",
    "Event",
    "EventDraft",
    "EventRecord",
    "MAX_KEY_LENGTH",
    "MAX_SOURCE_LENGTH",
    "SignatureInfo",
    "parse_frame",
    "slots_builder",
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

# Patterns anchored with ^...$ (pydantic's Rust regex has no \Z; checks in
# Python use fullmatch so a trailing newline cannot slip through).
_EVENT_TYPE_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,128}$"
_ULID_PATTERN: Final = r"^[0-9A-HJKMNP-TV-Z]{26}$"
_TIMESTAMP_PATTERN: Final = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"
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
