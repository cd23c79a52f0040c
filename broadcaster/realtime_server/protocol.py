"""Phoenix channel frames as Supabase's Realtime server reads and writes them.

A connection speaks one of two serializers, chosen by the ``vsn`` query
parameter of its WebSocket URL (absent: ``1.0.0``), as Phoenix negotiates them
in ``Phoenix.Socket.__connect__``; Supabase's endpoint offers
``Phoenix.Socket.V1.JSONSerializer`` for ``~> 1.0.0`` and its own
``RealtimeWeb.Socket.V2Serializer`` for ``~> 2.0.0``
(``lib/realtime_web/endpoint.ex``):

* ``1.0.0`` (the Python client): a frame is a JSON object ``{topic, event,
  payload, ref, join_ref}``. The server writes only ``topic``, ``event``,
  ``payload`` and ``ref``, as Phoenix's V1 serializer does.
* ``2.0.0`` (``@supabase/realtime-js``): a text frame is a JSON array
  ``[join_ref, ref, topic, event, payload]``. A broadcast whose payload has an
  ``event`` name comes as a binary "user broadcast push" (kind 3), and a user
  broadcast goes out to 2.0.0 subscribers as a binary "user broadcast"
  (kind 4), as ``lib/realtime_web/socket/v2_serializer.ex`` frames them; to
  1.0.0 subscribers as a JSON broadcast (``UserBroadcast.convert_to_json_broadcast``
  in ``lib/realtime_web/socket/user_broadcast.ex``).

A decoded frame is a :data:`Message`: a dict with ``topic``, ``event``,
``payload`` (a dict), ``ref`` and ``join_ref``; a user broadcast push also
carries its :class:`UserBroadcast` under ``"user_broadcast"``. Pure: values in,
values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import orjson

__all__ = [
    "VSN_1",
    "VSN_2",
    "Malformed",
    "Message",
    "UserBroadcast",
    "Vsn",
    "Wire",
    "decode",
    "encode_broadcast",
    "encode_push",
    "encode_reply",
    "encode_user_broadcast",
    "negotiate",
]

Vsn = Literal["1.0.0", "2.0.0"]
VSN_1: Final[Vsn] = "1.0.0"
VSN_2: Final[Vsn] = "2.0.0"

Message = dict[str, Any]

#: Binary frame kinds of the 2.0.0 serializer.
_USER_BROADCAST_PUSH: Final = 3
_USER_BROADCAST: Final = 4
#: Payload encodings of a user broadcast.
_BINARY_ENCODING: Final = 0
_JSON_ENCODING: Final = 1
#: Length prefixes are one byte.
_MAX_FIELD_BYTES: Final = 255

_VERSION: Final = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def negotiate(vsn: str | None) -> Vsn | None:
    """The serializer for a client asking for ``vsn`` (None: ``1.0.0``), or
    None when the server has none for it; Phoenix then refuses the handshake
    with HTTP 403. ``~> 1.0.0`` matches any ``1.0.x``, ``~> 2.0.0`` any ``2.0.x``."""
    match = _VERSION.fullmatch(VSN_1 if vsn is None else vsn)
    if match is None:
        return None
    major, minor = int(match[1]), int(match[2])
    if (major, minor) == (1, 0):
        return VSN_1
    if (major, minor) == (2, 0):
        return VSN_2
    return None


@dataclass(frozen=True, slots=True)
class UserBroadcast:
    """A broadcast framed in binary: the user's event name, its payload bytes
    as sent, and whether those bytes are JSON (else opaque binary)."""

    event: str
    payload: bytes
    json: bool
    #: The frame's metadata, decoded (None when it had none).
    metadata: object = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame the server cannot read, and why (logged, then ignored)."""

    reason: str


class Wire(NamedTuple):
    """One outgoing frame: its bytes, and whether it is a text frame."""

    data: bytes
    text: bool


def _ref(value: object) -> bool:
    return value is None or isinstance(value, str | int)


def _message(
    topic: object, event: object, payload: object, ref: object, join_ref: object
) -> Message | Malformed:
    if not isinstance(topic, str) or not isinstance(event, str):
        return Malformed("topic and event must be strings")
    if payload is None:
        payload = {}
    elif not isinstance(payload, dict):
        return Malformed("payload must be an object")
    if not _ref(ref) or not _ref(join_ref):
        return Malformed("ref and join_ref must be strings or null")
    return {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}


def decode(raw: str | bytes, vsn: Vsn) -> Message | Malformed:
    """The message in one frame from a client speaking ``vsn``: ``raw`` is a
    text frame's ``str`` or a binary frame's ``bytes``."""
    if vsn == VSN_2 and isinstance(raw, bytes):
        return _decode_binary(raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Malformed(f"not JSON: {exc}")
    if vsn == VSN_1:
        if not isinstance(obj, dict):
            return Malformed(f"a JSON {type(obj).__name__}, not an object")
        return _message(
            obj.get("topic"),
            obj.get("event"),
            obj.get("payload"),
            obj.get("ref"),
            obj.get("join_ref"),
        )
    if not isinstance(obj, list) or len(obj) < 5:
        return Malformed("expected a JSON array [join_ref, ref, topic, event, payload]")
    join_ref, ref, topic, event, payload = obj[:5]
    return _message(topic, event, payload, ref, join_ref)


def _decode_binary(raw: bytes) -> Message | Malformed:
    if not raw:
        return Malformed("an empty binary frame")
    if raw[0] != _USER_BROADCAST_PUSH:
        # Phoenix's generic binary push (kind 0) carries no user event name;
        # no Supabase client sends it.
        return Malformed(f"binary frame of kind {raw[0]}: only user broadcast pushes are read")
    if len(raw) < 7:
        return Malformed("user broadcast push shorter than its header")
    sizes = raw[1:6]
    encoding = raw[6]
    end = 7 + sum(sizes)
    if len(raw) < end:
        return Malformed("user broadcast push shorter than its header says")
    fields: list[str] = []
    at = 7
    for size in sizes:
        try:
            fields.append(raw[at : at + size].decode())
        except UnicodeDecodeError:
            return Malformed("user broadcast push header is not UTF-8")
        at += size
    join_ref, ref, topic, user_event, metadata = fields
    meta: object = None
    if metadata:
        try:
            meta = orjson.loads(metadata)
        except orjson.JSONDecodeError:
            return Malformed("user broadcast push metadata is not JSON")
    body = raw[end:]
    payload: Message = {"type": "broadcast", "event": user_event}
    if encoding != _BINARY_ENCODING:
        try:
            payload["payload"] = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Malformed("user broadcast push payload is not JSON")
    return {
        "topic": topic,
        "event": "broadcast",
        "payload": payload,
        "ref": ref or None,
        "join_ref": join_ref or None,
        "user_broadcast": UserBroadcast(user_event, body, encoding != _BINARY_ENCODING, meta),
    }


def _json(obj: object) -> bytes:
    return orjson.dumps(obj)


def encode_reply(vsn: Vsn, msg: Message, status: str, response: object) -> Wire:
    """The ``phx_reply`` to ``msg`` (a decoded client message)."""
    payload = {"status": status, "response": response}
    ref = msg.get("ref")
    if vsn == VSN_1:
        return Wire(
            _json({"topic": msg["topic"], "event": "phx_reply", "payload": payload, "ref": ref}),
            True,
        )
    return Wire(_json([msg.get("join_ref"), ref, msg["topic"], "phx_reply", payload]), True)


def encode_push(
    vsn: Vsn,
    topic: str,
    event: str,
    payload: object,
    *,
    join_ref: str | None,
    ref: str | None = None,
) -> Wire:
    """A message a channel pushes to its client (``system``, ``phx_close``, ...)."""
    if vsn == VSN_1:
        return Wire(_json({"topic": topic, "event": event, "payload": payload, "ref": ref}), True)
    return Wire(_json([join_ref, ref, topic, event, payload]), True)


def encode_broadcast(vsn: Vsn, topic: str, payload: Message) -> Wire:
    """A JSON broadcast as it reaches a subscriber."""
    return encode_push(vsn, topic, "broadcast", payload, join_ref=None)


def encode_user_broadcast(vsn: Vsn, topic: str, broadcast: UserBroadcast) -> Wire | None:
    """A binary-framed broadcast as it reaches a subscriber: binary (kind 4)
    for 2.0.0; for 1.0.0 a JSON broadcast whose payload is the bytes as sent,
    or None when they are not JSON (a 1.0.0 client cannot receive them).
    Raises ``ValueError`` for a topic or event name longer than a length
    prefix can hold."""
    if vsn == VSN_1:
        if not broadcast.json:
            return None
        head = _json({"topic": topic, "event": "broadcast"})[:-1]
        event = _json(broadcast.event)
        body = b'%b,"payload":{"event":%b,"payload":%b,"type":"broadcast"},"ref":null}' % (
            head,
            event,
            broadcast.payload,
        )
        return Wire(body, True)
    topic_bytes = topic.encode()
    event_bytes = broadcast.event.encode()
    if len(topic_bytes) > _MAX_FIELD_BYTES or len(event_bytes) > _MAX_FIELD_BYTES:
        raise ValueError("topic and event names are at most 255 bytes in a binary frame")
    encoding = _JSON_ENCODING if broadcast.json else _BINARY_ENCODING
    header = bytes([_USER_BROADCAST, len(topic_bytes), len(event_bytes), 0, encoding])
    return Wire(header + topic_bytes + event_bytes + broadcast.payload, False)
