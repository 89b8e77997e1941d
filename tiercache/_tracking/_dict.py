"""TrackedDict: a ``dict`` that records its changes (mutators only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsIndex

from ._adoption import _node_type, _release
from ._atoms import _ATOMS, _same_atom
from ._depth import _Refused
from ._refusals import _refused_at
from ._roots import _detached_error, _keep_order, _Root
from ._sentinels import _SELF, MISSING
from ._writes import _adopt_into, _enter, _restore_key, _rollback, _save, _touch, _Undo


@_node_type
class TrackedDict(dict[Any, Any]):
    """A ``dict`` whose mutators record changes; reads are plain ``dict``'s.

    Made by :func:`track`; ``isinstance(d, dict)``, ``json``/``orjson``,
    ``pickle`` and ``copy`` treat it as a plain dict (copies and pickles
    *are* plain dicts).

    >>> from tiercache._tracking import dirty_fields, track
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
