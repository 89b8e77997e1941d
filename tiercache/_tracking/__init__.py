"""Change tracking: live values that know which fields (and nested paths) changed.

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
    dirty_paths ── the same, then down the nested dicts of each dirty field
    mark_clean ── re-walk touched fields, new clean point
    revert     ── put saved copies back in place, then mark_clean
    detach     ── every node refuses mutation until attach()

Nodes (tracked containers and objects) point straight at their root and at
the top-level field they live under, so a write costs one flag check, one
set lookup and the C operation; nothing walks up a parent chain. Reads are
not overridden at all and run at C speed.

Policies, fixed in this package and tested in ``tests/unit/test_tracking*.py``:

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

Modules, each importing only those above it::

    _sentinels     MISSING, WHOLE, _SELF
    _depth         MAX_DEPTH, and _Refused: what a walk raises past it or at a cycle
    _atoms         values that never change in place, and comparing them
    _object_state  a user object's state read past its hooks; its two classes
    _roots         _Root: one tracked value's flag, saved copies and backups
    _adoption      the walks that know every node type: claim, release,
                   plain copies, the scan for cycles and depth
    _refusals      naming the path of a refused value (error path only)
    _writes        steps 3 and 4 of every write, and undoing a refused one
    _dict, _list, _set   TrackedDict, TrackedList, TrackedSet
    _objects       tracked objects and dataclasses: the generated subclass
    _compare       type-strict deep equality (_same) and canonical forms
    _paths         dirty paths: nested keys that changed, from the saved copies
    _api           the public functions

The tracked containers and objects call adoption when a value enters them,
and adoption builds them: that one loop is closed at import time, not by an
import (see _adoption), so the import graph stays acyclic.
"""

from __future__ import annotations

from ._api import _root as _root
from ._api import (
    attach,
    changes,
    detach,
    dirty_fields,
    dirty_paths,
    is_detached,
    is_dirty,
    is_tracked,
    mark_clean,
    quick_clean,
    revert,
    root_of,
    to_plain,
    track,
)
from ._compare import _same as _same
from ._depth import MAX_DEPTH
from ._dict import TrackedDict
from ._list import TrackedList
from ._paths import PATH_DEPTH, FieldPath, diff_paths
from ._sentinels import _SELF as _SELF
from ._sentinels import MISSING, WHOLE
from ._set import TrackedSet

__all__ = [
    "MAX_DEPTH",
    "MISSING",
    "PATH_DEPTH",
    "WHOLE",
    "FieldPath",
    "TrackedDict",
    "TrackedList",
    "TrackedSet",
    "attach",
    "changes",
    "detach",
    "diff_paths",
    "dirty_fields",
    "dirty_paths",
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
