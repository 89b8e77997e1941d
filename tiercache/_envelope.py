"""The envelope: the bytes a persistent tier stores for one entry.

::

    offset  size  field
    0       2     magic b"TC"
    2       1     format version (this module writes 2, reads 1 and 2)
    3       1     serializer id (see tiercache._serializers)
    4       1     flags: 0x01 tombstone (the key was deleted; no payload)
    5       1     padding
    6       2     schema version of the value (user's migrations)
    8       8     entry version, grows on every write (compare-and-set)
    16      8     created, ms since the epoch
    24      8     updated, ms since the epoch
    32      8     expires, ms since the epoch; 0 = never
    40      8     writer tag (format 2): unique per sealing, so two writers'
                  bytes never compare equal, even for equal content written
                  in the same millisecond at the same version
    48      4     payload length
    52      n     payload (serializer output)
    52+n    4     CRC-32 of everything before it

Format 1 (still read) is the same without the writer tag: the payload
length sits at 40 and the payload at 44. All integers are little-endian.
The entry version sits at a fixed offset in both formats so a tier can
compare-and-set without understanding the rest. Versions are at most
:data:`MAX_VERSION` (2**63 - 1): bytes claiming more are unreadable, so no
stored entry can stop its key from ever being written again.

A *tombstone* is what a delete leaves in the shared tier for a while: an
envelope with the tombstone flag, no payload, and the next version, so the
versions of a key never repeat across a delete and a re-create (a copy
from before the delete can never be confirmed against the new value).

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
    "MAX_VERSION",
    "MIN_SIZE",
    "TOMBSTONE",
    "VERSION_OFFSET",
    "Envelope",
    "decode",
    "encode",
    "is_tombstone",
    "peek_version",
    "safe_version",
]

MAGIC = b"TC"
FORMAT_VERSION = 2
VERSION_OFFSET = 8
#: The largest entry version (a signed 64-bit maximum leaves the top bit as
#: the mark of bytes that are not a usable envelope; see the Lua scripts).
MAX_VERSION = 2**63 - 1
#: Flag bit: a deleted key's marker.
TOMBSTONE = 0x01

_HEADER = struct.Struct("<2sBBBxHQqqqQI")
_HEADER_V1 = struct.Struct("<2sBBBxHQqqqI")
_CRC = struct.Struct("<I")
_VERSION = struct.Struct("<Q")
HEADER_SIZE = _HEADER.size
#: The shortest envelope of any format this module reads (format 1, no
#: payload): shorter bytes are never an envelope.
MIN_SIZE = _HEADER_V1.size + _CRC.size
_MIN_SIZE = MIN_SIZE
_U8 = 0xFF
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
    flags: int = 0
    #: Format 2's writer tag (0 in format 1 bytes).
    writer: int = 0

    def expires_at(self) -> float | None:
        """Expiry in epoch seconds, or ``None`` for never."""
        return self.expires_ms / 1000.0 if self.expires_ms else None

    @property
    def tombstone(self) -> bool:
        """Whether this marks a deleted key (no value)."""
        return bool(self.flags & TOMBSTONE)


def encode(envelope: Envelope) -> bytes:
    """Seal an envelope into bytes.

    Raises :class:`ValueError` when a header field is out of its range.
    """
    e = envelope
    if not 0 <= e.schema_version <= _U16:
        raise ValueError(f"schema_version must be in 0..{_U16}, got {e.schema_version}")
    if not 0 <= e.version <= MAX_VERSION:
        raise ValueError(f"entry version must be in 0..{MAX_VERSION}, got {e.version}")
    if not 0 <= e.serializer_id <= _U8:
        raise ValueError(f"serializer id must be in 0..255, got {e.serializer_id}")
    if not 0 <= e.flags <= _U8:
        raise ValueError(f"flags must be in 0..255, got {e.flags}")
    if not 0 <= e.writer <= _U64:
        raise ValueError(f"writer tag must be in 0..{_U64}, got {e.writer}")
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
        e.flags,
        e.schema_version,
        e.version,
        e.created_ms,
        e.updated_ms,
        e.expires_ms,
        e.writer,
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
    if data[:2] != MAGIC:
        # The stored bytes themselves never go into a message (nor a log).
        raise CorruptEntryError(f"foreign bytes: no {MAGIC!r} magic")
    fmt = data[2]
    if fmt == FORMAT_VERSION:
        header = _HEADER
        if len(data) < header.size + _CRC.size:
            raise CorruptEntryError(
                f"truncated: {len(data)} bytes, the header alone is {header.size + _CRC.size}"
            )
        _, _, ser, flags, schema, version, created, updated, expires, writer, n = (
            header.unpack_from(data)
        )
    elif fmt == 1:
        header = _HEADER_V1
        _, _, ser, flags, schema, version, created, updated, expires, n = header.unpack_from(data)
        writer = 0
    else:
        raise CorruptEntryError(
            f"unknown envelope format version {fmt} (this code reads 1 and {FORMAT_VERSION})"
        )
    head = header.size
    if len(data) != head + n + _CRC.size:
        raise CorruptEntryError(
            f"length mismatch: header says {n} payload bytes, found {len(data) - head - _CRC.size}"
        )
    (crc,) = _CRC.unpack_from(data, head + n)
    if crc != zlib.crc32(memoryview(data)[: head + n]):
        raise CorruptEntryError("checksum mismatch")
    if version > MAX_VERSION:
        raise CorruptEntryError(f"entry version out of range (over {MAX_VERSION})")
    return Envelope(
        ser, schema, version, created, updated, expires, data[head : head + n], flags, writer
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
    if version > MAX_VERSION:
        # As the tiers' compare-and-set reads it: not a usable envelope.
        raise CorruptEntryError("not an envelope (version out of range)")
    return int(version)


def is_tombstone(data: bytes) -> bool:
    """Whether ``data`` looks like a delete's tombstone (the flag only; not
    a full check)."""
    return (
        isinstance(data, bytes | bytearray | memoryview)
        and len(data) >= _MIN_SIZE
        and data[:2] == MAGIC
        and bool(data[4] & TOMBSTONE)
    )


def safe_version(data: bytes) -> int:
    """The version field of stored bytes the cache cannot read; 0 when they
    are not even an envelope (the tiers' compare-and-set does the same)."""
    try:
        return peek_version(data)
    except Exception:
        return 0
