"""Atoms: values that never change in place.

An atom (by exact type: ``_ATOMS``) is stored as it is, never adopted,
copied or watched; enum types join the set the first time adoption meets
one. Tuples, frozensets, namedtuples and frozen dataclasses made of atoms
are immutable too (``_is_immutable``). Two atoms are the same when they
serialize the same (``_same_atom``): ``1``, ``True`` and ``1.0`` differ.

Atom types defined above this package -- ``Counter`` and ``Log`` in
tiercache._mergeable, which imports the tracker -- join as they are defined
(``@_atom_type``): the tracker cannot import them without a cycle, and no
value of theirs can exist before their class statement has run. A tuple
atom (``Log``) holds only immutable values, checked when it is built, so it
is stored as it is like any atom, but compared item by item like a tuple.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import math
import operator
import uuid
from collections.abc import Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, TypeVar

from ._depth import MAX_DEPTH, _Refused
from ._sentinels import _Sentinel

# Values that never change in place: returned as-is, never watched.
_ATOMS: set[type] = {
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    range,
    Decimal,
    Fraction,
    _dt.datetime,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    _dt.timezone,
    uuid.UUID,
    type(Ellipsis),
    type(NotImplemented),
}
# Atoms whose same-type ``==`` is exactly "serializes the same".
_SIMPLE: Final = frozenset({type(None), bool, int, str, bytes})


_ATOMS.add(_Sentinel)

# Atoms that are tuples of immutable values (a subset of _ATOMS).
_ATOM_TUPLES: set[type] = set()

_T = TypeVar("_T", bound=type)


def _atom_type(cls: _T) -> _T:
    """Class decorator: ``cls`` (an immutable type defined above this
    package) becomes an atom; a tuple subclass also a tuple atom."""
    if issubclass(cls, tuple):
        _ATOM_TUPLES.add(cls)
    _ATOMS.add(cls)
    return cls


def _same_atom(a: Any, b: Any) -> bool:
    t = type(a)
    if t is not type(b):
        return False
    if t in _SIMPLE:
        return bool(a == b)
    if t is float:
        if a == b:
            return a != 0.0 or math.copysign(1.0, a) == math.copysign(1.0, b)
        return bool(a != a and b != b)  # both nan
    if t in _ATOM_TUPLES:
        # Equal items may serialize differently (1 and True, or a frozen
        # dataclass whose __eq__ skips a field): only the very same items
        # are surely the same here. A false "differ" costs a write that
        # _compare._same, which compares the items type-strictly, may spare.
        return len(a) == len(b) and all(map(operator.is_, a, b))
    # Decimal("1.0") == Decimal("1.00") and equal datetimes in two zones
    # serialize differently: equal *and* same repr.
    return bool(a == b) and repr(a) == repr(b)


def _is_frozen_dataclass(t: type) -> bool:
    params = t.__dict__.get("__dataclass_params__") or getattr(t, "__dataclass_params__", None)
    return params is not None and bool(params.frozen)


def _is_immutable(v: Any, depth: int = 1) -> bool:
    """Whether ``v`` (at level ``depth``) can never change in place. Raises
    _Refused past MAX_DEPTH: it judges values not yet adopted, and only
    those too deep (or a frozen cycle made with object.__setattr__) get
    there. Iterative, like the rest of what judges raw input."""
    t = type(v)
    if t in _ATOMS or isinstance(v, enum.Enum):
        return True
    if not (
        t is tuple
        or t is frozenset
        or (issubclass(t, tuple) and hasattr(t, "_make"))
        or _is_frozen_dataclass(t)
    ):
        return False
    todo = [(v, depth)]
    while todo:
        x, level = todo.pop()
        t = type(x)
        if t in _ATOMS or isinstance(x, enum.Enum):
            continue
        if t is tuple or t is frozenset or (issubclass(t, tuple) and hasattr(t, "_make")):
            parts: Iterable[Any] = x
        elif _is_frozen_dataclass(t):
            parts = [getattr(x, f.name) for f in dataclasses.fields(x)]
        else:
            return False
        if level > MAX_DEPTH:
            raise _Refused
        todo.extend((p, level + 1) for p in parts)
    return True
