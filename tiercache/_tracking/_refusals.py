"""Naming what was refused: the path to a cycle or an over-deep value.

Error path only. A refused write has already been put back when these run;
they find where in the root the value was going (``_path_to``), where inside
it the cycle or the depth limit is (``_scan``), and render both as the
SerializationError a user sees::

    cannot store key 'chat:1': value['a']['me'] is value['a'] (a cycle)
"""

from __future__ import annotations

import enum
from typing import Any

from .._exceptions import SerializationError
from ._adoption import _parts, _scan, _Step
from ._atoms import _ATOMS
from ._depth import MAX_DEPTH
from ._object_state import _orig_class
from ._roots import _get_field, _Root


def _find(top: Any, node: Any) -> list[_Step] | None:
    """The steps from ``top`` to ``node`` (by identity) inside a tracked value."""
    kids = _parts(top)
    if kids is None:
        return None
    stack = [kids]
    steps: list[_Step] = []
    while stack:
        for how, key, child in stack[-1]:
            if child is node:
                return [*steps, (how, key)]
            ck = _parts(child)
            if ck is not None and len(stack) <= MAX_DEPTH:
                stack.append(ck)
                steps.append((how, key))
                break
        else:
            stack.pop()
            if steps:
                steps.pop()
    return None


def _path_to(root: _Root, node: Any) -> list[_Step]:
    """Where ``node`` sits in its root."""
    top = root.value
    if node is top:
        return []
    if root.kind == "w":
        return _find(top, node) or [("...", None)]
    field = node._tc_field
    first: _Step = ("[]" if root.kind == "d" else ".", field)
    sub = _get_field(root, field)
    if sub is node:
        return [first]
    rest = _find(sub, node)
    return [first, *(rest or [("...", None)])]


def _short(x: Any) -> str:
    t = type(x)
    if (
        t in _ATOMS
        or isinstance(x, enum.Enum)
        or (t is tuple and all(type(y) in _ATOMS for y in x))
    ):
        r = repr(x)
        return r if len(r) <= 40 else r[:37] + "..."
    return f"<{_orig_class(t).__name__}>"


def _render(steps: list[_Step]) -> str:
    parts = []
    for how, key in steps:
        if how == "[]":
            parts.append(f"[{_short(key)}]")
        elif how == ".":
            parts.append(f".{key}")
        elif how == "item":
            parts.append(f" item {_short(key)}")
        else:
            parts.append("...")
    if len(parts) > 12:
        parts[6:-6] = [f"...({len(parts) - 12} more)..."]
    return "value" + "".join(parts)


def _refusal(label: str | None, where: list[_Step], value: Any, depth: int) -> SerializationError:
    """The error for ``value``, refused on its way to ``where`` (steps from
    the root) at level ``depth``; the caller has already put everything back."""
    found = _scan(value, depth)
    if found is None:  # pragma: no cover - the walk and _scan agree
        detail = f"{_render(where)} holds a cycle or nests deeper than {MAX_DEPTH} levels"
    else:
        steps, at = found
        path = _render(where + steps)
        if at is None:
            detail = f"nested deeper than {MAX_DEPTH} levels at {path}"
        else:
            detail = f"{path} is {_render(where + steps[:at])} (a cycle)"
    if label is not None:
        detail = f"cannot store key {label!r}: {detail}"
    return SerializationError(detail)


def _refused_at(root: _Root, node: Any, step: _Step, value: Any) -> SerializationError:
    return _refusal(root.label, [*_path_to(root, node), step], value, node._tc_depth + 1)
