"""The fields layout: an entry stored as a Redis hash of blocks of its
top-level fields, so a write sends only the blocks whose fields changed.

::

    a dict value ──Parts──> each field's name (dumps(key)) and value bytes,
        in block crc32(name) % blocks (a power of two, ~256 fields each)
        payload = map header + block 0 + block 1 + ...   (a block: its
                  fields' name and value bytes, sorted by name)
        envelope = header + payload + CRC                 (what every tier sees)
    Redis hash:   ""        -> head: the envelope's header, the map header
                               and the CRC
                  u32 index -> that block's bytes
    read: HGETALL ──assemble──> the very same envelope bytes, so its CRC
          checks every block at once: one bad byte makes the whole entry
          unreadable, never half a session.
    write: the blocks holding changed or removed fields and the new head,
          checked against the stored head's version in one script.

A field keeps its block while the value stays in memory, so adding or
removing one rewrites one block. Blocks, not one hash field per key: a read
of 100,000 fields as 200,000 hash items took 550 ms in redis-py; as ~400
blocks it is one GET's cost, and a one-field write still sends under 1% of
such a value.

Only a serializer whose map encoding is the concatenation of its items'
encodings (``splits_maps``: msgpack) can be stored so; a value stored as
fields comes back with its top-level keys in the canonical order (by block,
then name). No I/O here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgpack

from ._envelope import FORMAT_VERSION, HEADER_SIZE, MAGIC, decode
from ._exceptions import CorruptEntryError, SerializationError

__all__ = [
    "FIELDS_MIN_BYTES",
    "HEAD",
    "Assembled",
    "Delta",
    "JournalDelta",
    "Parts",
    "apply_journal_delta",
    "assemble",
    "block_count",
    "fields_min_of",
    "head_of",
]

#: The hash field that holds the head. Block names are 4 bytes.
HEAD: Final = b""
#: Values this large (envelope bytes) or larger are stored as fields by
#: default; smaller ones as one string (see benchmarks/README.md: below it
#: the hash costs more than the bytes it saves).
FIELDS_MIN_BYTES: Final = 8192
#: Bytes per block a value is laid out with (blocks are a power of two).
BLOCK_BYTES: Final = 2048

_CRC_SIZE: Final = 4
#: What a hash whose head is not a format-2 head reads as: never an
#: envelope (so it is a counted corrupt entry), and the head recoverable
#: from it, for the quarantine's check that it is still the stored one.
_BAD_HEAD: Final = b"TC!bad-hash-head:"


def fields_min_of(last: object, serializer: object) -> int | None:
    """The size from which ``last`` (the shared tier) stores a value as
    fields with ``serializer``, or None when either cannot."""
    if not getattr(serializer, "splits_maps", False) or not getattr(last, "supports_fields", False):
        return None
    limit = getattr(last, "fields_min_bytes", None)
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def block_count(size: int) -> int:
    """Blocks for a value whose fields take ``size`` bytes."""
    n = 1
    while n * BLOCK_BYTES < size:
        n *= 2
    return n


def block_name(index: int) -> bytes:
    return index.to_bytes(4, "big")


def map_header(n: int) -> bytes:
    """msgpack's header of a map of ``n`` items."""
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _map_header_size(first: int) -> int:
    return 3 if first == 0xDE else 5 if first == 0xDF else 1


class Assembled(bytes):
    """Envelope bytes a tier assembled from a stored hash of blocks (the
    cache knows the entry can take a write of only its changed blocks), and
    how many blocks it had."""

    blocks: int = 0


def head_of(data: bytes) -> bytes:
    """The head field of envelope bytes (or of :func:`assemble`'s output)."""
    if data.startswith(_BAD_HEAD):
        return data[len(_BAD_HEAD) :]
    end = HEADER_SIZE + _map_header_size(data[HEADER_SIZE]) if len(data) > HEADER_SIZE else 0
    return data[:end] + data[-_CRC_SIZE:]


def assemble(head: bytes, fields: Iterable[tuple[bytes, bytes]]) -> Assembled:
    """The envelope bytes of a stored hash (its head and blocks)."""
    blocks: dict[int, bytes] = {}
    for name, value in fields:
        blocks[int.from_bytes(name, "big") if len(name) == 4 else -1] = value
    good = (
        len(head) > HEADER_SIZE + _CRC_SIZE
        and head[:2] == MAGIC
        and head[2] == FORMAT_VERSION
        and len(head) == HEADER_SIZE + _map_header_size(head[HEADER_SIZE]) + _CRC_SIZE
    )
    if not good:
        return Assembled(_BAD_HEAD + head)
    n = len(blocks)
    # A block missing, or a stray field: the CRC cannot match what was sealed.
    parts = [head[:-_CRC_SIZE]]
    parts.extend(blocks.get(i, b"\xc1") for i in range(n))
    parts.append(head[-_CRC_SIZE:])
    out = Assembled(b"".join(parts))
    out.blocks = n
    return out


class Parts:
    """A dict value's top-level fields as serialized bytes, in blocks, kept
    with its memory entry so a seal serializes only the fields that changed
    and joins only the blocks they are in.

    >>> import msgpack
    >>> p = Parts.build({"b": 2, "a": 1}, msgpack.packb)
    >>> msgpack.unpackb(p.payload())
    {'a': 1, 'b': 2}
    """

    __slots__ = ("_joined", "_members", "blocks", "by_key", "since_journal")

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        #: Keys refreshed since the entry's last journal record was made
        #: from these parts (None: not known; the next record is whole).
        self.since_journal: set[Any] | None = None
        #: key -> (name, value bytes, block)
        self.by_key: dict[Any, tuple[bytes, bytes, int]] = {}
        #: per block: name -> key
        self._members: list[dict[bytes, Any]] = [{} for _ in range(blocks)]
        #: per block: its bytes (None: changed since joined)
        self._joined: list[bytes | None] = [None] * blocks

    @classmethod
    def build(cls, value: dict[Any, Any], dumps: Callable[[Any], bytes], blocks: int = 0) -> Parts:
        """``blocks``: how many (those of the stored hash, so a write can be
        a delta); 0, or a value that outgrew them eightfold: as many as its
        size asks."""
        probe = cls(1)
        probe.refresh(value, value.keys(), dumps)
        size = sum(len(n) + len(v) for n, v, _ in probe.by_key.values())
        if not blocks or blocks * BLOCK_BYTES * 8 < size:
            blocks = block_count(size)
        parts = cls(blocks)
        members = parts._members
        for key, (name, data, _) in probe.by_key.items():
            block = parts.block_of(name)
            parts.by_key[key] = (name, data, block)
            members[block][name] = key
        return parts

    def block_of(self, name: bytes) -> int:
        return zlib.crc32(name) & (self.blocks - 1)

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
        by_key, members, joined = self.by_key, self._members, self._joined
        if self.since_journal is not None:
            self.since_journal.update(fresh)
        for key, item in fresh.items():
            old = by_key.get(key)
            if item is None:
                if old is not None:
                    del by_key[key]
                    del members[old[2]][old[0]]
                    joined[old[2]] = None
                continue
            name, data = item
            block = old[2] if old is not None else self.block_of(name)
            by_key[key] = (name, data, block)
            members[block][name] = key
            joined[block] = None

    def block(self, index: int) -> bytes:
        """Block ``index``'s bytes: its fields' names and values, by name."""
        got = self._joined[index]
        if got is None:
            by_key = self.by_key
            chunks: list[bytes] = []
            members = self._members[index]
            for name in sorted(members):
                chunks.append(name)
                chunks.append(by_key[members[name]][1])
            got = self._joined[index] = b"".join(chunks)
        return got

    def payload(self) -> bytes:
        """The serialized dict, in canonical order."""
        return map_header(len(self.by_key)) + b"".join([self.block(i) for i in range(self.blocks)])

    def delta(
        self, keys: Iterable[Any], dumps: Callable[[Any], bytes]
    ) -> tuple[list[bytes], list[bytes]]:
        """What a write of the changed (or removed) ``keys`` sends: block
        name, block bytes, ... for the blocks they are in."""
        touched: set[int] = set()
        by_key = self.by_key
        for key in keys:
            item = by_key.get(key)
            touched.add(item[2] if item is not None else self.block_of(dumps(key)))
        put: list[bytes] = []
        for index in sorted(touched):
            put.append(block_name(index))
            put.append(self.block(index))
        return put, []

    def journal_delta(self, dumps: Callable[[Any], bytes]) -> JournalDelta | None:
        """The fields refreshed since the last journal record of these
        parts: (blocks, put name/value pairs, gone names); None: unknown."""
        keys = self.since_journal
        if keys is None:
            return None
        put: list[tuple[bytes, bytes]] = []
        gone: list[bytes] = []
        for key in keys:
            item = self.by_key.get(key)
            if item is None:
                gone.append(dumps(key))
            else:
                put.append((item[0], item[1]))
        return (self.blocks, tuple(put), tuple(gone))

    def all_fields(self) -> list[bytes]:
        put: list[bytes] = []
        for index in range(self.blocks):
            put.append(block_name(index))
            put.append(self.block(index))
        return put


#: A journal record's change of a key since its previous record: the
#: blocks the fields are laid out in, (name, value) pairs set, names gone.
JournalDelta = tuple[int, tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]


def split_payload(payload: bytes) -> dict[bytes, bytes]:
    """A serialized map's items as raw bytes, name -> value, without
    decoding them (a value decoded and serialized again may differ: a set's
    order). Raises CorruptEntryError when it is not one map."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=max(len(payload), 1 << 20))
        unpacker.feed(payload)
        items: dict[bytes, bytes] = {}
        for _ in range(unpacker.read_map_header()):
            a = unpacker.tell()
            unpacker.skip()
            b = unpacker.tell()
            unpacker.skip()
            items[payload[a:b]] = payload[b : unpacker.tell()]
        if unpacker.tell() != len(payload):
            raise ValueError("bytes after the map")
    except Exception as exc:
        raise CorruptEntryError(f"not a map of fields ({type(exc).__name__})") from None
    return items


def join_fields(items: dict[bytes, bytes], blocks: int) -> bytes:
    """The payload :class:`Parts` in ``blocks`` blocks makes of ``items``."""
    members: list[list[bytes]] = [[] for _ in range(blocks)]
    for name in items:
        members[zlib.crc32(name) & (blocks - 1)].append(name)
    chunks = [map_header(len(items))]
    for names in members:
        for name in sorted(names):
            chunks.append(name)
            chunks.append(items[name])
    return b"".join(chunks)


def apply_journal_delta(previous: bytes, head: bytes, delta: JournalDelta) -> bytes:
    """The envelope bytes a journal record made as ``delta`` over the
    previous record's (``previous``) stands for; CorruptEntryError when
    they do not check out (its head's CRC covers the whole result)."""
    blocks, put, gone = delta
    if blocks < 1 or blocks & (blocks - 1) or len(head) <= HEADER_SIZE + _CRC_SIZE:
        raise CorruptEntryError("journal delta: a bad block count or head")
    items = split_payload(decode(previous).payload)
    for name in gone:
        items.pop(name, None)
    for name, value in put:
        items[name] = value
    data = head[:HEADER_SIZE] + join_fields(items, blocks) + head[-_CRC_SIZE:]
    decode(data)  # the CRC the writer sealed: the change is exactly it
    return data


class Delta:
    """The fields part of a compare-and-set: the new head and either the
    changed blocks (``full=False``: the stored hash is at the expected
    version, in as many blocks) or every block (``full=True``: whatever is
    stored is replaced)."""

    __slots__ = ("full", "gone", "head", "put")

    def __init__(self, head: bytes, put: list[bytes], gone: list[bytes], *, full: bool) -> None:
        self.head = head
        self.put = put
        self.gone = gone
        self.full = full

    @property
    def size(self) -> int:
        return len(self.head) + sum(map(len, self.put)) + sum(map(len, self.gone))
