"""tiercache.ptb's diffs and three-way rebase (pure functions, no PTB
Application): properties over random nested dicts."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import MISSING, ConflictError, Counter, FieldPath, raise_conflict
from tiercache.ptb._diff import apply, diff, rebase, same

keys = st.sampled_from(["a", "b", "c", 1, 2, (3, 4)])
leaves = st.one_of(
    st.integers(-3, 3),
    st.booleans(),
    st.sampled_from([0.0, -0.0, 1.5, float("nan")]),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(0, 2), max_size=3),
    st.tuples(st.integers(0, 2)),
    st.frozensets(st.integers(0, 2), max_size=2),
)
values = st.recursive(leaves, lambda inner: st.dictionaries(keys, inner, max_size=4), max_leaves=12)
records = st.dictionaries(keys, values, max_size=5)


def resolve_raises(field: Any, base: Any, ours: Any, theirs: Any) -> Any:
    return raise_conflict("k", field, base, ours, theirs)


def merged(base: Any, ours: Any, theirs: Any) -> tuple[Any, list[Any]]:
    changes, conflicts = rebase(base, ours, theirs, resolve_raises)
    return apply(copy.deepcopy(theirs), changes), conflicts


@settings(max_examples=100, deadline=None)
@given(records, records)
def test_diff_applied_to_a_gives_b(a: dict[Any, Any], b: dict[Any, Any]) -> None:
    changes = diff(a, b)
    assert same(apply(copy.deepcopy(a), changes), b)
    assert (changes == []) == same(a, b)


@given(records)
def test_nothing_changed_is_no_change(a: dict[Any, Any]) -> None:
    assert diff(a, copy.deepcopy(a)) == []
    assert rebase(a, copy.deepcopy(a), {"other": 1}, resolve_raises) == ([], [])


@settings(max_examples=80, deadline=None)
@given(records, records)
def test_rebase_onto_an_unchanged_store_is_ours(base: dict[Any, Any], ours: dict[Any, Any]) -> None:
    value, conflicts = merged(base, ours, copy.deepcopy(base))
    assert same(value, ours) and conflicts == []


@settings(max_examples=80, deadline=None)
@given(records, records, records)
def test_changes_under_different_top_level_keys_both_survive(
    base: dict[Any, Any], x: dict[Any, Any], y: dict[Any, Any]
) -> None:
    ours = {**base, **{("o", k): v for k, v in x.items()}}
    theirs = {**base, **{("t", k): v for k, v in y.items()}}
    value, conflicts = merged(base, ours, theirs)
    assert conflicts == []
    assert same(value, {**theirs, **ours})


@settings(max_examples=80, deadline=None)
@given(records, records, records)
def test_a_conflict_keeps_theirs_and_is_reported(
    base: dict[Any, Any], ours: dict[Any, Any], theirs: dict[Any, Any]
) -> None:
    value, conflicts = merged(base, ours, theirs)
    for c in conflicts:
        assert isinstance(c.error, ConflictError)
        node: Any = value
        for key in c.path:
            node = node.get(key, MISSING) if isinstance(node, dict) else MISSING
        assert same(node, c.theirs)
    # Nothing is lost silently: every path we changed holds ours, or is
    # inside a reported conflict, or they changed it too (resolved).
    their_paths = [p for p, _ in diff(base, theirs)]
    for path, want in diff(base, ours):
        inside = any(path[: len(c.path)] == c.path for c in conflicts)
        touched = any(path[: len(q)] == q or q[: len(path)] == path for q in their_paths)
        if not inside and not touched:
            node = value
            for key in path:
                node = node.get(key, MISSING) if isinstance(node, dict) else MISSING
            assert same(node, want)


@given(st.integers(0, 50), st.integers(-5, 5), st.integers(-5, 5))
def test_counters_add_both_deltas(start: int, mine: int, theirs: int) -> None:
    base = {"n": Counter(start), "deep": {"m": Counter(start)}}
    ours = {"n": Counter(start + mine), "deep": {"m": Counter(start + mine)}}
    other = {"n": Counter(start + theirs), "deep": {"m": Counter(start + theirs)}}
    value, conflicts = merged(base, ours, other)
    total = start + mine + theirs
    if mine and theirs:
        assert conflicts == []
    assert value == {"n": total, "deep": {"m": total}}
    assert type(value["n"]) is Counter


def test_same_leaf_changed_by_both_goes_to_the_resolver_with_its_path() -> None:
    seen: list[tuple[Any, ...]] = []

    def resolver(field: Any, base: Any, ours: Any, theirs: Any) -> Any:
        seen.append((field, base, ours, theirs))
        return ours + theirs

    base = {"d": {"x": 1, "y": 1}, "n": 1}
    ours = {"d": {"x": 2, "y": 1}, "n": 2}
    theirs = {"d": {"x": 3, "y": 5}, "n": 2}
    changes, conflicts = rebase(base, ours, theirs, resolver)
    assert conflicts == []
    assert apply(copy.deepcopy(theirs), changes) == {"d": {"x": 5, "y": 5}, "n": 4}
    assert seen == [(FieldPath(("d", "x")), 1, 2, 3), ("n", 1, 2, 2)]


def test_dicts_both_sides_created_merge_key_by_key() -> None:
    value, conflicts = merged({}, {"p": {"lang": "de"}}, {"p": {"city": "Rome"}})
    assert value == {"p": {"lang": "de", "city": "Rome"}} and conflicts == []


def test_a_dict_replaced_by_one_side_and_changed_inside_by_the_other_conflicts() -> None:
    value, conflicts = merged({"p": {"a": 1}}, {"p": {"a": 2}}, {"p": 7})
    assert value == {"p": 7}
    assert [c.path for c in conflicts] == [("p",)]


def test_type_strict_sameness() -> None:
    assert not same(1, True) and not same(1, 1.0) and not same(0.0, -0.0)
    assert same(float("nan"), float("nan")) and same({"a": [1]}, {"a": [1]})
    assert diff({"a": 1}, {"a": True}) == [(("a",), True)]
