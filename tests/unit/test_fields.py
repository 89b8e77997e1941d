"""The fields layout's byte side (tiercache._fields): parts kept current
field by field serialize like the whole value, and a hash's fields put
together again are the very envelope that was sealed."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import CorruptEntryError, MsgpackSerializer
from tiercache._envelope import Envelope, decode, encode
from tiercache._fields import HEAD, Parts, assemble, head_of, map_header

ser = MsgpackSerializer()
keys = st.sampled_from([f"k{i}" for i in range(40)]) | st.integers(-5, 5)
values = st.none() | st.integers() | st.text(max_size=8) | st.lists(st.integers(), max_size=3)


def canonical(value: dict[Any, Any]) -> dict[Any, Any]:
    return dict(sorted(value.items(), key=lambda kv: ser.dumps(kv[0])))


@settings(max_examples=200, deadline=None)
@given(
    start=st.dictionaries(keys, values, max_size=30),
    steps=st.lists(st.tuples(keys, values | st.just(KeyError)), max_size=40),
)
def test_parts_refreshed_field_by_field_serialize_like_the_whole_value(
    start: dict[Any, Any], steps: list[tuple[Any, Any]]
) -> None:
    value = dict(start)
    parts = Parts.build(value, ser.dumps)
    for key, new in steps:
        if new is KeyError:
            value.pop(key, None)
        else:
            value[key] = new
        parts.refresh(value, [key], ser.dumps)
        payload = parts.payload()
        assert payload == ser.dumps(canonical(value))
        assert ser.loads(payload) == value


@pytest.mark.parametrize("n", [0, 15, 16, 65535, 65536])
def test_map_headers_are_msgpacks(n: int) -> None:
    body = b"\xc0\xc0" * n  # n times None: None
    assert msgpack.unpackb(map_header(n) + body, strict_map_key=False) == (
        {None: None} if n else {}
    )


def sealed(value: dict[Any, Any]) -> bytes:
    parts = Parts.build(value, ser.dumps)
    env = Envelope(1, 0, 7, 1, 2, 0, parts.payload(), writer=99)
    return encode(env)


def test_a_hash_assembles_into_the_envelope_that_was_sealed() -> None:
    value = {"b": [1, 2], "a": {"x": 1}, 3: None}
    data = sealed(value)
    fields = [(ser.dumps(k), ser.dumps(v)) for k, v in value.items()]
    got = assemble(head_of(data), reversed(fields))  # any order HGETALL gives
    assert got == data
    assert ser.loads(decode(got).payload) == value


def test_a_changed_field_fails_the_whole_check() -> None:
    value = {f"k{i}": i for i in range(10)}
    data = sealed(value)
    fields = [(ser.dumps(k), ser.dumps(v)) for k, v in value.items()]
    fields[3] = (fields[3][0], ser.dumps(-1))
    with pytest.raises(CorruptEntryError, match="checksum"):
        decode(assemble(head_of(data), fields))


@pytest.mark.parametrize("head", [b"", b"short", b"XX" + b"\x00" * 54])
def test_a_bad_head_is_unreadable_and_recoverable_for_the_quarantine(head: bytes) -> None:
    got = assemble(head, [(b"\xa1a", b"\x01")])
    with pytest.raises(CorruptEntryError):
        decode(got)
    assert head_of(got) == head
    assert HEAD == b""
