"""TrackedSet: a ``set`` that records its changes (mutators only)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, SupportsIndex

from ._adoption import _adopt, _node_type, _release
from ._atoms import _ATOMS
from ._depth import _Refused
from ._refusals import _refused_at
from ._roots import _detached_error, _live_root, _Root
from ._writes import _adopt_into, _refill_set, _touch, _Undo


@_node_type
class TrackedSet(set[Any]):
    """A ``set`` whose mutators record changes; reads are plain ``set``'s.

    >>> from tiercache._tracking import dirty_fields, track
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
