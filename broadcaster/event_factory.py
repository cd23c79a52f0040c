"""From ``publish()`` input to an :class:`~broadcaster.event_shapes.EventDraft`.

Pure code; the clock is passed in. The producer calls :class:`EventFactory`
once per event before anything is stored: every field is checked here, so
bad input fails with :class:`~broadcaster.exceptions.InvalidEvent` naming the
field, and the draft carries its ULID, timestamp and payload encoded once.
:func:`~broadcaster.event_seal.seal` then gives it a sequence id.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Final

from .checksums import ALGORITHMS, ChecksumAlgorithm
from .event_ids import UlidGenerator, format_timestamp
from .event_integrity import SigningKey
from .event_json import _check_json_payload, _encodable, payload_keys_of
from .event_shapes import (
    DEFAULT_CHECKSUM,
    DEFAULT_EVENT_MAX_BYTES,
    MAX_KEY_LENGTH,
    MAX_SOURCE_LENGTH,
    Category,
    EventDraft,
    slots_builder,
)
from .exceptions import InvalidEvent

__all__ = ["EventFactory"]

_EVENT_TYPE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

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


_DraftBuilder: Final = slots_builder(EventDraft)

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
