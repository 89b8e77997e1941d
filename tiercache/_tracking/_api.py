"""The public functions: track a value, ask what changed, move the clean point.

::

    track(value) ── _track: a _Root, the value adopted (_claim), and each
                    field's clean point (_claim_root_fields: watched or not)
    is_dirty / dirty_fields / changes ── _diff: the flag, then saved and the
                    watched backups (_check_watched) against the current fields
    mark_clean ── _mark_clean: re-walk the touched fields, a new clean point
    revert     ── put the saved copies back in place, then _mark_clean
    detach / attach / is_detached ── the root's detached flag
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

from ._adoption import (
    _CONTAINER_TYPES,
    _claim,
    _claim_list_items,
    _claim_set_items,
    _contents,
    _node_root,
    _plain,
    _release,
    _restore_node,
    _Walk,
)
from ._atoms import _ATOMS, _is_immutable
from ._compare import _same
from ._depth import _Refused
from ._dict import TrackedDict
from ._list import TrackedList
from ._object_state import _obj_state
from ._objects import _tracked_class
from ._paths import root_paths
from ._refusals import _refusal
from ._roots import _DEAD, _get_field, _Root
from ._sentinels import _SELF, MISSING, WHOLE
from ._set import TrackedSet
from ._writes import _undo


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


def dirty_paths(value: Any) -> frozenset[tuple[Any, ...]]:
    """The paths whose value differs from the last clean point, each a
    tuple of keys from the root down: nested dicts are followed key by key
    (up to :data:`PATH_DEPTH` keys), anything else (a list, a set, an
    object, a subtree deeper than that) is one unit. A list or set root is
    the one path ``()``. Exact, like :func:`is_dirty`: a key changed and
    changed back is not dirty.

    >>> s = track({"state": "menu", "data": {"cart": [], "name": "A"}})
    >>> s["data"]["cart"].append("tea")
    >>> dirty_paths(s)
    frozenset({('data', 'cart')})
    >>> sorted(dirty_fields(s))
    ['data']
    """
    root = _root(value, "dirty_paths")
    return frozenset() if root is None else root_paths(root, _diff(root))


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
