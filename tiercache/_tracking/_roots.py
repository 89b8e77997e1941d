"""Roots: the bookkeeping of one tracked value.

Every node of a tracked value points straight at its :class:`_Root`: the
dirty flag, the saved copies of the fields touched since the clean point,
the watched fields' backups, the key order a revert restores, and whether
the value is detached (then every write raises DetachedError).
"""

from __future__ import annotations

from typing import Any, Final

from .._exceptions import DetachedError
from ._object_state import _raw_get
from ._sentinels import MISSING


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


def _live_root(node: Any) -> _Root | None:
    root: _Root | None = node._tc_root
    if root is not None and root.detached:
        raise _detached_error(root)
    return root


def _get_field(root: _Root, field: Any) -> Any:
    kind = root.kind
    if kind == "d":
        return dict.get(root.value, field, MISSING)
    if kind == "o":
        return _raw_get(root.value, field)
    return root.value


def _keep_order(root: _Root, node: Any) -> None:
    if root.order is None and root.value is node and root.kind == "d":
        root.order = list(dict.keys(node))
