"""The envelope: exact round trips, and nothing but CorruptEntryError on bad bytes."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiercache._envelope import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    MAX_VERSION,
    VERSION_OFFSET,
    Envelope,
    decode,
    encode,
    peek_version,
)
from tiercache._exceptions import CorruptEntryError

I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

envelopes = st.builds(
    Envelope,
    serializer_id=st.integers(0, 255),
    schema_version=st.integers(0, 2**16 - 1),
    version=st.integers(0, MAX_VERSION),
    flags=st.integers(0, 255),
    writer=st.integers(0, 2**64 - 1),
    created_ms=I64,
    updated_ms=I64,
    expires_ms=I64,
    payload=st.binary(max_size=200),
)


@given(envelopes)
def test_round_trip(envelope: Envelope) -> None:
    data = encode(envelope)
    assert len(data) == HEADER_SIZE + len(envelope.payload) + 4
    assert data[:2] == MAGIC and data[2] == FORMAT_VERSION
    out = decode(data)
    assert out == envelope and type(out.payload) is bytes
    assert peek_version(data) == envelope.version
    assert struct.unpack_from("<Q", data, VERSION_OFFSET)[0] == envelope.version
    assert decode(bytearray(data)) == decode(memoryview(data)) == envelope


def test_expires_at() -> None:
    e = Envelope(1, 0, 1, 0, 0, 0, b"")
    assert e.expires_at() is None
    assert dataclasses.replace(e, expires_ms=1500).expires_at() == 1.5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("serializer_id", -1),
        ("serializer_id", 256),
        ("schema_version", -1),
        ("schema_version", 2**16),
        ("version", -1),
        ("version", MAX_VERSION + 1),
        ("version", 2**64),
        ("flags", 256),
        ("writer", 2**64),
        ("created_ms", 2**63),
        ("updated_ms", -(2**63) - 1),
        ("expires_ms", 2**64),
    ],
)
def test_encode_rejects_out_of_range_fields(field: str, value: int) -> None:
    e = dataclasses.replace(Envelope(1, 0, 1, 0, 0, 0, b"x"), **{field: value})
    with pytest.raises(ValueError, match=field.split("_")[0]):
        encode(e)


@pytest.mark.parametrize("data", [b"", b"TC", b"XX" + b"\0" * 60, "TC" + "x" * 60])
def test_peek_version_rejects_non_envelopes(data: Any) -> None:
    with pytest.raises(CorruptEntryError):
        peek_version(data)


@pytest.mark.parametrize("data", [None, "str", 42, [1, 2]])
def test_decode_rejects_non_bytes(data: Any) -> None:
    with pytest.raises(CorruptEntryError):
        decode(data)


@given(st.binary(max_size=120))
def test_random_bytes_only_raise_corrupt(data: bytes) -> None:
    try:
        decode(data)
    except CorruptEntryError:
        return
    # only a well-formed envelope may decode: check it by hand
    assert data[:2] == MAGIC and data[2] == FORMAT_VERSION
    assert zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]


@given(
    st.binary(min_size=HEADER_SIZE + 4, max_size=HEADER_SIZE + 60).map(
        lambda b: MAGIC + bytes([FORMAT_VERSION]) + b[3:]
    )
)
def test_random_bytes_behind_a_valid_magic_only_raise_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        decode(data)  # the length or the CRC gives it away (2**-32 chance aside)


@given(envelopes, st.integers(0, 10_000), st.integers(1, 255))
def test_any_single_byte_change_is_caught(envelope: Envelope, pos: int, xor: int) -> None:
    data = bytearray(encode(envelope))
    data[pos % len(data)] ^= xor
    with pytest.raises(CorruptEntryError):  # CRC-32 catches every burst <= 32 bits
        decode(bytes(data))


@given(envelopes, st.data())
def test_mutated_envelopes_never_decode_to_a_wrong_payload(
    envelope: Envelope, data: st.DataObject
) -> None:
    original = encode(envelope)
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(
            st.sampled_from(["flip", "truncate", "extend", "insert", "magic", "format", "length"])
        )
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "extend":
            raw += data.draw(st.binary(min_size=1, max_size=8))
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "magic" and len(raw) >= 2:
            raw[0:2] = data.draw(st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC))
        elif op == "format" and len(raw) >= 3:
            raw[2] = data.draw(st.integers(0, 255).filter(lambda v: v != FORMAT_VERSION))
        elif op == "length" and len(raw) >= 44:
            raw[40:44] = struct.pack("<I", data.draw(st.integers(0, 2**32 - 1)))
    mutated = bytes(raw)
    try:
        out = decode(mutated)
    except CorruptEntryError:
        return
    # It decoded: then its CRC really matches (a mutation that happens to
    # produce a valid envelope, e.g. the original itself), never a wrong one.
    body, (crc,) = mutated[:-4], struct.unpack("<I", mutated[-4:])
    assert zlib.crc32(body) == crc
    assert mutated == original or out.payload == mutated[HEADER_SIZE:-4]


def test_foreign_and_future_envelopes() -> None:
    data = bytearray(encode(Envelope(1, 0, 7, 0, 0, 0, b"abc")))
    data[2] = FORMAT_VERSION + 1
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))  # valid CRC, future format
    with pytest.raises(CorruptEntryError, match="format version"):
        decode(bytes(data))
    data[0:2] = b"XX"
    with pytest.raises(CorruptEntryError, match="magic"):
        decode(bytes(data))


def _format1(e: Envelope) -> bytes:
    """Bytes as format 1 (no writer tag) wrote them."""
    head = struct.pack(
        "<2sBBBxHQqqqI",
        MAGIC,
        1,
        e.serializer_id,
        e.flags,
        e.schema_version,
        e.version,
        e.created_ms,
        e.updated_ms,
        e.expires_ms,
        len(e.payload),
    )
    return head + e.payload + struct.pack("<I", zlib.crc32(head + e.payload))


@given(envelopes)
def test_format_1_entries_stay_readable(envelope: Envelope) -> None:
    old = dataclasses.replace(envelope, writer=0)
    data = _format1(old)
    assert decode(data) == old
    assert peek_version(data) == old.version


def test_versions_over_the_maximum_are_unreadable() -> None:
    data = bytearray(encode(Envelope(1, 0, 7, 0, 0, 0, b"abc")))
    struct.pack_into("<Q", data, VERSION_OFFSET, MAX_VERSION + 1)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))  # a valid CRC
    with pytest.raises(CorruptEntryError, match="version"):
        decode(bytes(data))
    with pytest.raises(CorruptEntryError, match="version"):
        peek_version(bytes(data))


def test_a_tombstone_round_trips() -> None:
    from tiercache._envelope import TOMBSTONE

    e = Envelope(1, 0, 9, 1, 2, 0, b"", flags=TOMBSTONE, writer=5)
    out = decode(encode(e))
    assert out.tombstone and out.version == 9 and out.payload == b""
    assert not decode(encode(Envelope(1, 0, 9, 1, 2, 0, b""))).tombstone
