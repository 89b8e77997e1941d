"""What every tracked write does around its C operation.

::

    mutator (a TrackedDict / List / Set method, a tracked __setattr__)
        │ 1. detached?  raise (_live_root, _detached_error)
        │ 2. no-op?     return, flag untouched
        ▼
    _touch / _save ── 3. first touch of the field since the clean point:
        │                saved[field] = plain copy; root.dirty = True
        ▼
    _enter / _adopt_into ── 4. release what leaves, adopt what enters
        │ refused: _rollback puts the log, the flag and saved back,
        │          and the caller raises the error naming the path
        ▼
    the builtin's own operation

Steps 1, 2 and the operation are written out in each mutator (the hot
paths); this module holds the shared steps and the undo log of a write.
"""

from __future__ import annotations

from typing import Any

from ._adoption import _adopt, _plain, _release, _Step
from ._atoms import _ATOMS
from ._depth import _Refused
from ._refusals import _refused_at
from ._roots import _get_field, _Root
from ._sentinels import MISSING


def _save(root: _Root, field: Any) -> None:
    """First touch of ``field`` since the clean point: keep its old value."""
    if field in root.backup:
        # The clean-point copy is right even if a bypass changed the field.
        root.saved[field] = root.backup[field]
        return
    cur = _get_field(root, field)
    root.saved[field] = cur if cur is MISSING else _plain(cur)


def _touch(root: _Root, field: Any) -> None:
    if field not in root.saved:
        _save(root, field)
    root.dirty = True


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


# -- undoing a write -----------------------------------------------------------


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
