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

This module is the one import path for all of it; each piece lives in a
module of its own: the shapes and the values they share
(:mod:`.event_shapes`), input to draft (:mod:`.event_factory`), draft to
sealed record and stored wire back to record (:mod:`.event_seal`), identity
(:mod:`.event_ids`), canonical JSON and payload checks (:mod:`.event_json`),
signatures and received-event checks (:mod:`.event_integrity`).
"""

from __future__ import annotations

from .event_factory import EventFactory
from .event_ids import UlidGenerator, format_timestamp
from .event_integrity import (
    SIGNATURE_ALGORITHM,
    SigningKey,
    verify_event_dict,
    verify_signed_event_dict,
)
from .event_json import canonical_bytes_of, canonical_json, payload_keys_of
from .event_seal import record_from_wire, seal
from .event_shapes import (
    CANONICAL_FIELDS,
    DEFAULT_CHECKSUM,
    DEFAULT_EVENT_MAX_BYTES,
    Category,
    ChecksumInfo,
    Event,
    EventDraft,
    EventRecord,
    SignatureInfo,
    parse_frame,
    slots_builder,
)

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
