"""``POST /receipts``: consumers in other processes report what they received
(docs/deploying.md), so reconciliation judges delivery wherever consumers run.

The body is a JSON list of at most :data:`MAX_RECEIPTS` receipts::

    {"sequence_id": 42, "adapter": "websocket", "checksum": "<hex>",
     "consumer": "web-7", "received_at": 1765100000123, "delivery": 1,
     "verified": true}

``received_at`` (epoch milliseconds) defaults to the time the service takes
the batch; ``delivery`` (default 1) is which delivery of the event to that
consumer this is, so a consumer that got an event twice says so;
``verified`` (default true) is the consumer's own verdict, false when it
refused the event (a bad signature on bytes whose checksum holds). Each
receipt is checked against the stored event: a checksum that differs, or a
consumer that did not verify it, is stored as a mismatch. Receipts of
events the store does not have are not stored; their sequence ids come back
in ``unknown``. Writing is idempotent per (consumer,
sequence id, adapter), so a client may re-post a batch it is unsure of.

This path takes tens of thousands of receipts a second, where building a
pydantic model per receipt would cost more than the write: a body is decoded
and checked in one pass by msgspec, and only a body it refuses is read again
by hand, to name the first bad field the way every other route does.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse

from ..routing import ADAPTER_NAMES
from ..store.base import Report

__all__ = ["MAX_RECEIPTS", "OPENAPI", "post_receipts"]

#: Most receipts one ``POST /receipts`` may carry.
MAX_RECEIPTS: Final = 10_000

_MAX_ID: Final = 2**63 - 1
_HEX: Final = re.compile(r"[0-9a-f]{1,128}")
_HEX_RUN: Final = re.compile(r"[0-9a-f]*")
_FIELDS: Final = frozenset(
    {"sequence_id", "adapter", "checksum", "consumer", "received_at", "delivery", "verified"}
)
_REQUIRED: Final = ("sequence_id", "adapter", "checksum", "consumer")

#: The request body, for the OpenAPI document (the handler parses it itself).
_RECEIPT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "additionalProperties": False,
    "required": list(_REQUIRED),
    "properties": {
        "sequence_id": {"type": "integer", "minimum": 1, "maximum": _MAX_ID},
        "adapter": {"type": "string", "enum": list(ADAPTER_NAMES)},
        "checksum": {"type": "string", "pattern": "^[0-9a-f]{1,128}$"},
        "consumer": {"type": "string", "minLength": 1, "maxLength": 128},
        "received_at": {"type": "integer", "minimum": 1, "maximum": _MAX_ID},
        "delivery": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "verified": {"type": "boolean"},
    },
}
#: The route's ``openapi_extra``: the body, described.
OPENAPI: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "maxItems": MAX_RECEIPTS, "items": _RECEIPT_SCHEMA}
            }
        },
    }
}


class _Report(msgspec.Struct, forbid_unknown_fields=True):
    """One receipt as the fast path decodes it: never looser than
    :func:`_receipt` (the consumer's printability is checked after)."""

    sequence_id: Annotated[int, msgspec.Meta(ge=1, le=_MAX_ID)]
    adapter: Literal["websocket", "realtime"]
    # Its digits are checked for the whole batch at once (see _fast): a
    # pattern here would run the regex engine once per receipt.
    checksum: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    consumer: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    received_at: Annotated[int, msgspec.Meta(ge=1, le=_MAX_ID)] | None = None
    delivery: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    verified: bool = True


_DECODE: Final = msgspec.json.Decoder(list[_Report]).decode


def _fast(body: bytes) -> list[_Report] | None:
    """The body's receipts, or None when anything in it is refused (then the
    slow path says what)."""
    try:
        reports = _DECODE(body)
    except msgspec.DecodeError:
        return None
    if len(reports) > MAX_RECEIPTS:
        return None
    if not all(c.isprintable() for c in {r.consumer for r in reports}):
        return None
    if not _HEX_RUN.fullmatch("".join([r.checksum for r in reports])):
        return None
    return reports


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _whole(value: object, field: str, least: int, most: int) -> int:
    if type(value) is not int or not least <= value <= most:
        raise _Invalid(field, f"must be a whole number from {least} to {most}")
    return value


def _receipt(index: int, item: object, now_ms: int) -> Report:
    """One receipt as (sequence_id, adapter, checksum, consumer, received_at_ms,
    delivery, verified); raises :class:`_Invalid` naming the field."""
    if not isinstance(item, dict):
        raise _Invalid(str(index), "must be an object")
    for name in _REQUIRED:
        if name not in item:
            raise _Invalid(f"{index}.{name}", "field required")
    if len(item) > len(_REQUIRED):
        extra = sorted(set(item) - _FIELDS)
        if extra:
            raise _Invalid(f"{index}.{extra[0]}", "unknown field")
    seq = _whole(item["sequence_id"], f"{index}.sequence_id", 1, _MAX_ID)
    adapter = item["adapter"]
    if adapter not in ADAPTER_NAMES:
        raise _Invalid(f"{index}.adapter", f"must be one of {', '.join(ADAPTER_NAMES)}")
    checksum = item["checksum"]
    if type(checksum) is not str or not _HEX.fullmatch(checksum):
        raise _Invalid(f"{index}.checksum", "must be 1-128 lowercase hex digits")
    consumer = item["consumer"]
    if type(consumer) is not str or not 0 < len(consumer) <= 128 or not consumer.isprintable():
        raise _Invalid(f"{index}.consumer", "must be 1-128 printable characters")
    received = item.get("received_at")
    received_ms = (
        now_ms if received is None else _whole(received, f"{index}.received_at", 1, _MAX_ID)
    )
    delivery = item.get("delivery")
    times = 1 if delivery is None else _whole(delivery, f"{index}.delivery", 1, 1_000_000)
    verified = item.get("verified", True)
    if type(verified) is not bool:
        raise _Invalid(f"{index}.verified", "must be true or false")
    return seq, adapter, checksum, consumer, received_ms, times, verified


def _unprocessable(field: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": [{"field": field, "message": message}]}, status_code=422)


def _slow(body: bytes, now_ms: int) -> list[Report] | JSONResponse:
    """The body read by hand: its receipts, or the 422 naming its first bad
    field. The rules are :func:`_receipt`'s; for the rare body the fast path
    refuses and these accept (a key repeated in an object), these decide."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _unprocessable("body", f"invalid JSON: {exc}")
    if not isinstance(data, list):
        return _unprocessable("body", "expected a list of receipts")
    if len(data) > MAX_RECEIPTS:
        return _unprocessable(
            "body", f"at most {MAX_RECEIPTS} receipts per request, got {len(data)}"
        )
    try:
        return [_receipt(i, item, now_ms) for i, item in enumerate(data)]
    except _Invalid as exc:
        return _unprocessable(exc.field, exc.message)


async def post_receipts(request: Request) -> Any:
    """Report receipts (a list of up to 10 000); answers how many were
    accepted, how many disagree with the stored checksum, and the sequence
    ids the store does not have (not stored)."""
    body = await request.body()
    now_ms = int(time.time() * 1000)
    reports = _fast(body)
    parsed: list[Report]
    if reports is None:
        slow = _slow(body, now_ms)
        if isinstance(slow, JSONResponse):
            return slow
        parsed = slow
    else:
        parsed = [
            (
                r.sequence_id,
                r.adapter,
                r.checksum,
                r.consumer,
                now_ms if r.received_at is None else r.received_at,
                1 if r.delivery is None else r.delivery,
                r.verified,
            )
            for r in reports
        ]
    outcome = await request.app.state.broadcaster.store.record_reports(parsed)
    return {
        "accepted": outcome.accepted,
        "mismatches": outcome.mismatches,
        "unknown": outcome.unknown,
    }
