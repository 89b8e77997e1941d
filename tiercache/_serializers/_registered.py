"""Registered classes: a user's dataclass, plain class or enum, stored by name.

::

    dumps: obj ──_object_encoder──> [ext(4, b""), name, state(obj)]
        state: an enum's value | a dataclass's fields | else __dict__ minus
               _tc_* attributes, plus the registered class's __slots__
    loads: [marker, name, state] ──by_name[name].build(state)──> obj
        cls.__new__ and object.__setattr__, never __init__; a missing field
        takes its default, a stored field the class no longer has is dropped

An unregistered name never reaches :meth:`_Registered.build`:
:class:`MsgpackSerializer` refuses it, and never imports a class by name.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Final

from ._base import RESERVED_ATTR_PREFIX
from ._ext import _OBJECT_EXT, _Encoder

_MISSING: Final = object()


class _Registered:
    """How one registered class is turned into ``[marker, name, state]`` and back."""

    __slots__ = ("cls", "defaults", "fields", "is_enum", "name", "slots")

    def __init__(self, name: str, cls: type[Any]) -> None:
        self.name = name
        self.cls = cls
        self.is_enum = issubclass(cls, enum.Enum)
        self.fields: tuple[str, ...] | None = None
        # field name -> () -> default, for fields missing from an older entry
        self.defaults: dict[str, Callable[[], Any]] = {}
        if dataclasses.is_dataclass(cls):
            fs = dataclasses.fields(cls)
            self.fields = tuple(f.name for f in fs)
            for f in fs:
                if f.default is not dataclasses.MISSING:
                    self.defaults[f.name] = _constant(f.default)
                elif f.default_factory is not dataclasses.MISSING:
                    self.defaults[f.name] = f.default_factory
        # slots of the *registered* class only: a tracker's subclass may add
        # its own, which are not the user's state.
        self.slots = tuple(
            s
            for klass in cls.__mro__
            for s in _slot_names(klass)
            if s not in ("__dict__", "__weakref__")
        )

    def state(self, obj: Any) -> Any:
        if self.is_enum:
            return obj.value
        if self.fields is not None:
            state = {}
            for n in self.fields:
                v = getattr(obj, n, _MISSING)
                if v is not _MISSING:
                    state[n] = v
            return state
        state = {
            k: v
            for k, v in getattr(obj, "__dict__", {}).items()
            if not k.startswith(RESERVED_ATTR_PREFIX)
        }
        for s in self.slots:
            v = getattr(obj, s, _MISSING)
            if v is not _MISSING:
                state[s] = v
        return state

    def build(self, state: Any) -> Any:
        if self.is_enum:
            return self.cls(state)
        if type(state) is not dict:
            raise ValueError("object state is not a map")
        # __new__ without __init__: no side effects, and object.__setattr__
        # passes frozen dataclasses and tracking __setattr__ hooks alike.
        cls: Any = self.cls
        obj = cls.__new__(cls)
        if self.fields is not None:
            for n in self.fields:
                if n in state:
                    object.__setattr__(obj, n, state[n])
                elif n in self.defaults:
                    object.__setattr__(obj, n, self.defaults[n]())
                else:
                    raise ValueError(f"field {n!r} missing and has no default")
            # stored fields the class no longer has are dropped (schema drift)
            return obj
        for k, v in state.items():
            if type(k) is not str or (k.startswith("__") and k.endswith("__")):
                raise ValueError(f"bad attribute name {k!r}")
            object.__setattr__(obj, k, v)
        return obj


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _object_encoder(reg: _Registered) -> _Encoder:
    name, state = reg.name, reg.state
    return lambda obj: [_OBJECT_EXT, name, state(obj)]


def _slot_names(klass: type) -> tuple[str, ...]:
    slots = klass.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(slots)


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
