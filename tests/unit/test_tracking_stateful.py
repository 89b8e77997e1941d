"""Property test: random mutation sequences on a tracked value and a plain twin.

After every step the tracked value equals its twin type-strictly, and
``is_dirty`` / ``dirty_fields`` say exactly which top-level fields serialize
differently from the last clean point (judged by an independent canonical
encoder). ``revert`` must bring back exactly the clean-point state.
"""

from __future__ import annotations

import copy
import heapq
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tiercache._tracking import (
    MISSING,
    WHOLE,
    changes,
    dirty_fields,
    is_dirty,
    mark_clean,
    revert,
    track,
)

from .test_tracking_canon import canon

KEYS = ["a", "b", "c", "d"]
# Scalars that compare equal across types, so type-strictness is exercised.
scalars = st.sampled_from([0, 1, True, False, 1.0, 0.0, -0.0, "x", "", None, b"b"])
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=3),
        st.sets(scalars, max_size=3),
        st.tuples(inner, inner),
    ),
    max_leaves=6,
)
index = st.integers(-4, 4)
slices = st.tuples(st.none() | index, st.none() | index, st.sampled_from([None, 1, 2, -1]))


def _sl(t: tuple[int | None, int | None, int | None]) -> slice:
    return slice(*t)


class TrackingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.plain: Any = None
        self.tracked: Any = None
        self.clean: Any = None

    @initialize(start=st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
    def start(self, start: dict[str, Any]) -> None:
        self.plain = copy.deepcopy(start)
        self.tracked = track(copy.deepcopy(start))
        self.clean = copy.deepcopy(start)

    # -- navigation: a path to a container at any depth in both twins ------

    def _containers(self, kind: type) -> list[tuple[Any, Any]]:
        found: list[tuple[Any, Any]] = []

        def walk(p: Any, t: Any) -> None:
            if isinstance(p, kind):
                found.append((p, t))
            if isinstance(p, dict):
                for k in p:
                    walk(p[k], t[k])
            elif isinstance(p, (list, tuple)):
                for x, y in zip(p, t, strict=True):
                    walk(x, y)

        walk(self.plain, self.tracked)
        return found

    def _both(self, kind: type, pick: int, fn: Any) -> None:
        targets = self._containers(kind)
        if not targets:
            return
        p, t = targets[pick % len(targets)]
        outcomes = []
        for target in (p, t):
            try:
                fn(target, target is p) if fn.__code__.co_argcount == 2 else fn(target)
                outcomes.append(None)
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1]

    # -- dict mutators ------------------------------------------------------

    @rule(pick=st.integers(0, 9), k=st.sampled_from(KEYS), v=values)
    def setitem(self, pick: int, k: str, v: Any) -> None:
        self._both(dict, pick, lambda d: d.__setitem__(k, copy.deepcopy(v)))

    @rule(pick=st.integers(0, 9), k=st.sampled_from(KEYS))
    def delitem(self, pick: int, k: str) -> None:
        self._both(dict, pick, lambda d: d.__delitem__(k))

    @rule(pick=st.integers(0, 9), k=st.sampled_from(KEYS), v=values, how=st.integers(0, 3))
    def update(self, pick: int, k: str, v: Any, how: int) -> None:
        def op(d: dict[str, Any]) -> None:
            val = copy.deepcopy(v)
            if how == 0:
                d.update({k: val})
            elif how == 1:
                d.update([(k, val)])
            elif how == 2:
                d.update(**{k: val})
            else:
                d |= {k: val}

        self._both(dict, pick, op)

    @rule(pick=st.integers(0, 9), k=st.sampled_from(KEYS), v=values)
    def setdefault_then_mutate(self, pick: int, k: str, v: Any) -> None:
        def op(d: dict[str, Any]) -> None:
            got = d.setdefault(k, copy.deepcopy(v))
            if isinstance(got, list):
                got.append(1)
            elif isinstance(got, set):
                got.add("vip")
            elif isinstance(got, dict):
                got["a"] = 1

        self._both(dict, pick, op)

    @rule(pick=st.integers(0, 9), k=st.sampled_from(KEYS), how=st.integers(0, 2))
    def dict_removals(self, pick: int, k: str, how: int) -> None:
        ops = [lambda d: d.pop(k, None), lambda d: d.popitem(), lambda d: d.clear()]
        self._both(dict, pick, ops[how])

    # -- list mutators -------------------------------------------------------

    @rule(pick=st.integers(0, 9), i=index, v=values)
    def list_setitem(self, pick: int, i: int, v: Any) -> None:
        self._both(list, pick, lambda x: x.__setitem__(i, copy.deepcopy(v)))

    @rule(pick=st.integers(0, 9), s=slices, vs=st.lists(values, max_size=3))
    def list_set_slice(self, pick: int, s: Any, vs: list[Any]) -> None:
        self._both(list, pick, lambda x: x.__setitem__(_sl(s), copy.deepcopy(vs)))

    @rule(pick=st.integers(0, 9), i=index | slices)
    def list_delitem(self, pick: int, i: Any) -> None:
        key = _sl(i) if isinstance(i, tuple) else i
        self._both(list, pick, lambda x: x.__delitem__(key))

    @rule(pick=st.integers(0, 9), v=values, i=index, how=st.integers(0, 4))
    def list_grow(self, pick: int, v: Any, i: int, how: int) -> None:
        def op(x: list[Any], is_plain: bool) -> None:
            val = copy.deepcopy(v)
            if how == 0:
                x.append(val)
            elif how == 1:
                x.extend([val, 1])
            elif how == 2:
                x.insert(i, val)
            elif how == 3:
                x += [val]
            elif is_plain:
                # the aliasing policy: repeats of a container are copies
                x[:] = x + [copy.deepcopy(e) for _ in range(i % 3 - 1) for e in x] if i % 3 else []
            else:
                x *= i % 3

        self._both(list, pick, op)

    @rule(pick=st.integers(0, 9), k=st.sampled_from(KEYS), n=st.integers(0, 3))
    def retype(self, pick: int, k: str, n: int) -> None:
        """Store a value == to the current one but of another type."""
        ones: list[Any] = [True, 1.0, 1]
        zeros: list[Any] = [False, 0.0, -0.0, 0]

        def op(d: dict[str, Any]) -> None:
            cur = d.get(k)
            if type(cur) in (int, bool, float) and cur in (0, 1):
                options = ones if cur == 1 else zeros
                d[k] = options[n % len(options)]

        self._both(dict, pick, op)

    @rule(pick=st.integers(0, 9), i=index, v=scalars, how=st.integers(0, 5))
    def list_shrink_reorder(self, pick: int, i: int, v: Any, how: int) -> None:
        ops = [
            lambda x: x.pop(i),
            lambda x: x.remove(v),
            lambda x: x.clear(),
            lambda x: x.sort(key=repr),
            lambda x: x.reverse(),
            lambda x: x.__init__([v]),
        ]
        self._both(list, pick, ops[how])

    @rule(pick=st.integers(0, 9), v=st.integers(0, 3), how=st.integers(0, 2))
    def heapq_ops(self, pick: int, v: int, how: int) -> None:
        def op(x: list[Any]) -> None:
            if not all(type(e) is int for e in x):
                return  # only int heaps: same behaviour on both twins
            [heapq.heappush, lambda h, _v: heapq.heapify(h), heapq.heappushpop][how](x, v)

        self._both(list, pick, op)

    # -- set mutators ---------------------------------------------------------

    @rule(
        pick=st.integers(0, 9), v=scalars, vs=st.sets(scalars, max_size=3), how=st.integers(0, 13)
    )
    def set_ops(self, pick: int, v: Any, vs: set[Any], how: int) -> None:
        def op(s: set[Any]) -> None:
            other = set(vs)
            [
                lambda: s.add(v),
                lambda: s.discard(v),
                lambda: s.remove(v),
                lambda: s.pop(),
                lambda: s.clear(),
                lambda: s.update(other),
                lambda: s.intersection_update(other),
                lambda: s.difference_update(other),
                lambda: s.symmetric_difference_update(other),
                lambda: s.__ior__(other),
                lambda: s.__iand__(other),
                lambda: s.__isub__(other),
                lambda: s.__ixor__(other),
                lambda: s.__init__(other),
            ][how]()

        self._both(set, pick, op)

    # -- clean points -------------------------------------------------------

    @rule()
    def clean(self) -> None:
        mark_clean(self.tracked)
        self.clean = copy.deepcopy(self.plain)

    @rule()
    def rollback(self) -> None:
        revert(self.tracked)
        self.plain = copy.deepcopy(self.clean)

    @rule(k=st.sampled_from(KEYS))
    def reads(self, k: str) -> None:
        t = self.tracked
        t.get(k), list(t.items()), k in t, len(t), t.copy(), t | {}
        repr(t), copy.deepcopy(t)

    # -- invariants ------------------------------------------------------------

    @invariant()
    def matches_twin_and_is_exact(self) -> None:
        if self.tracked is None:
            return
        assert canon(self.tracked) == canon(self.plain)
        expected = {
            k
            for k in self.plain.keys() | self.clean.keys()
            if canon(self.plain.get(k, MISSING)) != canon(self.clean.get(k, MISSING))
        }
        assert dirty_fields(self.tracked) == expected
        assert is_dirty(self.tracked) == bool(expected)
        base = changes(self.tracked)
        assert set(base) == expected
        for k, old in base.items():
            assert canon(old) == canon(self.clean.get(k, MISSING))


TrackingMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=30, deadline=None
)
test_tracking_machine = TrackingMachine.TestCase


class ListRootMachine(RuleBasedStateMachine):
    """A list root: its one field is WHOLE."""

    def __init__(self) -> None:
        super().__init__()
        self.plain: list[Any] = [1, [2], {"a": 1}]
        self.tracked: list[Any] = track(copy.deepcopy(self.plain))
        self.clean = copy.deepcopy(self.plain)

    @rule(v=values, i=index, how=st.integers(0, 6))
    def mutate(self, v: Any, i: int, how: int) -> None:
        def apply(x: list[Any], val: Any) -> None:
            if how == 0:
                x.append(val)
            elif how == 1:
                x.pop(i)
            elif how == 2:
                x[i] = val
            elif how == 3:
                x.insert(i, val)
            elif how == 4:
                x.reverse()
            elif how == 5 and x and isinstance(x[-1], list):
                x[-1].append(val)
            elif how == 6:
                x.clear()

        for x in (self.plain, self.tracked):
            try:
                apply(x, copy.deepcopy(v))
            except IndexError:
                pass

    @rule()
    def clean(self) -> None:
        mark_clean(self.tracked)
        self.clean = copy.deepcopy(self.plain)

    @invariant()
    def exact(self) -> None:
        assert canon(self.tracked) == canon(self.plain)
        changed = canon(self.plain) != canon(self.clean)
        assert is_dirty(self.tracked) == changed
        assert dirty_fields(self.tracked) == ({WHOLE} if changed else set())


ListRootMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
test_list_root_machine = ListRootMachine.TestCase
