"""Checksums (SPEC 2): the hot path's CRC-32 (ISA-L) is bit-identical to zlib's
and to crcmod's reference, CRC-32C and SHA-256 match independent
implementations, formats are fixed."""

from __future__ import annotations

import hashlib
import re
import zlib

import crcmod.predefined
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.checksums import (
    ALGORITHMS,
    CHECKSUM_FUNCTIONS,
    compute_checksum,
    crc32_reference,
    crc32c,
    unknown_algorithm,
)

# An independent CRC-32C built from the published parameters, not crcmod's
# predefined table: poly 0x1EDC6F41 (reflected), init/xor-out 0xFFFFFFFF.
_crc32c_from_params = crcmod.mkCrcFun(0x11EDC6F41, initCrc=0, rev=True, xorOut=0xFFFFFFFF)


def _bitwise_crc32(data: bytes) -> int:
    """Textbook reflected CRC-32 (poly 0xEDB88320): a third, table-free opinion."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@given(st.binary(max_size=2048))
def test_crc32_equals_zlib_and_crcmod_reference(data: bytes) -> None:
    assert zlib.crc32(data) == crc32_reference(data)
    assert compute_checksum("crc32", data) == f"{crc32_reference(data):08x}"


def test_crc32_agrees_with_zlib_at_every_length_the_simd_code_splits() -> None:
    """ISA-L folds 16/64/256-byte blocks with carry-less multiplies and finishes
    the rest byte-wise: every length up to 1 100 and some large ones, so each
    block size meets each remainder."""
    blob = bytes((i * 131 + 7) % 256 for i in range(70_000))
    for n in [*range(1101), 4095, 4096, 4097, 65_535, 65_536, 70_000]:
        assert compute_checksum("crc32", blob[:n]) == f"{zlib.crc32(blob[:n]):08x}", n


@given(st.binary(max_size=256))
def test_crc32_equals_bitwise_definition(data: bytes) -> None:
    assert compute_checksum("crc32", data) == f"{_bitwise_crc32(data):08x}"


@given(st.binary(max_size=2048))
def test_crc32c_equals_parameterised_crcmod(data: bytes) -> None:
    assert crc32c(data) == _crc32c_from_params(data)
    assert compute_checksum("crc32c", data) == f"{_crc32c_from_params(data):08x}"


@given(st.binary(max_size=2048))
def test_sha256_equals_hashlib(data: bytes) -> None:
    assert compute_checksum("sha256", data) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("algorithm", "data", "expected"),
    [
        # The standard check values of each algorithm over b"123456789".
        ("crc32", b"123456789", "cbf43926"),
        ("crc32c", b"123456789", "e3069283"),
        (
            "sha256",
            b"123456789",
            "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225",
        ),
        ("crc32", b"", "00000000"),
        ("crc32c", b"", "00000000"),
        ("sha256", b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        # One byte: catches a byte-order or reflection mistake.
        ("crc32", b"a", "e8b7be43"),
        ("crc32c", b"a", "c1d04330"),
    ],
)
def test_known_vectors(algorithm: str, data: bytes, expected: str) -> None:
    assert compute_checksum(algorithm, data) == expected


def test_reference_functions_known_vectors() -> None:
    assert crc32_reference(b"123456789") == 0xCBF43926
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize(("algorithm", "length"), [("crc32", 8), ("crc32c", 8), ("sha256", 64)])
@given(data=st.binary(max_size=512))
def test_lowercase_hex_of_fixed_length(algorithm: str, length: int, data: bytes) -> None:
    value = compute_checksum(algorithm, data)
    assert len(value) == length
    assert re.fullmatch(r"[0-9a-f]+", value)


def test_small_crc_is_zero_padded() -> None:
    # Find an input whose CRC has a leading zero nibble; the hex must keep it.
    data = next(
        bytes([i, j]) for i in range(256) for j in range(256) if zlib.crc32(bytes([i, j])) < 1 << 28
    )
    value = compute_checksum("crc32", data)
    assert len(value) == 8 and value.startswith("0")


def test_algorithms_are_the_spec_set() -> None:
    assert set(ALGORITHMS) == {"crc32", "crc32c", "sha256"}


@pytest.mark.parametrize("name", ["md5", "CRC32", "sha-256", "", "crc-32"])
def test_unknown_algorithm_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="unknown checksum algorithm") as info:
        compute_checksum(name, b"x")
    assert repr(name) in str(info.value)


@given(st.binary(max_size=512))
def test_checksum_functions_are_compute_checksum(data: bytes) -> None:
    assert set(CHECKSUM_FUNCTIONS) == set(ALGORITHMS)
    for algorithm, function in CHECKSUM_FUNCTIONS.items():
        assert function(data) == compute_checksum(algorithm, data)


def test_unknown_algorithm_error_names_it_and_the_choices() -> None:
    error = unknown_algorithm("md5")
    assert isinstance(error, ValueError)
    assert str(error) == "unknown checksum algorithm 'md5'; expected one of crc32, crc32c, sha256"
