"""Dirty paths: which nested keys of a tracked value changed.

::

    dirty_paths(s)
        for each dirty top-level field f (_diff: saved copy vs. now)
            diff_paths(saved[f], now[f], (f,))
                both dicts, path shorter than PATH_DEPTH ──> one level down,
                                                             key by key
                anything else that differs ──────────────> the path itself

A write costs what it always did (one flag, one saved copy of the top-level
field on its first touch); the paths are worked out when they are asked
for, from that copy, so they are exact: a nested key changed and changed
back is not dirty, and neither is a write of an equal value.

Paths descend through dicts only. A list, set, object or any other value
is one unit: ``s["cart"].append(x)`` dirties ``("cart",)``. Below
:data:`PATH_DEPTH` keys a changed subtree is one unit too.
"""

from __future__ import annotations

from typing import Any, Final

from ._compare import _kind, _same
from ._roots import _get_field, _Root
from ._sentinels import MISSING

#: The longest path reported (and merged at, see tiercache._threeway): a
#: change below this many keys counts as a change of the subtree there.
PATH_DEPTH: Final = 8


class FieldPath(tuple[Any, ...]):
    """The path of a nested field, outermost key first:
    ``FieldPath(("data", "cart"))`` is ``value["data"]["cart"]``.

    A conflict resolver receives one for a nested field (a top-level
    field is passed as the bare key, as before).

    >>> FieldPath(("data", "cart"))
    FieldPath(('data', 'cart'))
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"FieldPath({tuple.__repr__(self)})"


def _is_dict(v: Any) -> bool:
    return v is not MISSING and _kind(type(v)) is dict


def diff_paths(
    old: Any, new: Any, prefix: tuple[Any, ...] = (), limit: int = PATH_DEPTH
) -> list[tuple[Any, ...]]:
    """The paths (each ``prefix`` + keys) at which ``old`` and ``new``
    differ, type-strictly (:func:`_same`); ``MISSING`` is an absent value.

    >>> diff_paths({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}})
    [('a', 'c')]
    """
    out: list[tuple[Any, ...]] = []
    todo = [(old, new, prefix)]
    while todo:
        a, b, path = todo.pop()
        if a is b:
            continue
        if len(path) < limit and _is_dict(a) and _is_dict(b):
            for key, vb in dict.items(b):
                todo.append((dict.get(a, key, MISSING), vb, (*path, key)))
            for key in dict.keys(a):
                if key not in b:
                    out.append((*path, key))
        elif not _same(a, b):
            out.append(path)
    return out


def root_paths(root: _Root, fields: list[Any]) -> frozenset[tuple[Any, ...]]:
    """The dirty paths under the dirty top-level ``fields`` of ``root``."""
    if root.kind == "w":
        return frozenset({()})  # a list or set root is one unit
    paths: list[tuple[Any, ...]] = []
    for field in fields:
        paths.extend(diff_paths(root.saved[field], _get_field(root, field), (field,)))
    return frozenset(paths)
