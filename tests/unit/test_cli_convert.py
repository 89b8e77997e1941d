"""What ``tiercache convert`` writes for the fields layout reassembles into
exactly the envelope it sealed, holding the same value and header."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import MsgpackSerializer
from tiercache._cli._convert import as_fields
from tiercache._envelope import Envelope, decode, encode
from tiercache._fields import assemble

SER = MsgpackSerializer()

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=30),
    st.binary(max_size=30),
)
values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def sealed(value: Any, version: int = 7, flags: int = 0) -> bytes:
    return encode(
        Envelope(
            serializer_id=SER.id,
            schema_version=3,
            version=version,
            created_ms=1_000,
            updated_ms=2_000,
            expires_ms=0,
            payload=b"" if flags else SER.dumps(value),
            flags=flags,
            writer=99,
        )
    )


def pairs(put: list[bytes]) -> list[tuple[bytes, bytes]]:
    return list(zip(put[::2], put[1::2], strict=True))


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=12), values, max_size=60), st.integers(1, 2**63 - 1))
def test_the_fields_written_reassemble_the_envelope_exactly(
    value: dict[str, Any], version: int
) -> None:
    data = sealed(value, version)
    laid = as_fields(data)
    assert laid is not None
    new, delta = laid
    assert delta.full and not delta.gone
    assert assemble(delta.head, pairs(delta.put)) == new
    old, env = decode(data), decode(new)
    assert SER.loads(env.payload) == value
    assert (env.version, env.schema_version, env.writer, env.created_ms) == (
        old.version,
        old.schema_version,
        old.writer,
        old.created_ms,
    )
    assert len(new) == len(data)


def test_what_is_not_a_map_or_is_a_tombstone_stays_a_string() -> None:
    assert as_fields(sealed([1, 2, 3])) is None
    assert as_fields(sealed("text")) is None
    assert as_fields(sealed(None, flags=1)) is None
