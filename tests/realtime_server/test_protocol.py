"""Phoenix frames of both protocol versions, as Supabase's server reads and
writes them (pure: no socket)."""

from __future__ import annotations

import struct

import orjson
import pytest

from broadcaster.realtime_server.protocol import (
    VSN_1,
    VSN_2,
    Malformed,
    UserBroadcast,
    Wire,
    decode,
    encode_broadcast,
    encode_push,
    encode_reply,
    encode_user_broadcast,
    negotiate,
)

TOPIC = "realtime:events:critical"
ARRAY_EXPECTED = "expected a JSON array [join_ref, ref, topic, event, payload]"


def says(result: object, reason: str) -> bool:
    """``result`` is a refusal whose reason is ``reason`` (and, for a JSON
    error, the parser's own words after it)."""
    return isinstance(result, Malformed) and (
        result.reason == reason or result.reason.startswith(reason + ": ")
    )


def user_broadcast_push(
    *,
    join_ref: str = "1",
    ref: str = "2",
    topic: str = TOPIC,
    event: str = "events",
    metadata: bytes = b"",
    encoding: int = 1,
    payload: bytes = b'{"events":[]}',
) -> bytes:
    """A kind-3 frame laid out as realtime-js's serializer writes it."""
    fields = [join_ref.encode(), ref.encode(), topic.encode(), event.encode(), metadata]
    header = bytes([3, *(len(f) for f in fields), encoding])
    return header + b"".join(fields) + payload


@pytest.mark.parametrize(
    ("asked", "speaks"),
    [
        (None, VSN_1),
        ("1.0.0", VSN_1),
        ("1.0.7", VSN_1),
        ("2.0.0", VSN_2),
        ("2.0.1", VSN_2),
        ("1.1.0", None),
        ("2.1.0", None),
        ("3.0.0", None),
        ("2.0", None),
        ("latest", None),
    ],
)
def test_the_version_is_negotiated_as_phoenix_matches_it(
    asked: str | None, speaks: str | None
) -> None:
    assert negotiate(asked) == speaks


def test_a_1_0_0_frame_is_a_json_object() -> None:
    frame = '{"topic":"t","event":"e","payload":{"a":1},"ref":"3","join_ref":"1"}'
    assert decode(frame, VSN_1) == {
        "topic": "t",
        "event": "e",
        "payload": {"a": 1},
        "ref": "3",
        "join_ref": "1",
    }
    # A binary frame holding the same JSON reads the same (Phoenix's V1 does).
    assert decode(frame.encode(), VSN_1) == decode(frame, VSN_1)
    # No payload is an empty one; integer refs pass.
    assert decode('{"topic":"t","event":"e","ref":4}', VSN_1) == {
        "topic": "t",
        "event": "e",
        "payload": {},
        "ref": 4,
        "join_ref": None,
    }


def test_a_2_0_0_text_frame_is_a_json_array() -> None:
    frame = '["1","2","realtime:x","phx_join",{"config":{}},"extra"]'
    assert decode(frame, VSN_2) == {
        "topic": "realtime:x",
        "event": "phx_join",
        "payload": {"config": {}},
        "ref": "2",
        "join_ref": "1",
    }
    assert decode('[null,"5","phoenix","heartbeat",{}]', VSN_2) == {
        "topic": "phoenix",
        "event": "heartbeat",
        "payload": {},
        "ref": "5",
        "join_ref": None,
    }


@pytest.mark.parametrize(
    ("frame", "vsn", "reason"),
    [
        ("not json", VSN_1, "not JSON"),
        ("[1, 2, 3]", VSN_1, "a JSON list, not an object"),
        ('{"event": "heartbeat"}', VSN_1, "topic and event must be strings"),
        ('{"topic": "t", "event": "e", "payload": [1]}', VSN_1, "payload must be an object"),
        (
            '{"topic": "t", "event": "e", "ref": {"a": 1}}',
            VSN_1,
            "ref and join_ref must be strings or null",
        ),
        (
            '{"topic": "t", "event": "e", "join_ref": 1.5}',
            VSN_1,
            "ref and join_ref must be strings or null",
        ),
        ('{"topic": "t", "event": "e", "payload": {}}', VSN_2, ARRAY_EXPECTED),
        ('["1", "2", "t", "e"]', VSN_2, ARRAY_EXPECTED),
        ('["1", "2", "t", 5, {}]', VSN_2, "topic and event must be strings"),
        ("[", VSN_2, "not JSON"),
    ],
)
def test_malformed_text_frames_say_why(frame: str, vsn: str, reason: str) -> None:
    result = decode(frame, vsn)  # type: ignore[arg-type]
    assert says(result, reason), result


def test_a_user_broadcast_push_is_read_as_a_broadcast() -> None:
    payload = b'{"events":[{"sequence_id":1,"payload":{"\xc3\xa9":1.0}}]}'
    msg = decode(user_broadcast_push(payload=payload, metadata=b'{"persist":true}'), VSN_2)
    assert msg == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": {
            "type": "broadcast",
            "event": "events",
            "payload": {"events": [{"sequence_id": 1, "payload": {"é": 1.0}}]},
        },
        "ref": "2",
        "join_ref": "1",
        "user_broadcast": UserBroadcast("events", payload, True, {"persist": True}),
    }


def test_a_binary_user_payload_is_kept_as_bytes() -> None:
    msg = decode(user_broadcast_push(encoding=0, payload=b"\x00\xff", ref="", join_ref=""), VSN_2)
    assert not isinstance(msg, Malformed)
    assert msg["payload"] == {"type": "broadcast", "event": "events"}
    assert msg["user_broadcast"] == UserBroadcast("events", b"\x00\xff", False, None)
    assert msg["ref"] is None and msg["join_ref"] is None


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "an empty binary frame"),
        (b"\x00\x01\x01\x01\x01x", "binary frame of kind 0: only user broadcast pushes are read"),
        (b"\x04\x00", "binary frame of kind 4: only user broadcast pushes are read"),
        (b"\x03\x00\x00", "user broadcast push shorter than its header"),
        (b"\x03\x00\x00\x00\x00\x00", "user broadcast push shorter than its header"),
        (
            b"\x03\x00\x00\x09\x00\x00\x01realtime",
            "user broadcast push shorter than its header says",
        ),
        (bytes([3, 0, 0, 1, 1, 0, 1]) + b"\xffe{}", "user broadcast push header is not UTF-8"),
        (user_broadcast_push(metadata=b"{nope"), "user broadcast push metadata is not JSON"),
        (user_broadcast_push(payload=b"{nope"), "user broadcast push payload is not JSON"),
    ],
)
def test_malformed_binary_frames_say_why(frame: bytes, reason: str) -> None:
    result = decode(frame, VSN_2)
    assert says(result, reason), result


def test_a_user_broadcast_push_of_its_header_alone_is_an_empty_broadcast() -> None:
    """Seven bytes: the kind, five empty field sizes, binary encoding."""
    msg = decode(bytes([3, 0, 0, 0, 0, 0, 0]), VSN_2)
    assert not isinstance(msg, Malformed)
    assert msg["user_broadcast"] == UserBroadcast("", b"", False, None)


def test_replies_follow_the_clients_version() -> None:
    msg = {"topic": "realtime:x", "event": "phx_join", "payload": {}, "ref": "2", "join_ref": "1"}
    v1 = encode_reply(VSN_1, msg, "ok", {"postgres_changes": []})
    v2 = encode_reply(VSN_2, msg, "error", {"reason": "no"})
    assert v1.text and v2.text
    assert orjson.loads(v1.data) == {
        "topic": "realtime:x",
        "event": "phx_reply",
        "payload": {"status": "ok", "response": {"postgres_changes": []}},
        "ref": "2",
    }
    assert orjson.loads(v2.data) == [
        "1",
        "2",
        "realtime:x",
        "phx_reply",
        {"status": "error", "response": {"reason": "no"}},
    ]


def test_pushes_and_json_broadcasts_follow_the_clients_version() -> None:
    close1 = encode_push(VSN_1, TOPIC, "phx_close", {}, join_ref="1", ref="1")
    close2 = encode_push(VSN_2, TOPIC, "phx_close", {}, join_ref="1", ref="1")
    assert orjson.loads(close1.data) == {
        "topic": TOPIC,
        "event": "phx_close",
        "payload": {},
        "ref": "1",
    }
    assert orjson.loads(close2.data) == ["1", "1", TOPIC, "phx_close", {}]
    body = {"type": "broadcast", "event": "events", "payload": {"events": []}}
    assert orjson.loads(encode_broadcast(VSN_1, TOPIC, body).data) == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": body,
        "ref": None,
    }
    assert orjson.loads(encode_broadcast(VSN_2, TOPIC, body).data) == [
        None,
        None,
        TOPIC,
        "broadcast",
        body,
    ]


def test_a_user_broadcast_reaches_2_0_0_in_binary_and_1_0_0_as_json() -> None:
    sent = UserBroadcast("évents", b'{"events":[1.0]}', True)
    wire = encode_user_broadcast(VSN_2, TOPIC, sent)
    assert wire is not None and not wire.text
    kind, topic_size, event_size, meta_size, encoding = struct.unpack_from("5B", wire.data)
    assert (kind, topic_size, event_size, meta_size, encoding) == (4, len(TOPIC), 7, 0, 1)
    assert wire.data[5:] == TOPIC.encode() + "évents".encode() + b'{"events":[1.0]}'
    v1 = encode_user_broadcast(VSN_1, TOPIC, sent)
    assert v1 is not None and v1.text
    # The bytes as sent, not re-encoded (1.0 stays 1.0).
    assert b'"payload":{"events":[1.0]}' in v1.data
    assert orjson.loads(v1.data) == {
        "topic": TOPIC,
        "event": "broadcast",
        "payload": {"event": "évents", "payload": {"events": [1.0]}, "type": "broadcast"},
        "ref": None,
    }
    opaque = UserBroadcast("blob", b"\x00\x01", False)
    assert encode_user_broadcast(VSN_1, TOPIC, opaque) is None  # 1.0.0 cannot carry bytes
    assert encode_user_broadcast(VSN_2, TOPIC, opaque) == Wire(
        bytes([4, len(TOPIC), 4, 0, 0]) + TOPIC.encode() + b"blob\x00\x01", False
    )
    with pytest.raises(ValueError, match="255 bytes"):
        encode_user_broadcast(VSN_2, "realtime:" + "x" * 250, opaque)


def test_topic_and_event_names_of_255_bytes_fit_a_binary_frame_and_256_do_not() -> None:
    blob = UserBroadcast("e" * 255, b"\x00", False)
    wire = encode_user_broadcast(VSN_2, "t" * 255, blob)
    assert wire is not None and wire.data[1:3] == bytes([255, 255])
    refusal = "^topic and event names are at most 255 bytes in a binary frame$"
    with pytest.raises(ValueError, match=refusal):
        encode_user_broadcast(VSN_2, "t" * 256, blob)
    with pytest.raises(ValueError, match=refusal):
        encode_user_broadcast(VSN_2, "t", UserBroadcast("e" * 256, b"\x00", False))


def test_pushes_are_text_frames_in_both_versions() -> None:
    for vsn in (VSN_1, VSN_2):
        assert encode_push(vsn, TOPIC, "system", {}, join_ref=None).text is True
