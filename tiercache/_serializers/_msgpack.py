"""The default serializer, :class:`MsgpackSerializer`.

::

    dumps(value) ──> this thread's Packer(default=_default, strict_types=True)
        ├─ None, bool, int, float, str, bytes, list, dict ──> the C packer
        ├─ any other type ──> _default ──> _encoders[type], found once per type:
        │     ext codes (_ext), a registered class (_registered), or a
        │     subclass of dict, list or set packed as its plain twin
        └─ fails ──> _locate_failure ──> SerializationError("value[...]: why")
    loads(data) ──> msgpack.unpackb(data, ext_hook, list_hook)
        ext_hook: ext ──> a container marker, or a leaf value (_ext)
        list_hook: [marker, *items] ──> tuple, set, frozenset, registered object
        anything unreadable, or a marker no list consumed ──> CorruptEntryError
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgpack

from .._exceptions import ConfigError, CorruptEntryError, SerializationError
from .._mergeable import Log
from . import _ext
from ._ext import _BUILTIN_ENCODERS, _FROZENSET_M, _LOG_M, _SET_M, _TUPLE_M, _Encoder, _Marker
from ._locate import _container_children, _locate_failure
from ._registered import _class_name, _object_encoder, _Registered

__all__ = ["MsgpackSerializer"]

# Bound here, not imported by name: CPython (3.11 to 3.13) compiles
# ``name.get(...)`` without its method-call fast path when ``name`` was
# bound by an import, and loads calls these once per ext in the payload;
# imported, they made loads of a 2 KB session ~2% slower than before the split.
_MARKERS: Final = _ext._MARKERS
_LEAF_DECODERS: Final = _ext._LEAF_DECODERS


class MsgpackSerializer:
    """The default serializer: msgpack, exact round trips, no code on load.

    Round-trips by type and value: None, bool, int (any size), float
    (nan, inf, -0.0), str, bytes, list, dict (keys of any supported hashable
    type), tuple, set, frozenset, datetime (naive, ``timezone`` offsets or
    ``ZoneInfo``; fold kept), date, time, timedelta, UUID, Decimal,
    :class:`~tiercache.Counter`, :class:`~tiercache.Log`, and instances of
    the classes passed as ``types``. Subclasses of dict, list
    and set (tiercache's tracked containers) are stored exactly like their
    plain twins, and everything loads as plain builtins.

    >>> s = MsgpackSerializer()
    >>> s.loads(s.dumps({"tags": {"vip"}, "pos": (1, 2), (0, 1): True}))
    {'tags': {'vip'}, 'pos': (1, 2), (0, 1): True}

    Register your own dataclasses, plain classes or enums with ``types`` (a
    list, or a mapping of stable names to classes so a class can move
    without breaking stored entries). Their state (dataclass fields, else
    ``__dict__`` minus ``_tc_*`` attributes, plus ``__slots__``) is stored
    with the name; loading rebuilds the object with ``cls.__new__`` and
    ``object.__setattr__``, never calling ``__init__``, and never imports a
    class by name: an unregistered name is a :class:`CorruptEntryError`.
    An unregistered subclass is stored as its nearest registered base.

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Point:
    ...     x: int
    ...     y: int = 0
    >>> s = MsgpackSerializer(types={"Point": Point})
    >>> s.loads(s.dumps([Point(1, 2)]))
    [Point(x=1, y=2)]

    Not preserved: bytearray and memoryview load as bytes (msgpack packs
    them natively, before any hook could mark them).
    """

    id: int = 1
    name: str = "msgpack"

    #: A value's encoding does not depend on where it sits: a dict's bytes
    #: are its header plus each key's and value's own, so a write-behind
    #: exit can bound the size of a changed value from its changed fields
    #: alone (tiercache._write.Writer.seal_later).
    sizes_add_up = True
    #: A dict's bytes are its map header, then each key's and value's own
    #: bytes, back to back: an entry can be stored field by field
    #: (tiercache._fields) and put together again exactly.
    splits_maps = True

    def __init__(self, types: Iterable[type] | Mapping[str, type] = ()) -> None:
        pairs = types.items() if isinstance(types, Mapping) else ((None, t) for t in types)
        self._by_name: dict[str, _Registered] = {}
        self._by_class: dict[type, _Registered] = {}
        for given, cls in pairs:
            if not isinstance(cls, type):
                raise ConfigError(f"types: expected classes, got {cls!r}")
            name = _class_name(cls) if given is None else given
            if not isinstance(name, str) or not name:
                raise ConfigError(f"types: a class name must be a non-empty str, got {name!r}")
            if name in self._by_name or cls in self._by_class:
                raise ConfigError(f"types: {name!r} ({cls.__qualname__}) is registered twice")
            if cls in _BUILTIN_ENCODERS or cls in (dict, list, str, bytes, float, bool):
                raise ConfigError(
                    f"types: {cls.__qualname__} is built in and needs no registration"
                )
            reg = _Registered(name, cls)
            self._by_name[name] = reg
            self._by_class[cls] = reg
        # type -> encoder; grows with each new subclass seen (tracked
        # containers, tracked registered classes) so the MRO is walked once.
        self._encoders: dict[type, _Encoder] = dict(_BUILTIN_ENCODERS)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"MsgpackSerializer(types={sorted(self._by_name)!r})"

    # -- dumps -------------------------------------------------------------

    def _packer(self) -> Any:
        # A Packer is 3x cheaper to reuse than to build per call, but owns a
        # buffer, so each thread gets its own.
        try:
            return self._local.packer
        except AttributeError:
            packer = msgpack.Packer(default=self._default, strict_types=True, use_bin_type=True)
            self._local.packer = packer
            return packer

    def _default(self, obj: Any) -> Any:
        # strict_types=True sends every non-exact type here (a tuple would
        # otherwise silently become a list), so this is the hot path for
        # tracked containers: one dict lookup, then a C-speed copy.
        enc = self._encoders.get(type(obj))
        if enc is None:
            enc = self._encoder_for(type(obj))
        return enc(obj)

    def _encoder_for(self, cls: type) -> _Encoder:
        enc: _Encoder
        for klass in cls.__mro__:
            reg = self._by_class.get(klass)
            if reg is not None:
                enc = _object_encoder(reg)
                break
        else:
            if issubclass(cls, dict):
                enc = dict
            elif issubclass(cls, list):
                enc = list
            elif issubclass(cls, set):
                enc = _BUILTIN_ENCODERS[set]
            else:
                raise TypeError(f"cannot serialize {cls.__name__}")
        self._encoders[cls] = enc
        return enc

    def dumps(self, value: Any) -> bytes:
        """Pack ``value``; raise :class:`SerializationError` naming the bad path.

        >>> try:
        ...     MsgpackSerializer().dumps({"user": {"cb": lambda: 0}})
        ... except SerializationError as exc:
        ...     print(exc)
        value['user']['cb']: cannot serialize function
        """
        try:
            packed: bytes = self._packer().pack(value)
            return packed
        except Exception as exc:
            # Only now pay for finding where: the fast path never tracks it.
            raise SerializationError(self._describe_failure(value, exc)) from exc

    def _probe(self, leaf: Any) -> str | None:
        try:
            self._packer().pack(leaf)
        except Exception as exc:
            return str(exc)
        return None

    def _children(self, obj: Any, path: str) -> Iterable[tuple[str, Any]] | None:
        """The (path, child) pairs of a container, or None for a leaf."""
        children = _container_children(obj, path)
        if children is not None:
            return children
        for klass in type(obj).__mro__:
            reg = self._by_class.get(klass)
            if reg is not None:
                try:
                    state = reg.state(obj)
                except Exception:
                    return None
                if isinstance(state, dict):
                    return ((f"{path}.{k}", v) for k, v in state.items())
                return None
        return None

    def _describe_failure(self, value: Any, exc: Exception) -> str:
        return _locate_failure(value, exc, self._children, self._probe, cycles_ok=False)

    # -- loads -------------------------------------------------------------

    def loads(self, data: bytes) -> Any:
        """Unpack a payload; anything unreadable raises :class:`CorruptEntryError`."""
        # Markers are counted per call: one never consumed by a list (a
        # stray marker in corrupt data) must not leak out as a value.
        pending = 0
        by_name = self._by_name

        def ext_hook(code: int, payload: bytes) -> Any:
            nonlocal pending
            marker = _MARKERS.get(code)
            if marker is not None:
                if payload:
                    raise ValueError("marker with data")
                pending += 1
                return marker
            decoder = _LEAF_DECODERS.get(code)
            if decoder is None:
                raise ValueError(f"unknown ext type {code}")
            return decoder(payload)

        def list_hook(items: list[Any]) -> Any:
            nonlocal pending
            if not items:
                return items
            head = items[0]
            if type(head) is not _Marker:
                return items
            pending -= 1
            if head is _TUPLE_M:
                return tuple(items[1:])
            if head is _SET_M:
                return set(items[1:])
            if head is _FROZENSET_M:
                return frozenset(items[1:])
            if head is _LOG_M:
                # Checks each item is immutable, as a Log built here would.
                return Log(items[1:])
            if len(items) != 3 or type(items[1]) is not str:
                raise ValueError("bad registered object")
            reg = by_name.get(items[1])
            if reg is None:
                raise ValueError(f"unregistered class name {items[1]!r}")
            return reg.build(items[2])

        try:
            # timestamp=3: msgpack decodes its own timestamp ext (-1) itself,
            # never through ext_hook; we never write one, and as a
            # msgpack.Timestamp it would load but not store again (every
            # later write of the key would fail). An aware datetime round-trips.
            value = msgpack.unpackb(
                data, ext_hook=ext_hook, list_hook=list_hook, strict_map_key=False, timestamp=3
            )
        except Exception as exc:
            raise CorruptEntryError(
                f"unreadable msgpack payload: {type(exc).__name__}: {exc}"
            ) from exc
        if pending:
            raise CorruptEntryError("unreadable msgpack payload: stray container marker")
        return value
