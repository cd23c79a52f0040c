"""Sealing: a draft becomes an :class:`~broadcaster.event_shapes.EventRecord`.

Pure code. :func:`seal` runs once per event, when the store hands out its
sequence id: it assembles the canonical bytes from pre-encoded pieces,
checksums (and signs) them and builds the wire bytes the store keeps and every
adapter sends. :func:`record_from_wire` is the way back, for events read from
the store (backfill, replay, repair).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson

from .checksums import CHECKSUM_FUNCTIONS, unknown_algorithm
from .event_integrity import _hmac_hex
from .event_json import canonical_bytes_of, canonical_json, payload_keys_of
from .event_shapes import Category, EventDraft, EventRecord, slots_builder

__all__ = ["record_from_wire", "seal"]

_RecordBuilder: Final = slots_builder(EventRecord)

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
