"""User objects seen past their own hooks: their state and their classes.

A tracked object's class is a generated subclass of the user's (_objects).
These helpers read an object's attributes and slots without its
``__getattr__``/``__setattr__``, never show the ``_tc_`` attributes the
tracker keeps on it, and map between the user's class and the tracked one.
"""

from __future__ import annotations

from typing import Any

from ._sentinels import MISSING

# Attributes the tracker keeps on a node (root, field, depth): never state.
_RESERVED = "_tc_"
# user class -> generated tracked subclass, or None (cannot be tracked)
_OBJ_CLASSES: dict[type, Any] = {}


def _orig_class(t: type) -> type:
    orig: type | None = t.__dict__.get("_tc_orig")
    return t if orig is None else orig


def _slot_names(cls: type) -> tuple[str, ...]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for s in (slots,) if isinstance(slots, str) else slots:
            if s not in ("__dict__", "__weakref__") and s not in names:
                names.append(s)
    return tuple(names)


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
