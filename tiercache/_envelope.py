"""The envelope: the bytes a persistent tier stores for one entry.

::

    offset  size  field
    0       2     magic b"TC"
    2       1     format version (this module writes 1)
    3       1     serializer id (see tiercache._serializers)
    4       1     flags (reserved, 0)
    5       1     padding
    6       2     schema version of the value (user's migrations)
    8       8     entry version, grows on every write (compare-and-set)
    16      8     created, ms since the epoch
    24      8     updated, ms since the epoch
    32      8     expires, ms since the epoch; 0 = never
    40      4     payload length
    44      n     payload (serializer output)
    44+n    4     CRC-32 of everything before it

All integers are little-endian. The entry version sits at a fixed offset so
a tier can compare-and-set without understanding the rest (a Lua script
reads it with ``struct.unpack('<I8', value, 9)``).

Decoding never trusts its input: anything truncated, foreign, of another
format version or failing the checksum raises :class:`CorruptEntryError`
(the cache counts it as a miss). No code runs while decoding.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ._exceptions import CorruptEntryError

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "VERSION_OFFSET",
    "Envelope",
    "decode",
    "encode",
    "peek_version",
]

MAGIC = b"TC"
FORMAT_VERSION = 1
VERSION_OFFSET = 8

_HEADER = struct.Struct("<2sBBBxHQqqqI")
_CRC = struct.Struct("<I")
_VERSION = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size
_MIN_SIZE = HEADER_SIZE + _CRC.size
_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded entry.

    >>> e = Envelope(serializer_id=1, schema_version=0, version=3,
    ...              created_ms=1000, updated_ms=2000, expires_ms=0, payload=b"x")
    >>> decode(encode(e)) == e
    True
    """

    serializer_id: int
    schema_version: int
    version: int
    created_ms: int
    updated_ms: int
    expires_ms: int
    payload: bytes

    def expires_at(self) -> float | None:
        """Expiry in epoch seconds, or ``None`` for never."""
        return self.expires_ms / 1000.0 if self.expires_ms else None


def encode(envelope: Envelope) -> bytes:
    """Seal an envelope into bytes.

    Raises :class:`ValueError` when a header field is out of its range.
    """
    e = envelope
    if not 0 <= e.schema_version <= _U16:
        raise ValueError(f"schema_version must be in 0..{_U16}, got {e.schema_version}")
    if not 0 <= e.version <= _U64:
        raise ValueError(f"entry version must be in 0..{_U64}, got {e.version}")
    if not 0 <= e.serializer_id <= 0xFF:
        raise ValueError(f"serializer id must be in 0..255, got {e.serializer_id}")
    for field in ("created_ms", "updated_ms", "expires_ms"):
        ms = getattr(e, field)
        # signed 64-bit in the header; without this check struct.error escapes
        if not _I64_MIN <= ms <= _I64_MAX:
            raise ValueError(f"{field} must be in {_I64_MIN}..{_I64_MAX}, got {ms}")
    if len(e.payload) > _U32:
        raise ValueError(f"payload must be at most {_U32} bytes, got {len(e.payload)}")
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        e.serializer_id,
        0,
        e.schema_version,
        e.version,
        e.created_ms,
        e.updated_ms,
        e.expires_ms,
        len(e.payload),
    )
    body = head + e.payload
    return body + _CRC.pack(zlib.crc32(body))


def decode(data: bytes) -> Envelope:
    """Open envelope bytes, checking everything; raise CorruptEntryError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptEntryError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _MIN_SIZE:
        raise CorruptEntryError(f"truncated: {len(data)} bytes, the header alone is {_MIN_SIZE}")
    magic, fmt, ser, _flags, schema, version, created, updated, expires, n = _HEADER.unpack_from(
        data
    )
    if magic != MAGIC:
        # The stored bytes themselves never go into a message (nor a log).
        raise CorruptEntryError(f"foreign bytes: no {MAGIC!r} magic")
    if fmt != FORMAT_VERSION:
        raise CorruptEntryError(
            f"unknown envelope format version {fmt} (this code reads {FORMAT_VERSION})"
        )
    if len(data) != _MIN_SIZE + n:
        raise CorruptEntryError(
            f"length mismatch: header says {n} payload bytes, found {len(data) - _MIN_SIZE}"
        )
    (crc,) = _CRC.unpack_from(data, HEADER_SIZE + n)
    if crc != zlib.crc32(memoryview(data)[: HEADER_SIZE + n]):
        raise CorruptEntryError("checksum mismatch")
    return Envelope(
        ser, schema, version, created, updated, expires, data[HEADER_SIZE : HEADER_SIZE + n]
    )


def peek_version(data: bytes) -> int:
    """The entry version of envelope bytes, without a full check."""
    # A tier may hold foreign values (an int in a shared diskcache directory):
    # without the type check len() raises TypeError.
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptEntryError(f"not an envelope: {type(data).__name__}")
    if len(data) < _MIN_SIZE or data[:2] != MAGIC:
        raise CorruptEntryError("not an envelope")
    (version,) = _VERSION.unpack_from(data, VERSION_OFFSET)
    return int(version)
