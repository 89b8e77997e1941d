"""Cycles and over-deep values (tiercache._tracking, the MAX_DEPTH policy).

A value that contains itself, or that would nest its root more than
MAX_DEPTH containers deep, is refused where the tracker adopts it -- track,
cache.set, every mutator, attribute writes -- with a SerializationError
naming the path (and the key, once the root has one), never a
RecursionError, and nothing it touched is left changed: not the tracked
container, not the root's dirty state, not the value offered.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache import MemoryTier, MsgpackSerializer, SerializationError, TieredCache
from tiercache._envelope import Envelope, encode
from tiercache._tracking import (
    MAX_DEPTH,
    MISSING,
    TrackedDict,
    changes,
    dirty_fields,
    is_dirty,
    mark_clean,
    revert,
    root_of,
    to_plain,
    track,
)
from tiercache.testing import DictTier

from .test_tracking_canon import canon

# -- values ----------------------------------------------------------------------


@dataclasses.dataclass
class Node:
    name: str = "n"
    next: Any = None


class Plain:
    def __init__(self) -> None:
        self.next: Any = None


@dataclasses.dataclass(slots=True)
class Slot:
    next: Any = None


@dataclasses.dataclass(eq=False)
class Person:  # hashed by identity: may sit in a set
    name: str
    friends: set[Any] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True)
class Shell:
    items: list[Any]


@dataclasses.dataclass(frozen=True)
class Link:
    next: Any = None


class Pair(NamedTuple):
    a: Any
    b: Any


ATOMS = (int, float, str, bytes, bool, type(None))


def shape(v: Any) -> dict[int, Any]:
    """Every container and object reachable from ``v``: its exact type and
    what it holds, by identity. Equal before and after means untouched
    (a swapped class, a stamped ``_tc_`` attribute or a replaced item shows)."""
    seen: dict[int, Any] = {}
    todo = [v]
    while todo:
        x = todo.pop()
        if type(x) in ATOMS or id(x) in seen:
            continue
        kids: list[Any]
        if isinstance(x, dict):
            parts: Any = [(k, id(y)) for k, y in dict.items(x)]
            kids = list(dict.values(x))
        elif isinstance(x, (list, tuple)):
            parts = [id(y) for y in x]
            kids = list(x)
        elif isinstance(x, (set, frozenset)):
            parts = sorted(id(y) for y in x)
            kids = list(x)
        elif hasattr(x, "__dict__") or hasattr(type(x), "__slots__"):
            state = dict(vars(x)) if hasattr(x, "__dict__") else {}
            for s in getattr(type(x), "__slots__", ()):
                if hasattr(x, s):
                    state[s] = getattr(x, s)
            parts = sorted((k, id(y)) for k, y in state.items())
            kids = list(state.values())
        else:
            continue
        seen[id(x)] = (type(x), parts)
        todo.extend(kids)
    return seen


def self_dict() -> Any:
    d: dict[str, Any] = {"n": 1}
    d["me"] = d
    return d


def self_list() -> Any:
    lst: list[Any] = [1]
    lst.append(lst)
    return lst


def dataclass_self() -> Any:
    n = Node()
    n.next = n
    return n


def plain_self() -> Any:
    p = Plain()
    p.next = p
    return p


def slotted_self() -> Any:
    s = Slot()
    s.next = s
    return s


def mutual() -> Any:
    x: dict[str, Any] = {}
    x["y"] = {"x": x}
    return x


def through_a_set() -> Any:
    a, b = Person("a"), Person("b")
    a.friends.add(b)
    b.friends.add(a)
    return a


def self_in_a_set() -> Any:
    p = Person("p")
    p.friends.add(p)
    return p


def through_a_tuple() -> Any:
    lst: list[Any] = []
    lst.append((1, lst))
    return lst


def through_a_namedtuple() -> Any:
    lst: list[Any] = []
    lst.append(Pair(lst, 2))
    return lst


def inside_a_frozen_shell() -> Any:
    s = Shell([])
    s.items.append(s)
    return s


def frozen_made_cyclic() -> Any:
    link = Link()
    object.__setattr__(link, "next", link)  # only a hack builds this one
    return link


def object_dict_object() -> Any:
    n = Node()
    n.next = {"back": n}
    return n


def free_tracked() -> Any:
    f = TrackedDict()
    f["me"] = f
    return f


X6 = "['x']" * 6
X100 = f"{X6}...(88 more)...{X6}"  # 100 steps, abbreviated
# builder, the message for track({"a": value}), whether it may be a root
CYCLES: list[tuple[Callable[[], Any], str, bool]] = [
    (self_dict, "value['a']['me'] is value['a']", True),
    (self_list, "value['a'][1] is value['a']", True),
    (dataclass_self, "value['a'].next is value['a']", True),
    (plain_self, "value['a'].next is value['a']", True),
    (slotted_self, "value['a'].next is value['a']", True),
    (mutual, "value['a']['y']['x'] is value['a']", True),
    (through_a_set, "value['a'].friends item <Person>.friends item <Person> is value['a']", True),
    (self_in_a_set, "value['a'].friends item <Person> is value['a']", True),
    (through_a_tuple, "value['a'][0][1] is value['a']", True),
    (through_a_namedtuple, "value['a'][0][0] is value['a']", True),
    (inside_a_frozen_shell, "value['a'].items[0] is value['a']", False),
    (frozen_made_cyclic, "value['a'].next is value['a']", False),
    (object_dict_object, "value['a'].next['back'] is value['a']", True),
    (free_tracked, "value['a']['me'] is value['a']", True),
]
CYCLE_IDS = [f.__name__ for f, _, _ in CYCLES]


def expect(message: str) -> Any:
    return pytest.raises(SerializationError, match=f"^{re.escape(message)}$")


# -- every cycle shape, at track() ------------------------------------------------


@pytest.mark.parametrize(("build", "message", "rootable"), CYCLES, ids=CYCLE_IDS)
def test_every_cycle_shape_is_refused_and_left_as_it_was(
    build: Callable[[], Any], message: str, rootable: bool
) -> None:
    v = build()
    before = shape(v)
    with expect(f"{message} (a cycle)"):
        track({"a": v, "n": [1, {"m": 2}]})
    assert shape(v) == before
    with expect(f"cannot store key 'chat:1': {message} (a cycle)"):
        track({"a": v}, label="chat:1")
    assert shape(v) == before
    if rootable:
        with expect(message.replace("value['a']", "value") + " (a cycle)"):
            track(v)
        assert shape(v) == before


def test_a_long_cycle_is_named_with_an_abbreviated_path() -> None:
    first: dict[str, Any] = {}
    cur = first
    for _ in range(29):
        cur["x"] = {}
        cur = cur["x"]
    cur["x"] = first  # 30 dicts round
    with expect(f"value{X6}...(18 more)...{X6} is value (a cycle)"):
        track(first)
    with expect(f"value['a']{X6[5:]}...(19 more)...{X6} is value['a'] (a cycle)"):
        track({"a": first})


def test_the_cache_key_names_the_root_in_every_later_refusal() -> None:
    s = track({"d": {}}, label="chat:7")
    with expect("cannot store key 'chat:7': value['d']['x']['me'] is value['d']['x'] (a cycle)"):
        s["d"]["x"] = self_dict()
    t = track({"d": {}})
    assert root_of(t, label="chat:8") is root_of(t)
    with expect("cannot store key 'chat:8': value['d']['x']['me'] is value['d']['x'] (a cycle)"):
        t["d"]["x"] = self_dict()


# -- every mutator: refused, and nothing changed -----------------------------------


def start() -> Any:
    return track(
        {
            "d": {"k": 1, "old": [1]},
            "l": [1, {"x": 1}],
            "s": {1, "two"},
            "o": Node("o"),
            "n": 0,
        }
    )


Mut = Callable[[Any, Any], Any]


def _ior(target: Any, other: Any) -> None:
    target |= other


def _ixor(target: Any, other: Any) -> None:
    target ^= other


def _iadd(target: Any, other: Any) -> None:
    target += other


# name, op(session, cyclic dict), the path the refusal names
DICT_LIST_OBJ_OPS: list[tuple[str, Mut, str]] = [
    ("root setitem", lambda s, v: s.__setitem__("z", v), "value['z']"),
    ("root setitem, replacing", lambda s, v: s.__setitem__("l", v), "value['l']"),
    ("dict setitem", lambda s, v: s["d"].__setitem__("z", v), "value['d']['z']"),
    ("dict setitem, replacing", lambda s, v: s["d"].__setitem__("old", v), "value['d']['old']"),
    ("dict update", lambda s, v: s["d"].update({"y": [2], "k": 5, "z": v}), "value['d']['z']"),
    ("dict update kwargs", lambda s, v: s["d"].update(y=1, z=v), "value['d']['z']"),
    ("dict update pairs", lambda s, v: s["d"].update([("y", {}), ("z", v)]), "value['d']['z']"),
    ("root update", lambda s, v: s.update(n=9, z=v), "value['z']"),
    ("dict |=", lambda s, v: _ior(s["d"], {"y": 1, "z": v}), "value['d']['z']"),
    ("dict re-init", lambda s, v: s["d"].__init__({"z": v}), "value['d']['z']"),
    ("dict setdefault", lambda s, v: s["d"].setdefault("z", v), "value['d']['z']"),
    ("root setdefault", lambda s, v: s.setdefault("z", v), "value['z']"),
    ("list setitem", lambda s, v: s["l"].__setitem__(1, v), "value['l'][1]"),
    ("list setitem negative", lambda s, v: s["l"].__setitem__(-2, v), "value['l'][0]"),
    ("list slice", lambda s, v: s["l"].__setitem__(slice(0, 1), [5, v]), "value['l'][1]"),
    (
        "list extended slice",
        lambda s, v: s["l"].__setitem__(slice(None, None, -1), [5, v]),
        "value['l'][0]",
    ),
    ("list append", lambda s, v: s["l"].append(v), "value['l'][2]"),
    ("list extend", lambda s, v: s["l"].extend([{"ok": 1}, Node(), v]), "value['l'][4]"),
    ("list +=", lambda s, v: _iadd(s["l"], [3, v]), "value['l'][3]"),
    ("list insert", lambda s, v: s["l"].insert(1, v), "value['l'][1]"),
    ("list insert negative", lambda s, v: s["l"].insert(-9, v), "value['l'][0]"),
    ("list re-init", lambda s, v: s["l"].__init__([v]), "value['l'][0]"),
    ("nested list append", lambda s, v: s["l"][1].__setitem__("y", [v]), "value['l'][1]['y'][0]"),
    ("setattr", lambda s, v: setattr(s["o"], "next", v), "value['o'].next"),
    ("setattr, nested", lambda s, v: setattr(s["o"], "next", {"deeper": v}), "value['o'].next"),
]

SET_OPS: list[tuple[str, Mut]] = [
    ("add", lambda s, p: s["s"].add(p)),
    ("update", lambda s, p: s["s"].update([3, p])),
    ("|=", lambda s, p: _ior(s["s"], {4, p})),
    ("symmetric_difference_update", lambda s, p: s["s"].symmetric_difference_update({1, p})),
    ("^=", lambda s, p: _ixor(s["s"], {"two", 5, p})),
    ("re-init", lambda s, p: s["s"].__init__([6, p])),
]


def state(s: Any) -> Any:
    """Everything a refusal must leave as it was: the tracked value, node by
    node, and the root's dirty state (flag, saved copies, watched copies)."""
    root = root_of(s)
    assert root is not None
    return (
        shape(s),
        canon(to_plain(s)),
        root.dirty,
        [(f, id(v)) for f, v in root.saved.items()],
        [(f, id(v)) for f, v in root.backup.items()],
        root.order,
    )


@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "dirty"])
@pytest.mark.parametrize(
    ("name", "op", "where"), DICT_LIST_OBJ_OPS, ids=[n for n, _, _ in DICT_LIST_OBJ_OPS]
)
def test_every_mutator_refuses_a_cycle_and_changes_nothing(
    name: str, op: Mut, where: str, dirty: bool
) -> None:
    s = start()
    if dirty:
        s["n"] = 5
        s["l"][0] = 7
        del s["d"]["k"]
    before = state(s)
    fields = dirty_fields(s)
    v = self_dict()
    offered = shape(v)
    suffix = "['deeper']" if name == "setattr, nested" else ""
    with expect(f"{where}{suffix}['me'] is {where}{suffix} (a cycle)"):
        op(s, v)
    assert state(s) == before
    assert dirty_fields(s) == fields
    assert shape(v) == offered
    # still a working tracked value
    s["d"]["new"] = [1]
    s["o"].name = "p"
    assert dirty_fields(s) == fields | {"d", "o"}
    revert(s)
    assert not is_dirty(s)


@pytest.mark.parametrize("dirty", [False, True], ids=["clean", "dirty"])
@pytest.mark.parametrize(("name", "op"), SET_OPS, ids=[n for n, _ in SET_OPS])
def test_every_set_mutator_refuses_a_cycle_and_changes_nothing(
    name: str, op: Mut, dirty: bool
) -> None:
    s = start()
    if dirty:
        s["s"].add(9)
    before = state(s)
    p = self_in_a_set()
    offered = shape(p)
    with expect(
        "value['s'] item <Person>.friends item <Person> is value['s'] item <Person> (a cycle)"
    ):
        op(s, p)
    assert state(s) == before
    assert shape(p) == offered
    s["s"].add("ok")
    assert "ok" in s["s"] and dirty_fields(s) == {"s"}


@pytest.mark.parametrize(
    "make",
    [lambda: track([1, {"x": 1}]), lambda: track({"x": 1}), lambda: track(Node())],
    ids=["list root", "dict root", "object root"],
)
def test_roots_of_every_kind_refuse_and_stay_clean(make: Callable[[], Any]) -> None:
    r = make()
    before = state(r)
    with pytest.raises(SerializationError, match=r"\(a cycle\)$"):
        if isinstance(r, list):
            r.append(self_dict())
        elif isinstance(r, dict):
            r["y"] = self_dict()
        else:
            r.next = dataclass_self()
    assert state(r) == before and not is_dirty(r)


def test_a_value_moved_out_of_the_one_it_replaces_stays_attached() -> None:
    # Assigning releases the old value first, so a part of it can move into
    # the new one without a copy; a refusal must attach it back.
    s = track({"a": {"inner": {"k": 1}}})
    inner = s["a"]["inner"]
    mark_clean(s)
    with pytest.raises(SerializationError):
        s["a"] = [inner, self_dict()]
    assert s["a"]["inner"] is inner and not is_dirty(s)
    inner["k"] = 2  # still part of s: the write is seen
    assert dirty_fields(s) == {"a"} and changes(s) == {"a": {"inner": {"k": 1}}}


def test_objects_adopted_before_the_refusal_are_put_back() -> None:
    s = track({"l": []})
    first, second = Node("first"), Plain()
    second.next = {"n": Node("deep")}
    pair = [first, second]
    before = shape(pair)
    with pytest.raises(SerializationError):
        s["l"].extend([first, second, self_dict()])
    with pytest.raises(SerializationError):
        s.update(a=first, b=second, c=dataclass_self())
    assert shape(pair) == before
    assert type(first) is Node and "_tc_root" not in vars(first)
    s["l"].append(first)  # and adoptable afterwards
    assert s["l"][0] is first and dirty_fields(s) == {"l"}


# -- through the cache ---------------------------------------------------------------


def make_cache() -> tuple[TieredCache, DictTier]:
    tier = DictTier()
    return TieredCache(MemoryTier(), tier, namespace="x"), tier


def test_a_scope_names_the_key_keeps_the_value_and_stays_usable() -> None:
    cache, tier = make_cache()
    with cache.session("k") as s:
        s["n"] = 1
    stored = tier.get("x:k")
    assert stored is not None
    with cache.session("k") as s:
        with expect("cannot store key 'k': value['a']['me'] is value['a'] (a cycle)"):
            s["a"] = self_dict()
        with expect("cannot store key 'k': value['n'].next is value['n'] (a cycle)"):
            s["n"] = dataclass_self()
        assert s == {"n": 1} and not is_dirty(s)
    assert tier.get("x:k") == stored  # nothing was written
    with cache.session("k") as s:
        with pytest.raises(SerializationError):
            s.setdefault("tags", set()).add(self_in_a_set())
        s["m"] = 2  # the scope goes on
    assert cache.get("k") == {"n": 1, "m": 2, "tags": set()}


def test_a_scope_whose_body_raises_rolls_back() -> None:
    cache, tier = make_cache()
    cache.set("k", {"n": 1})
    stored = tier.get("x:k")
    with pytest.raises(SerializationError, match=r"^cannot store key 'k': "):
        with cache.session("k") as s:
            s["n"] = 2
            s["a"] = self_dict()
    assert tier.get("x:k") == stored
    assert cache.get("k") == {"n": 1}


def test_cache_set_refuses_and_keeps_the_stored_value() -> None:
    cache, tier = make_cache()
    cache.set("k", {"n": 1})
    stored = tier.get("x:k")
    v = self_dict()
    offered = shape(v)
    # (the key joins the message once the cache passes it: track(v, label=key))
    with pytest.raises(SerializationError, match=re.escape("value['me'] is value (a cycle)")):
        cache.set("k", v)
    assert shape(v) == offered
    assert tier.get("x:k") == stored
    assert cache.get("k") == {"n": 1}
    with pytest.raises(SerializationError, match="nested deeper than"):
        cache.set("k", nested(dict, MAX_DEPTH + 1))
    assert cache.get("k") == {"n": 1}


def test_an_over_deep_value_read_from_a_tier_is_a_counted_miss() -> None:
    cache, tier = make_cache()
    ser = MsgpackSerializer()
    for key, depth in (("fits", MAX_DEPTH), ("deep", MAX_DEPTH + 1)):
        payload = ser.dumps(nested(dict, depth))
        tier.set(f"x:{key}", encode(Envelope(ser.id, 0, 1, 1_000, 2_000, 0, payload)))
    assert cache.get("fits") == nested(dict, MAX_DEPTH)
    assert cache.stats().corrupt_entries == 0
    assert cache.get("deep", MISSING) is MISSING
    assert cache.stats().corrupt_entries == 1


# -- depth -------------------------------------------------------------------------


def nested(kind: Any, depth: int) -> Any:
    """``depth`` containers of one kind, each holding the next."""
    v: Any = Pair(0, 0) if kind is Pair else kind()
    for _ in range(depth - 1):
        if kind is dict:
            v = {"x": v}
        elif kind is list:
            v = [v]
        elif kind is tuple:
            v = (v,)
        elif kind is frozenset:
            v = frozenset([v])
        elif kind is Node:
            v = Node(next=v)
        elif kind is Link:
            v = Link(v)
        else:
            v = Pair(v, 0)
    return v


KINDS = [dict, list, Node, tuple, frozenset, Link, Pair]
KIND_IDS = ["dict", "list", "object", "tuple", "frozenset", "frozen dataclass", "namedtuple"]


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_the_limit_is_fine_and_one_more_level_is_refused(kind: Any) -> None:
    ok = track({"v": nested(kind, MAX_DEPTH - 1)})
    assert canon(to_plain(ok)) == canon({"v": nested(kind, MAX_DEPTH - 1)})
    v = nested(kind, MAX_DEPTH)
    before = shape(v)
    with pytest.raises(SerializationError, match=f"^nested deeper than {MAX_DEPTH} levels at "):
        track({"v": v})
    assert shape(v) == before
    for depth in (MAX_DEPTH + 1, 5_000):  # also the ones no recursion could walk
        with pytest.raises(SerializationError, match="nested deeper than"):
            track(nested(kind, depth))


def test_the_message_abbreviates_the_path() -> None:
    with expect(
        f"cannot store key 'k': nested deeper than {MAX_DEPTH} levels at "
        "value['x']['x']['x']['x']['x']['x']...(88 more)...['x']['x']['x']['x']['x']['x']"
    ):
        track(nested(dict, 5_000), label="k")


def test_depth_counts_from_the_root_on_every_write() -> None:
    s = track({})
    cur = s
    for _ in range(MAX_DEPTH - 1):  # built one level at a time
        cur["x"] = {}
        cur = cur["x"]
    # cur is the container at level MAX_DEPTH: one more container is too many
    mark_clean(s)
    before = state(s)
    for v in ({}, [], Node(), (1,), frozenset(), [nested(list, 50)]):
        with expect(
            f"nested deeper than {MAX_DEPTH} levels at value{X6}...(88 more)...{X6[:25]}['y']"
        ):
            cur["y"] = v
    assert state(s) == before
    cur["y"] = 1  # an atom is no level
    cur["z"] = bytearray(b"opaque")  # nor is a value that is not walked
    assert dirty_fields(s) == {"x"}


def test_a_session_refuses_depth_with_the_key() -> None:
    cache, _ = make_cache()
    with cache.session("k") as s:
        s["a"] = nested(dict, MAX_DEPTH - 1)
        with pytest.raises(
            SerializationError,
            match=f"^cannot store key 'k': nested deeper than {MAX_DEPTH} levels at value\\['b'\\]",
        ):
            s["b"] = nested(dict, MAX_DEPTH)
    assert cache.get("k") == {"a": nested(dict, MAX_DEPTH - 1)}


def at_depth(frames: int, fn: Callable[[], Any]) -> Any:
    return fn() if frames == 0 else at_depth(frames - 1, fn)


@pytest.mark.parametrize("kind", [dict, list, Node, tuple], ids=["dict", "list", "object", "tuple"])
def test_a_value_at_the_limit_leaves_room_for_a_caller_500_frames_deep(kind: Any) -> None:
    def everything() -> None:
        s = track({"v": nested(kind, MAX_DEPTH - 1), "n": 0})
        s["n"] = 1
        deepest: Any = s["v"]
        while True:  # down to the last container
            nxt = (
                deepest.get("x") if isinstance(deepest, dict)
                else deepest.next if isinstance(deepest, Node)
                else deepest[0] if deepest
                else None
            )  # fmt: skip
            if nxt is None:
                break
            deepest = nxt
        if isinstance(deepest, dict):
            deepest["leaf"] = 1
        elif isinstance(deepest, list):
            deepest.append(1)
        elif isinstance(deepest, Node):
            deepest.name = "leaf"
        assert is_dirty(s) and {"n"} <= dirty_fields(s)
        assert changes(s)["n"] == 0
        to_plain(s)
        revert(s)
        assert canon(to_plain(s)) == canon({"v": nested(kind, MAX_DEPTH - 1), "n": 0})
        s["w"] = nested(kind, MAX_DEPTH - 1)
        mark_clean(s)
        with pytest.raises(SerializationError):
            s["u"] = nested(kind, MAX_DEPTH)
        with pytest.raises(SerializationError):
            s["u"] = [mutual()]

    at_depth(500, everything)


# -- shared parts are no cycle -----------------------------------------------------


def test_shared_parts_are_copied_as_before() -> None:
    shared = [1]
    node = Node("shared")
    v = {"a": shared, "b": {"c": shared, "d": [shared]}, "p": node, "q": [node, node]}
    s = track(v)
    assert to_plain(s) == {
        "a": [1],
        "b": {"c": [1], "d": [[1]]},
        "p": Node("shared"),
        "q": [Node("shared"), Node("shared")],
    }
    s["a"].append(2)
    assert s["b"]["c"] == [1] and dirty_fields(s) == {"a"}
    s["z"] = {"again": s["b"], "twice": [s["q"], s["q"]]}  # attached: copies
    assert s["z"]["again"] is not s["b"] and s["z"]["again"] == s["b"]
    s["me"] = s  # the root itself: a copy of it, not a cycle
    assert s["me"] is not s and "me" not in s["me"]


# -- the helpers never meet what adoption refused ------------------------------------


def test_a_frozen_shell_grown_into_a_cycle_after_adoption() -> None:
    # A frozen shell's insides are compared, not tracked: a cycle made there
    # later reads as a change (the serializer then names it), not a crash.
    s = track({"f": Shell([1]), "n": 0})
    s["f"].items.append(s["f"])
    assert is_dirty(s) and dirty_fields(s) == {"f"}
    with pytest.raises(SerializationError):
        mark_clean(s)


def test_an_object_key_holding_its_own_dict() -> None:
    # Keys are stored as given (never adopted); comparing them stays bounded.
    key = Plain()
    s = track({"m": {key: 1}})
    key.next = s["m"]
    s["m"]["z"] = 1
    del s["m"]["z"]
    assert not is_dirty(s)


def test_an_opaque_value_too_deep_to_pickle_is_compared_by_identity() -> None:
    a: deque[Any] = deque()
    b: deque[Any] = deque()
    for _ in range(3_000):
        a, b = deque([a]), deque([b])
    s = track({"q": a})
    s["q"] = b
    assert dirty_fields(s) == {"q"}


# -- property: random values with back references --------------------------------------


@dataclasses.dataclass(eq=False)
class Box:
    pass


CONTAINERS = ("dict", "list", "tuple", "box", "set")


@st.composite
def graphs(draw: st.DrawFn) -> Any:
    """A random value: a tree of containers and atoms, perhaps a chain near
    MAX_DEPTH long, and a few extra references to any node -- back up the
    tree (a cycle) or across it (a shared part)."""
    n = draw(st.integers(1, 10))
    kinds = [draw(st.sampled_from(["dict", "list", "box"]))]
    parents: list[int] = [-1]
    for i in range(1, n):
        parent = draw(st.integers(0, i - 1))
        kind = draw(st.sampled_from(CONTAINERS))
        if kinds[parent] == "set":
            kind = "box"  # set members must hash
        parents.append(parent)
        kinds.append(kind)
    chain = draw(st.sampled_from([0, 0, 0, 1, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH]))
    if chain:
        hang = draw(st.integers(0, n - 1))
        kind = "box" if kinds[hang] == "set" else draw(st.sampled_from(["dict", "list", "box"]))
        for _ in range(chain):
            parents.append(hang)
            kinds.append(kind)
            hang = len(kinds) - 1
    total = len(kinds)
    atoms = [draw(st.lists(st.sampled_from([0, 1.5, "s", None, True]), max_size=2)) for _ in kinds]
    edges = draw(
        st.lists(st.tuples(st.integers(0, total - 1), st.integers(0, total - 1)), max_size=3)
    )

    objs: list[Any] = [None] * total
    for i in reversed(range(total)):  # children first: tuples are built whole
        kids = [objs[j] for j in range(i + 1, total) if parents[j] == i] + atoms[i]
        kind = kinds[i]
        if kind == "dict":
            objs[i] = {f"k{x}": v for x, v in enumerate(kids)}
        elif kind == "list":
            objs[i] = kids
        elif kind == "tuple":
            objs[i] = tuple(kids)
        elif kind == "set":
            objs[i] = set(kids)
        else:
            objs[i] = Box()
            for x, v in enumerate(kids):
                setattr(objs[i], f"f{x}", v)
    for e, (src, dst) in enumerate(edges):
        o, kind = objs[src], kinds[src]
        if kind == "dict":
            o[f"e{e}"] = objs[dst]
        elif kind == "list":
            o.append(objs[dst])
        elif kind == "box":
            setattr(o, f"e{e}", objs[dst])
        elif kind == "set" and kinds[dst] == "box":
            o.add(objs[dst])
    return objs[0]


def children(x: Any) -> list[Any]:
    if isinstance(x, dict):
        kids = list(x.values())
    elif isinstance(x, (list, tuple, set)):
        kids = list(x)
    elif isinstance(x, Box):
        kids = list(vars(x).values())
    else:
        return []
    return [k for k in kids if isinstance(k, (dict, list, tuple, set, Box))]


def judge(v: Any) -> tuple[bool, int]:
    """(has a cycle, how many containers deep): an oracle independent of
    the tracker, over the object graph itself."""
    height: dict[int, int] = {}
    on_path: set[int] = set()
    todo: list[tuple[Any, bool]] = [(v, False)]
    while todo:
        x, done = todo.pop()
        if done:
            on_path.discard(id(x))
            height[id(x)] = 1 + max((height[id(k)] for k in children(x)), default=0)
            continue
        if id(x) in height:
            continue
        if id(x) in on_path:
            return True, 0
        on_path.add(id(x))
        todo.append((x, True))
        for k in children(x):
            if id(k) in on_path:
                return True, 0
            if id(k) not in height:
                todo.append((k, False))
    return False, height[id(v)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_random_values_with_back_references(v: Any) -> None:
    cyclic, depth = judge(v)
    twin = copy.deepcopy(v)  # keeps cycles and shared parts
    expected = None if cyclic else canon(v)
    before = shape(v)
    try:
        tracked = track(v)
    except SerializationError as exc:
        assert cyclic or depth > MAX_DEPTH, exc
        assert cyclic or "nested deeper than" in str(exc)
        assert shape(v) == before
    else:
        assert not cyclic and depth <= MAX_DEPTH
        assert canon(to_plain(tracked)) == expected
    # the same value stored one level down in a tracked root
    s = track({"n": 0})
    try:
        s["v"] = twin
    except SerializationError:
        assert cyclic or depth + 1 > MAX_DEPTH
        assert s == {"n": 0} and not is_dirty(s)
    else:
        assert not cyclic and depth + 1 <= MAX_DEPTH
        assert canon(to_plain(s["v"])) == expected and dirty_fields(s) == {"v"}
