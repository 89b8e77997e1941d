"""The fields layout: an entry stored as one hash field per top-level key,
so a write sends only the fields that changed.

::

    a dict value ──Parts──> {name: value bytes}, name = dumps(key)
        payload = map header + name1 value1 name2 value2 ...  (names sorted)
        envelope = header + payload + CRC          (what every tier sees)
    Redis hash:   ""    -> head: the envelope's header + its CRC (56 bytes)
                  name  -> value bytes, for every top-level key
    read: HGETALL ──assemble──> the very same envelope bytes (the names
          sorted again), so its CRC checks every field at once: one bad
          field makes the whole entry unreadable, never half a session.
    write: only the changed names (HSET) and removed ones (HDEL), with the
          new head, checked against the stored head's version in one script.

Only a serializer whose map encoding is the concatenation of its items'
encodings (``splits_maps``: msgpack) can be stored so; the payload is in
canonical order (names sorted by their bytes), so a value stored as fields
comes back with its top-level keys in that order. No I/O here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any, Final, cast

from ._envelope import FORMAT_VERSION, HEADER_SIZE, MAGIC
from ._exceptions import SerializationError

__all__ = [
    "FIELDS_MIN_BYTES",
    "HEAD",
    "Assembled",
    "Delta",
    "Parts",
    "assemble",
    "head_of",
]

#: The hash field that holds the head. No serialized key is empty.
HEAD: Final = b""
#: Values this large (envelope bytes) or larger are stored as fields by
#: default; smaller ones as one string (see benchmarks/README.md: below it
#: the hash costs more than the bytes it saves).
FIELDS_MIN_BYTES: Final = 8192

_CRC_SIZE: Final = 4
#: Chunks (names and values) per pre-joined block of a payload.
_BLOCK: Final = 512
_HEAD_SIZE: Final = HEADER_SIZE + _CRC_SIZE
#: What a hash whose head is not a format-2 head reads as: never an
#: envelope (so it is a counted corrupt entry), and the head recoverable
#: from it, for the quarantine's check that it is still the stored one.
_BAD_HEAD: Final = b"TC!bad-hash-head:"


def map_header(n: int) -> bytes:
    """msgpack's header of a map of ``n`` items."""
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


class Assembled(bytes):
    """Envelope bytes a tier assembled from a stored hash of fields (the
    cache knows the entry can take a write of only its changed fields)."""

    __slots__ = ()


def head_of(data: bytes) -> bytes:
    """The head field of envelope bytes (or of :func:`assemble`'s output)."""
    if data.startswith(_BAD_HEAD):
        return data[len(_BAD_HEAD) :]
    return data[:HEADER_SIZE] + data[-_CRC_SIZE:]


def assemble(head: bytes, fields: Iterable[tuple[bytes, bytes]]) -> Assembled:
    """The envelope bytes of a stored hash: its head and its other fields."""
    pairs = sorted(fields)
    if len(head) != _HEAD_SIZE or head[:2] != MAGIC or head[2] != FORMAT_VERSION:
        return Assembled(_BAD_HEAD + head)
    parts = [head[:HEADER_SIZE], map_header(len(pairs))]
    for name, value in pairs:
        parts.append(name)
        parts.append(value)
    parts.append(head[HEADER_SIZE:])
    return Assembled(b"".join(parts))


class Parts:
    """A dict value's top-level fields as serialized bytes, kept with its
    memory entry so a seal serializes only the fields that changed.

    >>> import msgpack
    >>> p = Parts.build({"b": 2, "a": 1}, msgpack.packb)
    >>> msgpack.unpackb(p.payload())
    {'a': 1, 'b': 2}
    """

    __slots__ = ("_blocks", "_chunks", "_index", "by_key")

    def __init__(self) -> None:
        #: key -> (name, value bytes)
        self.by_key: dict[Any, tuple[bytes, bytes]] = {}
        #: name, value, name, value... in canonical order, and where each
        #: key's value sits in it: a changed field is one list store. None
        #: when a key came or went.
        self._chunks: list[bytes] | None = None
        self._index: dict[Any, int] = {}
        #: The chunks joined _BLOCK at a time (None: changed since): a
        #: payload is one block's join and a join of the blocks, not a join
        #: of every field (10 ms for 100,000 fields).
        self._blocks: list[bytes | None] = []

    @classmethod
    def build(cls, value: dict[Any, Any], dumps: Callable[[Any], bytes]) -> Parts:
        parts = cls()
        parts.refresh(value, value.keys(), dumps)
        return parts

    def refresh(
        self, value: dict[Any, Any], keys: Iterable[Any], dumps: Callable[[Any], bytes]
    ) -> None:
        """Serialize the fields ``keys`` of ``value`` again (a key no longer
        in it is dropped). Raises SerializationError naming the field, and
        then changes nothing."""
        fresh: dict[Any, tuple[bytes, bytes] | None] = {}
        for key in keys:
            if key in value:
                try:
                    old = self.by_key.get(key)
                    name = old[0] if old is not None else dumps(key)
                    fresh[key] = (name, dumps(dict.__getitem__(value, key)))
                except SerializationError as exc:
                    raise SerializationError(f"value[{key!r}]: {exc}") from exc
            else:
                fresh[key] = None
        by_key = self.by_key
        chunks, index = self._chunks, self._index
        for key, item in fresh.items():
            if item is None:
                if by_key.pop(key, None) is not None:
                    self._chunks = chunks = None
            else:
                if key not in by_key:
                    self._chunks = chunks = None
                elif chunks is not None:
                    at = index[key]
                    chunks[at] = item[1]
                    self._blocks[at // _BLOCK] = None
                by_key[key] = item

    def payload(self) -> bytes:
        """The serialized dict, in canonical order."""
        chunks = self._chunks
        if chunks is None:
            chunks = []
            index: dict[Any, int] = {}
            for name, key in sorted((name, key) for key, (name, _) in self.by_key.items()):
                chunks.append(name)
                index[key] = len(chunks)
                chunks.append(self.by_key[key][1])
            self._chunks, self._index = chunks, index
            self._blocks = [None] * (-(-len(chunks) // _BLOCK))
        blocks = self._blocks
        for b, block in enumerate(blocks):
            if block is None:
                blocks[b] = b"".join(chunks[b * _BLOCK : (b + 1) * _BLOCK])
        return map_header(len(self.by_key)) + b"".join(cast(list[bytes], blocks))

    def delta(
        self, keys: Iterable[Any], dumps: Callable[[Any], bytes]
    ) -> tuple[list[bytes], list[bytes]]:
        """What a write of the changed ``keys`` sends: (name, value, ...)
        for those present and the names of those gone."""
        put: list[bytes] = []
        gone: list[bytes] = []
        by_key = self.by_key
        for key in keys:
            item = by_key.get(key)
            if item is None:
                gone.append(dumps(key))
            else:
                put.append(item[0])
                put.append(item[1])
        return put, gone

    def all_fields(self) -> list[bytes]:
        out: list[bytes] = []
        for name, value in self.by_key.values():
            out.append(name)
            out.append(value)
        return out


class Delta:
    """The fields part of a compare-and-set: the new head and either the
    changed fields (``full=False``: the stored hash is at the expected
    version) or every field (``full=True``: whatever is stored is replaced)."""

    __slots__ = ("full", "gone", "head", "put")

    def __init__(self, head: bytes, put: list[bytes], gone: list[bytes], *, full: bool) -> None:
        self.head = head
        self.put = put
        self.gone = gone
        self.full = full

    @property
    def size(self) -> int:
        return len(self.head) + sum(map(len, self.put)) + sum(map(len, self.gone))
