"""Counter and Log: their type rules, exact serialization, life inside a
tracked session, and merge_values, the rule for a field both sides changed."""

# ``log + [x]`` is what these tests test: RUF005's ``[*log, x]`` builds a list.
# ruff: noqa: RUF005

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import pickle
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tiercache
from tiercache import (
    MISSING,
    ConfigError,
    ConflictError,
    CorruptEntryError,
    Counter,
    Log,
    MemoryTier,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
    TieredCache,
    is_dirty,
    mark_clean,
    raise_conflict,
    to_plain,
    track,
)
from tiercache._mergeable import NOT_MERGEABLE, merge_values
from tiercache._tracking import _same
from tiercache._tracking._atoms import _ATOMS, _is_immutable, _same_atom
from tiercache.testing import DictTier


@dataclasses.dataclass(frozen=True)
class Event:
    kind: str
    note: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class Holder:
    items: list[int]


class Color(enum.IntEnum):
    RED = 1


class Liar(int):
    """An int whose __int__ says another number."""

    def __int__(self) -> int:
        return 100


# -- Counter: construction ----------------------------------------------------


def test_counter_defaults_to_zero_and_takes_ints_and_counters() -> None:
    assert Counter() == 0 and type(Counter()) is Counter
    assert Counter(5) == 5 and Counter(-(2**80)) == -(2**80)
    c = Counter(7)
    assert type(Counter(c)) is Counter and Counter(c) == 7


@pytest.mark.parametrize(
    "bad", [True, False, 1.0, 2.5, "3", Decimal(1), Fraction(1), None, Color.RED]
)
def test_counter_refuses_anything_but_an_int(bad: Any) -> None:
    with pytest.raises(TypeError, match=rf"Counter\(\) takes an int, not {type(bad).__name__}"):
        Counter(bad)


def test_counter_cannot_be_subclassed() -> None:
    with pytest.raises(TypeError, match="Counter cannot be subclassed"):
        type("Sub", (Counter,), {})


# -- Counter: arithmetic ------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expect"),
    [
        (lambda c: c + 1, 6),
        (lambda c: 1 + c, 6),
        (lambda c: c - 1, 4),
        (lambda c: c + Counter(2), 7),
        (lambda c: c - Counter(2), 3),
        (lambda c: Counter(2) + c, 7),
        (lambda c: c + True, 6),  # a bool delta is 0 or 1
        (lambda c: c + Color.RED, 6),
        (lambda c: c + Liar(1), 6),  # by its value, not its __int__
        (lambda c: c - Liar(1), 4),
        (lambda c: c + 2**70, 5 + 2**70),
        (lambda c: sum([c, Counter(1)]), 6),
    ],
)
def test_adding_or_subtracting_an_int_gives_a_counter(
    expr: Callable[[Counter], Any], expect: int
) -> None:
    got = expr(Counter(5))
    assert type(got) is Counter and got == expect


def test_augmented_assignment_keeps_a_counter() -> None:
    c = Counter(5)
    c += 1
    assert type(c) is Counter and c == 6
    c -= 2
    assert type(c) is Counter and c == 4


@pytest.mark.parametrize(
    ("expr", "kind", "expect"),
    [
        (lambda c: c * 2, int, 10),
        (lambda c: 2 * c, int, 10),
        (lambda c: c / 2, float, 2.5),
        (lambda c: c // 2, int, 2),
        (lambda c: c % 2, int, 1),
        (lambda c: c**2, int, 25),
        (lambda c: -c, int, -5),
        (lambda c: +c, int, 5),
        (lambda c: abs(c), int, 5),
        (lambda c: 5 - c, int, 0),
        (lambda c: c + 1.5, float, 6.5),
        (lambda c: c - 0.5, float, 4.5),
        (lambda c: c & 1, int, 1),
        (lambda c: int(c), int, 5),
        # Another int subclass on the left adds first, as int, and Python
        # asks Counter's __radd__ only for a plain int there.
        (lambda c: True + c, int, 6),
        (lambda c: Liar(1) + c, int, 6),
    ],
)
def test_other_arithmetic_gives_what_an_int_gives(
    expr: Callable[[Counter], Any], kind: type, expect: Any
) -> None:
    got = expr(Counter(5))
    assert type(got) is kind and got == expect


# -- Counter: an int in every other way -----------------------------------------


def test_counter_repr_str_and_format() -> None:
    c = Counter(-12)
    assert repr(c) == "Counter(-12)"
    assert str(c) == "-12" and f"{c} pts" == "-12 pts" and f"{c:>5}" == "  -12"


def test_counter_equals_and_hashes_like_its_int() -> None:
    c = Counter(3)
    assert c == 3 and 3 == c and c != 4
    by_int: dict[int, str] = {c: "x"}
    assert hash(c) == hash(3) and by_int[3] == "x"
    assert isinstance(c, int)


def test_json_dumps_a_counter_as_its_number() -> None:
    assert json.dumps({"n": Counter(3)}) == '{"n": 3}'


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trips_counter_and_log(protocol: int) -> None:
    for value in (Counter(3), Counter(-(2**90)), Log([1, ("a",)]), Log()):
        back = pickle.loads(pickle.dumps(value, protocol=protocol))
        assert type(back) is type(value) and back == value


def test_copy_returns_the_same_immutable_value() -> None:
    c, log = Counter(3), Log([("a", 1)])
    assert copy.copy(c) is c and copy.deepcopy(c) is c
    assert copy.copy(log) is log and copy.deepcopy(log) is log
    assert copy.deepcopy({"n": c})["n"] is c


# -- Log -----------------------------------------------------------------------


def test_log_appends_give_new_logs() -> None:
    log = Log(["a"])
    assert type(log + ["b"]) is Log and log + ["b"] == ("a", "b")
    assert type(log + ("b",)) is Log
    assert type(log + Log(["b"])) is Log
    appended = log.appended(("x", 1))
    assert type(appended) is Log and appended == ("a", ("x", 1))
    grown = log
    grown += ["c", "d"]
    assert type(grown) is Log and grown == ("a", "c", "d")
    assert log == ("a",), "the original is unchanged"


def test_log_non_appends_give_plain_tuples() -> None:
    log = Log(["a", "b"])
    for got in (log[1:], log * 2, ("z",) + log):
        assert type(got) is tuple
    assert log[0] == "a" and type(log[0]) is str


def test_log_repr_equality_hash_and_json() -> None:
    log = Log(["a", 1])
    assert repr(log) == "Log(['a', 1])" and repr(Log()) == "Log([])"
    assert log == ("a", 1) and hash(log) == hash(("a", 1))
    assert isinstance(log, tuple)
    assert json.dumps(log) == '["a", 1]'


def test_log_of_a_log_is_the_same_log() -> None:
    log = Log([1])
    assert Log(log) is log


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([[1]], "Log item 0 is a list, which can change in place"),
        (["ok", {"a": 1}], "Log item 1 is a dict"),
        ([{1}], "Log item 0 is a set"),
        ([bytearray(b"x")], "Log item 0 is a bytearray"),
        ([("ok", [1])], "Log item 0 is a tuple"),  # a tuple holding a list
        ([Holder([1])], "Log item 0 is a Holder"),  # a frozen shell around a list
        ([object()], "Log item 0 is a object"),
        ("abc", "not str; append one value with .appended"),
        (b"abc", "not bytes"),
        ({1, 2}, "a set has none"),
        (frozenset({1}), "a frozenset has none"),
    ],
)
def test_log_refuses_mutable_items_and_unordered_or_text_sources(items: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        Log(items)


def test_appending_a_mutable_item_is_refused_with_its_index() -> None:
    log = Log(["a", "b"])
    with pytest.raises(TypeError, match="Log item 2 is a list"):
        log.appended([1])
    with pytest.raises(TypeError, match="Log item 3 is a dict"):
        log + ["c", {}]
    with pytest.raises(TypeError, match="not str"):
        log + "c"


def test_log_refuses_items_nested_too_deeply() -> None:
    deep: Any = ()
    for _ in range(200):
        deep = (deep,)
    with pytest.raises(TypeError, match="nested more than"):
        Log([deep])


def test_log_takes_every_kind_of_immutable_item() -> None:
    items = [None, 1, True, 1.5, "s", b"b", (1, (2,)), frozenset({1}), Event("e"), Color.RED]
    assert Log([*items, Counter(2), Log(["x"])]) == (*items, 2, ("x",))


def test_log_cannot_be_subclassed() -> None:
    with pytest.raises(TypeError, match="Log cannot be subclassed"):
        type("Sub", (Log,), {})


# -- the tracker sees them as atoms ------------------------------------------------


def test_counter_and_log_are_atoms() -> None:
    assert Counter in _ATOMS and Log in _ATOMS
    assert _is_immutable(Counter(1)) and _is_immutable(Log([(1,)]))


def test_a_counter_is_not_the_same_as_its_int() -> None:
    assert not _same_atom(Counter(1), 1) and not _same_atom(1, Counter(1))
    assert not _same(Counter(1), 1)
    assert _same_atom(Counter(1), Counter(1)) and _same(Counter(2**70), Counter(2**70))


def test_logs_are_the_same_only_item_by_item_type_strictly() -> None:
    assert _same(Log([1, (2,)]), Log([1, (2,)]))
    assert not _same(Log([1]), Log([True])) and not _same(Log([1.0]), Log([1]))
    assert not _same(Log([1]), (1,)), "a Log is not a plain tuple"
    # equal by ==, but the field compare=False hides serializes differently
    assert not _same(Log([Event("a", "x")]), Log([Event("a", "y")]))


def test_storing_an_int_over_an_equal_counter_marks_the_field_dirty() -> None:
    d = track({"n": 1, "m": Counter(1)})
    d["n"] = Counter(1)
    assert is_dirty(d)
    mark_clean(d)
    d["m"] = 1
    assert is_dirty(d)


def test_storing_an_equal_counter_again_is_a_no_op() -> None:
    d = track({"n": Counter(1)})
    d["n"] = Counter(1)
    assert not is_dirty(d)


def test_a_log_differing_only_in_a_hidden_field_is_a_change() -> None:
    d = track({"e": Log([Event("a", "x")])})
    d["e"] = Log([Event("a", "y")])
    assert is_dirty(d)
    assert d["e"][0].note == "y"


def test_counters_and_logs_are_stored_as_they_are() -> None:
    c, log = Counter(1), Log([1])
    d = track({"n": c, "e": log, "deep": {"n": c, "lst": [log]}})
    assert d["n"] is c and d["e"] is log and d["deep"]["lst"][0] is log
    plain = to_plain(d)
    assert type(plain["n"]) is Counter and plain["deep"]["lst"][0] is log


# -- serializers -----------------------------------------------------------------

SECRET = b"test secret"


def every_serializer() -> list[Serializer]:
    return [MsgpackSerializer(), PickleSerializer(secret=SECRET)]


def test_every_serializer_in_the_package_is_tested() -> None:
    exported = {
        getattr(tiercache, name)
        for name in tiercache.__all__
        if name.endswith("Serializer") and name != "Serializer"
    }
    assert exported == {type(s) for s in every_serializer()}


def exact(a: Any, b: Any) -> bool:
    """Equal in type and value all the way down (no floats or sets here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(exact(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**100), 2**100),
    st.integers(-(2**100), 2**100).map(Counter),
    st.text(max_size=5),
    st.binary(max_size=5),
)
_immutables = st.recursive(
    _leaves, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=8
)
_logs = st.lists(_immutables, max_size=5).map(Log)


@pytest.mark.parametrize("ser", every_serializer(), ids=lambda s: s.name)
@given(
    value=st.dictionaries(
        st.text(max_size=4),
        st.integers(-(2**100), 2**100).map(Counter) | _logs | st.lists(_logs, max_size=2),
        max_size=4,
    )
)
def test_counters_and_logs_round_trip_exactly(ser: Serializer, value: Any) -> None:
    assert exact(ser.loads(ser.dumps(value)), value)


@pytest.mark.parametrize(
    "ser", [MsgpackSerializer(types=[Event]), PickleSerializer(secret=SECRET)], ids=repr
)
def test_a_log_of_tuples_counters_and_records_keeps_each_type(ser: Serializer) -> None:
    log = Log([(1, "a"), Counter(2), 2, True, Log([()]), frozenset({"x"}), Event("e", "note")])
    back = ser.loads(ser.dumps({"events": log}))["events"]
    assert type(back) is Log
    assert [type(x) for x in back] == [type(x) for x in log]
    assert exact(list(back[:5]), list(log[:5]))
    assert back == log and back[6].note == "note"


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (Counter(0), b"\x00"),
        (Counter(5), b"\x05"),
        (Counter(-1), b"\xff"),
        (Counter(128), b"\x80\x00"),
        (Counter(-129), b"\x7f\xff"),
        (Counter(2**64), b"\x00" * 8 + b"\x01"),
    ],
)
def test_msgpack_stores_a_counter_as_ext_12_of_any_size(value: Counter, data: bytes) -> None:
    packed = MsgpackSerializer().dumps(value)
    assert packed == msgpack.packb(msgpack.ExtType(12, data))


def test_msgpack_stores_a_log_behind_marker_13() -> None:
    packed = MsgpackSerializer().dumps(Log(["a", (1,)]))
    tuple_marker, log_marker = msgpack.ExtType(1, b""), msgpack.ExtType(13, b"")
    assert packed == msgpack.packb([log_marker, "a", [tuple_marker, 1]])


@pytest.mark.parametrize(
    "doc",
    [
        msgpack.ExtType(12, b""),  # no bytes at all
        msgpack.ExtType(12, b"\x05\x00"),  # padded: never written
        msgpack.ExtType(12, b"\xff\xff"),
        [msgpack.ExtType(13, b""), [1]],  # a list inside a Log
        [msgpack.ExtType(13, b""), {"a": 1}],
        [msgpack.ExtType(13, b"x"), 1],  # a marker with data
        {"k": msgpack.ExtType(13, b"")},  # a marker no list consumed
    ],
)
def test_msgpack_refuses_counters_and_logs_it_never_writes(doc: Any) -> None:
    with pytest.raises(CorruptEntryError):
        MsgpackSerializer().loads(msgpack.packb(doc))


@pytest.mark.parametrize("cls", [Counter, Log])
def test_counter_and_log_need_no_registration(cls: type) -> None:
    with pytest.raises(ConfigError, match="built in"):
        MsgpackSerializer(types=[cls])


@given(st.integers(-(2**200), 2**200))
def test_msgpack_round_trips_any_counter_and_keeps_ints_plain(n: int) -> None:
    ser = MsgpackSerializer()
    back = ser.loads(ser.dumps([Counter(n), n]))
    assert type(back[0]) is Counter and back[0] == n
    assert type(back[1]) is int and back[1] == n


# -- inside sessions ---------------------------------------------------------------


def fresh_read(shared: DictTier, cache: TieredCache, key: str) -> Any:
    """What a new process reads: the shared store, none of this cache's memory."""
    return to_plain(TieredCache(MemoryTier(), shared, namespace=cache.namespace).get(key, MISSING))


def test_a_session_stores_and_reads_back_counters_and_logs(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    cache = proc()
    with cache.session("chat:1") as s:
        s["n"] = Counter()
        s["events"] = Log()
    with cache.session("chat:1") as s:
        s["n"] += 1
        s["events"] += ["joined"]
    with cache.session("chat:1") as s:
        s["n"] += 2
        s["events"] = s["events"].appended(("paid", 5))
    value = fresh_read(shared, cache, "chat:1")
    assert exact(value, {"n": Counter(3), "events": Log(["joined", ("paid", 5)])})


def test_a_read_only_scope_over_counters_and_logs_writes_nothing(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    cache = proc()
    cache.set("k", {"n": Counter(1), "events": Log(["a"])})
    before = shared.get(f"{cache.namespace}:k")
    with cache.session("k") as s:
        assert s["n"] == 1 and s["events"] == ("a",)
        s["n"] = Counter(1)  # the same value again: no change
    assert not is_dirty(s)
    assert shared.get(f"{cache.namespace}:k") == before, "not even the version moved"


def merging(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
    """A resolver that lets the values' types merge them, else raises."""
    merged = merge_values(base, ours, theirs)
    if merged is NOT_MERGEABLE:
        return raise_conflict(key, field, base, ours, theirs)
    return merged


def test_concurrent_increments_and_appends_in_two_processes_are_exact(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(conflict=merging), proc(conflict=merging)
    bot.set("k", {"n": Counter(0), "events": Log(["start"])})
    for i in range(5):
        app.get("k")  # both hold the same version; bot writes first
        with bot.session("k") as s:
            s["n"] += 1
            s["events"] += [("bot", i)]
        with app.session("k") as s:  # stale: its write loses and merges
            s["n"] += 10
            s["events"] += [("app", i)]
    value = fresh_read(shared, bot, "k")
    assert type(value["n"]) is Counter and value["n"] == 55
    assert value["events"] == Log(
        ["start", *(e for i in range(5) for e in (("bot", i), ("app", i)))]
    )
    assert type(value["events"]) is Log


def test_a_counter_made_from_a_plain_int_by_both_is_still_a_conflict(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(conflict=merging), proc(conflict=merging)
    bot.set("k", {"n": 5})
    app.get("k")
    with bot.session("k") as s:
        s["n"] = Counter(s["n"]) + 1
    with pytest.raises(ConflictError), app.session("k") as s:
        s["n"] = Counter(s["n"]) + 1
    assert exact(fresh_read(shared, bot, "k"), {"n": Counter(6)})


# -- merge_values --------------------------------------------------------------------


def test_merge_values_adds_both_counter_deltas() -> None:
    merged = merge_values(Counter(5), Counter(6), Counter(8))
    assert type(merged) is Counter and merged == 9


def test_merge_values_counts_a_counter_both_created_from_zero() -> None:
    merged = merge_values(MISSING, Counter(1), Counter(2))
    assert type(merged) is Counter and merged == 3


def test_merge_values_keeps_theirs_then_our_appends() -> None:
    merged = merge_values(Log(["a"]), Log(["a", "m1", "m2"]), Log(["a", "t1"]))
    assert type(merged) is Log and merged == ("a", "t1", "m1", "m2")


def test_merge_values_appends_to_a_log_both_created() -> None:
    merged = merge_values(MISSING, Log(["m"]), Log(["t"]))
    assert type(merged) is Log and merged == ("t", "m")


@pytest.mark.parametrize(
    ("was", "mine", "other"),
    [
        (5, Counter(6), Counter(6)),  # a plain int base: a reset is possible
        (Counter(5), MISSING, Counter(6)),  # one side deleted it
        (Counter(5), Counter(6), MISSING),
        (Counter(5), 6, Counter(6)),  # one side stored a plain int
        (Counter(5), Counter(6), 7),
        (Counter(5), Log([1]), Counter(6)),
        (5, 6, 7),  # plain ints say nothing about how they changed
        (None, None, None),
        ({"n": Counter(1)}, {"n": Counter(2)}, {"n": Counter(3)}),  # not leaves
        (Log(["a"]), Log(["b"]), Log(["a", "c"])),  # ours rewrote it
        (Log(["a", "b"]), Log(["a", "b", "m"]), Log(["b"])),  # theirs trimmed it
        (Log([1]), Log([True, 2]), Log([1, 3])),  # 1 replaced by True: not a prefix
        (("a",), Log(["a", "m"]), Log(["a", "t"])),  # a plain tuple base
        (Log([]), Log([1]), (1,)),
        (Counter(0), Log([1]), Log([2])),
    ],
)
def test_merge_values_refuses_what_the_types_do_not_say(was: Any, mine: Any, other: Any) -> None:
    assert merge_values(was, mine, other) is NOT_MERGEABLE


def test_not_mergeable_is_a_named_sentinel_not_none() -> None:
    assert NOT_MERGEABLE is not None and repr(NOT_MERGEABLE) == "NOT_MERGEABLE"


_deltas = st.lists(st.integers(-(2**70), 2**70), max_size=8)


def apply_deltas(start: Counter, deltas: list[int]) -> Counter:
    c = start
    for d in deltas:
        if d >= 0:
            c += d
        else:
            c -= -d
    return c


@given(
    base=st.none() | st.integers(-(2**70), 2**70),
    mine_deltas=_deltas,
    other_deltas=_deltas,
)
def test_merged_counter_is_the_base_plus_every_delta(
    base: int | None, mine_deltas: list[int], other_deltas: list[int]
) -> None:
    start = Counter(0 if base is None else base)
    was: Any = MISSING if base is None else start
    mine = apply_deltas(start, mine_deltas)
    other = apply_deltas(start, other_deltas)
    merged = merge_values(was, mine, other)
    assert type(merged) is Counter
    assert merged == start + sum(mine_deltas) + sum(other_deltas)
    assert merge_values(was, other, mine) == merged, "the order of the two sides does not count"


@given(
    base=st.none() | _logs,
    mine_appends=st.lists(_immutables),
    other_appends=st.lists(_immutables),
)
def test_merged_log_is_the_base_then_theirs_then_ours(
    base: Log[Any] | None, mine_appends: list[Any], other_appends: list[Any]
) -> None:
    start: Log[Any] = Log() if base is None else base
    was: Any = MISSING if base is None else start
    mine, other = start, start
    for x in mine_appends:
        mine = mine.appended(x)
    for x in other_appends:
        other = other + [x]
    merged = merge_values(was, mine, other)
    assert type(merged) is Log
    assert exact(list(merged), [*start, *other_appends, *mine_appends])
