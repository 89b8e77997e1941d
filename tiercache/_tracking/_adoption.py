"""Adoption: how a value becomes part of a root, and how it leaves it.

::

    value entering a root ──_adopt / _claim──> by type, into every part:
        atom or immutable ──────────> stored as it is
        plain dict / list / set ────> a TrackedDict / List / Set copy
        node free or in its place ──> re-stamped in place (root, field, depth)
        object with a __dict__ ─────> its class swapped to the tracked one
        node attached elsewhere ────> a _plain copy of it, then claimed
        past MAX_DEPTH, or a cycle ─> _Refused: the caller undoes the log
    value leaving ──_release──> its nodes point at no root (or at _DEAD)

The other walks that must know every node type live here too: plain copies
(``_plain``) and the scan for cycles and depth (``_parts``, ``_scan``).

The node types close the one loop in the design: the walks build tracked
containers and swap in tracked classes, and those call the walks (through
_writes) whenever a value enters them. No import order can express that, so
this module imports none of them: ``TrackedDict``, ``TrackedList``,
``TrackedSet`` and ``_tracked_class`` are bound here as they are defined
(``@_node_type``, ``@_node_classes``), and the package imports all of them
before anything can be tracked. Once bound they are ordinary module
globals, looked up exactly as when the tracker was one module.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ._atoms import _ATOMS, _is_frozen_dataclass, _is_immutable
from ._depth import MAX_DEPTH, _Refused
from ._object_state import _OBJ_CLASSES, _obj_state
from ._roots import _Root
from ._sentinels import _SELF

# -- the node types, bound by the modules that define them ---------------------

# None only while the package is being imported (it imports _dict, _list,
# _set and _objects before anything can be tracked).
TrackedDict: Any = None
TrackedList: Any = None
TrackedSet: Any = None
# user class -> its generated tracked subclass, or None (_objects)
_tracked_class: Any = None
# Our container classes, and the same with the builtins they track (items
# that rule out a heap, see _claim_list_items). They grow as the classes bind.
_CONTAINER_TYPES: set[type] = set()
_ANY_CONTAINER: set[type] = {dict, list, set}

_C = TypeVar("_C", bound=type)
_F = TypeVar("_F", bound=Callable[[type], Any])


def _node_type(cls: _C) -> _C:
    """Class decorator of TrackedDict, TrackedList and TrackedSet: binds the
    class here (see the module docs)."""
    global TrackedDict, TrackedList, TrackedSet
    # The walks name exactly these three: a new node type must be taught to
    # them (each dispatches on it), not just bound.
    if cls.__bases__ == (dict,):
        TrackedDict = cls
    elif cls.__bases__ == (list,):
        TrackedList = cls
    elif cls.__bases__ == (set,):
        TrackedSet = cls
    else:
        raise TypeError(f"the walks know no node type like {cls.__qualname__}")
    _CONTAINER_TYPES.add(cls)
    _ANY_CONTAINER.add(cls)
    return cls


def _node_classes(fn: _F) -> _F:
    """Decorator of _objects._tracked_class: binds it here (see the module
    docs)."""
    global _tracked_class
    _tracked_class = fn
    return fn


# -- adopting ------------------------------------------------------------------


class _Walk:
    """State of one adoption walk: nodes already claimed in place, whether
    the field holds anything that must be watched, and the undo log."""

    __slots__ = ("log", "seen", "store", "watch")

    def __init__(self, store: bool = False, log: list[Any] | None = None) -> None:
        self.seen: set[int] = set()
        self.watch = False
        # A store copies every attached node it meets, even inside a tuple;
        # a re-walk (clean point) keeps the nodes already in their field.
        self.store = store
        # What the walk changes in the caller's own objects (class swaps,
        # stamps, replaced items and attributes) as (function, *args) steps
        # to undo if it is refused; None on a re-walk at a clean point,
        # which only meets nodes that are ours already.
        self.log = log


def _adopt(value: Any, root: _Root, field: Any, depth: int, log: list[Any]) -> Any:
    """Adopt a value entering a tracked container at ``depth`` (store mode);
    raises _Refused (after which the caller undoes ``log``).

    A node attached anywhere is copied: the caller re-storing it in its own
    place never gets here (that is a no-op write)."""
    if type(value) in _ATOMS:
        return value
    if _node_root(value) is not None:
        value = _plain(value)
    return _claim(value, root, field, _Walk(True, log), depth)


def _node_root(value: Any) -> _Root | None:
    t = type(value)
    if t in _CONTAINER_TYPES or "_tc_orig" in t.__dict__:
        r: _Root | None = value._tc_root
        return r
    return None


# The adoption walk recurses (a call per level is cheaper than an explicit
# stack in CPython) and counts levels instead of trusting the interpreter's
# limit: past MAX_DEPTH it raises _Refused. A cycle of plain containers is
# copied round until that happens; one through a node claimed in place
# (objects, free tracked containers) is found when the walk meets the node
# again (_copy_of). Either way _refusal then finds and names the spot.


def _claim(v: Any, root: _Root, field: Any, walk: _Walk, depth: int) -> Any:
    """Return ``v`` adopted under ``root``/``field`` at level ``depth``:
    plain containers become tracked copies, free or own nodes are
    re-stamped in place, nodes attached elsewhere (or met twice) are
    copied."""
    t = type(v)
    if t in _ATOMS:
        return v
    if t is dict:
        if depth > MAX_DEPTH:
            raise _Refused
        c = dict.__new__(TrackedDict)
        c._tc_root = root
        c._tc_field = field
        c._tc_depth = depth
        dict.update(c, v)
        _claim_dict_items(c, root, field, walk, depth + 1)
        return c
    if t is list:
        if depth > MAX_DEPTH:
            raise _Refused
        lc = list.__new__(TrackedList)
        lc._tc_root = root
        lc._tc_field = field
        lc._tc_depth = depth
        list.extend(lc, v)
        _claim_list_items(lc, root, field, walk, depth + 1)
        return lc
    if t is set:
        if depth > MAX_DEPTH:
            raise _Refused
        sc = set.__new__(TrackedSet)
        sc._tc_root = root
        sc._tc_field = field
        sc._tc_depth = depth
        set.update(sc, v)
        _claim_set_items(sc, root, field, walk, depth + 1)
        return sc
    if t in _CONTAINER_TYPES:
        if depth > MAX_DEPTH:
            raise _Refused
        if not _claimable(v, root, field, walk):
            return _claim(_copy_of(v, walk, depth), root, field, walk, depth)
        if walk.log is not None:
            walk.log.append((_restore_node, v, v._tc_root, v._tc_field, v._tc_depth, _contents(v)))
        v._tc_root = root
        v._tc_field = field
        v._tc_depth = depth
        if t is TrackedDict:
            _claim_dict_items(v, root, field, walk, depth + 1)
        elif t is TrackedList:
            _claim_list_items(v, root, field, walk, depth + 1)
        else:
            _claim_set_items(v, root, field, walk, depth + 1)
        return v
    return _claim_other(v, root, field, walk, depth)


def _claimable(node: Any, root: _Root, field: Any, walk: _Walk) -> bool:
    """Whether a node may be claimed in place (then it counts as seen)."""
    r = node._tc_root
    i = id(node)
    if r is None or (
        not walk.store and r is root and node._tc_field == field and i not in walk.seen
    ):
        walk.seen.add(i)
        return True
    return False


def _copy_of(node: Any, walk: _Walk, depth: int) -> Any:
    """A plain copy of a node that cannot be claimed in place. One claimed
    earlier in this walk is either a part met twice (copy it) or an
    ancestor of this spot -- a cycle, which _plain would follow forever."""
    if id(node) in walk.seen and _scan(node, depth) is not None:
        raise _Refused
    return _plain(node)


def _claim_dict_items(c: dict[Any, Any], root: _Root, field: Any, walk: _Walk, depth: int) -> None:
    # depth: the level of the items
    for k, x in dict.items(c):
        if type(x) not in _ATOMS:
            nx = _claim(x, root, field, walk, depth)
            if nx is not x:
                dict.__setitem__(c, k, nx)


def _claim_list_items(c: list[Any], root: _Root, field: Any, walk: _Walk, depth: int) -> None:
    heapable = True
    for i, x in enumerate(list.__iter__(c)):
        tx = type(x)
        if tx not in _ATOMS:
            if tx in _ANY_CONTAINER:
                heapable = False
            nx = _claim(x, root, field, walk, depth)
            if nx is not x:
                list.__setitem__(c, i, nx)
    if heapable:
        # heapq reorders lists of orderable items through the C API.
        walk.watch = True


def _claim_set_items(c: set[Any], root: _Root, field: Any, walk: _Walk, depth: int) -> None:
    swaps = []
    for x in set.__iter__(c):
        if type(x) not in _ATOMS:
            nx = _claim(x, root, field, walk, depth)
            if nx is not x:
                swaps.append((x, nx))
    for x, nx in swaps:
        set.discard(c, x)
        set.add(c, nx)


def _claim_other(v: Any, root: _Root, field: Any, walk: _Walk, depth: int) -> Any:
    t = type(v)
    if isinstance(v, enum.Enum):
        _ATOMS.add(t)
        return v
    if t is tuple or t is frozenset or (issubclass(t, tuple) and hasattr(t, "_make")):
        if depth > MAX_DEPTH:
            raise _Refused
        d = depth + 1
        items = [x if type(x) in _ATOMS else _claim(x, root, field, walk, d) for x in v]
        if all(a is b for a, b in zip(items, v, strict=True)):
            return v
        if t is tuple:
            return tuple(items)
        if t is frozenset:
            return frozenset(items)
        return t._make(items)
    if "_tc_orig" in t.__dict__:
        if depth > MAX_DEPTH:
            raise _Refused
        if not _claimable(v, root, field, walk):
            return _claim(_copy_of(v, walk, depth), root, field, walk, depth)
        if walk.log is not None:
            walk.log.append((_restore_stamps, v, v._tc_root, v._tc_field, v._tc_depth))
        _stamp(v, root, field, depth)
        _claim_obj_state(v, root, field, walk, depth)
        return v
    if _is_frozen_dataclass(t):
        # Not adopted, but copied and compared field by field: it counts
        # toward depth and cycles like the values around it.
        if not _is_immutable(v, depth):
            _check(v, depth)
            walk.watch = True  # a frozen shell around mutable parts
        return v
    if issubclass(t, tuple):
        # not a namedtuple: opaque here, but compared item by item
        _check(v, depth)
        walk.watch = True
        return v
    tc = _tracked_class(t)
    if tc is None:
        walk.watch = True  # opaque: bytearray, foreign objects...
        return v
    if depth > MAX_DEPTH:
        raise _Refused
    if tc._tc_copies:
        # A __slots__ layout cannot take the tracking slots in place.
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
        if walk.log is not None:
            walk.log.append((_unswap, v, t))
    _stamp(v, root, field, depth)
    walk.seen.add(id(v))
    _claim_obj_state(v, root, field, walk, depth)
    return v


def _stamp(obj: Any, root: _Root | None, field: Any, depth: int) -> None:
    object.__setattr__(obj, "_tc_root", root)
    object.__setattr__(obj, "_tc_field", field)
    object.__setattr__(obj, "_tc_depth", depth)


def _claim_obj_state(v: Any, root: _Root, field: Any, walk: _Walk, depth: int) -> None:
    d = depth + 1
    log = walk.log
    for name, x in _obj_state(v).items():
        if type(x) not in _ATOMS:
            sub = field if field is not _SELF else name
            nx = _claim(x, root, sub, walk, d)
            if nx is not x:
                if log is not None:
                    log.append((object.__setattr__, v, name, x))
                object.__setattr__(v, name, nx)


def _check(v: Any, depth: int) -> None:
    if _scan(v, depth) is not None:
        raise _Refused


# -- undoing a refused walk: the steps it logs ---------------------------------


def _contents(node: Any) -> list[Any]:
    return list(dict.items(node)) if type(node) is TrackedDict else list(node)


def _restore_node(
    node: Any, root: _Root | None, field: Any, depth: int, contents: list[Any]
) -> None:
    node._tc_root = root
    node._tc_field = field
    node._tc_depth = depth
    t = type(node)
    if t is TrackedDict:
        dict.clear(node)
        dict.update(node, contents)
    elif t is TrackedList:
        list.__setitem__(node, slice(None), contents)
    else:
        set.clear(node)
        set.update(node, contents)


def _restore_stamps(obj: Any, root: _Root | None, field: Any, depth: int) -> None:
    _stamp(obj, root, field, depth)


def _unswap(obj: Any, cls: type) -> None:
    # Only classes with a __dict__ are swapped (slotted ones are copied).
    state = obj.__dict__
    for name in ("_tc_root", "_tc_field", "_tc_depth"):
        state.pop(name, None)
    object.__setattr__(obj, "__class__", cls)


# -- releasing -----------------------------------------------------------------


def _release(v: Any, to: _Root | None = None) -> None:
    """Detach a removed value's nodes from their root (``to``: _DEAD after a
    revert, so stale handles raise; the root itself to undo a release)."""
    t = type(v)
    if t in _ATOMS:
        return
    if t in _CONTAINER_TYPES:
        v._tc_root = to
        items: Iterable[Any] = dict.values(v) if t is TrackedDict else v
    elif "_tc_orig" in t.__dict__:
        object.__setattr__(v, "_tc_root", to)
        items = _obj_state(v).values()
    elif t is tuple or t is frozenset or (issubclass(t, tuple) and hasattr(t, "_make")):
        # (other tuple subclasses are opaque: adoption never goes inside)
        items = v
    else:
        return
    for x in items:
        if type(x) not in _ATOMS:
            _release(x, to)


# -- plain copies --------------------------------------------------------------


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


# -- scanning for cycles and depth ---------------------------------------------


# One step of a path: ("[]", key or index), (".", attribute), ("item", member).
_Step = tuple[str, Any]


def _parts(x: Any) -> Iterator[tuple[str, Any, Any]] | None:
    """The (how, key, child) non-atom children of everything the tracker
    walks, copies or compares part by part; None for a leaf."""
    t = type(x)
    if t in _ATOMS:
        return None
    atoms = _ATOMS
    if t is dict or t is TrackedDict:
        return (("[]", k, v) for k, v in dict.items(x) if type(v) not in atoms)
    if t is list or t is TrackedList:
        return (("[]", i, v) for i, v in enumerate(list.__iter__(x)) if type(v) not in atoms)
    if t is set or t is TrackedSet or t is frozenset:
        return (("item", v, v) for v in x if type(v) not in atoms)
    if isinstance(x, enum.Enum):
        return None
    if issubclass(t, tuple):
        return (("[]", i, v) for i, v in enumerate(x) if type(v) not in atoms)
    if "_tc_orig" in t.__dict__ or _is_frozen_dataclass(t) or _tracked_class(t) is not None:
        state = _obj_state(x)
        return ((".", k, v) for k, v in state.items() if type(v) not in atoms)
    return None


def _scan(value: Any, depth: int) -> tuple[list[_Step], int | None] | None:
    """Where ``value``, placed at level ``depth``, holds a cycle or nests past
    MAX_DEPTH: the steps from ``value`` to the offending container and the
    index in them of the ancestor it repeats (None: too deep); None if
    neither. Iterative, because the values it judges are the ones too deep
    for recursion; a part seen whole is not walked again at a level no
    deeper, so shared parts cost once."""
    kids = _parts(value)
    if kids is None:
        return None
    if depth > MAX_DEPTH:
        return [], None
    stack = [kids]
    steps: list[_Step] = []
    # id -> index in stack, for the containers on the current path
    active = {id(value): 0}
    passed: dict[int, int] = {}  # id -> deepest level it was found fine at
    path_ids = [id(value)]
    while stack:
        for how, key, child in stack[-1]:
            ck = _parts(child)
            if ck is None:
                continue
            i = id(child)
            at = active.get(i)
            if at is not None:
                return [*steps, (how, key)], at
            level = depth + len(stack)
            if passed.get(i, 0) >= level:
                continue
            if level > MAX_DEPTH:
                return [*steps, (how, key)], None
            active[i] = len(stack)
            path_ids.append(i)
            stack.append(ck)
            steps.append((how, key))
            break
        else:
            stack.pop()
            i = path_ids.pop()
            del active[i]
            level = depth + len(stack)
            if passed.get(i, 0) < level:
                passed[i] = level
            if steps:
                steps.pop()
    return None
