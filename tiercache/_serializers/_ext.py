"""The msgpack ext codes of the stored format, and their codecs.

::

    dumps: a type msgpack has no exact form for ──> _BUILTIN_ENCODERS[type]
        tuple, set, frozenset, Log ──> [marker ext(code, b""), *items], packed inline
        big int, datetime, date, time, timedelta, UUID, Decimal, Counter
                              ──> ext(code, data)
    loads: ext(code, data) ──> _MARKERS[code]: the head of a container, for
                               the list hook to consume
                           └─> _LEAF_DECODERS[code](data): the value itself

The codes and their encodings are the table in :mod:`tiercache._serializers`,
part of the stored format: a code is never renumbered. Whatever a decoder
raises, :meth:`MsgpackSerializer.loads` reports as a corrupt entry.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Final
from uuid import UUID
from zoneinfo import ZoneInfo

import msgpack

from .._mergeable import Counter, Log

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
_COUNTER: Final = 12
_LOG: Final = 13

_TUPLE_EXT: Final = msgpack.ExtType(_TUPLE, b"")
_SET_EXT: Final = msgpack.ExtType(_SET, b"")
_FROZENSET_EXT: Final = msgpack.ExtType(_FROZENSET, b"")
_OBJECT_EXT: Final = msgpack.ExtType(_OBJECT, b"")
_LOG_EXT: Final = msgpack.ExtType(_LOG, b"")

# msgpack's packer refuses deeper nesting; the path finder reports it.
_NEST_LIMIT: Final = 511


class _Marker:
    """What a container marker decodes to until the list hook consumes it."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        self.code = code


_MARKERS: Final = {code: _Marker(code) for code in (_TUPLE, _SET, _FROZENSET, _OBJECT, _LOG)}
_TUPLE_M: Final = _MARKERS[_TUPLE]
_SET_M: Final = _MARKERS[_SET]
_FROZENSET_M: Final = _MARKERS[_FROZENSET]
_OBJECT_M: Final = _MARKERS[_OBJECT]
_LOG_M: Final = _MARKERS[_LOG]

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


def _int_bytes(value: int) -> bytes:
    """Two's complement, little-endian, in the fewest whole bytes that
    ``bit_length`` gives (-128 takes two): the one encoding a decoder accepts."""
    return value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)


def _decode_bigint(data: bytes) -> int:
    value = int.from_bytes(data, "little", signed=True)
    if -(2**63) <= value < 2**64:
        raise ValueError("a big int ext holding a 64-bit int")
    return value


def _decode_counter(data: bytes) -> Counter:
    value = int.from_bytes(data, "little", signed=True)
    if _int_bytes(value) != data:  # b"" or padded: never written
        raise ValueError("non-canonical counter")
    return Counter(value)


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
    _COUNTER: _decode_counter,
}


def _encode_bigint(value: int) -> msgpack.ExtType:
    # The packer calls ``default`` for ints only when they overflow 64 bits.
    return msgpack.ExtType(_BIGINT, _int_bytes(value))


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
    # Any size in one ext: a Counter never needs the big int ext, and its
    # code alone says Counter (a plain int would load as a plain int).
    Counter: lambda o: msgpack.ExtType(_COUNTER, _int_bytes(o)),
    Log: lambda o: [_LOG_EXT, *o],
}
