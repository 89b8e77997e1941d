"""The three-way merge of plain values, at path level.

::

    merge_fields(base, ours, theirs)         base: field -> value both saw
        each field we changed ──> merge_at((field,), was, mine, other)
            mine == was ───────────────> theirs (no net change of ours)
            other == was ──────────────> mine   (only we changed it)
            both changed:
              a mergeable type says how (Counter: add the deltas) ──> merged
              all three dicts, path < PATH_DEPTH ──> key by key, one level down
              else ──> resolver(key, path, was, mine, other)

"Changed" is type-strict and holds *whatever the values*: two writers that
each took a leaf from 5 to 6 made two changes, and agreeing on 6 would lose
one; that leaf goes to the resolver. Lists, sets, objects and every other
value are one unit unless their type merges (:mod:`tiercache._mergeable`).
No I/O here; :meth:`Core.merge` calls it and counts the conflicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._mergeable import NOT_MERGEABLE, merge_values
from ._tracking import MISSING, PATH_DEPTH, WHOLE, FieldPath
from ._tracking import _same as same
from ._tracking._paths import _is_dict

__all__ = ["Merge3"]


class Merge3:
    """One merge: the resolver to call and the conflicts it met."""

    __slots__ = ("conflicts", "key", "resolver")

    def __init__(self, key: str, resolver: Callable[[str, Any, Any, Any, Any], Any]) -> None:
        self.key = key
        self.resolver = resolver
        self.conflicts = 0

    def fields(self, base: dict[Any, Any], ours: Any, theirs: Any) -> Any:
        """``ours`` (plain) merged into ``theirs`` (plain, or MISSING),
        ``base`` mapping each top-level field we changed to its value at
        the version both sides share."""
        if type(ours) is dict and (theirs is MISSING or type(theirs) is dict):
            merged = {} if theirs is MISSING else dict(theirs)
            for field, was in base.items():
                value = self.at((field,), was, ours.get(field, MISSING), merged.get(field, MISSING))
                if value is MISSING:
                    merged.pop(field, None)
                else:
                    merged[field] = value
            return merged
        # One field: the whole value.
        if not base:
            return theirs
        was = base.get(WHOLE, MISSING) if len(base) == 1 else MISSING
        return self.at((), was, ours, theirs)

    def at(self, path: tuple[Any, ...], was: Any, mine: Any, other: Any) -> Any:
        """The merged value at ``path`` (MISSING: absent)."""
        if same(mine, was):
            return other  # no net change of ours: theirs stands
        if same(other, was):
            return mine
        merged = merge_values(was, mine, other)
        if merged is not NOT_MERGEABLE:
            return merged
        if (
            len(path) < PATH_DEPTH
            and _is_dict(mine)
            and _is_dict(other)
            and (was is MISSING or _is_dict(was))
        ):
            # Both changed this dict: merge it key by key. Both having made
            # it (no base) merges like both having started from empty.
            before = {} if was is MISSING else was
            out = dict(other)
            for key in (*dict.keys(mine), *(k for k in dict.keys(before) if k not in mine)):
                old = dict.get(before, key, MISSING)
                value = self.at(
                    (*path, key), old, dict.get(mine, key, MISSING), dict.get(other, key, MISSING)
                )
                if value is MISSING:
                    out.pop(key, None)
                else:
                    out[key] = value
            return out
        self.conflicts += 1
        if not path:
            field: Any = WHOLE
        elif len(path) == 1:
            field = path[0]
        else:
            field = FieldPath(path)
        return self.resolver(self.key, field, was, mine, other)
