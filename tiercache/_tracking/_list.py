"""TrackedList: a ``list`` that records its changes (mutators only)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, SupportsIndex

from ._adoption import _adopt, _node_type, _release
from ._atoms import _ATOMS, _same_atom
from ._depth import _Refused
from ._refusals import _refused_at
from ._roots import _detached_error, _live_root, _Root
from ._writes import _adopt_into, _enter, _rollback, _touch, _Undo


@_node_type
class TrackedList(list[Any]):
    """A ``list`` whose mutators record changes; reads are plain ``list``'s.

    ``heapq`` writes through the C API: lists that could be heaps are
    watched (see the package docs), so those changes are still found.

    >>> from tiercache._tracking import dirty_fields, track
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
