"""Path-level tracking and merging: dirty paths, and a compare-and-set that
loses merging nested dicts key by key. Two caches over one store stand for
two processes, as in test_conflicts.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache import (
    MISSING,
    PATH_DEPTH,
    ConflictError,
    FieldPath,
    MemoryTier,
    TieredCache,
    dirty_fields,
    dirty_paths,
    keep_ours,
    track,
)
from tiercache.testing import DictTier

# -- dirty paths -----------------------------------------------------------------


def test_dirty_paths_follow_nested_dicts_to_the_changed_keys() -> None:
    s = track({"state": "menu", "data": {"cart": [], "name": "A", "deep": {"x": 1}}, "n": 0})
    s["data"]["cart"].append("tea")
    s["data"]["deep"]["x"] = 2
    s["data"]["deep"]["y"] = 3
    del s["data"]["name"]
    s["n"] += 1
    assert dirty_paths(s) == {
        ("data", "cart"),  # a list is one unit
        ("data", "deep", "x"),
        ("data", "deep", "y"),
        ("data", "name"),
        ("n",),
    }
    assert dirty_fields(s) == {"data", "n"}, "dirty_fields keeps its meaning"


def test_a_nested_change_undone_is_not_a_dirty_path() -> None:
    s = track({"data": {"a": 1, "b": 2}})
    s["data"]["a"] = 5
    s["data"]["b"] = 6
    s["data"]["a"] = 1
    assert dirty_paths(s) == {("data", "b")}
    s["data"]["b"] = 2
    assert dirty_paths(s) == frozenset()


def test_a_new_or_replaced_subtree_is_one_path() -> None:
    s = track({"data": 1})
    s["data"] = {"a": {"b": 1}}
    s["new"] = {"x": 1}
    assert dirty_paths(s) == {("data",), ("new",)}


def test_below_the_depth_limit_a_subtree_is_one_unit() -> None:
    value: dict[str, Any] = {}
    node = value
    for i in range(PATH_DEPTH + 3):
        node[f"k{i}"] = {}
        node = node[f"k{i}"]
    node["leaf"] = 0
    s = track(value)
    leaf = s
    for i in range(PATH_DEPTH + 3):
        leaf = leaf[f"k{i}"]
    leaf["leaf"] = 1
    (path,) = dirty_paths(s)
    assert path == tuple(f"k{i}" for i in range(PATH_DEPTH))


def test_a_list_root_is_the_empty_path() -> None:
    lst = track([1, 2])
    lst.append(3)
    assert dirty_paths(lst) == {()}


# -- merging at path level ---------------------------------------------------------


def stored(shared: DictTier, namespace: str, key: str) -> Any:
    return TieredCache(MemoryTier(), shared, namespace=namespace).get(key, MISSING)


def fsm(data: dict[str, Any]) -> dict[str, Any]:
    return {"state": "shop", "data": data}


def test_different_keys_of_a_nested_dict_merge_silently(
    proc: Callable[..., TieredCache], shared: DictTier, namespace: str
) -> None:
    """aiogram's FSM record: two workers changing different keys of
    ``data`` used to be a same-field conflict on ``data``."""
    bot, app = proc(), proc()
    bot.set("u", fsm({"cart": ["tea"], "name": "A", "prefs": {"lang": "en", "tz": 0}}))
    app.get("u")
    with bot.session("u") as s:
        s["data"]["cart"].append("cake")
        s["data"]["prefs"]["tz"] = 3
    with app.session("u") as s:  # stale: loses the race, merges
        s["data"]["name"] = "B"
        s["data"]["prefs"]["lang"] = "de"
        s["data"]["new"] = 1
    assert stored(shared, namespace, "u") == fsm(
        {"cart": ["tea", "cake"], "name": "B", "prefs": {"lang": "de", "tz": 3}, "new": 1}
    )
    assert app.stats().merges == 1 and app.stats().conflicts == 0


def test_the_same_leaf_changed_by_both_is_a_conflict_even_with_equal_values(
    proc: Callable[..., TieredCache], shared: DictTier, namespace: str
) -> None:
    bot, app = proc(), proc()
    bot.set("u", fsm({"n": 5, "other": 0}))
    app.get("u")
    with bot.session("u") as s:
        s["data"]["n"] = 6
    with pytest.raises(ConflictError, match="'data', 'n'"), app.session("u") as s:
        s["data"]["n"] = 6  # two increments: agreeing on 6 would lose one
        s["data"]["other"] = 1
    assert stored(shared, namespace, "u") == fsm({"n": 6, "other": 0}), "theirs is kept"
    assert app.stats().conflicts == 1


def test_the_resolver_receives_the_nested_path(
    proc: Callable[..., TieredCache], shared: DictTier, namespace: str
) -> None:
    seen: list[tuple[Any, Any, Any, Any]] = []

    def resolver(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
        seen.append((field, base, ours, theirs))
        return ours + theirs - base

    bot, app = proc(), proc(conflict=resolver)
    bot.set("u", {"top": 0, "data": {"a": {"n": 1}, "b": 0}})
    app.get("u")
    with bot.session("u") as s:
        s["data"]["a"]["n"] = 3
        s["top"] = 10
    with app.session("u") as s:
        s["data"]["a"]["n"] = 2
        s["top"] = 20
    by_field = {field: rest for field, *rest in seen}
    assert by_field == {FieldPath(("data", "a", "n")): [1, 2, 3], "top": [0, 20, 10]}
    assert {type(field) for field in by_field} == {FieldPath, str}, "top level: the bare key"
    assert stored(shared, namespace, "u") == {"top": 30, "data": {"a": {"n": 4}, "b": 0}}


def test_keep_ours_settles_only_the_conflicting_leaf(
    proc: Callable[..., TieredCache], shared: DictTier, namespace: str
) -> None:
    bot, app = proc(), proc(conflict=keep_ours)
    bot.set("u", fsm({"x": 0, "y": 0}))
    app.get("u")
    with bot.session("u") as s:
        s["data"]["x"] = 1
        s["data"]["y"] = 1
    with app.session("u") as s:
        s["data"]["x"] = 2
    assert stored(shared, namespace, "u") == fsm({"x": 2, "y": 1})


def test_a_dict_both_created_merges_key_by_key(
    proc: Callable[..., TieredCache], shared: DictTier, namespace: str
) -> None:
    bot, app = proc(), proc()
    bot.set("u", {})
    app.get("u")
    with bot.session("u") as s:
        s.setdefault("cart", {})["tea"] = 1
    with app.session("u") as s:
        s.setdefault("cart", {})["cake"] = 2
    assert stored(shared, namespace, "u") == {"cart": {"tea": 1, "cake": 2}}


def test_a_list_is_one_unit(
    proc: Callable[..., TieredCache], shared: DictTier, namespace: str
) -> None:
    bot, app = proc(), proc()
    bot.set("u", fsm({"items": [1]}))
    app.get("u")
    with bot.session("u") as s:
        s["data"]["items"].append(2)
    with pytest.raises(ConflictError), app.session("u") as s:
        s["data"]["items"].append(3)
    assert stored(shared, namespace, "u") == fsm({"items": [1, 2]})


# -- the property ------------------------------------------------------------------

KEYS = ("a", "b", "c")
_ns = itertools.count()


@dataclass(frozen=True)
class Op:
    path: tuple[str, ...]
    value: Any  # MISSING: delete


def trees(depth: int = 3) -> st.SearchStrategy[Any]:
    leaf = st.integers(0, 3)
    if depth == 0:
        return leaf
    return st.one_of(leaf, st.dictionaries(st.sampled_from(KEYS), trees(depth - 1), max_size=3))


ops = st.lists(
    st.builds(
        Op,
        st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(tuple),
        st.one_of(st.integers(0, 3), st.just(MISSING)),
    ),
    max_size=5,
)


def apply(node: dict[str, Any], op: Op) -> None:
    """Set (or delete) the leaf at ``op.path``, making dicts on the way; on
    a tracked session, through its own (adopted) dicts."""
    *walk, last = op.path
    for key in walk:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            if op.value is MISSING:
                return  # nothing there to delete
            node[key] = {}
            nxt = node[key]
        node = nxt
    if op.value is MISSING:
        node.pop(last, None)
    else:
        node[last] = op.value


#: A dict made empty where there was none: it merges with anything made
#: below it (and with another such dict), not with a value put in its place.
SOFT = object()


def changes(old: Any, new: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """What a side changed, as path -> new value (MISSING: removed; SOFT: an
    empty dict made), by the rule the merge states: down through dicts (a
    dict made where there was none counts as made from empty), anything
    else one unit."""
    if isinstance(new, dict) and (old is MISSING or isinstance(old, dict)):
        if old is MISSING and not new:
            return {path: SOFT}
        before = {} if old is MISSING else old
        out: dict[tuple[str, ...], Any] = {}
        for key in {*before, *new}:
            out |= changes(before.get(key, MISSING), new.get(key, MISSING), (*path, key))
        return out
    if old is MISSING and new is MISSING:
        return {}
    if type(old) is type(new) and old == new:
        return {}
    return {path: new}


def put(node: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    *walk, last = path
    for key in walk:
        node = node.setdefault(key, {})
    if value is SOFT:
        node.setdefault(last, {})
    elif value is MISSING:
        node.pop(last, None)
    else:
        node[last] = value


def overlap(a: dict[tuple[str, ...], Any], b: dict[tuple[str, ...], Any]) -> bool:
    """Whether two sides' changes touch the same leaf: one path a prefix
    of the other, unless the shorter one only made an empty dict."""
    for p, vp in a.items():
        for q, vq in b.items():
            if vp is SOFT and vq is SOFT:
                continue
            if len(p) <= len(q) and q[: len(p)] == p and (vp is not SOFT or len(p) == len(q)):
                return True
            if len(q) <= len(p) and p[: len(q)] == q and (vq is not SOFT or len(p) == len(q)):
                return True
    return False


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.dictionaries(st.sampled_from(KEYS), trees(), max_size=3), mine=ops, theirs=ops)
def test_two_copies_merge_to_both_changes_unless_they_touch_the_same_leaf(
    base: dict[str, Any], mine: list[Op], theirs: list[Op]
) -> None:
    shared = DictTier()
    namespace = f"p{next(_ns)}"
    first = TieredCache(MemoryTier(), shared, namespace=namespace)
    second = TieredCache(MemoryTier(), shared, namespace=namespace)
    first.set("k", base)
    second.get("k")
    with first.session("k") as s:
        for op in theirs:
            apply(s, op)
    after_theirs = stored(shared, namespace, "k")
    expect_theirs: dict[str, Any] = to_dict(base)
    for op in theirs:
        apply(expect_theirs, op)
    assert after_theirs == expect_theirs
    expect_mine: dict[str, Any] = to_dict(base)
    for op in mine:
        apply(expect_mine, op)
    ours, others = changes(base, expect_mine), changes(base, expect_theirs)
    if ours and others and overlap(ours, others):
        with pytest.raises(ConflictError), second.session("k") as s:
            for op in mine:
                apply(s, op)
        assert stored(shared, namespace, "k") == expect_theirs, "theirs is kept"
    else:
        with second.session("k") as s:
            for op in mine:
                apply(s, op)
        expected = to_dict(expect_theirs)
        for path, value in sorted(ours.items(), key=lambda pv: len(pv[0])):
            put(expected, path, value)
        assert stored(shared, namespace, "k") == expected
    first.close()
    second.close()


def to_dict(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        out[k] = to_dict(v) if isinstance(v, dict) else v
    return out
