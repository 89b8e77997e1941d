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
* **Cycles and depth:** adoption refuses a value that contains itself (a
  dict or list holding itself, ``a.b = a``, mutual cycles, cycles through a
  set of objects) or that would make its root nest more than
  :data:`MAX_DEPTH` containers deep (the root is level 1; atoms and opaque
  values are not levels), with a :class:`~tiercache.SerializationError`
  naming the path -- and the cache key, once the root has one -- at
  :func:`track` and at every mutator and attribute write. A refused write
  leaves the container, the value offered and the root's dirty state as
  they were. Shared parts that are not cycles (one plain list in two
  fields) are copied, as the aliasing policy says. 100 levels keep every
  recursive helper here (the adoption walk, copies, comparisons: at most
  three frames a level) within about 300 frames, so a caller may already
  be ~600 frames deep under Python's default recursion limit of 1000; the
  msgpack serializer's own limit is 511. Frozen dataclasses and other
  values that are compared but not adopted count toward the limit too.
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
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, SupportsIndex

from ._exceptions import DetachedError, SerializationError

__all__ = [
    "MAX_DEPTH",
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

#: How many containers deep a tracked root may nest, the root itself being
#: level 1 (``{"a": [{}]}`` is 3 deep); deeper values are refused with a
#: SerializationError. See the module docs for why 100.
MAX_DEPTH: Final = 100

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

    __slots__ = ("backup", "detached", "dirty", "kind", "label", "order", "saved", "value")

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "d" dict, "o" object, "w" list/set (one field)
        self.value: Any = None
        # The cache key, when the cache set it: refusals name it.
        self.label: str | None = None
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


class _Refused(SerializationError):
    """Raised inside an adoption walk at a cycle or past :data:`MAX_DEPTH`.

    Whoever started the walk puts back what it changed and raises a
    SerializationError naming the path instead (:func:`_refusal`); this
    message is seen only for values that entered without adoption and are
    met by the re-walk at a clean point."""

    def __init__(self) -> None:
        super().__init__(
            f"a value holding a cycle or nested deeper than {MAX_DEPTH} levels entered "
            "without adoption (heapq, C code) and cannot be tracked"
        )


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


# -- undoing a refused walk -------------------------------------------------------


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


def _restore_key(node: dict[Any, Any], key: Any, old: Any) -> None:
    if old is MISSING:
        dict.pop(node, key, None)
    else:
        dict.__setitem__(node, key, old)


def _refill_set(node: set[Any], members: list[Any], root: _Root) -> None:
    set.clear(node)
    set.update(node, members)
    for m in members:
        _release(m, root)


def _undo(log: list[Any]) -> None:
    for step in reversed(log):
        step[0](*step[1:])


class _Undo:
    """One mutation's way back: the root's dirty state before it, and the
    log of what it changed since (items stored, values released, what
    adoption did in place)."""

    __slots__ = ("dirty", "log", "root", "saved")

    def __init__(self, root: _Root) -> None:
        self.root = root
        self.dirty = root.dirty
        # Fields first touched by the mutation are appended to root.saved.
        self.saved = len(root.saved)
        self.log: list[Any] = []

    def rollback(self) -> None:
        _rollback(self.root, self.log, self.dirty, self.saved)


def _rollback(root: _Root, log: list[Any], dirty: bool, saved: int) -> None:
    """Undo ``log``, then give the root back its dirty flag and its saved
    fields as they were (``saved``: how many; a mutation only appends)."""
    _undo(log)
    fields = root.saved
    while len(fields) > saved:
        fields.popitem()
    root.dirty = dirty


def _enter(root: _Root, field: Any, old: Any, value: Any, depth: int, log: list[Any]) -> Any:
    """Steps 3 and 4 of a write putting a non-atom where ``old`` was (MISSING:
    nothing): save the field, release ``old``, adopt ``value``. Logs what it
    changes; raises _Refused."""
    if field not in root.saved:
        _save(root, field)
    root.dirty = True
    if old is not MISSING and type(old) not in _ATOMS:
        # Released first, so a value moved out of ``old`` is adopted in place.
        _release(old)
        log.append((_release, old, root))
    return _adopt(value, root, field, depth, log)


def _adopt_into(node: Any, root: _Root, field: Any, value: Any, step: _Step) -> Any:
    """Touch ``field`` and adopt one non-atom entering ``node`` at ``step``; a
    refusal leaves everything as it was and names the path."""
    dirty, saved = root.dirty, len(root.saved)
    log: list[Any] = []
    _touch(root, field)
    try:
        return _adopt(value, root, field, node._tc_depth + 1, log)
    except _Refused:
        _rollback(root, log, dirty, saved)
        raise _refused_at(root, node, step, value) from None


# -- finding and naming what was refused (error path only) -----------------------

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
        if type(value) in _ATOMS:
            if field not in root.saved:
                _save(root, field)
            root.dirty = True
            if old is not MISSING and type(old) not in _ATOMS:
                _release(old)
        else:
            dirty, saved = root.dirty, len(root.saved)
            log: list[Any] = []
            try:
                value = _enter(root, field, old, value, self._tc_depth + 1, log)
            except _Refused:
                _rollback(root, log, dirty, saved)
                raise _refused_at(root, self, (".", name), value) from None
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
        "__slots__": () if has_dict else ("_tc_depth", "_tc_field", "_tc_root"),
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

    __slots__ = ("_tc_depth", "_tc_field", "_tc_root")
    _tc_root: _Root | None
    _tc_field: Any
    _tc_depth: int  # the level it sits at in its root (the root: 1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            root = self._tc_root
        except AttributeError:  # constructed directly: a free container
            self._tc_root = None
            self._tc_field = None
            self._tc_depth = 0
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
        field = self._tc_field
        if field is _SELF:
            field = key
        if type(value) not in _ATOMS:
            if old is value:
                return
            # the rollback state in locals: cheaper than an _Undo
            dirty, saved = root.dirty, len(root.saved)
            log: list[Any] = []
            try:
                value = _enter(root, field, old, value, self._tc_depth + 1, log)
            except _Refused:
                _rollback(root, log, dirty, saved)
                raise _refused_at(root, self, ("[]", key), value) from None
            dict.__setitem__(self, key, value)
            return
        if old is value or _same_atom(old, value):
            return
        if field not in root.saved:
            _save(root, field)
        root.dirty = True
        if old is not MISSING and type(old) not in _ATOMS:
            _release(old)
        dict.__setitem__(self, key, value)

    def _store(self, root: _Root, items: Iterable[tuple[Any, Any]]) -> None:
        """Store pairs as one change: a refused value puts back every pair
        stored before it, and what they released."""
        undo = _Undo(root)
        log = undo.log
        depth = self._tc_depth + 1
        base = self._tc_field
        for key, value in items:
            old = dict.get(self, key, MISSING)
            if old is value or (type(value) in _ATOMS and _same_atom(old, value)):
                continue
            field = key if base is _SELF else base
            if type(value) in _ATOMS:
                if field not in root.saved:
                    _save(root, field)
                root.dirty = True
                if old is not MISSING and type(old) not in _ATOMS:
                    _release(old)
                    log.append((_release, old, root))
            else:
                try:
                    value = _enter(root, field, old, value, depth, log)
                except _Refused:
                    undo.rollback()
                    raise _refused_at(root, self, ("[]", key), value) from None
            log.append((_restore_key, self, key, old))
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
        self._store(root, dict(*args, **kwargs).items())

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """Like ``dict.setdefault``, but returns the *adopted* default, so
        ``s.setdefault("tags", set()).add("vip")`` is tracked."""
        root = self._tc_root
        if root is not None and root.detached:
            raise _detached_error(root)
        if key in self or root is None:
            return dict.setdefault(self, key, default)
        field = self._field(key)
        if type(default) in _ATOMS:
            _touch(root, field)
        else:
            default = _adopt_into(self, root, field, default, ("[]", key))
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

    __slots__ = ("_tc_depth", "_tc_field", "_tc_root")
    _tc_root: _Root | None
    _tc_field: Any
    _tc_depth: int  # the level it sits at in its root (the root: 1)

    def __init__(self, iterable: Iterable[Any] = (), /) -> None:
        try:
            root = self._tc_root
        except AttributeError:
            self._tc_root = None
            self._tc_field = None
            self._tc_depth = 0
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
        self,
        root: _Root,
        values: Iterable[Any],
        undo: _Undo,
        at: int,
        step: int = 1,
        keep: set[int] | None = None,
    ) -> list[Any]:
        """Adopt values that will sit at positions ``at``, ``at + step``...; a
        refusal rolls ``undo`` back and names the position."""
        field = self._tc_field
        depth = self._tc_depth + 1
        out = []
        for v in values:
            if type(v) in _ATOMS:
                out.append(v)
            elif keep is not None and id(v) in keep:
                keep.discard(id(v))  # moved within this list: same place
                out.append(v)
            else:
                try:
                    out.append(_adopt(v, root, field, depth, undo.log))
                except _Refused:
                    undo.rollback()
                    where = ("[]", at + step * len(out))
                    raise _refused_at(root, self, where, v) from None
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
            undo = _Undo(root)
            _touch(root, self._tc_field)
            start, _, step = index.indices(len(self))
            new = self._incoming(root, values, undo, start, step, ids)
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
        if type(value) in _ATOMS:
            _touch(root, self._tc_field)
            if type(old) not in _ATOMS:
                _release(old)
        else:
            dirty, saved = root.dirty, len(root.saved)
            log: list[Any] = []
            try:
                value = _enter(root, self._tc_field, old, value, self._tc_depth + 1, log)
            except _Refused:
                _rollback(root, log, dirty, saved)
                where = ("[]", operator.index(index) % len(self))
                raise _refused_at(root, self, where, value) from None
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
            if type(value) in _ATOMS:
                _touch(root, self._tc_field)
            else:
                value = _adopt_into(self, root, self._tc_field, value, ("[]", len(self)))
        list.append(self, value)

    def extend(self, values: Iterable[Any]) -> None:
        root = _live_root(self)
        if root is None:
            list.extend(self, values)
            return
        items = list(values)
        if not items:
            return
        undo = _Undo(root)
        _touch(root, self._tc_field)
        list.extend(self, self._incoming(root, items, undo, len(self)))

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
        undo = _Undo(root)
        _touch(root, self._tc_field)
        orig = list(self)
        new: list[Any] = []
        for _ in range(count - 1):
            # Repeats would alias one node at two positions: copy them.
            new += self._incoming(root, orig, undo, len(orig) + len(new))
        list.extend(self, new)
        return self

    def insert(self, index: SupportsIndex, value: Any) -> None:
        root = _live_root(self)
        if root is not None:
            if type(value) in _ATOMS:
                _touch(root, self._tc_field)
            else:
                n = len(self)
                i = operator.index(index)
                at = min(n, max(0, i + n if i < 0 else i))
                value = _adopt_into(self, root, self._tc_field, value, ("[]", at))
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

    __slots__ = ("_tc_depth", "_tc_field", "_tc_root")
    _tc_root: _Root | None
    _tc_field: Any
    _tc_depth: int  # the level it sits at in its root (the root: 1)

    def __init__(self, iterable: Iterable[Any] = (), /) -> None:
        try:
            root = self._tc_root
        except AttributeError:
            self._tc_root = None
            self._tc_field = None
            self._tc_depth = 0
            set.__init__(self, iterable)
            return
        if root is None:
            set.__init__(self, iterable)
            return
        if root.detached:
            raise _detached_error(root)
        new = list(iterable)
        undo = _Undo(root)
        old = list(self)
        if old:
            _touch(root, self._tc_field)
            set.clear(self)
            for m in old:
                _release(m)
            undo.log.append((_refill_set, self, old, root))
        members = list(dict.fromkeys(new))
        if members:
            _touch(root, self._tc_field)
            set.update(self, self._incoming(root, members, undo))

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        return (set, (list(self),))

    def __repr__(self) -> str:
        # set's repr names the subclass (dict's and list's do not): show the
        # plain twin's, so logs, doctests and sort(key=repr) match it.
        return set.__repr__(set(self))

    def _incoming(self, root: _Root, members: Iterable[Any], undo: _Undo) -> list[Any]:
        """Adopt members before any is added; a refusal rolls ``undo`` back."""
        field = self._tc_field
        depth = self._tc_depth + 1
        out = []
        for m in members:
            if type(m) in _ATOMS:
                out.append(m)
                continue
            try:
                out.append(_adopt(m, root, field, depth, undo.log))
            except _Refused:
                undo.rollback()
                raise _refused_at(root, self, ("item", m), m) from None
        return out

    def add(self, value: Any) -> None:
        root = _live_root(self)
        if root is None or value in self:
            set.add(self, value)
            return
        if type(value) in _ATOMS:
            _touch(root, self._tc_field)
        else:
            value = _adopt_into(self, root, self._tc_field, value, ("item", value))
        set.add(self, value)

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
        undo = _Undo(root)
        _touch(root, self._tc_field)
        set.update(self, self._incoming(root, new, undo))

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
        undo = _Undo(root)
        _touch(root, self._tc_field)
        gone = {m for m in items if m in self}
        new = self._incoming(root, [m for m in items if m not in gone], undo)
        set.difference_update(self, gone)
        set.update(self, new)
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


# -- the API ----------------------------------------------------------------------


def root_of(value: Any, *, label: str | None = None) -> _Root | None:
    """The bookkeeping object of a tracked root, ``None`` for an immutable
    value. The cache keeps it beside the value so its hot paths flip
    ``detached`` and read ``dirty``/``backup`` without a call. ``label``
    (the cache key) is kept on the root and named by refusals."""
    root = _root(value, "root_of")
    if root is not None and label is not None:
        root.label = label
    return root


def is_tracked(value: Any) -> bool:
    """Whether ``value`` is a tracked container or object (root or nested).

    >>> is_tracked(track({})), is_tracked({})
    (True, False)
    """
    t = type(value)
    return t in _CONTAINER_TYPES or "_tc_orig" in t.__dict__


def track(value: Any, *, label: str | None = None) -> Any:
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

    A value holding a cycle or nested deeper than :data:`MAX_DEPTH` raises
    :class:`~tiercache.SerializationError` naming the path (and ``label``,
    the cache key, if given) and is left as it was.

    >>> s = track({"user": {"name": "ann"}, "tags": set()})
    >>> isinstance(s, dict), is_dirty(s)
    (True, False)
    >>> s["user"]["name"] = "bob"
    >>> is_dirty(s), sorted(dirty_fields(s))
    (True, ['user'])
    >>> track(42)
    42
    >>> d = {"a": {}}; d["a"]["me"] = d["a"]
    >>> track(d, label="chat:1")
    Traceback (most recent call last):
    ...
    tiercache._exceptions.SerializationError: cannot store key 'chat:1': value['a']['me'] is ...
    """
    if type(value) in _ATOMS:
        return value
    log: list[Any] = []
    try:
        return _track(value, label, log)
    except _Refused:
        _undo(log)
        raise _refusal(label, [], value, 1) from None


def _track(value: Any, label: str | None, log: list[Any]) -> Any:
    t = type(value)
    if _is_immutable(value):
        return value
    node_root = _node_root(value)
    if node_root is not None:
        if node_root.value is value:
            if label is not None:
                node_root.label = label
            return value
        value = _plain(value)  # attached under another root: copy it
        t = type(value)
    if t is dict or t is TrackedDict:
        root = _Root("d")
        if t is TrackedDict:  # a free one, adopted in place
            node: Any = value
            log.append((_restore_node, node, None, node._tc_field, node._tc_depth, _contents(node)))
        else:
            node = dict.__new__(TrackedDict)
        node._tc_root = root
        node._tc_field = _SELF
        node._tc_depth = 1
        root.value = node
        root.label = label
        if node is not value:
            dict.update(node, value)
        _claim_root_fields(root, list(dict.keys(node)), log, node is value)
        return node
    if t in (list, set, TrackedList, TrackedSet):
        root = _Root("w")
        if t is list or t is set:
            node = (TrackedList if t is list else TrackedSet).__new__(
                TrackedList if t is list else TrackedSet
            )
            (list.extend if t is list else set.update)(node, value)
        else:
            node = value
            log.append((_restore_node, node, None, node._tc_field, node._tc_depth, _contents(node)))
        node._tc_root = root
        node._tc_field = WHOLE
        node._tc_depth = 1
        root.value = node
        root.label = label
        _claim_root_fields(root, [WHOLE], log, node is value)
        return node
    if "_tc_orig" in t.__dict__ or _tracked_class(t) is not None:
        root = _Root("o")
        root.label = label
        obj = _claim(value, root, _SELF, _Walk(False, log), 1)
        root.value = obj
        # Every part was claimed just now: this walk only decides what is
        # watched, and can neither fail nor change anything of the caller's.
        _claim_root_fields(root, list(_obj_state(obj)))
        return obj
    raise TypeError(
        f"cannot track a {t.__name__} as a root: use a dict, list, set, dataclass "
        "or plain object (values of any type may be nested inside one)"
    )


def _claim_root_fields(
    root: _Root, fields: Iterable[Any], log: list[Any] | None = None, own: bool = False
) -> None:
    """(Re-)adopt each field's value in place and decide whether it is
    watched; part of every clean point. ``log``: see :class:`_Walk`;
    ``own``: the root node is the caller's, adopted in place, so it may
    hold itself."""
    value = root.value
    kind = root.kind
    for f in fields:
        if kind == "w":
            walk = _Walk(False, log)
            if own:
                walk.seen.add(id(value))
            if type(value) is TrackedList:
                _claim_list_items(value, root, WHOLE, walk, 2)
            else:
                _claim_set_items(value, root, WHOLE, walk, 2)
            cur = value
        else:
            cur = _get_field(root, f)
            if cur is MISSING or type(cur) in _ATOMS:
                root.backup.pop(f, None)
                continue
            walk = _Walk(False, log)
            if own:
                walk.seen.add(id(value))
            new = _claim(cur, root, f, walk, 2)
            if new is not cur:
                # (a root adopted in place was logged whole by track)
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
