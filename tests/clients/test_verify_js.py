"""clients/js/broadcaster-verify.js computes what the Python side computes:
the canonical bytes, CRC-32, CRC-32C, SHA-256 and the HMAC signature of
thousands of sealed events, tricky payloads included, in one Node process."""

from __future__ import annotations

import hmac
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import orjson

from broadcaster.checksums import CHECKSUM_FUNCTIONS
from broadcaster.event_integrity import SigningKey
from broadcaster.events import Category, EventFactory, EventRecord, seal
from tests.clients._node import REPO, node

SECRET = "signing-secret-é-0123456789"
KEY_ID = "k1"

STRINGS = [
    "",
    "plain",
    'a quote " and a \\ backslash',
    "tab\tnew\nline\rfeed\x0cbell\x07",
    "\x00\x01\x1f\x7f",
    "é",
    "日本語",
    "\u2028\u2029",
    "\ue000",
    "\uffff",
    "😀",
    "\U0010ffff",
    "</script>",
]
NUMBERS: list[Any] = [
    0,
    1,
    -1,
    255,
    2**31,
    2**53,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    0.0,
    -0.0,
    1.0,
    2.0,
    -2.5,
    100.0,
    0.1,
    1 / 3,
    1e-7,
    1e-5,
    0.0001,
    123456.789,
    1e15,
    1e16,
    1e21,
    1e22,
    1.5e300,
    5e-324,
    1.7976931348623157e308,
]
KEYS = ["a", "b", "B", "aa", "", "ä", "é", "\ue000", "\uffff", "😀", "\U0001f601", "key with space"]


def value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(6 if depth < 3 else 4)
    if kind == 0:
        return rng.choice(STRINGS)
    if kind == 1:
        return rng.choice(NUMBERS) if rng.random() < 0.7 else rng.uniform(-1e6, 1e6)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return rng.randrange(-(10**12), 10**12)
    if kind == 4:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return payload(rng, depth + 1)


def payload(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    return {rng.choice(KEYS): value(rng, depth) for _ in range(rng.randrange(6))}


def ambiguous(obj: Any) -> bool:
    """Whether JSON.parse loses what the canonical bytes need: an integral
    float (2.0 reads as 2) or an integer beyond 2**53."""
    if isinstance(obj, float):
        return obj.is_integer()
    if isinstance(obj, int) and not isinstance(obj, bool):
        return abs(obj) > 2**53
    if isinstance(obj, dict):
        return any(ambiguous(v) for v in obj.values())
    if isinstance(obj, list):
        return any(ambiguous(v) for v in obj)
    return False


def sealed_events(n: int) -> list[EventRecord]:
    rng = random.Random(29)
    key = SigningKey(KEY_ID, SECRET)
    factories = [
        EventFactory(checksums=dict.fromkeys(Category, algorithm), signing_key=key)  # type: ignore[arg-type]
        for algorithm in ("crc32", "crc32c", "sha256")
    ]
    records = []
    for seq in range(1, n + 1):
        factory = rng.choice(factories)
        draft = factory.draft(
            rng.choice(list(Category)),
            "order.created",
            payload(rng),
            key=rng.choice([None, "order-42", "clé 😀"]),
            source=rng.choice(["default", "web-7", "sürce"]),
        )
        records.append(seal(draft, seq * 7919))
    return records


def test_the_js_helper_agrees_with_python_on_every_event(tmp_path: Path) -> None:
    records = sealed_events(1000)
    # One more, changed after sealing: its checksum no longer holds.
    tampered = orjson.loads(records[0].wire)
    tampered["payload"] = {"changed": True}
    wires = [r.wire for r in records] + [orjson.dumps(tampered)]
    data = tmp_path / "events.json"
    data.write_bytes(
        b'{"events":[' + b",".join(wires) + b'],"keys":' + orjson.dumps({KEY_ID: SECRET}) + b"}"
    )
    done = subprocess.run(
        [node(), str(REPO / "tests" / "clients" / "check_events.mjs"), str(data)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    results = json.loads(done.stdout)
    assert len(results) == len(records) + 1
    secret = SECRET.encode()
    plain_differs = 0
    for record, got in zip(records, results, strict=False):
        canonical = record.canonical
        assert got["canonical"].encode() == canonical, record.wire
        assert got["crc32"] == CHECKSUM_FUNCTIONS["crc32"](canonical)
        assert got["crc32c"] == CHECKSUM_FUNCTIONS["crc32c"](canonical)
        assert got["sha256"] == CHECKSUM_FUNCTIONS["sha256"](canonical)
        assert got["hmac"] == hmac.digest(secret, canonical, "sha256").hex()
        assert (got["ok"], got["signature"]) == (True, None), record.wire
        # Without the numbers' text (JSON.parse), only the ambiguous differ.
        if ambiguous(orjson.loads(record.wire)):
            plain_differs += got["plain"].encode() != canonical
        else:
            assert got["plain"].encode() == canonical, record.wire
    assert plain_differs > 0  # the reason parseJson exists
    last = results[-1]
    assert (last["ok"], last["signature"]) == (False, "signature does not match (key id 'k1')")
