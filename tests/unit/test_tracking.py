"""Change tracking: every mutator, adoption paths, objects, reads, fallback,
aliasing, detach, revert and changes (tiercache._tracking).

The random-sequence property test lives in test_tracking_stateful.py.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import json
import pickle
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tiercache._exceptions import DetachedError
from tiercache._tracking import (
    MISSING,
    WHOLE,
    TrackedDict,
    TrackedList,
    TrackedSet,
    attach,
    changes,
    detach,
    dirty_fields,
    is_detached,
    is_dirty,
    is_tracked,
    mark_clean,
    revert,
    to_plain,
    track,
)

from .test_tracking_canon import canon, strict_equal

# -- conformance: every method of the builtins is classified -------------------

# Methods that never change the receiver (or build a new value).
READS = {
    "__class__", "__class_getitem__", "__contains__", "__dir__", "__doc__", "__eq__",
    "__format__", "__ge__", "__getattribute__", "__getitem__", "__getstate__", "__gt__",
    "__hash__", "__init_subclass__", "__iter__", "__le__", "__len__", "__lt__", "__ne__",
    "__new__", "__or__", "__reduce__", "__reduce_ex__", "__repr__", "__reversed__",
    "__ror__", "__sizeof__", "__str__", "__subclasshook__", "copy", "fromkeys", "get",
    "items", "keys", "values", "__add__", "__mul__", "__rmul__", "count", "index",
    "__and__", "__rand__", "__rsub__", "__rxor__", "__sub__", "__xor__", "difference",
    "intersection", "isdisjoint", "issubset", "issuperset", "symmetric_difference", "union",
}  # fmt: skip
# Attribute hooks of the container object itself: a dict/list/set subclass
# with __slots__ has no instance attributes a user could set.
CONTAINER_ATTR_HOOKS = {"__setattr__", "__delattr__"}
MUTATORS = {
    dict: {
        "__init__", "__setitem__", "__delitem__", "__ior__", "clear", "pop", "popitem",
        "setdefault", "update",
    },
    list: {
        "__init__", "__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend",
        "insert", "pop", "remove", "clear", "sort", "reverse",
    },
    set: {
        "__init__", "__ior__", "__iand__", "__isub__", "__ixor__", "add", "discard", "remove",
        "pop", "clear", "update", "intersection_update", "difference_update",
        "symmetric_difference_update",
    },
}  # fmt: skip
TRACKED = {dict: TrackedDict, list: TrackedList, set: TrackedSet}


@pytest.mark.parametrize("base", [dict, list, set])
def test_every_builtin_method_is_classified(base: type) -> None:
    unknown = set(dir(base)) - READS - MUTATORS[base] - CONTAINER_ATTR_HOOKS
    assert not unknown, f"new {base.__name__} methods: classify them as reads or mutators"


@pytest.mark.parametrize("base", [dict, list, set])
def test_every_mutator_is_overridden(base: type) -> None:
    tracked = TRACKED[base]
    missing = {m for m in MUTATORS[base] if m not in tracked.__dict__}
    assert not missing
    # and no read is overridden: reads must stay at C speed
    overridden = {m for m in READS if m in tracked.__dict__}
    # pickling reduces to the plain type; set's repr would name the subclass
    assert overridden <= {"__reduce_ex__", "__doc__", "__repr__"}
    assert repr(track(base())) == repr(base())


def test_every_object_hook_is_classified() -> None:
    @dataclasses.dataclass
    class P:
        x: int = 0

    obj_reads = {
        "__class__", "__dir__", "__doc__", "__eq__", "__format__", "__ge__",
        "__getattribute__", "__getstate__", "__gt__", "__hash__", "__init_subclass__",
        "__le__", "__lt__", "__ne__", "__new__", "__reduce__", "__reduce_ex__", "__repr__",
        "__sizeof__", "__str__", "__subclasshook__",
        # re-__init__ writes through __setattr__, which is tracked
        "__init__",
    }  # fmt: skip
    obj_mutators = {"__setattr__", "__delattr__"}
    assert set(dir(object)) - obj_reads - obj_mutators == set()
    tp = type(track(P()))
    assert obj_mutators <= set(tp.__dict__)


# -- every mutator marks dirty, exactly like a plain twin ----------------------

Op = Callable[[Any], Any]

DICT_OPS: list[tuple[str, Op]] = [
    ("setitem", lambda d: d.__setitem__("a", 5)),
    ("setitem new", lambda d: d.__setitem__("z", 1)),
    ("delitem", lambda d: d.__delitem__("a")),
    ("update mapping", lambda d: d.update({"a": 2})),
    ("update pairs", lambda d: d.update([("z", [1])])),
    ("update kwargs", lambda d: d.update(z={"q": 1})),
    ("setdefault", lambda d: d.setdefault("z", [])),
    ("pop", lambda d: d.pop("a")),
    ("popitem", lambda d: d.popitem()),
    ("clear", lambda d: d.clear()),
    ("reinit", lambda d: d.__init__({"a": 9})),
    ("ior", lambda d: d.__ior__({"a": 3})),
]


@pytest.mark.parametrize(("name", "op"), DICT_OPS, ids=[n for n, _ in DICT_OPS])
def test_dict_mutators(name: str, op: Op) -> None:
    plain = {"a": 1, "b": [1]}
    s = track(copy.deepcopy(plain))
    op(s)
    op(plain)
    assert strict_equal(s, plain)
    assert is_dirty(s)
    expected = {
        k
        for k in plain.keys() | {"a", "b", "z"}
        if canon(plain.get(k, MISSING)) != canon({"a": 1, "b": [1]}.get(k, MISSING))
    }
    assert dirty_fields(s) == expected


LIST_OPS: list[tuple[str, Op]] = [
    ("setitem int", lambda x: x.__setitem__(0, 7)),
    ("setitem slice", lambda x: x.__setitem__(slice(0, 2), [9, [8]])),
    ("setitem ext slice", lambda x: x.__setitem__(slice(0, None, 2), ["p", "q"])),
    ("delitem int", lambda x: x.__delitem__(1)),
    ("delitem slice", lambda x: x.__delitem__(slice(0, 2))),
    ("delitem ext slice", lambda x: x.__delitem__(slice(None, None, 2))),
    ("append", lambda x: x.append({"k": 1})),
    ("extend", lambda x: x.extend([1, {2}])),
    ("iadd", lambda x: x.__iadd__([5])),
    ("imul", lambda x: x.__imul__(2)),
    ("imul zero", lambda x: x.__imul__(0)),
    ("insert", lambda x: x.insert(1, "i")),
    ("pop", lambda x: x.pop()),
    ("pop index", lambda x: x.pop(0)),
    ("remove", lambda x: x.remove(1)),
    ("clear", lambda x: x.clear()),
    ("sort", lambda x: x.sort(key=repr)),
    ("reverse", lambda x: x.reverse()),
    ("reinit", lambda x: x.__init__([4])),
]


@pytest.mark.parametrize(("name", "op"), LIST_OPS, ids=[n for n, _ in LIST_OPS])
def test_list_mutators_nested_and_root(name: str, op: Op) -> None:
    start = [1, "two", [3]]
    plain = {"x": copy.deepcopy(start), "y": 0}
    s = track(copy.deepcopy(plain))
    op(s["x"])
    op(plain["x"])
    assert strict_equal(s, plain)
    assert dirty_fields(s) == {"x"}
    # the same op on a list root: field WHOLE
    r = track(copy.deepcopy(start))
    twin = copy.deepcopy(start)
    op(r)
    op(twin)
    assert strict_equal(r, twin)
    assert dirty_fields(r) == {WHOLE}


SET_OPS: list[tuple[str, Op]] = [
    ("add", lambda x: x.add(9)),
    ("discard", lambda x: x.discard(1)),
    ("remove", lambda x: x.remove(1)),
    ("pop", lambda x: x.pop()),
    ("clear", lambda x: x.clear()),
    ("update", lambda x: x.update([7], {8})),
    ("intersection_update", lambda x: x.intersection_update({1})),
    ("difference_update", lambda x: x.difference_update({1})),
    ("symmetric_difference_update", lambda x: x.symmetric_difference_update({1, 5})),
    ("ior", lambda x: x.__ior__({5})),
    ("iand", lambda x: x.__iand__({1})),
    ("isub", lambda x: x.__isub__({1})),
    ("ixor", lambda x: x.__ixor__({1, 5})),
    ("reinit", lambda x: x.__init__({4})),
]


@pytest.mark.parametrize(("name", "op"), SET_OPS, ids=[n for n, _ in SET_OPS])
def test_set_mutators_nested_and_root(name: str, op: Op) -> None:
    s = track({"x": {1, 2}, "y": 0})
    plain = {"x": {1, 2}, "y": 0}
    op(s["x"])
    op(plain["x"])
    assert strict_equal(s, plain)
    assert dirty_fields(s) == {"x"}
    r = track({1, 2})
    twin = {1, 2}
    op(r)
    op(twin)
    assert strict_equal(r, twin)
    assert dirty_fields(r) == {WHOLE}


def test_in_place_operators_through_the_parent() -> None:
    s = track({"l": [1], "s": {1}, "d": {"a": 1}, "n": 1})
    lst = s["l"]
    s["l"] += [2]
    s["l"] *= 2
    s["s"] |= {2}
    s["s"] &= {1, 2}
    s["s"] -= {1}
    s["s"] ^= {3}
    s["d"] |= {"b": 2}
    s["n"] += 1
    assert s["l"] is lst  # re-stored in its own place: identity kept
    assert s == {"l": [1, 2, 1, 2], "s": {2, 3}, "d": {"a": 1, "b": 2}, "n": 2}
    assert dirty_fields(s) == {"l", "s", "d", "n"}


def test_failing_mutators_raise_like_plain() -> None:
    s = track({"l": [], "s": set(), "d": {}})
    for op, exc in [
        (lambda: s["l"].pop(), IndexError),
        (lambda: s["l"].remove(1), ValueError),
        (lambda: s["l"].__setitem__(3, 1), IndexError),
        (lambda: s["s"].remove(1), KeyError),
        (lambda: s["s"].pop(), KeyError),
        (lambda: s["d"].pop("x"), KeyError),
        (lambda: s["d"].popitem(), KeyError),
        (lambda: s["d"].__delitem__("x"), KeyError),
        (lambda: s.__delitem__("x"), KeyError),
    ]:
        with pytest.raises(exc):
            op()
    assert not is_dirty(s)


# -- nested adoption on every entry path ----------------------------------------


def _all_tracked(v: Any) -> bool:
    """No plain dict/list/set anywhere under v."""
    if type(v) in (dict, list, set):
        return False
    if isinstance(v, dict):
        return all(_all_tracked(x) for x in v.values())
    if isinstance(v, (list, set, tuple, frozenset)):
        return all(_all_tracked(x) for x in v)
    return True


ENTRY_PATHS: list[tuple[str, Op]] = [
    ("setitem", lambda s: s.__setitem__("n", {"deep": [{"x": set()}]})),
    ("update mapping", lambda s: s.update({"n": {"deep": [{}]}})),
    ("update pairs", lambda s: s.update([("n", [[{}]])])),
    ("update kwargs", lambda s: s.update(n={"a": [{}]})),
    ("setdefault", lambda s: s.setdefault("n", {"a": [{}]})),
    ("ior", lambda s: s.__ior__({"n": [{}]})),
    ("extend", lambda s: s["l"].extend([{"a": [1]}])),
    ("iadd", lambda s: s["l"].__iadd__([{"a": [1]}])),
    ("insert", lambda s: s["l"].insert(0, [{"a": 1}])),
    ("append", lambda s: s["l"].append({"a": {"b": []}})),
    ("slice", lambda s: s["l"].__setitem__(slice(0, 0), [{"a": []}])),
    ("tuple member", lambda s: s.__setitem__("n", (1, [{"a": []}], {"b": set()}))),
    ("set add tuple", lambda s: s["s"].add((1, 2))),
    ("reinit", lambda s: s["l"].__init__([{"a": []}])),
]


@pytest.mark.parametrize(("name", "op"), ENTRY_PATHS, ids=[n for n, _ in ENTRY_PATHS])
def test_values_are_adopted_on_every_path(name: str, op: Op) -> None:
    s = track({"l": [], "s": set()})
    op(s)
    assert _all_tracked(s)
    mark_clean(s)
    # a change at any depth is recorded under its top-level field
    for field in ("n", "l"):
        if s.get(field):
            deepest = s[field]
            while True:
                inner = next(
                    (x for x in (deepest.values() if isinstance(deepest, dict) else deepest)
                     if isinstance(x, (dict, list, set))),
                    None,
                )  # fmt: skip
                if inner is None:
                    break
                deepest = inner
            if isinstance(deepest, dict):
                deepest["new"] = 1
            elif isinstance(deepest, list):
                deepest.append(1)
            else:
                deepest.add(1)
            assert dirty_fields(s) == {field}
            mark_clean(s)


def test_setdefault_returns_the_adopted_default() -> None:
    s = track({})
    s.setdefault("tags", set()).add("vip")
    assert s == {"tags": {"vip"}}
    assert isinstance(s["tags"], TrackedSet)
    mark_clean(s)
    s.setdefault("tags", set()).add("gold")
    assert dirty_fields(s) == {"tags"}


def test_tuple_members_are_tracked() -> None:
    s = track({"pos": (1, [2], {"a": 1})})
    assert type(s["pos"]) is tuple
    s["pos"][1].append(3)
    s["pos"][2]["b"] = 2
    assert dirty_fields(s) == {"pos"}
    assert s["pos"] == (1, [2, 3], {"a": 1, "b": 2})


def test_deep_change_marks_its_top_level_field() -> None:
    s = track({"a": {"b": {"c": {"d": [{"e": {1}}]}}}, "other": 1})
    s["a"]["b"]["c"]["d"][0]["e"].add(2)
    assert dirty_fields(s) == {"a"}
    assert changes(s) == {"a": {"b": {"c": {"d": [{"e": {1}}]}}}}


# -- objects and dataclasses ----------------------------------------------------


@dataclasses.dataclass
class User:
    name: str
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(slots=True)
class Slotted:
    n: int
    items: list[int]


@dataclasses.dataclass(frozen=True)
class Frozen:
    x: int


@dataclasses.dataclass(frozen=True)
class FrozenShell:
    items: list[int]


class Plain:
    def __init__(self) -> None:
        self.a = 1
        self.d: dict[str, Any] = {}


class PlainSlots:
    __slots__ = ("a", "b")

    def __init__(self) -> None:
        self.a = 1


class WithProperty:
    def __init__(self) -> None:
        self._v = 0

    @property
    def v(self) -> int:
        return self._v

    @v.setter
    def v(self, value: int) -> None:
        self._v = value


def test_dataclass_tracked_in_place() -> None:
    u = User("ann")
    s = track({"user": u})
    assert s["user"] is u and isinstance(u, User) and is_tracked(u)
    assert not is_dirty(s)
    u.tags.append("vip")
    assert dirty_fields(s) == {"user"}
    mark_clean(s)
    u.name = "ann"  # equal immutable: no-op
    assert not is_dirty(s)
    u.name = "bob"
    assert dirty_fields(s) == {"user"}
    # looks and serializes like the user's class
    assert u == User("bob", ["vip"]) and User("bob", ["vip"]) == u
    assert repr(u) == "User(name='bob', tags=['vip'])"
    assert orjson.dumps(u) == orjson.dumps(User("bob", ["vip"]))
    assert dataclasses.asdict(u) == {"name": "bob", "tags": ["vip"]}


def test_object_root_fields_are_attribute_names() -> None:
    u = track(User("ann"))
    assert not is_dirty(u)
    u.tags.append("x")
    assert dirty_fields(u) == {"tags"}
    u.name = "b"
    del u.name
    assert dirty_fields(u) == {"tags", "name"}
    revert(u)
    assert u.name == "ann" and u.tags == [] and not is_dirty(u)


def test_plain_objects_slots_and_properties() -> None:
    s = track({"p": Plain(), "q": PlainSlots(), "w": WithProperty()})
    assert type(s["p"]).__name__ == "Plain" and isinstance(s["p"], Plain)
    assert isinstance(s["q"], PlainSlots)  # slots objects are copied into a subclass
    s["p"].d["k"] = [1]
    assert dirty_fields(s) == {"p"}
    s["q"].b = 2
    assert dirty_fields(s) == {"p", "q"}
    s["w"].v = 5  # a property setter's own writes are tracked
    assert dirty_fields(s) == {"p", "q", "w"}
    assert vars(to_plain(s["p"])) == {"a": 1, "d": {"k": [1]}}
    assert type(to_plain(s["q"])) is PlainSlots


def test_slotted_dataclass() -> None:
    s = track({"x": Slotted(1, [1])})
    s["x"].items.append(2)
    s["x"].n = 2
    assert dirty_fields(s) == {"x"}
    assert s["x"] == Slotted(2, [1, 2])
    assert type(pickle.loads(pickle.dumps(s["x"]))) is Slotted


def test_frozen_values_untouched() -> None:
    f = Frozen(1)
    s = track({"f": f, "t": (1, "a"), "fs": frozenset({1})})
    assert s["f"] is f and type(f) is Frozen and not is_tracked(f)
    assert track(f) is f
    assert not is_dirty(f) and dirty_fields(f) == frozenset()


def test_construction_unpickling_copying_never_dirty() -> None:
    s = track({"u": User("a", ["t"]), "l": [1]})
    for v in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert not is_tracked(v)
    assert not is_dirty(s)
    u2 = copy.deepcopy(s["u"])
    assert type(u2) is User and not hasattr(u2, "_tc_root")
    u3 = pickle.loads(pickle.dumps(s["u"]))
    assert type(u3) is User and "_tc_root" not in vars(u3)
    assert not is_dirty(s)
    # constructing tracked containers directly makes free (unrooted) values
    free = TrackedDict({"a": [1]})
    free["b"] = 2
    r = track(free)
    assert r is free and not is_dirty(r) and isinstance(r["a"], TrackedList)


def test_re_init_of_dataclass_is_tracked() -> None:
    s = track({"u": User("a")})
    s["u"].__init__("b")  # type: ignore[misc]
    assert dirty_fields(s) == {"u"}


# -- reads and no-op writes -----------------------------------------------------


def test_reads_never_mark_dirty() -> None:
    s = track({"a": 1, "l": [1, {"x": 1}], "s": {1}, "d": {"k": "v"}, "u": User("a")})
    s.get("a"), s["l"][1]["x"], list(s), "a" in s, len(s), s == {}, s.copy()
    s | {"z": 1}, s["l"] + [1], s["l"] * 2, s["s"] | {2}, s["s"] & {1}, s["l"].index(1)
    s["l"].count(1), sorted(s["s"]), s["u"].name, repr(s), str(s), s["d"].items()
    json.dumps(s, default=lambda o: sorted(o) if isinstance(o, set) else vars(to_plain(o)))
    orjson.dumps({"l": s["l"], "d": s["d"], "u": s["u"]})
    pickle.dumps(s), copy.deepcopy(s), to_plain(s), changes(s), dirty_fields(s)
    assert not is_dirty(s)


def test_no_op_writes_do_not_set_the_flag() -> None:
    s = track({"a": 1, "f": 1.5, "l": [1], "s": {1}, "d": {}, "e": []})
    from tiercache._tracking import _root

    root = _root(s, "test")
    assert root is not None
    s["a"] = 1
    s["f"] = 1.5
    s["l"][0] = 1
    s["s"].discard(2)
    s["s"].add(1)
    s["d"].clear()
    s["e"].clear()
    s["e"].extend([])
    s["e"].sort()
    s["d"].update({})
    s["s"].update([1])
    s["l"] *= 1
    assert not root.dirty
    assert not is_dirty(s)


def test_type_strict_changes_are_dirty() -> None:
    s = track({"a": 1, "b": 0.0, "c": {1}, "d": (1,)})
    s["a"] = True
    s["b"] = -0.0
    s["c"] = frozenset({1})
    s["d"] = (1.0,)
    assert dirty_fields(s) == {"a", "b", "c", "d"}


def test_change_and_undo_is_clean() -> None:
    s = track({"l": [1, 2], "d": {"a": 1}})
    s["l"].append(3)
    s["l"].pop()
    s["d"]["a"] = 2
    s["d"]["a"] = 1
    assert not is_dirty(s) and dirty_fields(s) == frozenset()


# -- fallback for what interception cannot see ----------------------------------


def test_bytearray_written_through_memoryview() -> None:
    s = track({"buf": bytearray(b"abc"), "n": 1})
    memoryview(s["buf"])[0] = ord("X")
    assert is_dirty(s) and dirty_fields(s) == {"buf"}
    assert changes(s) == {"buf": bytearray(b"abc")}
    revert(s)
    assert s["buf"] == bytearray(b"abc") and not is_dirty(s)


@pytest.mark.parametrize(
    "op",
    [
        lambda h: heapq.heappush(h, 0),
        lambda h: heapq.heappop(h),
        lambda h: heapq.heapify(h),
        lambda h: heapq.heapreplace(h, 9),
    ],
)
def test_heapq_on_a_tracked_list(op: Op) -> None:
    s = track({"h": [3, 1, 2], "other": [{"a": 1}]})
    op(s["h"])
    assert dirty_fields(s) == {"h"}
    assert changes(s) == {"h": [3, 1, 2]}
    mark_clean(s)
    assert not is_dirty(s)


def test_foreign_objects() -> None:
    s = track({"q": deque([1]), "n": 1})
    s["q"].append(2)  # deque is a C type: no hooks we can use
    assert dirty_fields(s) == {"q"}
    revert(s)
    assert list(s["q"]) == [1]


def test_frozen_shell_with_mutable_inside() -> None:
    s = track({"f": FrozenShell([1])})
    s["f"].items.append(2)
    assert dirty_fields(s) == {"f"}


def test_clean_root_without_watched_fields_is_a_flag_read() -> None:
    from tiercache._tracking import _root

    s = track({"a": 1, "h": [{"x": 1}], "u": {"n": "a"}})
    root = _root(s, "test")
    assert root is not None and not root.backup  # nothing watched


# -- aliasing --------------------------------------------------------------------


def test_aliasing_stores_a_copy() -> None:
    a = track({"x": {"k": 1}, "y": None})
    b = track({})
    b["x"] = a["x"]  # attached under another root: copied
    assert b["x"] == a["x"] and b["x"] is not a["x"]
    a["y"] = a["x"]  # another field of the same root: copied
    assert a["y"] is not a["x"]
    a["x"]["k"] = 2
    assert a["y"] == {"k": 1} and b["x"] == {"k": 1}
    assert dirty_fields(a) == {"x", "y"} and dirty_fields(b) == {"x"}
    lst = track([[1]])
    lst.append(lst[0])  # two positions of one list: copied
    lst[0].append(2)
    assert lst == [[1, 2], [1]]
    lst2 = track([[1]])
    lst2 *= 2
    lst2[0].append(5)
    assert lst2 == [[1, 5], [1]]


def test_same_place_restore_keeps_identity_and_moves_are_free() -> None:
    s = track({"l": [1], "m": None})
    inner = s["l"]
    s["l"] += [2]
    assert s["l"] is inner
    moved = s.pop("l")
    s["m"] = moved  # released by pop: moved without a copy
    assert s["m"] is moved
    moved.append(3)
    assert s["m"] == [1, 2, 3] and dirty_fields(s) == {"l", "m"}
    plain_obj = User("a")
    s["u"] = plain_obj
    s["v"] = plain_obj  # already attached at "u": copied
    assert s["u"] is plain_obj and s["v"] is not plain_obj


def test_plain_input_aliases_become_independent() -> None:
    shared = [1]
    s = track({"a": shared, "b": shared})
    s["a"].append(2)
    assert s["b"] == [1] and shared == [1]


def test_released_value_no_longer_reports() -> None:
    s = track({"l": [[1]]})
    inner = s["l"].pop()
    mark_clean(s)
    inner.append(2)  # not part of s any more
    assert not is_dirty(s)


# -- detach ----------------------------------------------------------------------


def test_detach_refuses_every_mutation() -> None:
    u = User("a")
    s = track({"d": {"x": 1}, "l": [1], "s": {1}, "u": u})
    d, lst, st = s["d"], s["l"], s["s"]
    detach(s)
    assert is_detached(s)
    for op in [
        lambda: s.__setitem__("a", 1),
        lambda: s.update(a=1),
        lambda: s.setdefault("q", 1),
        lambda: s.pop("d"),
        lambda: s.clear(),
        lambda: d.__setitem__("x", 1),  # even a no-op write
        lambda: lst.append(1),
        lambda: lst.sort(),
        lambda: st.add(2),
        lambda: st.discard(1),
        lambda: setattr(u, "name", "b"),
        lambda: delattr(u, "tags"),
        lambda: u.tags.append("x"),
    ]:
        with pytest.raises(DetachedError, match="detached"):
            op()
    # reads keep working
    assert s["d"]["x"] == 1 and u.name == "a" and json.dumps(s["d"]) == '{"x": 1}'
    assert not is_dirty(s)
    attach(s)
    s["a"] = 1
    assert dirty_fields(s) == {"a"}


def test_immutables_pass_through_the_api() -> None:
    for v in (None, 1, "s", b"b", (1, "x"), Frozen(1)):
        assert track(v) is v
        assert not is_dirty(v) and dirty_fields(v) == frozenset() and changes(v) == {}
        mark_clean(v), revert(v), detach(v)
    with pytest.raises(TypeError):
        is_dirty({"plain": 1})
    with pytest.raises(TypeError):
        track((1, [2]))
    s = track({"n": {}})
    with pytest.raises(TypeError, match="nested"):
        is_dirty(s["n"])
    assert track(s) is s


# -- revert and changes ------------------------------------------------------------


def test_revert_restores_in_place_and_stale_handles_raise() -> None:
    s = track({"a": 1, "l": [1, {"x": 1}], "d": {"k": "v"}})
    old_l = s["l"]
    s["a"] = 2
    s["l"][1]["x"] = 2
    s["l"].append(5)
    s["new"] = {}
    del s["d"]
    assert changes(s) == {"a": 1, "l": [1, {"x": 1}], "new": MISSING, "d": {"k": "v"}}
    root_id = id(s)
    revert(s)
    assert id(s) == root_id and not is_dirty(s)
    assert strict_equal(s, {"a": 1, "l": [1, {"x": 1}], "d": {"k": "v"}})
    with pytest.raises(DetachedError, match="rolled back"):
        old_l.append(1)
    s["l"].append(2)  # the new value is live
    assert dirty_fields(s) == {"l"}


def test_revert_list_root_keeps_identity() -> None:
    r = track([1, [2]])
    r[1].append(3)
    r.append(4)
    revert(r)
    assert r == [1, [2]] and type(r) is TrackedList and not is_dirty(r)


def test_changes_after_mark_clean() -> None:
    s = track({"a": [1]})
    s["a"].append(2)
    mark_clean(s)
    s["a"].append(3)
    assert changes(s) == {"a": [1, 2]}


# -- serialization is the plain twin's ----------------------------------------------


def test_serialization_matches_plain_twin() -> None:
    plain = {"a": 1, "l": [1, {"x": [1.5, None]}], "d": {"k": "v", "n": {"m": True}}}
    s = track(copy.deepcopy(plain))
    assert json.dumps(s) == json.dumps(plain)
    assert orjson.dumps(s) == orjson.dumps(plain)
    assert strict_equal(pickle.loads(pickle.dumps(s)), plain)
    assert strict_equal(copy.deepcopy(s), plain)
    assert strict_equal(to_plain(s), plain)
    assert type(to_plain(s)["l"][1]) is dict
    assert isinstance(s, dict) and isinstance(s["l"], list)
    r = track({1, 2})
    assert strict_equal(pickle.loads(pickle.dumps(r)), {1, 2})
