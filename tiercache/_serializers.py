"""Serializers: value <-> payload bytes inside an envelope.

::

    value ──dumps──> payload bytes ──(envelope: header + CRC)──> tier
    value <──loads── payload bytes <──(envelope checked first)── tier

Two serializers ship with tiercache:

* :class:`MsgpackSerializer` (id 1, the default) executes no code on load
  and round-trips the builtin types a session holds *exactly*: a tuple comes
  back a tuple, a set a set, ``True`` stays ``True``.
* :class:`PickleSerializer` (id 2) stores anything pickle can, but loading a
  pickle executes code, so it refuses to run without a secret and checks an
  HMAC-SHA256 of every payload before unpickling it.

Wire format of :class:`MsgpackSerializer` (stable: stored entries outlive
the process that wrote them). Plain msgpack for None, bool, int (64-bit),
float, str, bytes, list and dict; msgpack ext types for the rest. Containers
are an array whose *first element* is an empty ext marker, so their items
are packed inline by the C packer instead of by a nested packer per tuple
(five times faster to dump and no nested unpacker per level on load, which
also keeps deep, hostile nesting from exhausting the C stack)::

    code  kind         encoding
    1     tuple        array [ext(1, b""), *items]
    2     set          array [ext(2, b""), *items]
    3     frozenset    array [ext(3, b""), *items]
    4     registered   array [ext(4, b""), name, state]
    5     big int      ext(5, two's complement, little-endian)   beyond 64 bits
    6     datetime     ext(6, flags byte + naive ISO text [+ NUL tz])
    7     date         ext(7, ISO text)
    8     time         ext(8, like datetime)
    9     timedelta    ext(9, <iii days, seconds, microseconds)
    10    UUID         ext(10, 16 bytes)
    11    Decimal      ext(11, str(value))

msgpack's own timestamp ext (-1) is never written; one from another writer
loads as an aware UTC datetime.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import pickle
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Final, Protocol, runtime_checkable
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack

from ._exceptions import ConfigError, CorruptEntryError, SerializationError, SignatureError

__all__ = [
    "RESERVED_ATTR_PREFIX",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
]

#: Instance attributes whose name starts with this prefix belong to
#: tiercache (change tracking) and are never serialized.
RESERVED_ATTR_PREFIX: Final = "_tc_"


@runtime_checkable
class Serializer(Protocol):
    """Turns a value into payload bytes and back.

    ``id`` is stored in every envelope (0-15 are reserved for tiercache's own
    serializers; pick 16-255 for yours). ``dumps`` raises
    :class:`~tiercache.SerializationError` naming the offending path;
    ``loads`` raises :class:`~tiercache.CorruptEntryError` on bytes it cannot
    read and must never execute code from the payload unless the serializer
    is an explicit, signed opt-in.
    """

    id: int
    name: str

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# -- msgpack ext codes (part of the stored format: never renumber) ----------

_TUPLE: Final = 1
_SET: Final = 2
_FROZENSET: Final = 3
_OBJECT: Final = 4
_BIGINT: Final = 5
_DATETIME: Final = 6
_DATE: Final = 7
_TIME: Final = 8
_TIMEDELTA: Final = 9
_UUID: Final = 10
_DECIMAL: Final = 11

_TUPLE_EXT: Final = msgpack.ExtType(_TUPLE, b"")
_SET_EXT: Final = msgpack.ExtType(_SET, b"")
_FROZENSET_EXT: Final = msgpack.ExtType(_FROZENSET, b"")
_OBJECT_EXT: Final = msgpack.ExtType(_OBJECT, b"")

# msgpack's packer refuses deeper nesting; the path finder reports it.
_NEST_LIMIT: Final = 511


class _Marker:
    """What a container marker decodes to until the list hook consumes it."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


_MARKERS: Final = {code: _Marker(code) for code in (_TUPLE, _SET, _FROZENSET, _OBJECT)}
_TUPLE_M: Final = _MARKERS[_TUPLE]
_SET_M: Final = _MARKERS[_SET]
_FROZENSET_M: Final = _MARKERS[_FROZENSET]
_OBJECT_M: Final = _MARKERS[_OBJECT]

# -- dates and times ---------------------------------------------------------
# flags byte: low 2 bits = tz kind, 0x80 = fold. The wall time is naive ISO
# text (datetime.fromisoformat is C-fast); tz data follows a NUL.
_TZ_NAIVE: Final = 0
_TZ_OFFSET: Final = 1  # datetime.timezone with its default name
_TZ_NAMED: Final = 2  # datetime.timezone(offset, name)
_TZ_ZONE: Final = 3  # zoneinfo.ZoneInfo, by key
_FOLD: Final = 0x80
_TIMEDELTA_S: Final = struct.Struct("<iii")


def _encode_tz(tz: tzinfo | None) -> tuple[int, bytes]:
    if tz is None:
        return _TZ_NAIVE, b""
    if type(tz) is timezone:
        offset = tz.utcoffset(None)
        assert offset is not None  # a timezone always has one
        micros = str(offset // timedelta(microseconds=1)).encode()
        name = tz.tzname(None)
        if name == timezone(offset).tzname(None):
            return _TZ_OFFSET, b"\x00" + micros
        return _TZ_NAMED, b"\x00" + micros + b"\x00" + name.encode("utf-8", "surrogatepass")
    if isinstance(tz, ZoneInfo) and tz.key is not None:
        return _TZ_ZONE, b"\x00" + tz.key.encode()
    # pytz, dateutil ... have no stable, code-free identity we could store.
    raise TypeError(f"cannot serialize tzinfo {type(tz).__name__} (use timezone or ZoneInfo)")


def _decode_tz(kind: int, parts: list[bytes]) -> tzinfo | None:
    if kind == _TZ_NAIVE and not parts:
        return None
    if kind == _TZ_OFFSET and len(parts) == 1:
        return timezone(timedelta(microseconds=int(parts[0])))
    if kind == _TZ_NAMED and len(parts) == 2:
        offset = timedelta(microseconds=int(parts[0]))
        return timezone(offset, parts[1].decode("utf-8", "surrogatepass"))
    if kind == _TZ_ZONE and len(parts) == 1:
        # ZoneInfo validates the key (no paths) and only reads tz data.
        return ZoneInfo(parts[0].decode("ascii"))
    raise ValueError("bad time zone data")


def _encode_clock(code: int, value: datetime | time) -> msgpack.ExtType:
    kind, tz = _encode_tz(value.tzinfo)
    naive = value.replace(tzinfo=None, fold=0).isoformat()
    flags = kind | (_FOLD if value.fold else 0)
    return msgpack.ExtType(code, bytes((flags,)) + naive.encode() + tz)


def _decode_clock(cls: type[datetime] | type[time], data: bytes) -> datetime | time:
    flags = data[0]
    if flags & ~(_FOLD | 3):
        raise ValueError("bad flags")
    text, *parts = data[1:].split(b"\x00", 2)
    naive = cls.fromisoformat(text.decode("ascii"))
    if naive.tzinfo is not None:
        raise ValueError("offset inside the wall time")
    return naive.replace(tzinfo=_decode_tz(flags & 3, parts), fold=1 if flags & _FOLD else 0)


def _decode_bigint(data: bytes) -> int:
    value = int.from_bytes(data, "little", signed=True)
    if -(2**63) <= value < 2**64:
        raise ValueError("a big int ext holding a 64-bit int")
    return value


def _decode_date(data: bytes) -> date:
    if len(data) != 10:  # fromisoformat also reads "20240102", which we never write
        raise ValueError("bad date")
    return date.fromisoformat(data.decode("ascii"))


def _decode_timedelta(data: bytes) -> timedelta:
    days, seconds, micros = _TIMEDELTA_S.unpack(data)
    return timedelta(days, seconds, micros)


def _decode_decimal(data: bytes) -> Decimal:
    # Decimal() also accepts whitespace and underscores; str() never writes them.
    text = data.decode("ascii")
    value = Decimal(text)
    if str(value) != text:
        raise ValueError("non-canonical decimal")
    return value


_LEAF_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    _BIGINT: _decode_bigint,
    _DATETIME: lambda data: _decode_clock(datetime, data),
    _DATE: _decode_date,
    _TIME: lambda data: _decode_clock(time, data),
    _TIMEDELTA: _decode_timedelta,
    _UUID: lambda data: UUID(bytes=data),
    _DECIMAL: _decode_decimal,
}


def _encode_bigint(value: int) -> msgpack.ExtType:
    # The packer calls ``default`` for ints only when they overflow 64 bits.
    return msgpack.ExtType(
        _BIGINT, value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    )


_Encoder = Callable[[Any], Any]

_BUILTIN_ENCODERS: Final[dict[type, _Encoder]] = {
    tuple: lambda o: [_TUPLE_EXT, *o],
    set: lambda o: [_SET_EXT, *o],
    frozenset: lambda o: [_FROZENSET_EXT, *o],
    int: _encode_bigint,
    datetime: lambda o: _encode_clock(_DATETIME, o),
    date: lambda o: msgpack.ExtType(_DATE, o.isoformat().encode()),
    time: lambda o: _encode_clock(_TIME, o),
    timedelta: lambda o: msgpack.ExtType(
        _TIMEDELTA, _TIMEDELTA_S.pack(o.days, o.seconds, o.microseconds)
    ),
    UUID: lambda o: msgpack.ExtType(_UUID, o.bytes),
    Decimal: lambda o: msgpack.ExtType(_DECIMAL, str(o).encode()),
}

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


class MsgpackSerializer:
    """The default serializer: msgpack, exact round trips, no code on load.

    Round-trips by type and value: None, bool, int (any size), float
    (nan, inf, -0.0), str, bytes, list, dict (keys of any supported hashable
    type), tuple, set, frozenset, datetime (naive, ``timezone`` offsets or
    ``ZoneInfo``; fold kept), date, time, timedelta, UUID, Decimal, and
    instances of the classes passed as ``types``. Subclasses of dict, list
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


class PickleSerializer:
    """Pickle, signed: stores anything pickle can, for trusted deployments.

    **Loading a pickle executes code.** Anyone who can write to your Redis or
    cache directory could otherwise run code in every process that reads
    the entry, so this serializer requires a secret, prefixes each payload
    with its HMAC-SHA256 and checks it with :func:`hmac.compare_digest`
    *before* unpickling; a mismatch raises :class:`SignatureError`. Prefer
    :class:`MsgpackSerializer` unless you need pickle's reach.

    ``fallback_secrets`` are accepted when verifying, never for signing, so
    a secret can be rotated without invalidating every entry at once.

    >>> s = PickleSerializer(secret="change me")
    >>> s.loads(s.dumps({"n": 1}))
    {'n': 1}
    >>> try:
    ...     PickleSerializer(secret="other").loads(s.dumps(1))
    ... except SignatureError as exc:
    ...     print(exc)
    pickle payload signature does not match (wrong secret or tampered)
    """

    id: int = 2
    name: str = "pickle"

    _TAG_SIZE: Final = hashlib.sha256().digest_size

    def __init__(
        self,
        secret: bytes | str,
        *,
        protocol: int = 5,
        fallback_secrets: Iterable[bytes | str] = (),
    ) -> None:
        self._key = self._check_secret("secret", secret)
        self._fallback_keys = tuple(
            self._check_secret("fallback_secrets", s) for s in fallback_secrets
        )
        if (
            not isinstance(protocol, int)
            or isinstance(protocol, bool)
            or not 2 <= protocol <= pickle.HIGHEST_PROTOCOL
        ):
            raise ConfigError(f"protocol must be in 2..{pickle.HIGHEST_PROTOCOL}, got {protocol!r}")
        self._protocol = protocol

    @staticmethod
    def _check_secret(setting: str, secret: bytes | str) -> bytes:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ConfigError(
                f"{setting} must be a non-empty bytes or str (pickle runs code on load)"
            )
        return secret

    def __repr__(self) -> str:
        return f"PickleSerializer(secret=<hidden>, protocol={self._protocol})"

    def _sign(self, key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()

    def dumps(self, value: Any) -> bytes:
        """Pickle and sign ``value``; raise :class:`SerializationError` naming the path."""
        try:
            body = pickle.dumps(value, protocol=self._protocol)
        except Exception as exc:
            raise SerializationError(_pickle_failure(value, exc, self._protocol)) from exc
        return self._sign(self._key, body) + body

    def loads(self, data: bytes) -> Any:
        """Verify the signature, then unpickle."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptEntryError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < self._TAG_SIZE:
            raise CorruptEntryError("truncated pickle payload: shorter than its signature")
        tag, body = data[: self._TAG_SIZE], data[self._TAG_SIZE :]
        if not any(
            hmac.compare_digest(tag, self._sign(key, body))
            for key in (self._key, *self._fallback_keys)
        ):
            raise SignatureError(
                "pickle payload signature does not match (wrong secret or tampered)"
            )
        try:
            return pickle.loads(body)
        except Exception as exc:
            # Signed by us, so this is a class that moved or vanished.
            raise CorruptEntryError(f"cannot unpickle: {exc}") from exc


def _pickle_children(obj: Any, path: str) -> Iterable[tuple[str, Any]] | None:
    children = _container_children(obj, path)
    if children is None and isinstance(getattr(obj, "__dict__", None), dict):
        children = ((f"{path}.{k}", v) for k, v in vars(obj).items())
    return children


def _container_children(obj: Any, path: str) -> Iterable[tuple[str, Any]] | None:
    if isinstance(obj, dict):
        return (
            pair
            for k, v in obj.items()
            for pair in ((f"{path} key {k!r}", k), (f"{path}[{k!r}]", v))
        )
    if isinstance(obj, list | tuple):
        return ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    if isinstance(obj, set | frozenset):
        return ((f"{path} item {v!r}", v) for v in obj)
    return None


# Deeper than this, a failure is reported as too deep without probing: both
# msgpack (about 1000 levels) and pickle (the recursion limit) give up there.
_WALK_DEPTH: Final = 1000


def _locate_failure(
    value: Any,
    exc: Exception,
    children: Callable[[Any, str], Iterable[tuple[str, Any]] | None],
    probe: Callable[[Any], str | None],
    *,
    cycles_ok: bool,
) -> str:
    """Find the first part of ``value`` that cannot be serialized: "path: why".

    Runs only after a failure, so the fast path never tracks paths. The
    walk is iterative, because the values it explains include ones too deep
    for recursion.
    """
    active: set[int] = set()
    frames: list[tuple[Any, str, Iterator[tuple[str, Any]]]] = []

    def enter(obj: Any, path: str) -> str | None:
        kids = children(obj, path)
        if kids is None:
            reason = probe(obj)
            return None if reason is None else f"{path}: {reason}"
        if id(obj) in active:
            return None if cycles_ok else f"{path}: circular reference"
        if len(frames) >= _WALK_DEPTH:
            return f"{path}: nested too deeply"
        active.add(id(obj))
        frames.append((obj, path, iter(kids)))
        return None

    found = enter(value, "value")
    while found is None and frames:
        obj, path, it = frames[-1]
        step = next(it, None)
        if step is None:
            frames.pop()
            active.discard(id(obj))
            # every part packs alone, so the container itself is the problem
            reason = probe(obj)
            if reason is not None:
                found = f"{path}: {reason}"
            continue
        found = enter(step[1], step[0])
    return found or f"value: {exc}"


def _pickle_failure(value: Any, exc: Exception, protocol: int) -> str:
    def probe(obj: Any) -> str | None:
        try:
            pickle.dumps(obj, protocol=protocol)
        except Exception as e:
            return str(e)
        return None

    return _locate_failure(value, exc, _pickle_children, probe, cycles_ok=True)
