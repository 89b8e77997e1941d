"""Change tracking: live values that know which top-level fields changed.

::

    plain value ──track()──> tracked root (_Root: dirty flag, saved, backup)
                                 │
    mutator on any node ─────────┤ 1. detached?  raise DetachedError
     (dict/list/set subclass     │ 2. no-op?     return, flag untouched
      method, or __setattr__     │ 3. first touch of the top-level field since
      of a tracked object)       │    the clean point: saved[field] = plain copy
                                 │ 4. dirty = True; adopt what enters, release
                                 │    what leaves; apply the change
                                 ▼
    is_dirty / dirty_fields / changes ── flag clear and nothing watched: False
                                 └─ else compare saved (and watched backups)
                                    with the current fields, type-strictly
    mark_clean ── re-walk touched fields, new clean point
    revert     ── put saved copies back in place, then mark_clean
    detach     ── every node refuses mutation until attach()

Nodes (tracked containers and objects) point straight at their root and at
the top-level field they live under, so a write costs one flag check, one
set lookup and the C operation; nothing walks up a parent chain. Reads are
not overridden at all and run at C speed.

Policies, fixed here and tested in ``tests/unit/test_tracking*.py``:

* **Adoption copies** plain ``dict``/``list``/``set`` (a builtin cannot
  become a subclass in place) and ``__slots__`` objects (their layout cannot
  grow the two tracking slots); objects with a ``__dict__`` and dataclasses
  are adopted in place by swapping their class to a generated subclass, so
  the caller's reference stays live.
* **Aliasing:** a tracked container or object belongs to exactly one place.
  Storing one that is attached elsewhere (another root, another field or
  position, even in the same container) stores a *copy*; re-storing it in
  the place it already occupies (``d["lst"] += [x]`` re-stores through
  ``__setitem__``) keeps its identity. A value removed from its place
  (``pop``, ``del``, overwrite, ``clear``...) is released and may be stored
  again anywhere without a copy.
* **Fields:** a dict root's fields are its keys, an object root's its
  attribute names; a list or set root has the single field :data:`WHOLE`.
  Key order is not part of the compared form.
* **Fallback:** values interception cannot see (``bytearray`` written via
  ``memoryview``, foreign objects without usable attribute hooks, dict/list/
  set subclasses other than ours) and lists that could be heaps (no dict,
  list or set items, so ``heapq`` may reorder them through the C API) make
  their top-level field *watched*: a plain copy is kept at the clean point
  and compared whenever the root is checked. Roots with no watched field
  answer ``is_dirty`` from the flag alone.
* **Not seen:** writes that bypass Python entirely -- unbound
  ``dict.__setitem__(d, ...)`` on a tracked dict, ``obj.__dict__[k] = v``,
  ``object.__setattr__`` -- and mutations of dict keys (keys are stored as
  given; use immutable keys).
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
import datetime as _dt
import enum
import math
import operator
import pickle
import uuid
from collections.abc import Callable, Iterable
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, SupportsIndex

from ._exceptions import DetachedError

__all__ = [
    "MISSING",
    "WHOLE",
    "TrackedDict",
    "TrackedList",
    "TrackedSet",
    "attach",
    "changes",
    "detach",
    "dirty_fields",
    "is_detached",
    "is_dirty",
    "is_tracked",
    "mark_clean",
    "quick_clean",
    "revert",
    "root_of",
    "to_plain",
    "track",
]


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name  # pickles as the module-level singleton


#: In :func:`changes`: the field did not exist at the last clean point.
MISSING: Final[Any] = _Sentinel("MISSING")
#: The one field of a list or set root (``dirty_fields(lst) == {WHOLE}``).
WHOLE: Final[Any] = _Sentinel("WHOLE")
# _tc_field of a dict or object root: the field is the key / attribute.
_SELF: Final[Any] = _Sentinel("_SELF")

_RESERVED = "_tc_"

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

# -- roots ----------------------------------------------------------------------


class _Root:
    """The bookkeeping of one tracked value; nodes point here."""

    __slots__ = ("backup", "detached", "dirty", "kind", "order", "saved", "value")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "d" dict, "o" object, "w" list/set (one field)
        self.value: Any = None
        self.dirty = False
        self.detached = False
        # field -> plain copy at the clean point (MISSING: did not exist);
        # the fields touched since then.
        self.saved: dict[Any, Any] = {}
        # field -> plain copy at the clean point, for watched fields only.
        self.backup: dict[Any, Any] = {}
        # A dict root's key order at the clean point, kept on the first
        # removal of a key so revert can restore the order too.
        self.order: list[Any] | None = None


# Nodes replaced by revert() point here: writes through stale handles raise.
_DEAD: Final = _Root("w")
_DEAD.detached = True


def _detached_error(root: _Root) -> DetachedError:
    if root is _DEAD:
        return DetachedError(
            "this tracked value was rolled back (its session scope raised) and is "
            "no longer part of the session; re-read it from the session"
        )
    return DetachedError(
        "cannot modify a detached tracked value: its session scope ended or the "
        "entry was evicted, so the change would be lost; change it inside "
        "cache.session(key) or store it with cache.set()"
    )


def _save(root: _Root, field: Any) -> None:
    """First touch of ``field`` since the clean point: keep its old value."""
    if field in root.backup:
        # The clean-point copy is right even if a bypass changed the field.
        root.saved[field] = root.backup[field]
        return
    cur = _get_field(root, field)
    root.saved[field] = cur if cur is MISSING else _plain(cur)


def _get_field(root: _Root, field: Any) -> Any:
    kind = root.kind
    if kind == "d":
        return dict.get(root.value, field, MISSING)
    if kind == "o":
        return _raw_get(root.value, field)
    return root.value


# -- adoption -------------------------------------------------------------------


class _Walk:
    """State of one adoption walk: nodes already claimed, and whether the
    field holds anything that must be watched."""

    __slots__ = ("seen", "store", "watch")

    def __init__(self, store: bool = False) -> None:
        self.seen: set[int] = set()
        self.watch = False
        # A store copies every attached node it meets, even inside a tuple;
        # a re-walk (clean point) keeps the nodes already in their field.
        self.store = store


def _adopt(value: Any, root: _Root, field: Any) -> Any:
    """Adopt a value entering a tracked container (store mode).

    A node attached anywhere is copied: the caller re-storing it in its own
    place never gets here (that is a no-op write)."""
    if type(value) in _ATOMS:
        return value
    if _node_root(value) is not None:
        value = _plain(value)
    return _claim(value, root, field, _Walk(store=True))


def _node_root(value: Any) -> _Root | None:
    t = type(value)
    if t in _CONTAINER_TYPES or "_tc_orig" in t.__dict__:
        r: _Root | None = value._tc_root
        return r
    return None


def _claim(v: Any, root: _Root, field: Any, walk: _Walk) -> Any:
    """Return ``v`` adopted under ``root``/``field``: plain containers become
    tracked copies, free or own nodes are re-stamped in place, nodes
    attached elsewhere (or met twice) are copied."""
    t = type(v)
    if t in _ATOMS:
        return v
    if t is dict:
        c = dict.__new__(TrackedDict)
        c._tc_root = root
        c._tc_field = field
        dict.update(c, v)
        _claim_dict_items(c, root, field, walk)
        return c
    if t is list:
        lc = list.__new__(TrackedList)
        lc._tc_root = root
        lc._tc_field = field
        list.extend(lc, v)
        _claim_list_items(lc, root, field, walk)
        return lc
    if t is set:
        sc = set.__new__(TrackedSet)
        sc._tc_root = root
        sc._tc_field = field
        set.update(sc, v)
        _claim_set_items(sc, root, field, walk)
        return sc
    if t in _CONTAINER_TYPES:
        if not _claimable(v, root, field, walk):
            return _claim(_plain(v), root, field, walk)
        v._tc_root = root
        v._tc_field = field
        if t is TrackedDict:
            _claim_dict_items(v, root, field, walk)
        elif t is TrackedList:
            _claim_list_items(v, root, field, walk)
        else:
            _claim_set_items(v, root, field, walk)
        return v
    return _claim_other(v, root, field, walk)


def _claimable(node: Any, root: _Root, field: Any, walk: _Walk) -> bool:
    r = node._tc_root
    ok = r is None or (
        not walk.store and r is root and node._tc_field == field and id(node) not in walk.seen
    )
    walk.seen.add(id(node))
    return ok


def _claim_dict_items(c: dict[Any, Any], root: _Root, field: Any, walk: _Walk) -> None:
    for k, x in dict.items(c):
        if type(x) not in _ATOMS:
            nx = _claim(x, root, field, walk)
            if nx is not x:
                dict.__setitem__(c, k, nx)


def _claim_list_items(c: list[Any], root: _Root, field: Any, walk: _Walk) -> None:
    heapable = True
    for i, x in enumerate(list.__iter__(c)):
        tx = type(x)
        if tx not in _ATOMS:
            if tx in _ANY_CONTAINER:
                heapable = False
            nx = _claim(x, root, field, walk)
            if nx is not x:
                list.__setitem__(c, i, nx)
    if heapable:
        # heapq reorders lists of orderable items through the C API.
        walk.watch = True


def _claim_set_items(c: set[Any], root: _Root, field: Any, walk: _Walk) -> None:
    swaps = []
    for x in set.__iter__(c):
        if type(x) not in _ATOMS:
            nx = _claim(x, root, field, walk)
            if nx is not x:
                swaps.append((x, nx))
    for x, nx in swaps:
        set.discard(c, x)
        set.add(c, nx)


def _claim_other(v: Any, root: _Root, field: Any, walk: _Walk) -> Any:
    t = type(v)
    if isinstance(v, enum.Enum):
        _ATOMS.add(t)
        return v
    if t is tuple or t is frozenset or (issubclass(t, tuple) and hasattr(t, "_make")):
        items = [x if type(x) in _ATOMS else _claim(x, root, field, walk) for x in v]
        if all(a is b for a, b in zip(items, v, strict=True)):
            return v
        if t is tuple:
            return tuple(items)
        if t is frozenset:
            return frozenset(items)
        return t._make(items)
    if "_tc_orig" in t.__dict__:
        if not _claimable(v, root, field, walk):
            return _claim(_plain(v), root, field, walk)
        object.__setattr__(v, "_tc_root", root)
        object.__setattr__(v, "_tc_field", field)
        _claim_obj_state(v, root, field, walk)
        return v
    if _is_frozen_dataclass(t):
        if not _is_immutable(v):
            walk.watch = True  # a frozen shell around mutable parts
        return v
    tc = _tracked_class(t)
    if tc is None:
        walk.watch = True  # opaque: bytearray, foreign objects...
        return v
    if tc._tc_copies:
        # A __slots__ layout cannot take the two tracking slots in place.
        new = object.__new__(tc)
        for s in tc._tc_slots:
            try:
                object.__setattr__(new, s, object.__getattribute__(v, s))
            except AttributeError:
                pass
        v = new
    else:
        try:
            object.__setattr__(v, "__class__", tc)
        except TypeError:
            _OBJ_CLASSES[t] = None
            walk.watch = True
            return v
    object.__setattr__(v, "_tc_root", root)
    object.__setattr__(v, "_tc_field", field)
    walk.seen.add(id(v))
    _claim_obj_state(v, root, field, walk)
    return v


def _claim_obj_state(v: Any, root: _Root, field: Any, walk: _Walk) -> None:
    for name, x in _obj_state(v).items():
        if type(x) not in _ATOMS:
            sub = field if field is not _SELF else name
            nx = _claim(x, root, sub, walk)
            if nx is not x:
                object.__setattr__(v, name, nx)


def _release(v: Any, to: _Root | None = None) -> None:
    """Detach a removed value's nodes from their root (``to``: _DEAD after a
    revert, so stale handles raise)."""
    t = type(v)
    if t in _ATOMS:
        return
    if t in _CONTAINER_TYPES:
        v._tc_root = to
        items: Iterable[Any] = dict.values(v) if t is TrackedDict else v
    elif "_tc_orig" in t.__dict__:
        object.__setattr__(v, "_tc_root", to)
        items = _obj_state(v).values()
    elif t is tuple or t is frozenset or issubclass(t, tuple):
        items = v
    else:
        return
    for x in items:
        if type(x) not in _ATOMS:
            _release(x, to)


# -- tracked objects ------------------------------------------------------------

_HEAPTYPE: Final = 1 << 9
# (typeshed does not declare these two copyreg helpers)
_NEWOBJ: Final[Any] = copyreg.__dict__["__newobj__"]
_RECONSTRUCTOR: Final[Any] = copyreg.__dict__["_reconstructor"]
# user class -> generated tracked subclass, or None (cannot be tracked)
_OBJ_CLASSES: dict[type, Any] = {}


def _is_frozen_dataclass(t: type) -> bool:
    params = t.__dict__.get("__dataclass_params__") or getattr(t, "__dataclass_params__", None)
    return params is not None and bool(params.frozen)


def _is_immutable(v: Any) -> bool:
    t = type(v)
    if t in _ATOMS or isinstance(v, enum.Enum):
        return True
    if t is tuple or t is frozenset or (issubclass(t, tuple) and hasattr(t, "_make")):
        return all(_is_immutable(x) for x in v)
    if _is_frozen_dataclass(t):
        return all(_is_immutable(getattr(v, f.name)) for f in dataclasses.fields(v))
    return False


def _slot_names(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for s in (slots,) if isinstance(slots, str) else slots:
            if s not in ("__dict__", "__weakref__") and s not in names:
                names.append(s)
    return tuple(names)


def _tracked_class(cls: type) -> Any:
    """The generated tracked subclass of ``cls`` (cached), or None when
    instances of ``cls`` cannot be tracked through attribute hooks."""
    try:
        return _OBJ_CLASSES[cls]
    except KeyError:
        pass
    tc: Any = None
    # Only pure-Python classes: a builtin base (dict, Exception, a C type)
    # holds state the attribute hooks never see.
    if (
        all(k is object or k.__flags__ & _HEAPTYPE for k in cls.__mro__)
        and (cls.__dictoffset__ or _slot_names(cls))
        and not _is_frozen_dataclass(cls)
    ):
        try:
            tc = _make_tracked_class(cls)
        except Exception:
            tc = None
    _OBJ_CLASSES[cls] = tc
    return tc


def _make_tracked_class(cls: type) -> type:
    has_dict = bool(cls.__dictoffset__)
    user_slots = _slot_names(cls)
    orig_setattr: Any = cls.__setattr__
    orig_delattr: Any = cls.__delattr__
    plain_setattr = orig_setattr is object.__setattr__
    stored: dict[str, bool] = {}

    def is_stored(name: str) -> bool:
        # A property or other data descriptor is not state: its setter's own
        # attribute writes come back through __setattr__ and are tracked.
        try:
            return stored[name]
        except KeyError:
            pass
        attr = None
        for klass in cls.__mro__:
            if name in klass.__dict__:
                attr = klass.__dict__[name]
                break
        ok = (
            attr is None
            or name in user_slots
            or not (hasattr(type(attr), "__set__") or hasattr(type(attr), "__delete__"))
        )
        stored[name] = ok
        return ok

    def __setattr__(self: Any, name: str, value: Any) -> None:
        root: _Root | None = self._tc_root
        if root is None or name.startswith(_RESERVED):
            orig_setattr(self, name, value)
            return
        if root.detached:
            raise _detached_error(root)
        if name in ("__class__", "__dict__"):
            raise TypeError(f"cannot rebind {name} of a tracked object")
        if not is_stored(name):
            orig_setattr(self, name, value)
            return
        old = _raw_get(self, name)
        if plain_setattr and (old is value or (type(value) in _ATOMS and _same_atom(old, value))):
            return
        field = self._tc_field
        if field is _SELF:
            field = name
        if field not in root.saved:
            _save(root, field)
        root.dirty = True
        if old is not MISSING and type(old) not in _ATOMS:
            _release(old)
        if type(value) not in _ATOMS:
            value = _adopt(value, root, field)
        orig_setattr(self, name, value)

    def __delattr__(self: Any, name: str) -> None:
        root: _Root | None = self._tc_root
        if root is None or name.startswith(_RESERVED):
            orig_delattr(self, name)
            return
        if root.detached:
            raise _detached_error(root)
        old = _raw_get(self, name)
        if old is MISSING or not is_stored(name):
            orig_delattr(self, name)  # raises AttributeError, or a property
            return
        field = self._tc_field
        if field is _SELF:
            field = name
        if field not in root.saved:
            _save(root, field)
        root.dirty = True
        orig_delattr(self, name)
        _release(old)

    # Copies, pickles and states are those of a plain twin of the user's
    # class: never a tracked class (not importable) nor root pointers.
    def __reduce_ex__(self: Any, protocol: SupportsIndex) -> Any:
        rv = _shallow_twin(self).__reduce_ex__(protocol)
        if isinstance(rv, tuple) and rv[0] is _NEWOBJ and len(rv[1]) == 1:
            # pickle refuses __newobj__ naming a class other than the
            # object's own; _reconstructor builds the same plain instance.
            rv = (_RECONSTRUCTOR, (rv[1][0], object, None), *rv[2:])
        return rv

    def __copy__(self: Any) -> Any:
        return copy.copy(_shallow_twin(self))

    def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
        return copy.deepcopy(_shallow_twin(self), memo)

    def __getstate__(self: Any) -> Any:
        return _shallow_twin(self).__getstate__()

    ns: dict[str, Any] = {
        "__slots__": () if has_dict else ("_tc_root", "_tc_field"),
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__setattr__": __setattr__,
        "__delattr__": __delattr__,
        "__reduce_ex__": __reduce_ex__,
        "__reduce__": lambda self: __reduce_ex__(self, 2),
        "__copy__": __copy__,
        "__deepcopy__": __deepcopy__,
        "__getstate__": __getstate__,
        "_tc_orig": cls,
        "_tc_slots": user_slots,
        "_tc_copies": not has_dict,
    }
    fields = getattr(cls, "__dataclass_fields__", None)
    if fields is not None:
        # orjson serializes dataclasses only if the type itself says so.
        ns["__dataclass_fields__"] = fields
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        if params.eq:
            names = tuple(f.name for f in dataclasses.fields(cls) if f.compare)
            ns["__eq__"] = _dataclass_eq(cls, names)
            ns["__hash__"] = cls.__hash__
    return type(cls)(cls.__name__, (cls,), ns)


def _dataclass_eq(cls: type, names: tuple[str, ...]) -> Callable[[Any, Any], Any]:
    # The generated __eq__ demands other.__class__ is self.__class__, which a
    # tracked instance never meets against a plain one.
    def __eq__(self: Any, other: Any) -> Any:
        if _orig_class(type(other)) is not cls:
            return NotImplemented
        return tuple(getattr(self, n) for n in names) == tuple(getattr(other, n) for n in names)

    return __eq__


def _orig_class(t: type) -> type:
    orig: type | None = t.__dict__.get("_tc_orig")
    return t if orig is None else orig


def _raw_get(obj: Any, name: str) -> Any:
    d = getattr(obj, "__dict__", None)
    if d is not None:
        v = d.get(name, MISSING)
        if v is not MISSING:
            return v
    if name in type(obj)._tc_slots:
        try:
            return object.__getattribute__(obj, name)
        except AttributeError:
            return MISSING
    return MISSING


def _obj_state(obj: Any) -> dict[str, Any]:
    """The user's attributes of an object (no ``_tc_`` names)."""
    d = getattr(obj, "__dict__", None)
    state = {} if d is None else {k: v for k, v in d.items() if not k.startswith(_RESERVED)}
    t = type(obj)
    slots = t.__dict__.get("_tc_slots")
    if slots is None:
        slots = _slot_names(t)
    for s in slots:
        try:
            state[s] = object.__getattribute__(obj, s)
        except AttributeError:
            pass
    return state


def _shallow_twin(obj: Any) -> Any:
    """A plain instance of the user's class sharing ``obj``'s attributes."""
    orig = type(obj)._tc_orig
    twin = object.__new__(orig)
    for k, v in _obj_state(obj).items():
        object.__setattr__(twin, k, v)
    return twin


# -- tracked containers ---------------------------------------------------------


class TrackedDict(dict[Any, Any]):
    """A ``dict`` whose mutators record changes; reads are plain ``dict``'s.

    Made by :func:`track`; ``isinstance(d, dict)``, ``json``/``orjson``,
    ``pickle`` and ``copy`` treat it as a plain dict (copies and pickles
    *are* plain dicts).

    >>> s = track({"count": 1})
    >>> s["count"] += 1
    >>> sorted(dirty_fields(s))
    ['count']
    """

    __slots__ = ("_tc_field", "_tc_root")
    _tc_root: _Root | None
    _tc_field: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            root = self._tc_root
        except AttributeError:  # constructed directly: a free container
            self._tc_root = None
            self._tc_field = None
            dict.__init__(self, *args, **kwargs)
            return
        if root is None:
            dict.__init__(self, *args, **kwargs)
        else:
            # dict.__init__ on a live dict is an update
            self.update(*args, **kwargs)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (dict, (dict(self),))

    def _field(self, key: Any) -> Any:
        field = self._tc_field
        return key if field is _SELF else field

    def __setitem__(self, key: Any, value: Any) -> None:
        root = self._tc_root
        if root is None:
            dict.__setitem__(self, key, value)
            return
        if root.detached:
            raise _detached_error(root)
        old = dict.get(self, key, MISSING)
        if old is value or (type(value) in _ATOMS and _same_atom(old, value)):
            return
        field = self._tc_field
        if field is _SELF:
            field = key
        if field not in root.saved:
            _save(root, field)
        root.dirty = True
        if old is not MISSING and type(old) not in _ATOMS:
            _release(old)
        if type(value) not in _ATOMS:
            value = _adopt(value, root, field)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        root = self._tc_root
        if root is None:
            dict.__delitem__(self, key)
            return
        if root.detached:
            raise _detached_error(root)
        old = dict.get(self, key, MISSING)
        if old is MISSING:
            raise KeyError(key)
        _keep_order(root, self)
        _touch(root, self._field(key))
        dict.__delitem__(self, key)
        _release(old)

    def update(self, *args: Any, **kwargs: Any) -> None:
        root = self._tc_root
        if root is None:
            dict.update(self, *args, **kwargs)
            return
        if root.detached:
            raise _detached_error(root)
        # dict() parses a mapping, pairs and kwargs exactly as update does.
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Like ``dict.setdefault``, but returns the *adopted* default, so
        ``s.setdefault("tags", set()).add("vip")`` is tracked."""
        root = self._tc_root
        if root is not None and root.detached:
            raise _detached_error(root)
        if key in self or root is None:
            return dict.setdefault(self, key, default)
        field = self._field(key)
        _touch(root, field)
        if type(default) not in _ATOMS:
            default = _adopt(default, root, field)
        dict.__setitem__(self, key, default)
        return default

    def pop(self, key: Any, *default: Any) -> Any:
        root = self._tc_root
        if root is not None and root.detached:
            raise _detached_error(root)
        if root is None or key not in self:
            return dict.pop(self, key, *default)
        _keep_order(root, self)
        _touch(root, self._field(key))
        v = dict.pop(self, key)
        _release(v)
        return v

    def popitem(self) -> tuple[Any, Any]:
        root = self._tc_root
        if root is not None and root.detached:
            raise _detached_error(root)
        if root is None or not self:
            return dict.popitem(self)
        _keep_order(root, self)
        _touch(root, self._field(next(reversed(self))))
        k, v = dict.popitem(self)
        _release(v)
        return k, v

    def clear(self) -> None:
        root = self._tc_root
        if root is not None and root.detached:
            raise _detached_error(root)
        if root is None or not self:
            dict.clear(self)
            return
        _keep_order(root, self)
        for k in self:
            _touch(root, self._field(k))
        old = list(dict.values(self))
        dict.clear(self)
        for v in old:
            _release(v)

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self


def _keep_order(root: _Root, node: Any) -> None:
    if root.order is None and root.value is node and root.kind == "d":
        root.order = list(dict.keys(node))


def _touch(root: _Root, field: Any) -> None:
    if field not in root.saved:
        _save(root, field)
    root.dirty = True


def _live_root(node: Any) -> _Root | None:
    root: _Root | None = node._tc_root
    if root is not None and root.detached:
        raise _detached_error(root)
    return root


class TrackedList(list[Any]):
    """A ``list`` whose mutators record changes; reads are plain ``list``'s.

    ``heapq`` writes through the C API: lists that could be heaps are
    watched (see the module docs), so those changes are still found.

    >>> s = track({"history": []})
    >>> s["history"].append({"text": "hi"})
    >>> sorted(dirty_fields(s))
    ['history']
    """

    __slots__ = ("_tc_field", "_tc_root")
    _tc_root: _Root | None
    _tc_field: Any

    def __init__(self, iterable: Iterable[Any] = (), /) -> None:
        try:
            root = self._tc_root
        except AttributeError:
            self._tc_root = None
            self._tc_field = None
            list.__init__(self, iterable)
            return
        if root is None:
            list.__init__(self, iterable)
            return
        if root.detached:
            raise _detached_error(root)
        self[:] = list(iterable)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (list, (list(self),))

    def _incoming(
        self, root: _Root, values: Iterable[Any], keep: set[int] | None = None
    ) -> list[Any]:
        field = self._tc_field
        out = []
        for v in values:
            if type(v) in _ATOMS:
                out.append(v)
            elif keep is not None and id(v) in keep:
                keep.discard(id(v))  # moved within this list: same place
                out.append(v)
            else:
                out.append(_adopt(v, root, field))
        return out

    def __setitem__(self, index: Any, value: Any) -> None:
        root = _live_root(self)
        if root is None:
            list.__setitem__(self, index, value)
            return
        if isinstance(index, slice):
            values = list(value)
            old = list.__getitem__(self, index)
            if not old and not values:
                return
            ids = {id(x) for x in old if type(x) not in _ATOMS}
            _touch(root, self._tc_field)
            new = self._incoming(root, values, ids)
            list.__setitem__(self, index, new)
            kept = {id(x) for x in new}
            for x in old:
                if id(x) not in kept:
                    _release(x)
            return
        try:
            old = list.__getitem__(self, index)
        except IndexError:
            list.__setitem__(self, index, value)  # raises the list's own error
            raise
        if old is value or (type(value) in _ATOMS and _same_atom(old, value)):
            return
        _touch(root, self._tc_field)
        if type(old) not in _ATOMS:
            _release(old)
        if type(value) not in _ATOMS:
            value = _adopt(value, root, self._tc_field)
        list.__setitem__(self, index, value)

    def __delitem__(self, index: Any) -> None:
        root = _live_root(self)
        if root is None:
            list.__delitem__(self, index)
            return
        old = list.__getitem__(self, index)
        if isinstance(index, slice):
            if not old:
                return
            old_items: list[Any] = old
        else:
            old_items = [old]
        _touch(root, self._tc_field)
        list.__delitem__(self, index)
        for x in old_items:
            _release(x)

    def append(self, value: Any) -> None:
        root = _live_root(self)
        if root is not None:
            _touch(root, self._tc_field)
            if type(value) not in _ATOMS:
                value = _adopt(value, root, self._tc_field)
        list.append(self, value)

    def extend(self, values: Iterable[Any]) -> None:
        root = _live_root(self)
        if root is None:
            list.extend(self, values)
            return
        items = list(values)
        if not items:
            return
        _touch(root, self._tc_field)
        list.extend(self, self._incoming(root, items))

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, n: SupportsIndex) -> TrackedList:
        root = _live_root(self)
        count = n.__index__()
        if root is None:
            list.__imul__(self, count)
            return self
        if count == 1 or not self:
            return self
        if count <= 0:
            self.clear()
            return self
        _touch(root, self._tc_field)
        orig = list(self)
        for _ in range(count - 1):
            # Repeats would alias one node at two positions: copy them.
            list.extend(self, self._incoming(root, orig))
        return self

    def insert(self, index: SupportsIndex, value: Any) -> None:
        root = _live_root(self)
        if root is not None:
            _touch(root, self._tc_field)
            if type(value) not in _ATOMS:
                value = _adopt(value, root, self._tc_field)
        list.insert(self, index, value)

    def pop(self, index: SupportsIndex = -1) -> Any:
        root = _live_root(self)
        if root is None or not self:
            return list.pop(self, index)
        list.__getitem__(self, index)  # IndexError before any bookkeeping
        _touch(root, self._tc_field)
        v = list.pop(self, index)
        _release(v)
        return v

    def remove(self, value: Any) -> None:
        root = _live_root(self)
        if root is None:
            list.remove(self, value)
            return
        try:
            i = list.index(self, value)
        except ValueError:
            list.remove(self, value)  # raises list.remove's own error
            raise
        _touch(root, self._tc_field)
        v = list.pop(self, i)
        _release(v)

    def clear(self) -> None:
        root = _live_root(self)
        if root is None or not self:
            list.clear(self)
            return
        _touch(root, self._tc_field)
        old = list(self)
        list.clear(self)
        for v in old:
            _release(v)

    def sort(self, *, key: Callable[[Any], Any] | None = None, reverse: bool = False) -> None:
        root = _live_root(self)
        if root is not None and len(self) > 1:
            _touch(root, self._tc_field)
        list.sort(self, key=key, reverse=reverse)

    def reverse(self) -> None:
        root = _live_root(self)
        if root is not None and len(self) > 1:
            _touch(root, self._tc_field)
        list.reverse(self)


class TrackedSet(set[Any]):
    """A ``set`` whose mutators record changes; reads are plain ``set``'s.

    >>> s = track({"tags": set()})
    >>> s["tags"].add("vip")
    >>> sorted(dirty_fields(s))
    ['tags']
    """

    __slots__ = ("_tc_field", "_tc_root")
    _tc_root: _Root | None
    _tc_field: Any

    def __init__(self, iterable: Iterable[Any] = (), /) -> None:
        try:
            root = self._tc_root
        except AttributeError:
            self._tc_root = None
            self._tc_field = None
            set.__init__(self, iterable)
            return
        if root is None:
            set.__init__(self, iterable)
            return
        if root.detached:
            raise _detached_error(root)
        new = list(iterable)
        self.clear()
        self.update(new)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (set, (list(self),))

    def __repr__(self) -> str:
        # set's repr names the subclass (dict's and list's do not): show the
        # plain twin's, so logs, doctests and sort(key=repr) match it.
        return set.__repr__(set(self))

    def _put(self, root: _Root, members: Iterable[Any]) -> None:
        field = self._tc_field
        for m in members:
            set.add(self, m if type(m) in _ATOMS else _adopt(m, root, field))

    def add(self, value: Any) -> None:
        root = _live_root(self)
        if root is None or value in self:
            set.add(self, value)
            return
        _touch(root, self._tc_field)
        self._put(root, (value,))

    def discard(self, value: Any) -> None:
        root = _live_root(self)
        if root is None or value not in self:
            set.discard(self, value)
            return
        _touch(root, self._tc_field)
        set.discard(self, value)
        _release(value)

    def remove(self, value: Any) -> None:
        root = _live_root(self)
        if root is None or value not in self:
            set.remove(self, value)
            return
        _touch(root, self._tc_field)
        set.remove(self, value)
        _release(value)

    def pop(self) -> Any:
        root = _live_root(self)
        if root is None or not self:
            return set.pop(self)
        _touch(root, self._tc_field)
        v = set.pop(self)
        _release(v)
        return v

    def clear(self) -> None:
        root = _live_root(self)
        if root is None or not self:
            set.clear(self)
            return
        _touch(root, self._tc_field)
        old = list(self)
        set.clear(self)
        for v in old:
            _release(v)

    def update(self, *others: Iterable[Any]) -> None:
        root = _live_root(self)
        if root is None:
            set.update(self, *others)
            return
        # dict.fromkeys: one adoption per distinct member, in order
        new = [m for m in dict.fromkeys(m for other in others for m in other) if m not in self]
        if not new:
            return
        _touch(root, self._tc_field)
        self._put(root, new)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        root = _live_root(self)
        if root is None:
            set.intersection_update(self, *others)
            return
        others = tuple(o if isinstance(o, (set, frozenset)) else list(o) for o in others)
        keep = set.intersection(self, *others)
        # The result may hold the *other* operand's member (1 for True):
        # a no-op only if the very same members survive.
        if len(keep) == len(self) and {(type(m), repr(m)) for m in keep} == {
            (type(m), repr(m)) for m in self
        }:
            return
        _touch(root, self._tc_field)
        old = list(self)
        set.intersection_update(self, *others)
        for m in old:
            if m not in self:
                _release(m)

    def difference_update(self, *others: Iterable[Any]) -> None:
        root = _live_root(self)
        if root is None:
            set.difference_update(self, *others)
            return
        gone = [m for other in others for m in other if m in self]
        if not gone:
            return
        _touch(root, self._tc_field)
        set.difference_update(self, gone)
        for m in gone:
            _release(m)

    def symmetric_difference_update(self, other: Iterable[Any]) -> None:
        root = _live_root(self)
        if root is None:
            set.symmetric_difference_update(self, other)
            return
        items = set(other)
        if not items:
            return
        _touch(root, self._tc_field)
        gone = {m for m in items if m in self}
        set.difference_update(self, gone)
        self._put(root, (m for m in items if m not in gone))
        for m in gone:
            _release(m)

    def __ior__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        if not isinstance(other, (set, frozenset)):
            return NotImplemented
        self.update(other)
        return self

    def __iand__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        if not isinstance(other, (set, frozenset)):
            return NotImplemented
        self.intersection_update(other)
        return self

    def __isub__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        if not isinstance(other, (set, frozenset)):
            return NotImplemented
        self.difference_update(other)
        return self

    def __ixor__(self, other: Any) -> TrackedSet:  # type: ignore[misc]
        if not isinstance(other, (set, frozenset)):
            return NotImplemented
        self.symmetric_difference_update(other)
        return self


_CONTAINER_TYPES: Final = frozenset({TrackedDict, TrackedList, TrackedSet})
_ANY_CONTAINER: Final = frozenset({dict, list, set, TrackedDict, TrackedList, TrackedSet})


# -- plain copies and type-strict comparison ------------------------------------


def _plain(v: Any) -> Any:
    """A deep copy of ``v`` in plain builtins and the user's own classes."""
    t = type(v)
    if t in _ATOMS:
        return v
    if t is dict or t is TrackedDict:
        return {k: x if type(x) in _ATOMS else _plain(x) for k, x in dict.items(v)}
    if t is list or t is TrackedList:
        return [x if type(x) in _ATOMS else _plain(x) for x in list.__iter__(v)]
    if t is set or t is TrackedSet:
        return {x if type(x) in _ATOMS else _plain(x) for x in set.__iter__(v)}
    if t is tuple:
        return tuple([_plain(x) for x in v])
    if t is frozenset:
        return frozenset([_plain(x) for x in v])
    if isinstance(v, enum.Enum):
        return v
    if issubclass(t, tuple) and hasattr(t, "_make"):
        return t._make([_plain(x) for x in v])
    orig = t.__dict__.get("_tc_orig")
    if orig is not None:
        twin = object.__new__(orig)
        for k, x in _obj_state(v).items():
            object.__setattr__(twin, k, _plain(x))
        return twin
    if _is_frozen_dataclass(t) and _is_immutable(v):
        return v
    try:
        return copy.deepcopy(v)
    except Exception:  # an uncopyable foreign object: share it
        return v


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
    # Decimal("1.0") == Decimal("1.00") and equal datetimes in two zones
    # serialize differently: equal *and* same repr.
    return bool(a == b) and repr(a) == repr(b)


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
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if "_tc_orig" in ta.__dict__ or "_tc_orig" in tb.__dict__ or _is_plain_obj(a):
        sa, sb = _obj_state(a), _obj_state(b)
        return _same(sa, sb)
    return bool(_fingerprint(a) == _fingerprint(b))


def _is_plain_obj(v: Any) -> bool:
    return _tracked_class(type(v)) is not None or _is_frozen_dataclass(type(v))


def _canon(v: Any) -> Any:
    """A hashable, type-strict canonical form (for set members and keys)."""
    t = type(v)
    if t in _SIMPLE:
        return (t, v)
    if t is float:
        return (t, v.hex())
    if t in _ATOMS:
        return (t, repr(v))
    k = _kind(t)
    if k is dict:
        return (dict, frozenset((_canon(x), _canon(y)) for x, y in dict.items(v)))
    if k is list or k is tuple or (isinstance(k, type) and issubclass(k, tuple)):
        return (k, tuple(_canon(x) for x in v))
    if k is set or k is frozenset:
        return (k, frozenset(_canon(x) for x in v))
    if isinstance(v, enum.Enum):
        return (t, v.name)
    if "_tc_orig" in t.__dict__ or _is_plain_obj(v):
        return (k, _canon(_obj_state(v)))
    return (t, _fingerprint(v))


def _fingerprint(v: Any) -> Any:
    """What an opaque value is compared by: its bytes, else its pickle."""
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    try:
        return pickle.dumps(v, protocol=5)
    except Exception:
        return repr(v)


# -- the API ----------------------------------------------------------------------


def root_of(value: Any) -> _Root | None:
    """The bookkeeping object of a tracked root, ``None`` for an immutable
    value. The cache keeps it beside the value so its hot paths flip
    ``detached`` and read ``dirty``/``backup`` without a call."""
    return _root(value, "root_of")


def is_tracked(value: Any) -> bool:
    """Whether ``value`` is a tracked container or object (root or nested).

    >>> is_tracked(track({})), is_tracked({})
    (True, False)
    """
    t = type(value)
    return t in _CONTAINER_TYPES or "_tc_orig" in t.__dict__


def track(value: Any) -> Any:
    """Adopt ``value`` as a tracked root and return the root.

    ``dict``, ``list`` and ``set`` come back as :class:`TrackedDict`,
    :class:`TrackedList`, :class:`TrackedSet` *copies* (a builtin cannot
    change class in place); nested containers are copied the same way, so
    keep using the returned value, not the original. Objects with a
    ``__dict__`` and dataclasses are adopted *in place* (their class is
    swapped to a generated subclass); ``__slots__`` objects are copied.
    Immutable values (numbers, strings, ``None``, frozen dataclasses,
    tuples of immutables) come back as they are and are never dirty. A
    value that is already a tracked root is returned as-is.

    >>> s = track({"user": {"name": "ann"}, "tags": set()})
    >>> isinstance(s, dict), is_dirty(s)
    (True, False)
    >>> s["user"]["name"] = "bob"
    >>> is_dirty(s), sorted(dirty_fields(s))
    (True, ['user'])
    >>> track(42)
    42
    """
    t = type(value)
    if t in _ATOMS or _is_immutable(value):
        return value
    node_root = _node_root(value)
    if node_root is not None:
        if node_root.value is value:
            return value
        value = _plain(value)  # attached under another root: copy it
        t = type(value)
    if t is dict or t is TrackedDict:
        root = _Root("d")
        node: Any = value if t is TrackedDict else dict.__new__(TrackedDict)
        node._tc_root = root
        node._tc_field = _SELF
        root.value = node
        if node is not value:
            dict.update(node, value)
        _claim_root_fields(root, list(dict.keys(node)))
        return node
    if t in (list, set, TrackedList, TrackedSet):
        root = _Root("w")
        if t is list or t is set:
            node = (TrackedList if t is list else TrackedSet).__new__(
                TrackedList if t is list else TrackedSet
            )
            node._tc_root = root
            node._tc_field = WHOLE
            (list.extend if t is list else set.update)(node, value)
        else:
            node = value
            node._tc_root = root
            node._tc_field = WHOLE
        root.value = node
        _claim_root_fields(root, [WHOLE])
        return node
    if "_tc_orig" in t.__dict__ or _tracked_class(t) is not None:
        root = _Root("o")
        obj = _claim(value, root, _SELF, _Walk())
        root.value = obj
        _claim_root_fields(root, list(_obj_state(obj)))
        return obj
    raise TypeError(
        f"cannot track a {t.__name__} as a root: use a dict, list, set, dataclass "
        "or plain object (values of any type may be nested inside one)"
    )


def _claim_root_fields(root: _Root, fields: Iterable[Any]) -> None:
    """(Re-)adopt each field's value in place and decide whether it is
    watched; part of every clean point."""
    value = root.value
    kind = root.kind
    for f in fields:
        if kind == "w":
            walk = _Walk()
            if type(value) is TrackedList:
                _claim_list_items(value, root, WHOLE, walk)
            else:
                _claim_set_items(value, root, WHOLE, walk)
            cur = value
        else:
            cur = _get_field(root, f)
            if cur is MISSING or type(cur) in _ATOMS:
                root.backup.pop(f, None)
                continue
            walk = _Walk()
            new = _claim(cur, root, f, walk)
            if new is not cur:
                if kind == "d":
                    dict.__setitem__(value, f, new)
                else:
                    object.__setattr__(value, f, new)
                cur = new
        if walk.watch:
            root.backup[f] = _plain(cur)
        else:
            root.backup.pop(f, None)


def _root(value: Any, fn: str) -> _Root | None:
    """The root ``value`` is, None for an immutable value, else TypeError."""
    t = type(value)
    if t in _CONTAINER_TYPES or "_tc_orig" in t.__dict__:
        root: _Root | None = value._tc_root
        if root is not None and root.value is value:
            return root
        raise TypeError(f"{fn}() needs a tracked root, got a nested or released tracked value")
    if t in _ATOMS or _is_immutable(value):
        return None
    raise TypeError(f"{fn}() needs a value returned by track(), got a plain {t.__name__}")


def _check_watched(root: _Root) -> None:
    """Fallback for writes interception cannot see: compare each untouched
    watched field with its clean-point copy."""
    saved = root.saved
    is_ = operator.is_
    for f, old in root.backup.items():
        if f in saved:
            continue
        cur = _get_field(root, f)
        # The common watched value, a list of atoms that shares its items
        # with the clean-point copy, answers here at C speed.
        if type(cur) is TrackedList and len(cur) == len(old) and all(map(is_, cur, old)):
            continue
        if not _same(old, cur):
            saved[f] = old
            root.dirty = True


def quick_clean(root: _Root) -> bool:
    """True when a root is clean and every watched field is a list of atoms
    holding the very same items as its clean-point copy: the common case,
    answered at C speed. False means "ask :func:`is_dirty`", not "dirty"."""
    if root.dirty:
        return False
    node = root.value
    is_ = operator.is_
    for f, old in root.backup.items():
        cur = dict.get(node, f, MISSING) if root.kind == "d" else _get_field(root, f)
        if type(cur) is not TrackedList or len(cur) != len(old) or not all(map(is_, cur, old)):
            return False
    return True


def _diff(root: _Root) -> list[Any]:
    if root.backup:
        _check_watched(root)
    if not root.dirty:
        return []
    changed = [f for f, old in root.saved.items() if not _same(old, _get_field(root, f))]
    if not changed:
        # Back at the clean point's state: start a new clean point so the
        # next check is a flag read again.
        _mark_clean(root)
    return changed


def is_dirty(value: Any) -> bool:
    """Whether ``value`` differs from its state at the last clean point.

    Exact: a change that was undone, or a write of an equal value, is not
    dirty. On a clean root with no watched field this is one flag read.

    >>> s = track({"n": 1})
    >>> s["n"] = 2; is_dirty(s)
    True
    >>> s["n"] = 1; is_dirty(s)
    False
    """
    try:
        # the fast path: a clean root with nothing watched
        root: _Root | None = value._tc_root
        if root.value is value and not root.dirty and not root.backup:  # type: ignore[union-attr]
            return False
    except AttributeError:
        pass
    root = _root(value, "is_dirty")
    return root is not None and bool(_diff(root))


def dirty_fields(value: Any) -> frozenset[Any]:
    """The top-level fields whose value differs from the last clean point:
    keys of a dict root, attribute names of an object root, ``{WHOLE}`` for
    a list or set root.

    >>> s = track({"a": 1, "b": [1]})
    >>> s["b"].append(2)
    >>> dirty_fields(s)
    frozenset({'b'})
    """
    root = _root(value, "dirty_fields")
    return frozenset() if root is None else frozenset(_diff(root))


def changes(value: Any) -> dict[Any, Any]:
    """For each dirty field, its plain value at the last clean point
    (:data:`MISSING` if it did not exist): the base of a three-way merge.

    >>> s = track({"a": [1]})
    >>> s["a"].append(2); s["b"] = 0
    >>> changes(s) == {"a": [1], "b": MISSING}
    True
    """
    root = _root(value, "changes")
    if root is None:
        return {}
    return {f: root.saved[f] for f in _diff(root)}


def mark_clean(value: Any) -> None:
    """Make the current state the clean point (after it was written).

    >>> s = track({"a": 1}); s["a"] = 2
    >>> mark_clean(s); is_dirty(s)
    False
    """
    root = _root(value, "mark_clean")
    if root is not None:
        if root.backup:
            _check_watched(root)
        _mark_clean(root)


def _mark_clean(root: _Root) -> None:
    if root.saved:
        # Values may have entered without adoption (heapq, C code): re-walk
        # what changed, which also re-decides what is watched.
        _claim_root_fields(root, list(root.saved))
        root.saved.clear()
    root.dirty = False
    root.order = None


def revert(value: Any) -> None:
    """Put ``value`` back, in place, to its state at the last clean point.

    The root keeps its identity; nested values that changed are replaced
    by fresh copies, and old handles to them raise :class:`DetachedError`
    (they are no longer part of the value). Used to roll a session back.

    >>> s = track({"a": [1]}); s["a"].append(2); s["b"] = 1
    >>> revert(s); s, is_dirty(s)
    ({'a': [1]}, False)
    """
    root = _root(value, "revert")
    if root is None:
        return
    if root.backup:
        _check_watched(root)
    node = root.value
    for f, old in root.saved.items():
        if root.kind == "w":
            for x in list(node):
                _release(x, _DEAD)
            if type(node) is TrackedList:
                list.clear(node)
                list.extend(node, _plain(old))
            else:
                set.clear(node)
                set.update(node, _plain(old))
            continue
        cur = _get_field(root, f)
        if cur is not MISSING:
            _release(cur, _DEAD)
        if root.kind == "d":
            if old is MISSING:
                dict.pop(node, f, None)
            else:
                dict.__setitem__(node, f, _plain(old))
        elif old is MISSING:
            if cur is not MISSING:
                object.__delattr__(node, f)
        else:
            object.__setattr__(node, f, _plain(old))
    if root.order is not None:
        # re-added keys went to the end: put the clean-point order back
        items = [(k, dict.__getitem__(node, k)) for k in root.order if k in node]
        dict.clear(node)
        dict.update(node, items)
    _mark_clean(root)


def to_plain(value: Any) -> Any:
    """A deep copy of ``value`` in plain builtins (dict, list, set, tuple...)
    and plain instances of the user's classes: for serializers.

    >>> p = to_plain(track({"tags": {"a"}}))
    >>> type(p), type(p["tags"])
    (<class 'dict'>, <class 'set'>)
    """
    return _plain(value)


def detach(value: Any) -> None:
    """Make every mutation through any reference into ``value`` raise
    :class:`DetachedError` until :func:`attach`; reads keep working.

    >>> s = track({"user": {"name": "ann"}}); u = s["user"]; detach(s)
    >>> u["name"] = "bob"
    Traceback (most recent call last):
    ...
    tiercache._exceptions.DetachedError: cannot modify a detached tracked value: ...
    """
    root = _root(value, "detach")
    if root is not None:
        root.detached = True


def attach(value: Any) -> None:
    """Undo :func:`detach`: the value accepts mutations again.

    >>> s = track({}); detach(s); attach(s); s["a"] = 1
    """
    root = _root(value, "attach")
    if root is not None:
        root.detached = False


def is_detached(value: Any) -> bool:
    """Whether :func:`detach` was called on this root (and not undone)."""
    root = _root(value, "is_detached")
    return root is not None and root.detached
