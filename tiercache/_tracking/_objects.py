"""Tracked objects and dataclasses: a generated subclass, swapped in.

For a user class with a ``__dict__`` (or ``__slots__``), ``_tracked_class``
makes (once, cached) a subclass that tracks writes through ``__setattr__``
and ``__delattr__`` and copies, pickles and compares as the user's class.
Adoption swaps an object's class to it in place (slotted objects are
copied: their layout cannot take the tracking slots)::

    user class ──_tracked_class──> cached? return it (or None: not trackable)
                                   pure-Python, has state? generate, cache
    obj.x = v ──tracked __setattr__──> steps 1-4 of _writes, then the
                                       user's own __setattr__
"""

from __future__ import annotations

import copy
import copyreg
import dataclasses
from collections.abc import Callable
from typing import Any, Final, SupportsIndex

from ._adoption import _node_classes, _release
from ._atoms import _ATOMS, _is_frozen_dataclass, _same_atom
from ._depth import _Refused
from ._object_state import (
    _OBJ_CLASSES,
    _RESERVED,
    _orig_class,
    _raw_get,
    _shallow_twin,
    _slot_names,
)
from ._refusals import _refused_at
from ._roots import _detached_error, _Root
from ._sentinels import _SELF, MISSING
from ._writes import _enter, _rollback, _save

_HEAPTYPE: Final = 1 << 9
# (typeshed does not declare these two copyreg helpers)
_NEWOBJ: Final[Any] = copyreg.__dict__["__newobj__"]
_RECONSTRUCTOR: Final[Any] = copyreg.__dict__["_reconstructor"]


@_node_classes
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
