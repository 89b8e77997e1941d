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
    12    Counter      ext(12, two's complement, little-endian)   any size
    13    Log          array [ext(13, b""), *items]

msgpack's own timestamp ext (-1) is never written; one from another writer
loads as an aware UTC datetime.

The modules::

    Serializer (_base)              the protocol the cache needs, and the
                                    attribute prefix no serializer stores
    ext codes (_ext)                the codes above, their encoders, decoders
                                    and container markers
    _Registered (_registered)       a registered class <-> [marker, name, state]
    MsgpackSerializer (_msgpack)    the default serializer: a packer per
                                    thread, decoding hooks per call
    PickleSerializer (_pickle)      pickle behind an HMAC-SHA256 tag
    _locate_failure (_locate)       after a failed dumps: which part, and why

Every name the serializers' modules define is importable from here, as when
they were one module (the cache imports ``Serializer`` and
``MsgpackSerializer``, tests and benchmarks the public classes). A re-export
is a second binding: rebinding a name here does not change what the module
holding it reads.
"""

from __future__ import annotations

from ._base import RESERVED_ATTR_PREFIX as RESERVED_ATTR_PREFIX
from ._base import Serializer as Serializer
from ._ext import _BIGINT as _BIGINT
from ._ext import _BUILTIN_ENCODERS as _BUILTIN_ENCODERS
from ._ext import _COUNTER as _COUNTER
from ._ext import _DATE as _DATE
from ._ext import _DATETIME as _DATETIME
from ._ext import _DECIMAL as _DECIMAL
from ._ext import _FOLD as _FOLD
from ._ext import _FROZENSET as _FROZENSET
from ._ext import _FROZENSET_EXT as _FROZENSET_EXT
from ._ext import _FROZENSET_M as _FROZENSET_M
from ._ext import _LEAF_DECODERS as _LEAF_DECODERS
from ._ext import _LOG as _LOG
from ._ext import _LOG_EXT as _LOG_EXT
from ._ext import _LOG_M as _LOG_M
from ._ext import _MARKERS as _MARKERS
from ._ext import _NEST_LIMIT as _NEST_LIMIT
from ._ext import _OBJECT as _OBJECT
from ._ext import _OBJECT_EXT as _OBJECT_EXT
from ._ext import _OBJECT_M as _OBJECT_M
from ._ext import _SET as _SET
from ._ext import _SET_EXT as _SET_EXT
from ._ext import _SET_M as _SET_M
from ._ext import _TIME as _TIME
from ._ext import _TIMEDELTA as _TIMEDELTA
from ._ext import _TIMEDELTA_S as _TIMEDELTA_S
from ._ext import _TUPLE as _TUPLE
from ._ext import _TUPLE_EXT as _TUPLE_EXT
from ._ext import _TUPLE_M as _TUPLE_M
from ._ext import _TZ_NAIVE as _TZ_NAIVE
from ._ext import _TZ_NAMED as _TZ_NAMED
from ._ext import _TZ_OFFSET as _TZ_OFFSET
from ._ext import _TZ_ZONE as _TZ_ZONE
from ._ext import _UUID as _UUID
from ._ext import _decode_bigint as _decode_bigint
from ._ext import _decode_clock as _decode_clock
from ._ext import _decode_counter as _decode_counter
from ._ext import _decode_date as _decode_date
from ._ext import _decode_decimal as _decode_decimal
from ._ext import _decode_timedelta as _decode_timedelta
from ._ext import _decode_tz as _decode_tz
from ._ext import _encode_bigint as _encode_bigint
from ._ext import _encode_clock as _encode_clock
from ._ext import _encode_tz as _encode_tz
from ._ext import _Encoder as _Encoder
from ._ext import _int_bytes as _int_bytes
from ._ext import _Marker as _Marker
from ._locate import _WALK_DEPTH as _WALK_DEPTH
from ._locate import _container_children as _container_children
from ._locate import _locate_failure as _locate_failure
from ._msgpack import MsgpackSerializer as MsgpackSerializer
from ._pickle import PickleSerializer as PickleSerializer
from ._pickle import _pickle_children as _pickle_children
from ._pickle import _pickle_failure as _pickle_failure
from ._registered import _MISSING as _MISSING
from ._registered import _class_name as _class_name
from ._registered import _constant as _constant
from ._registered import _object_encoder as _object_encoder
from ._registered import _Registered as _Registered
from ._registered import _slot_names as _slot_names

__all__ = [
    "RESERVED_ATTR_PREFIX",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
]
