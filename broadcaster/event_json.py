"""Event JSON: canonical JSON text, and the checks a payload passes before it
is encoded once (plain JSON values only, valid Unicode, within the size limit).

Pure code: values in, values out, no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from .exceptions import FrameError, InvalidEvent

__all__ = ["canonical_bytes_of", "canonical_json", "payload_keys_of"]

_isfinite: Final = math.isfinite
# Where orjson's float text can differ from json's (see canonical_json).
_SMALL_FLOAT_RE: Final = re.compile(rb"[0-9]e-|0\.0000").search
# The substrings every match of _SMALL_FLOAT_RE contains, one per branch, as
# literal-prefix searches: re finds a literal faster than ``bytes in
# bytes`` on an event's canonical bytes. Not
# ".0000": common floats such as 2.00001 contain it and would take the regex.
_E_MINUS: Final = re.compile(rb"e-").search
_ZERO_POINT_ZEROS: Final = re.compile(rb"0\.0000").search


def _small_float_text(encoded: bytes) -> bool:
    """Whether orjson's ``encoded`` may hold a float json writes differently
    (whether ``_SMALL_FLOAT_RE`` matches it).

    Two literal searches rule out most texts before the regex, which has no
    literal prefix to skip ahead with (much slower on an event's canonical
    bytes)."""
    return (
        _E_MINUS(encoded) is not None or _ZERO_POINT_ZEROS(encoded) is not None
    ) and _SMALL_FLOAT_RE(encoded) is not None


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
        # in the same order (so the same first missing field), cheaper than
        # the comprehension. tests/test_events.py pins the two together.
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
