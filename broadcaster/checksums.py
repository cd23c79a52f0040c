"""Event checksums: CRC-32, CRC-32C and SHA-256 over an event's canonical bytes.

Pure functions, no I/O. The CRC-32 used on the hot path is :func:`zlib.crc32`;
``tests/test_checksums.py`` proves it bit-identical to crcmod's predefined
``crc-32`` (the reference named by the spec), which is several times slower.
CRC-32C has no stdlib implementation and comes from crcmod's predefined
``crc-32c`` (its C extension).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from typing import Final, Literal, get_args

import crcmod.predefined

__all__ = [
    "ALGORITHMS",
    "ChecksumAlgorithm",
    "compute_checksum",
    "crc32_reference",
    "crc32c",
]

ChecksumAlgorithm = Literal["crc32", "crc32c", "sha256"]
ALGORITHMS: Final[tuple[ChecksumAlgorithm, ...]] = get_args(ChecksumAlgorithm)

#: crcmod's predefined CRC-32 (reflected 0x04C11DB7, init/xor-out 0xFFFFFFFF):
#: the reference implementation that zlib.crc32 must agree with.
crc32_reference: Final[Callable[[bytes], int]] = crcmod.predefined.mkPredefinedCrcFun("crc-32")
#: CRC-32C (Castagnoli).
crc32c: Final[Callable[[bytes], int]] = crcmod.predefined.mkPredefinedCrcFun("crc-32c")


def _crc32_hex(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def _crc32c_hex(data: bytes) -> str:
    return f"{crc32c(data):08x}"


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_FUNCTIONS: Final[dict[str, Callable[[bytes], str]]] = {
    "crc32": _crc32_hex,
    "crc32c": _crc32c_hex,
    "sha256": _sha256_hex,
}


def compute_checksum(algorithm: str, data: bytes) -> str:
    """Lowercase hex checksum of ``data`` (8 hex chars for CRCs, 64 for SHA-256).

    Raises ``ValueError`` for an unknown algorithm.
    """
    try:
        function = _FUNCTIONS[algorithm]
    except KeyError:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}"
        ) from None
    return function(data)
