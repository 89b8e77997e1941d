"""The fields layout's byte side (tiercache._fields): parts kept current
field by field serialize like the whole value, and a hash's fields put
together again are the very envelope that was sealed."""

from __future__ import annotations

import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import CorruptEntryError, MsgpackSerializer
from tiercache._envelope import Envelope, decode, encode
from tiercache._fields import HEAD, Parts, assemble, block_count, head_of, map_header

ser = MsgpackSerializer()
keys = st.sampled_from([f"k{i}" for i in range(40)]) | st.integers(-5, 5)
values = st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=3)


def canonical(value: dict[Any, Any], blocks: int) -> dict[Any, Any]:
    """By block (crc32 of the name), then by name."""

    def order(kv: tuple[Any, Any]) -> tuple[int, bytes]:
        name = ser.dumps(kv[0])
        return zlib.crc32(name) & (blocks - 1), name

    return dict(sorted(value.items(), key=order))


@settings(max_examples=200, deadline=None)
@given(
    start=st.dictionaries(keys, values, max_size=30),
    steps=st.lists(st.tuples(keys, values | st.just(KeyError)), max_size=40),
    blocks=st.sampled_from([0, 1, 2, 8]),
)
def test_parts_refreshed_field_by_field_serialize_like_the_whole_value(
    start: dict[Any, Any], steps: list[tuple[Any, Any]], blocks: int
) -> None:
    value = dict(start)
    parts = Parts.build(value, ser.dumps, blocks)
    for key, new in steps:
        if new is KeyError:
            value.pop(key, None)
        else:
            value[key] = new
        parts.refresh(value, [key], ser.dumps)
        payload = parts.payload()
        assert payload == ser.dumps(canonical(value, parts.blocks))
        assert ser.loads(payload) == value


@pytest.mark.parametrize("n", [0, 15, 16, 65535, 65536])
def test_map_headers_are_msgpacks(n: int) -> None:
    body = b"\xc0\xc0" * n  # n times None: None
    assert msgpack.unpackb(map_header(n) + body, strict_map_key=False) == (
        {None: None} if n else {}
    )


def sealed(value: dict[Any, Any], blocks: int = 0) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Envelope bytes and the hash fields (blocks) they are stored as."""
    parts = Parts.build(value, ser.dumps, blocks)
    env = Envelope(1, 0, 7, 1, 2, 0, parts.payload(), writer=99)
    put = parts.all_fields()
    return encode(env), list(zip(put[::2], put[1::2], strict=True))


@pytest.mark.parametrize("n", [3, 20, 300, 5000])
@pytest.mark.parametrize("blocks", [0, 1, 4])
def test_a_hash_assembles_into_the_envelope_that_was_sealed(n: int, blocks: int) -> None:
    value = {f"k{i}": [i, {"x": i}] for i in range(n)}
    data, fields = sealed(value, blocks)
    got = assemble(head_of(data), reversed(fields))  # any order HGETALL gives
    assert got == data
    assert got.blocks == len(fields)
    if blocks:
        assert len(fields) == blocks or len(fields) == block_count(len(data))
    assert ser.loads(decode(got).payload) == value


def test_a_changed_or_missing_block_fails_the_whole_check() -> None:
    value = {f"k{i}": i for i in range(1000)}
    data, fields = sealed(value)
    bad = list(fields)
    bad[1] = (bad[1][0], bad[1][1][:-1] + b"\x00")
    with pytest.raises(CorruptEntryError, match=r"checksum|length"):
        decode(assemble(head_of(data), bad))
    with pytest.raises(CorruptEntryError):
        decode(assemble(head_of(data), fields[1:]))


@pytest.mark.parametrize("head", [b"", b"short", b"XX" + b"\x00" * 54])
def test_a_bad_head_is_unreadable_and_recoverable_for_the_quarantine(head: bytes) -> None:
    got = assemble(head, [(b"\x00\x00\x00\x00", b"\xa1a\x01")])
    with pytest.raises(CorruptEntryError):
        decode(got)
    assert head_of(got) == head
    assert HEAD == b""
