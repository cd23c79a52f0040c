"""Event checksums: CRC-32, CRC-32C and SHA-256 over an event's canonical bytes.

Pure functions, no I/O. The CRC-32 used on the hot path is ISA-L's
(``isal.isal_zlib.crc32``, carry-less multiply on x86-64 and ARM: several
times faster than :func:`zlib.crc32` and crcmod on an event's size);
``tests/test_checksums.py`` proves it bit-identical to
:func:`zlib.crc32` and to crcmod's predefined ``crc-32`` (the reference named
by the spec).
CRC-32C has no stdlib implementation and comes from crcmod's predefined
``crc-32c`` (its C extension).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Final, Literal, get_args

import crcmod.predefined
from isal.isal_zlib import crc32 as _crc32

__all__ = [
    "ALGORITHMS",
    "CHECKSUM_FUNCTIONS",
    "ChecksumAlgorithm",
    "compute_checksum",
    "crc32_reference",
    "crc32c",
    "unknown_algorithm",
]

ChecksumAlgorithm = Literal["crc32", "crc32c", "sha256"]
ALGORITHMS: Final[tuple[ChecksumAlgorithm, ...]] = get_args(ChecksumAlgorithm)

#: crcmod's predefined CRC-32 (reflected 0x04C11DB7, init/xor-out 0xFFFFFFFF):
#: the reference implementation that the hot path's CRC-32 must agree with.
crc32_reference: Final[Callable[[bytes], int]] = crcmod.predefined.mkPredefinedCrcFun("crc-32")
#: CRC-32C (Castagnoli).
crc32c: Final[Callable[[bytes], int]] = crcmod.predefined.mkPredefinedCrcFun("crc-32c")


def _crc32_hex(data: bytes) -> str:
    return _crc32(data).to_bytes(4).hex()


def _crc32c_hex(data: bytes) -> str:
    return crc32c(data).to_bytes(4).hex()


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Each algorithm's function from bytes to its lowercase hex checksum, for
#: callers that look the function up themselves on a hot path.
CHECKSUM_FUNCTIONS: Final[Mapping[str, Callable[[bytes], str]]] = {
    "crc32": _crc32_hex,
    "crc32c": _crc32c_hex,
    "sha256": _sha256_hex,
}


def unknown_algorithm(algorithm: str) -> ValueError:
    """The error for an algorithm not in :data:`ALGORITHMS`."""
    return ValueError(
        f"unknown checksum algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
    )


def compute_checksum(algorithm: str, data: bytes) -> str:
    """Lowercase hex checksum of ``data`` (8 hex chars for CRCs, 64 for SHA-256).

    Raises ``ValueError`` for an unknown algorithm.
    """
    try:
        function = CHECKSUM_FUNCTIONS[algorithm]
    except KeyError:
        raise unknown_algorithm(algorithm) from None
    return function(data)
