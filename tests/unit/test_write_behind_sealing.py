"""Write-behind exits leave serializing to the flush (issue #16): a session
changed by many scopes is serialized once per flush, while a change that
cannot be stored is still refused at the exit that made it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import (
    MISSING,
    MemoryTier,
    MsgpackSerializer,
    PickleSerializer,
    SerializationError,
    TieredCache,
    ValueTooLargeError,
    WriteBehind,
)
from tiercache._tiers._memory import UNSEALED
from tiercache.testing import DictTier, FakeClock


class CountingSerializer(MsgpackSerializer):
    """Counts how often a whole session (a dict of more than 50 fields) is
    serialized."""

    def __init__(self) -> None:
        super().__init__()
        self.whole = 0

    def dumps(self, value: Any) -> bytes:
        if isinstance(value, dict) and len(value) > 50:
            self.whole += 1
        return super().dumps(value)


class Unstorable:
    """Not a type any serializer here stores."""


@pytest.fixture
def tier(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def make(clock: FakeClock, namespace: str, tier: DictTier) -> Iterator[Callable[..., TieredCache]]:
    made: list[TieredCache] = []

    def factory(**kw: Any) -> TieredCache:
        kw.setdefault("namespace", namespace)
        kw.setdefault("clock", clock)
        kw.setdefault("flush", WriteBehind(3600))
        cache = TieredCache(MemoryTier(), tier, **kw)
        made.append(cache)
        return cache

    yield factory
    for c in made:
        c.close()


def stored(cache: TieredCache, tier: DictTier, key: str) -> Any:
    return TieredCache(MemoryTier(), tier, namespace=cache.namespace).get(key, MISSING)


BIG = {f"f{i}": i for i in range(1000)}


def test_many_scopes_one_serialization_per_flush(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    ser = CountingSerializer()
    cache = make(serializer=ser)
    cache.set("big", dict(BIG))
    before = ser.whole
    for i in range(50):
        with cache.session("big") as s:
            s["f1"] = i
            s[f"new{i}"] = [i]
    assert ser.whole == before, "no exit serialized the whole session"
    assert cache._core.flushes.get("explicit", 0) == 0
    cache.flush()
    assert ser.whole == before + 1
    value = stored(cache, tier, "big")
    assert value["f1"] == 49 and value["new7"] == [7] and len(value) == 1050
    cache.flush()  # nothing pending: nothing serialized
    assert ser.whole == before + 1


def test_an_unstorable_change_is_refused_at_its_exit_and_rolled_back(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make()
    cache.set("k", dict(BIG))
    with cache.session("k") as s:
        s["ok"] = 1
    with pytest.raises(SerializationError), cache.session("k") as s:
        s["bad"] = Unstorable()
    with cache.session("k") as s:
        assert "bad" not in s and s["ok"] == 1
    cache.flush()
    assert stored(cache, tier, "k")["ok"] == 1


def test_a_change_too_large_is_refused_at_its_exit(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make(max_value_bytes=20_000)
    cache.set("k", {"a": "x" * 100})
    with pytest.raises(ValueTooLargeError), cache.session("k") as s:
        s["b"] = "y" * 30_000
    with cache.session("k") as s:
        assert "b" not in s


def test_values_that_fit_are_never_refused_near_the_limit(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    """The bound only grows between flushes; near the limit the exit seals
    exactly instead, so a value that fits is stored."""
    cache = make(max_value_bytes=5_000)
    cache.set("k", {"a": "x" * 4_000})
    for i in range(40):
        with cache.session("k") as s:
            s["a"] = ("x" if i % 2 else "z") * 4_000  # the same size each time
    cache.flush()
    assert stored(cache, tier, "k")["a"] == "x" * 4_000


def test_a_flush_inside_a_scope_writes_what_was_committed(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make()
    cache.set("k", {"n": 0, "keep": 1})
    with cache.session("k") as s:
        s["n"] = 1
    assert cache._s.memory.peek("k").pending is UNSEALED  # type: ignore[union-attr]
    with pytest.raises(RuntimeError), cache.session("k") as s:
        s["n"] = 2
        s["gone"] = True
        del s["keep"]
        cache.flush()
        assert stored(cache, tier, "k") == {"n": 1, "keep": 1}
        raise RuntimeError("the scope fails: its changes were never committed")
    assert stored(cache, tier, "k") == {"n": 1, "keep": 1}
    with cache.session("k") as s:
        assert s == {"n": 1, "keep": 1}
        s["n"] = 3
        cache.flush()
    assert stored(cache, tier, "k") == {"n": 1, "keep": 1}
    cache.flush()
    assert stored(cache, tier, "k") == {"n": 3, "keep": 1}


def test_deferred_changes_merge_with_another_writer(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    a, b = make(), make()
    a.set("k", dict(BIG))
    for i in range(3):
        with a.session("k") as s:
            s["a"] = i
        with b.session("k") as s:
            s["b"] = i
    a.flush()
    b.flush()  # loses the compare-and-set, merges field by field
    value = stored(a, tier, "k")
    assert value["a"] == 2 and value["b"] == 2 and value["f999"] == 999
    with a.session("k") as s:
        s["f1"] = "a"
    with b.session("k") as s:
        s["f1"] = "b"
    a.flush()
    b.flush()  # the same field, both changed: no handler to tell; loud, theirs kept
    assert b.stats().conflicts_lost == 1
    assert stored(a, tier, "k")["f1"] == "a"


def test_close_writes_what_was_left_unsealed(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make()
    cache.set("k", dict(BIG))

    async def change() -> None:
        async with cache.session("k") as s:
            s["async"] = True

    asyncio.run(change())
    with cache.session("k") as s:
        s["sync"] = True
    cache.close()
    value = stored(cache, tier, "k")
    assert value["async"] is True and value["sync"] is True


def test_a_new_key_is_sealed_at_its_first_exit(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    """Its initial() fields were never serialized: a bad one is refused
    at the exit, not at the flush."""
    cache = make()
    with (
        pytest.raises(SerializationError),
        cache.session("k", initial=lambda: {"x": Unstorable()}) as s,
    ):
        s["n"] = 1
    with cache.session("k2") as s:
        s["n"] = 1
    assert cache._s.memory.peek("k2").pending not in (None, UNSEALED)  # type: ignore[union-attr]


def test_a_pickle_serializer_defers_too(make: Callable[..., TieredCache], tier: DictTier) -> None:
    cache = make(serializer=PickleSerializer(secret=b"s" * 32))
    cache.set("k", dict(BIG))
    with cache.session("k") as s:
        s["n"] = {"deep": [1, 2]}
    assert cache._s.memory.peek("k").pending is UNSEALED  # type: ignore[union-attr]
    cache.flush()
    fresh = TieredCache(
        MemoryTier(), tier, namespace=cache.namespace, serializer=PickleSerializer(secret=b"s" * 32)
    )
    assert fresh.get("k")["n"] == {"deep": [1, 2]}


# -- the bound the deferral relies on ----------------------------------------------------

atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.frozensets(st.integers(), max_size=4),
    ),
    max_leaves=12,
)
keys = st.one_of(st.text(max_size=8), st.integers(), st.tuples(st.integers(), st.text(max_size=3)))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(keys, values, max_size=12),
    st.dictionaries(keys, st.one_of(values, st.just(MISSING)), max_size=12),
)
def test_msgpack_sizes_add_up_field_by_field(old: dict[Any, Any], edit: dict[Any, Any]) -> None:
    """A dict changed in some fields encodes in at most its old size plus
    the changed fields' own encodings plus 8 bytes: the bound seal_later
    checks against the size limits."""
    ser = MsgpackSerializer()
    new = dict(old)
    for k, v in edit.items():
        if v is MISSING:
            new.pop(k, None)
        else:
            new[k] = v
    grown = 8 + sum(
        len(ser.dumps(k)) + len(ser.dumps(v)) for k, v in edit.items() if v is not MISSING
    )
    assert len(ser.dumps(new)) <= len(ser.dumps(old)) + grown
