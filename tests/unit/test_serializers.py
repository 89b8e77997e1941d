"""Serializers: exact round trips, tracked twins, error paths, hostile bytes."""

from __future__ import annotations

import dataclasses
import enum
import math
import pickle
import threading
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache import Counter, Log
from tiercache._exceptions import (
    ConfigError,
    CorruptEntryError,
    SerializationError,
    SignatureError,
)
from tiercache._serializers import MsgpackSerializer, PickleSerializer, Serializer

# -- user classes -------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: Any = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    name: str
    tags: tuple[str, ...] = ()


class Plain:
    """A plain class whose __init__ has a side effect and __setattr__ refuses."""

    inits = 0

    def __init__(self, a: Any) -> None:
        Plain.inits += 1
        object.__setattr__(self, "a", a)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read only")

    def __eq__(self, other: object) -> bool:
        return type(other) is Plain and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def __eq__(self, other: object) -> bool:
        return type(other) is Slotted and (self.a, self.b) == (other.a, other.b)

    __hash__ = None  # type: ignore[assignment]


class _NotSupportedTz(tzinfo):
    """A third-party style tzinfo (pytz, dateutil): no stable identity to store."""

    def utcoffset(self, dt: Any) -> timedelta:
        return timedelta(0)

    def dst(self, dt: Any) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: Any) -> str:
        return "X"


class Color(enum.IntEnum):
    RED = 1
    BLUE = 2


# What a tracker makes at runtime: subclasses that carry bookkeeping.
class TrackedDict(dict):  # type: ignore[type-arg]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tc_root = object()
        self.owner = "tracker"


class TrackedList(list):  # type: ignore[type-arg]
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._tc_root = object()


class TrackedSet(set):  # type: ignore[type-arg]
    __slots__ = ("_tc_parent",)


class _Tracked_Point(Point):
    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, "_tc_dirty", True)
        object.__setattr__(self, name, value)


class _Tracked_Plain(Plain):
    pass


SER = MsgpackSerializer(types=[Point, Frozen, Plain, Slotted, Color])
PICKLE = PickleSerializer(secret=b"k" * 32)


# -- type-strict equality -----------------------------------------------------


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """Equal in type and value, recursively; nan equals nan, -0.0 is not 0.0."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, float):
        if math.isnan(a):
            assert math.isnan(b), path
        else:
            assert a == b and math.copysign(1, a) == math.copysign(1, b), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert len(a) == len(b), path
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same(ka, kb, f"{path} key {ka!r}")
            assert_same(va, vb, f"{path}[{ka!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, set | frozenset):
        assert a == b, path
        by_value = {y: y for y in b}
        for x in a:
            assert_same(x, by_value[x], f"{path} item {x!r}")
    elif isinstance(a, datetime | time):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), path
        assert a.fold == b.fold, path
        assert type(a.tzinfo) is type(b.tzinfo), path
        if a.tzinfo is not None:
            assert a.tzinfo == b.tzinfo, path
            assert a.utcoffset() == b.utcoffset(), path
            assert a.tzname() == b.tzname(), path
    elif isinstance(a, Decimal):
        assert str(a) == str(b), path
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, Plain):
        assert_same(a.__dict__, b.__dict__, f"{path}.__dict__")
    elif isinstance(a, Slotted):
        assert_same((a.a, a.b), (b.a, b.b), path)
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# -- strategies ---------------------------------------------------------------

fixed_zones = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23)),
)
named_zones = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)),
    st.text(min_size=1, max_size=8),
)
zones = (
    st.none()
    | fixed_zones
    | named_zones
    | st.sampled_from([ZoneInfo("UTC"), ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")])
)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.datetimes(timezones=zones, allow_imaginary=False),
    st.dates(),
    st.times(timezones=st.none() | fixed_zones),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.sampled_from(Color),
    st.builds(Frozen, st.text(max_size=5), st.lists(st.text(max_size=3)).map(tuple)),
)
leaves = hashable_leaves | st.floats() | st.decimals()

hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=4).map(tuple) | st.frozensets(inner, max_size=4),
    max_leaves=8,
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(hashables, children, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
        st.builds(Point, children, children),
        st.builds(Plain, children),
        st.builds(Slotted, children, children),
    )


values = st.recursive(leaves, _containers, max_leaves=25)


# -- round trips --------------------------------------------------------------


def test_protocol() -> None:
    assert isinstance(SER, Serializer)
    assert isinstance(PICKLE, Serializer)
    assert (SER.id, SER.name) == (1, "msgpack")
    assert (PICKLE.id, PICKLE.name) == (2, "pickle")


@given(values)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_msgpack_round_trip_is_exact(value: Any) -> None:
    assert_same(value, SER.loads(SER.dumps(value)))


@given(values)
@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_pickle_round_trip_is_exact(value: Any) -> None:
    assert_same(value, PICKLE.loads(PICKLE.dumps(value)))


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        [True, 1, 1.0],
        {True: "t", 2: "two", None: "n", b"b": 1, (1, "x"): 2, 1.5: 3, frozenset({1}): 4},
        2**64,
        -(2**63) - 1,
        2**64 - 1,
        -(2**63),
        10**100,
        float("nan"),
        float("inf"),
        -0.0,
        (),
        ((),),
        set(),
        frozenset(),
        [(), set(), {}],
        datetime(2024, 2, 29, 23, 59, 59, 999999),
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=1, microseconds=7))),
        datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
        date(1, 1, 1),
        time(12, 0, 0, 1, tzinfo=ZoneInfo("Europe/Berlin")),
        timedelta(days=-999999999),
        UUID(int=0),
        Decimal("-0.00"),
        Decimal("sNaN"),
        Decimal("1E+999"),
        Frozen("f", ("a",)),
        Color.BLUE,
    ],
    ids=repr,
)
def test_msgpack_edge_values(value: Any) -> None:
    assert_same(value, SER.loads(SER.dumps(value)))


def test_loads_plain_builtins_and_keeps_order() -> None:
    value = TrackedDict(b=TrackedList([TrackedDict(x=TrackedSet({1}))]), a=(1, 2))
    out = SER.loads(SER.dumps(value))
    assert type(out) is dict and list(out) == ["b", "a"]
    assert type(out["b"]) is list and type(out["b"][0]) is dict
    assert type(out["b"][0]["x"]) is set


def test_bytearray_and_memoryview_load_as_bytes() -> None:
    # Documented loss: msgpack packs them natively, before any hook.
    assert SER.loads(SER.dumps([bytearray(b"ab"), memoryview(b"cd")])) == [b"ab", b"cd"]


# -- tracked subclasses -------------------------------------------------------


def _twins() -> tuple[Any, Any]:
    plain = {
        "n": 1,
        "items": [{"id": i, "tags": {"a"}, "pos": (i, i)} for i in range(3)],
        "nested": {"deep": [1, [2, {3: "x"}]]},
        "s": {1, 2},
    }
    tracked = TrackedDict(
        n=1,
        items=TrackedList(
            [TrackedDict(id=i, tags=TrackedSet({"a"}), pos=(i, i)) for i in range(3)]
        ),
        nested=TrackedDict(deep=TrackedList([1, TrackedList([2, TrackedDict({3: "x"})])])),
        s=TrackedSet({1, 2}),
    )
    return plain, tracked


def test_subclasses_serialize_like_their_plain_twins() -> None:
    plain, tracked = _twins()
    assert SER.dumps(tracked) == SER.dumps(plain)
    assert_same(SER.loads(SER.dumps(tracked)), plain)


@given(values)
@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow])
def test_subclass_twins_property(value: Any) -> None:
    def track(v: Any) -> Any:
        if type(v) is dict:
            return TrackedDict({k: track(x) for k, x in v.items()})
        if type(v) is list:
            return TrackedList([track(x) for x in v])
        if type(v) is set:
            return TrackedSet(v)
        return v

    def twin(v: Any) -> Any:
        # Built exactly as ``track`` builds it: a copied set may iterate in
        # another order than its source, and order is part of the bytes.
        if type(v) is dict:
            return {k: twin(x) for k, x in v.items()}
        if type(v) is list:
            return [twin(x) for x in v]
        if type(v) is set:
            return set(v)
        return v

    assert SER.dumps(track(value)) == SER.dumps(twin(value))


def test_tracked_registered_subclass_uses_the_base_name() -> None:
    tracked = _Tracked_Point(1, [2])
    tracked.x = 5  # sets _tc_dirty, which must not be stored
    assert SER.dumps(tracked) == SER.dumps(Point(5, [2]))
    out = SER.loads(SER.dumps(tracked))
    assert type(out) is Point and out == Point(5, [2])

    plain = _Tracked_Plain(3)
    object.__setattr__(plain, "_tc_root", "bookkeeping")
    assert SER.dumps(plain) == SER.dumps(Plain(3))


def test_registered_objects_are_rebuilt_without_init() -> None:
    value = Plain({"k": (1,)})
    before = Plain.inits
    out = SER.loads(SER.dumps(value))
    assert Plain.inits == before  # no __init__, and __setattr__ was bypassed
    assert_same(out, value)
    assert_same(SER.loads(SER.dumps(Frozen("x"))), Frozen("x"))
    assert_same(SER.loads(SER.dumps(Slotted(1, None))), Slotted(1, None))


def test_registered_names_are_stable_and_checked() -> None:
    by_name = MsgpackSerializer(types={"pt": Point})
    data = by_name.dumps(Point(1))
    assert b"pt" in data and b"test_serializers" not in data
    with pytest.raises(CorruptEntryError, match="unregistered"):
        MsgpackSerializer().loads(data)
    with pytest.raises(CorruptEntryError, match="unregistered"):
        MsgpackSerializer(types={"other": Point}).loads(data)


def test_dataclass_missing_fields_take_defaults_and_unknown_ones_drop() -> None:
    data = msgpack.packb([msgpack.ExtType(4, b""), "pt", {"x": 1, "gone": 2}], use_bin_type=True)
    assert MsgpackSerializer(types={"pt": Point}).loads(data) == Point(1, 0)
    no_x = msgpack.packb([msgpack.ExtType(4, b""), "pt", {"y": 1}])
    with pytest.raises(CorruptEntryError, match="'x' missing"):
        MsgpackSerializer(types={"pt": Point}).loads(no_x)


@pytest.mark.parametrize(
    "types",
    [[Point, Point], {"a": Point, "b": Point}, [42], {"": Point}, [tuple]],
    ids=["twice", "twice-by-name", "not-a-class", "empty-name", "builtin"],
)
def test_bad_registrations(types: Any) -> None:
    with pytest.raises(ConfigError, match="types"):
        MsgpackSerializer(types=types)


def test_threads_share_one_serializer() -> None:
    plain, tracked = _twins()
    expected = SER.dumps(plain)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                assert SER.dumps(tracked) == expected
                with pytest.raises(SerializationError):
                    SER.dumps([object()])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# -- dumps errors name the path -----------------------------------------------


def _cb() -> None: ...


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"user": {"cb": _cb}}, "value['user']['cb']: cannot serialize function"),
        ([1, (2, object())], "value[1][1]: cannot serialize object"),
        ({(1, _cb): 2}, "value key (1, <function _cb"),
        ({"s": "\ud800"}, "value['s']: 'utf-8' codec can't encode"),
        ([Point(1, _cb)], "value[0].y: cannot serialize function"),
        ({"c": Color.RED, "e": enum.Enum("E", "A").A}, "value['e']: cannot serialize E"),
        (
            {"t": datetime(2024, 1, 1, tzinfo=_NotSupportedTz())},
            "value['t']: cannot serialize tzinfo",
        ),
        ({"p": Slotted}, "value['p']: cannot serialize type"),
    ],
    ids=["function", "object", "key", "surrogate", "field", "enum", "tzinfo", "class"],
)
def test_dumps_error_names_the_path(value: Any, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        SER.dumps(value)
    assert str(info.value).startswith(message)


def test_dumps_error_on_cycles_and_depth() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"^value\['x'\]\[0\]: circular reference"):
        SER.dumps({"x": loop})
    deep: Any = 1
    for _ in range(5000):
        deep = (deep,)
    with pytest.raises(SerializationError, match="nested too deeply"):
        SER.dumps(deep)


def test_serializer_still_works_after_an_error() -> None:
    with pytest.raises(SerializationError):
        SER.dumps({"a": [1, 2, _cb]})
    assert SER.loads(SER.dumps({"a": [1, 2]})) == {"a": [1, 2]}


# -- loads never raises anything but CorruptEntryError ------------------------


def _loads_or_corrupt(data: Any) -> None:
    try:
        out = SER.loads(data)
    except CorruptEntryError:
        return
    _assert_plain(out)


def _assert_plain(value: Any) -> None:
    allowed = (
        type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset,
        datetime, date, time, timedelta, UUID, Decimal, Point, Frozen, Plain, Slotted, Color,
        Counter, Log,
        msgpack.Timestamp,  # ext -1, decoded by msgpack itself; harmless
    )  # fmt: skip
    stack = [value]
    while stack:
        v = stack.pop()
        assert type(v) in allowed, type(v)
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            stack.extend(v)


@given(st.binary(max_size=64))
def test_garbage_only_raises_corrupt(data: bytes) -> None:
    _loads_or_corrupt(data)


@given(values, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_payloads_only_raise_corrupt(value: Any, data: st.DataObject) -> None:
    raw = bytearray(SER.dumps(value))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "extend", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "extend":
            raw += data.draw(st.binary(min_size=1, max_size=8))
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    _loads_or_corrupt(bytes(raw))


# msgpack documents built from our ext codes with random payloads: reaches
# the hooks far more often than random bytes do.
_exts = st.builds(
    msgpack.ExtType,
    st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 99]),
    st.binary(max_size=20)
    | st.sampled_from([b"", b"\x00", b"\x01" + b"2024-01-01T00:00:00\x00x", b"2024-01-01"]),
)
_docs = st.recursive(
    st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5) | _exts,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | st.integers(-(2**63), 2**63), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(_docs)
def test_structured_garbage_only_raises_corrupt(doc: Any) -> None:
    _loads_or_corrupt(msgpack.packb(doc))


@pytest.mark.parametrize(
    "data",
    [
        b"\xc7\x00\x01",  # a bare tuple marker
        b"\x92\xc7\x00\x01\xc7\x00\x01",  # a marker inside a tuple
        b"\x81\xc7\x00\x01\x01",  # a marker as a map key
        b"\xd4\x63\x00",  # unknown ext code 99
        b"\x91\xc7\x01\x01\x00",  # marker with data
        b"\x81\x91\x01\x02",  # a list as a map key: unhashable
        b"\x93\xc7\x00\x04\xa4nope\x80",  # unregistered class name
        b"\x93\xc7\x00\x04\xc0\x80",  # class name not a str
        b"\xd5\x05\x01\x00",  # big int ext holding a small int
        b"\xc7\x0b\x07" + b"2024-13-01x",  # bad date
        b"\xc7\x03\x0b" + b"1 0",  # non-canonical decimal
        b"\xc1",  # reserved msgpack byte
        b"\x92\xc7\x00\x01" * 100_000 + b"\xc0",  # hostile nesting
        "a str",
        None,
    ],
    ids=repr,
)
def test_known_bad_payloads(data: Any) -> None:
    with pytest.raises(CorruptEntryError):
        SER.loads(data)


# -- pickle -------------------------------------------------------------------


def test_pickle_requires_a_secret() -> None:
    for bad in (b"", "", None, 123):
        with pytest.raises(ConfigError, match="secret") as info:
            PickleSerializer(secret=bad)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)
    with pytest.raises(ConfigError, match="protocol"):
        PickleSerializer(secret="s", protocol=99)
    assert "hunter2" not in repr(PickleSerializer(secret="hunter2"))


def test_pickle_signature_is_checked_before_unpickling() -> None:
    data = PICKLE.dumps({"a": Point(1)})
    with pytest.raises(SignatureError):
        PickleSerializer(secret="wrong").loads(data)
    tampered = bytearray(data)
    tampered[-3] ^= 1
    with pytest.raises(SignatureError):
        PICKLE.loads(bytes(tampered))
    bad_tag = bytearray(data)
    bad_tag[0] ^= 1
    with pytest.raises(SignatureError):
        PICKLE.loads(bytes(bad_tag))
    # an unsigned pickle that would run code is never loaded
    evil = pickle.dumps(_Evil())
    with pytest.raises(SignatureError):
        PICKLE.loads(b"\x00" * 32 + evil)
    with pytest.raises(CorruptEntryError):
        PICKLE.loads(data[:10])


class _Evil:
    def __reduce__(self) -> Any:
        return (pytest.fail, ("pickle payload executed",))


def test_pickle_key_rotation() -> None:
    old = PickleSerializer(secret="old")
    new = PickleSerializer(secret="new", fallback_secrets=["old"])
    assert new.loads(old.dumps([1])) == [1]
    with pytest.raises(SignatureError):
        old.loads(new.dumps([1]))


def test_pickle_dumps_error_names_the_path() -> None:
    with pytest.raises(SerializationError, match=r"^value\['user'\]\['cb'\]: "):
        PICKLE.dumps({"user": {"cb": lambda: 0}})
    with pytest.raises(SerializationError, match=r"^value\[1\]\.lock: "):
        PICKLE.dumps([1, _Holder()])


class _Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()


@given(st.binary(max_size=80))
def test_pickle_garbage_only_raises_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        PICKLE.loads(data)
