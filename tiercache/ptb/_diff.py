"""Diffs of PTB's whole-dict hand-backs, and the three-way rebase of one
onto another process's change. Pure: no I/O, no telegram, no asyncio.

::

    base (what this process last loaded or wrote)
      ├── diff(base, ours)   ── our changes:   paths -> new value (or MISSING)
      └── diff(base, theirs) ── their changes (what is stored now)
                 │
                 ▼
    rebase(base, ours, theirs, resolve) ──> changes to apply to theirs
        a path only we changed            : ours
        a path only they changed          : theirs (nothing to apply)
        overlapping paths (same, or one inside the other): one region,
            the shorter path; Counters add both deltas, anything else
            goes to ``resolve(field, base, ours, theirs)`` (the cache's
            conflict resolver): its value is applied, or, if it raises
            ConflictError, theirs stays and the region is reported

A path is a tuple of keys down nested dicts (``("cart", "apples")``);
dicts are followed down to :data:`DEPTH` keys, and anything else (lists,
sets, objects) is one unit, as in the core's path-level merges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from .. import MISSING, PATH_DEPTH, ConflictError, Counter, FieldPath

__all__ = ["DEPTH", "Change", "Conflict", "apply", "diff", "get_path", "rebase", "same"]

#: How deep diffs follow nested dicts: the core's own path depth.
DEPTH: Final = PATH_DEPTH

#: One change: the path and its new value (``MISSING``: the key is removed).
Change = tuple[tuple[Any, ...], Any]

#: ``resolve(field, base, ours, theirs)``: ``field`` is the top-level key or
#: a :class:`~tiercache.FieldPath`, as the cache's resolvers take it.
Resolve = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True)
class Conflict:
    """A region both sides changed that the resolver refused to settle:
    their value was kept, ours dropped."""

    path: tuple[Any, ...]
    base: Any
    ours: Any
    theirs: Any
    error: ConflictError


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def same(a: Any, b: Any) -> bool:
    """Type-strict deep equality: ``1``, ``True`` and ``1.0`` differ (they
    are stored differently); dict key order and set order do not count.

    >>> same({"a": [1, {"b": 2.0}]}, {"a": [1, {"b": 2.0}]}), same(1, True)
    (True, False)
    """
    if a is b:
        return True
    ta = type(a)
    if ta is not type(b):
        # Tracked containers are subclasses of their plain twins.
        if not (_is_dict(a) and _is_dict(b)) and not _twins(a, b):
            return False
    if _is_dict(a):
        if len(a) != len(b):
            return False
        return all(k in b and same(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, set | frozenset):
        # Equal sets with elements of other types (1 and True) are rare
        # enough to compare by value after the sizes.
        return bool(a == b) and sorted(map(repr, a)) == sorted(map(repr, b))
    if ta is float:
        if a == b:
            return a != 0.0 or math.copysign(1.0, a) == math.copysign(1.0, b)
        return bool(a != a and b != b)
    try:
        return bool(a == b) and (ta in (int, str, bytes, bool) or repr(a) == repr(b))
    except Exception:  # an object whose __eq__ raises is a change
        return False


def _twins(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are a container and its (tracked) subclass."""
    for plain in (list, set, tuple, frozenset):
        if isinstance(a, plain) and isinstance(b, plain):
            return True
    return False


def diff(old: Any, new: Any, prefix: tuple[Any, ...] = ()) -> list[Change]:
    """The changes that turn ``old`` into ``new``: ``apply(old, diff(old,
    new))`` makes ``old`` equal to ``new``. ``MISSING`` as ``old`` or
    ``new`` is an absent value.

    >>> diff({"n": 1, "d": {"a": 1, "b": 2}}, {"n": 1, "d": {"a": 1, "c": 3}})
    [(('d', 'b'), MISSING), (('d', 'c'), 3)]
    """
    out: list[Change] = []
    _diff_into(old, new, prefix, out)
    return out


def _diff_into(old: Any, new: Any, path: tuple[Any, ...], out: list[Change]) -> None:
    if old is new:
        return
    if len(path) < DEPTH and _is_dict(old) and _is_dict(new):
        for key in old:
            if key not in new:
                out.append(((*path, key), MISSING))
        for key, value in new.items():
            if key in old:
                _diff_into(old[key], value, (*path, key), out)
            else:
                out.append(((*path, key), value))
        return
    if (old is MISSING) != (new is MISSING) or not same(old, new):
        out.append((path, new))


def get_path(value: Any, path: tuple[Any, ...]) -> Any:
    """The value at ``path`` in ``value``, or ``MISSING``."""
    for key in path:
        if not _is_dict(value) or key not in value:
            return MISSING
        value = value[key]
    return value


def apply(target: Any, changes: Iterable[Change]) -> Any:
    """Apply ``changes`` to the dict ``target`` in place (missing parents
    are created as dicts); return it. A change at the empty path replaces
    the whole value: the new value is returned and ``target`` is left as
    it was."""
    for path, value in changes:
        if not path:
            target = value
            continue
        if value is MISSING:
            parent = get_path(target, path[:-1])
            if _is_dict(parent):
                parent.pop(path[-1], None)
            continue
        node = target
        for key in path[:-1]:
            child = node.get(key, MISSING)
            if not _is_dict(child):
                node[key] = {}
                child = node[key]  # a tracked dict adopts the new one: use its copy
            node = child
        node[path[-1]] = value
    return target


def _overlap(p: tuple[Any, ...], q: tuple[Any, ...]) -> bool:
    n = min(len(p), len(q))
    return p[:n] == q[:n]


def _field(path: tuple[Any, ...]) -> Any:
    return path[0] if len(path) == 1 else FieldPath(path)


def _counted(base: Any, ours: Any, theirs: Any) -> Any:
    """Both sides' deltas when both hold Counters, else ``MISSING``."""
    if type(ours) is Counter and type(theirs) is Counter:
        if base is MISSING:
            return Counter(int(theirs) + int(ours))
        if type(base) is Counter:
            return Counter(int(theirs) + int(ours) - int(base))
    return MISSING


def rebase(
    base: Any, ours: Any, theirs: Any, resolve: Resolve
) -> tuple[list[Change], list[Conflict]]:
    """What to apply to ``theirs`` so it also holds our changes since
    ``base``, and the conflicts the resolver refused (theirs kept there).

    >>> base, ours, theirs = {"a": 1, "b": 1}, {"a": 2, "b": 1}, {"a": 1, "b": 5}
    >>> rebase(base, ours, theirs, lambda *_: None)
    ([(('a',), 2)], [])

    A dict both sides created where there was none merges key by key, as
    if it had been there, empty:

    >>> rebase({}, {"p": {"lang": "de"}}, {"p": {"city": "Rome"}}, lambda *_: None)
    ([(('p', 'lang'), 'de')], [])
    """
    changes: list[Change] = []
    conflicts: list[Conflict] = []
    _rebase(base, ours, theirs, resolve, (), changes, conflicts)
    return changes, conflicts


def _rebase(
    base: Any,
    ours: Any,
    theirs: Any,
    resolve: Resolve,
    at: tuple[Any, ...],
    changes: list[Change],
    conflicts: list[Conflict],
) -> None:
    """:func:`rebase` of the values at path ``at``, into the two lists."""
    mine = diff(base, ours, at)
    if not mine:
        return
    other = [p for p, _ in diff(base, theirs, at)]
    # The regions both changed: for each overlapping pair, the shorter path...
    found: list[tuple[Any, ...]] = []
    for p, _ in mine:
        for q in other:
            if _overlap(p, q) and (r := p if len(p) <= len(q) else q) not in found:
                found.append(r)
    # ... minus those inside another region: one resolver call per region.
    regions = [r for r in found if not any(len(s) < len(r) and r[: len(s)] == s for s in found)]
    changes.extend((p, v) for p, v in mine if not any(_overlap(p, r) for r in regions))
    n = len(at)
    for r in regions:
        b, o, t = get_path(base, r[n:]), get_path(ours, r[n:]), get_path(theirs, r[n:])
        if b is MISSING and _is_dict(o) and _is_dict(t) and len(r) < DEPTH:
            _rebase({}, o, t, resolve, r, changes, conflicts)
            continue
        merged = _counted(b, o, t)
        if merged is MISSING:
            try:
                merged = resolve(_field(r), b, o, t)
            except ConflictError as exc:
                conflicts.append(Conflict(r, b, o, t, exc))
                continue
        if not same(merged, t):
            changes.append((r, merged))
