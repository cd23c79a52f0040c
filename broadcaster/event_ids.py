"""Event identity: monotonic ULIDs and the wire's timestamp text.

Pure code: values in, values out; the clock is the caller's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Final

__all__ = ["UlidGenerator", "format_timestamp"]

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two base32 digits per lookup: 10 bits -> 2 chars.
_PAIRS: Final = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)
_RANDOM_MAX: Final = (1 << 80) - 1


def _base32_10(value: int) -> str:
    """The low 50 bits of ``value`` as 10 Crockford base32 characters."""
    pairs = _PAIRS
    return (
        pairs[value >> 40 & 0x3FF]
        + pairs[value >> 30 & 0x3FF]
        + pairs[value >> 20 & 0x3FF]
        + pairs[value >> 10 & 0x3FF]
        + pairs[value & 0x3FF]
    )


def _base32_12(value: int) -> str:
    """The low 60 bits of ``value`` as 12 Crockford base32 characters."""
    return _PAIRS[value >> 50 & 0x3FF] + _base32_10(value)


def _urandom_80() -> int:
    return int.from_bytes(os.urandom(10))


class UlidGenerator:
    """Monotonic ULIDs: 48-bit millisecond time + 80 random bits.

    Within one millisecond the random part is incremented, so ids sort in
    creation order within a process (the ULID spec's monotonic mode). If the
    clock steps back, the last timestamp is kept, so order still holds.
    python-ulid parses and validates these (see the tests); it has no
    monotonic generator and its ``str()`` costs too much per event.

    The text is cached up to the random part's low 20 bits, so an id within
    the same millisecond costs two table lookups; the cache is rebuilt when
    the millisecond changes or an increment carries past those 20 bits.
    """

    __slots__ = ("_high", "_last_ms", "_last_random", "_prefix", "_random", "_time_text")

    def __init__(self, random_bits: Callable[[], int] | None = None) -> None:
        self._random = random_bits or _urandom_80
        self._last_ms = -1
        self._last_random = 0
        self._time_text = ""
        #: ``_time_text`` + the random part above its low 20 bits, as text.
        self._prefix = ""
        self._high = -1

    def __call__(self, now_ms: int) -> str:
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._time_text = _base32_10(now_ms)
            self._high = -1
            # Leave headroom so increments within the millisecond cannot overflow.
            value = self._random() >> 1
        else:
            value = self._last_random + 1
            if value > _RANDOM_MAX:  # pragma: no cover - needs 2**79 ids in 1 ms
                raise OverflowError("ULID random part overflowed within one millisecond")
        self._last_random = value
        high = value >> 20
        if high != self._high:
            self._high = high
            self._prefix = self._time_text + _base32_12(high)
        return self._prefix + _PAIRS[(value >> 10) & 0x3FF] + _PAIRS[value & 0x3FF]


def format_timestamp(epoch_ms: int) -> str:
    """UTC ISO-8601 with milliseconds and ``Z`` (``YYYY-MM-DDTHH:MM:SS.mmmZ``)."""
    seconds, ms = divmod(epoch_ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
