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
from typing import Any, Final

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

    __slots__ = ("_order", "by_key")

    def __init__(self) -> None:
        #: key -> (name, value bytes)
        self.by_key: dict[Any, tuple[bytes, bytes]] = {}
        #: The (name, value) pairs in canonical order, None when a key came
        #: or went since it was built.
        self._order: list[tuple[bytes, Any]] | None = None

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
        for key, item in fresh.items():
            if item is None:
                if by_key.pop(key, None) is not None:
                    self._order = None
            else:
                if key not in by_key:
                    self._order = None
                by_key[key] = item

    def payload(self) -> bytes:
        """The serialized dict, in canonical order."""
        by_key = self.by_key
        if self._order is None or len(self._order) != len(by_key):
            self._order = sorted((name, key) for key, (name, _) in by_key.items())
        chunks = [map_header(len(by_key))]
        for _, key in self._order:
            name, value = by_key[key]
            chunks.append(name)
            chunks.append(value)
        return b"".join(chunks)

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
