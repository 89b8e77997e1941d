"""Type-strict comparison: do two values serialize alike?

``_same`` is the deep equality behind is_dirty and merges: ``1``, ``True``
and ``1.0`` differ, a tracked value and its plain twin match, key order and
set order do not count. ``_canon`` is the hashable form it compares set
members and dict keys by, ``_fingerprint`` what an opaque value is compared
by (its bytes, else its pickle). Plain copies are made by adoption's
``_plain``, which must know every node type.
"""

from __future__ import annotations

import enum
import operator
import pickle
from typing import Any

from ._adoption import _scan
from ._atoms import _ATOM_TUPLES, _ATOMS, _SIMPLE, _is_frozen_dataclass, _same_atom
from ._depth import MAX_DEPTH
from ._dict import TrackedDict
from ._list import TrackedList
from ._object_state import _obj_state, _orig_class
from ._objects import _tracked_class
from ._sentinels import MISSING
from ._set import TrackedSet


def _kind(t: type) -> Any:
    if t is dict or t is TrackedDict:
        return dict
    if t is list or t is TrackedList:
        return list
    if t is set or t is TrackedSet:
        return set
    return _orig_class(t)


def _same(a: Any, b: Any) -> bool:
    """Type-strict deep equality: true when ``a`` and ``b`` serialize alike
    (``1``, ``True`` and ``1.0`` differ; tracked and plain twins match; key
    order and set order do not count)."""
    if a is b:
        return True  # atoms are shared by the plain copies: the common case
    ta, tb = type(a), type(b)
    if ta in _ATOMS or tb in _ATOMS:
        if ta is tb and ta in _ATOM_TUPLES:
            if len(a) != len(b):
                return False
            return all(map(operator.is_, a, b)) or all(map(_same, a, b))
        return _same_atom(a, b)
    k = _kind(ta)
    if k is not _kind(tb):
        return False
    if k is dict:
        if len(a) != len(b):
            return False
        strict_keys = True
        for key, va in dict.items(a):
            vb = dict.get(b, key, MISSING)
            if vb is MISSING or not _same(va, vb):
                return False
            if type(key) is not str:
                strict_keys = False
        return strict_keys or {_canon(x) for x in a} == {_canon(x) for x in b}
    if k is list or k is tuple:
        if len(a) != len(b):
            return False
        # Watched lists of atoms share their items with the clean-point copy:
        # when every item is the very same object, nothing changed (a C-speed
        # check; the per-item comparison runs only when something moved).
        if all(map(operator.is_, a, b)):
            return True
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if k is set or k is frozenset:
        return len(a) == len(b) and {_canon(x) for x in a} == {_canon(x) for x in b}
    if isinstance(a, enum.Enum):
        return a is b
    if issubclass(k, tuple):
        if len(a) != len(b) or (not hasattr(k, "_make") and not _intact(a, b)):
            return False
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if "_tc_orig" in ta.__dict__ or "_tc_orig" in tb.__dict__ or _is_plain_obj(a):
        if _is_frozen_dataclass(k) and not _intact(a, b):
            return False
        sa, sb = _obj_state(a), _obj_state(b)
        return _same(sa, sb)
    return bool(_fingerprint(a) == _fingerprint(b))


def _intact(a: Any, b: Any) -> bool:
    """Frozen shells and tuple subclasses other than namedtuples hold parts
    that adoption checked but never took over, so they may have changed
    since (a cycle, more depth): compare them part by part only if neither
    side did. If one did, the two differ, and the serializer names where."""
    return _scan(a, 1) is None and _scan(b, 1) is None


def _is_plain_obj(v: Any) -> bool:
    return _tracked_class(type(v)) is not None or _is_frozen_dataclass(type(v))


def _canon(v: Any, depth: int = 1) -> Any:
    """A hashable, type-strict canonical form (for set members and keys)."""
    t = type(v)
    if t in _SIMPLE:
        return (t, v)
    if t is float:
        return (t, v.hex())
    if t in _ATOM_TUPLES:
        return (t, tuple(_canon(x, depth + 1) for x in v))
    if t in _ATOMS:
        return (t, repr(v))
    if depth > MAX_DEPTH:
        # Adoption bounds everything but dict keys, which it stores as given:
        # an object key holding its own dict ends here, told by identity.
        return (t, id(v))
    d = depth + 1
    k = _kind(t)
    if k is dict:
        return (dict, frozenset((_canon(x, d), _canon(y, d)) for x, y in dict.items(v)))
    if k is list or k is tuple or (isinstance(k, type) and issubclass(k, tuple)):
        return (k, tuple(_canon(x, d) for x in v))
    if k is set or k is frozenset:
        return (k, frozenset(_canon(x, d) for x in v))
    if isinstance(v, enum.Enum):
        return (t, v.name)
    if "_tc_orig" in t.__dict__ or _is_plain_obj(v):
        return (k, _canon(_obj_state(v), depth))
    return (t, _fingerprint(v))


def _fingerprint(v: Any) -> Any:
    """What an opaque value is compared by: its bytes, else its pickle."""
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    try:
        return pickle.dumps(v, protocol=5)
    except Exception:
        pass
    try:
        return repr(v)
    except Exception:  # a repr that fails, or recurses too deep: identity
        return ("id", id(v))
