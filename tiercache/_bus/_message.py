"""An invalidation message and its form on the wire: which key changed, never the value.

::

    publish item (key, action, version) ──> _fields(origin, item) ──> stream entry
                                            (checked; raises on a bad item)
    stream entry ──> _decode(fields) ──> Invalidation(origin, key, action, version)
                                         or None: not one of ours, skipped

Each entry has four fields: ``o`` origin (random per bus), ``k`` the cache's
un-namespaced key, ``a`` ``"set"`` or ``"del"``, ``v`` the new entry version
as ASCII digits. A marker has only ``o`` and ``a`` = ``"mark"``; readers
skip it (a reader from before markers existed skips it as malformed: one
warning and one ``errors`` count per marker). The wire version is in the
stream's name (:func:`stream_key`).

**Streams: v1 on one server, v2 on a Redis Cluster.** On a single server
a namespace has one stream, ``tiercache:v1:<ns>:inv`` (:data:`WIRE_VERSION`),
exactly as before clusters were supported. On a cluster one stream would be
one hash slot, one shard taking every invalidation, so a namespace there
has ``streams`` of them (:data:`CLUSTER_WIRE_VERSION` 2,
:func:`cluster_stream_keys`): ``tiercache:v2:{<ns>:<tag>}:inv:<i>/<streams>``,
the hash tag ``{<ns>:<tag>}`` chosen so the i-th stream's slot lies in the
i-th of ``streams`` equal slices of the 16384 slots (``redis-cli --cluster
create`` gives each master one contiguous range, so the streams spread
evenly over the masters). A key's invalidations always go to stream
``crc32(key) % streams`` (:func:`stream_index`), so per-key order holds.
The entries are the same four fields; what changed on the wire is only the
stream names. So v1 and v2 buses, and v2 buses set to different
``streams``, do not hear each other: every process of a namespace on a
cluster must run a version with v2 and the same ``streams``.

No I/O here: the cache core imports :class:`Invalidation` without redis.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .._exceptions import InvalidKeyError

__all__ = [
    "CLUSTER_WIRE_VERSION",
    "MARK",
    "WIRE_VERSION",
    "Action",
    "Invalidation",
    "PublishItem",
    "cluster_stream_keys",
    "key_slot",
    "stream_index",
    "stream_key",
]

#: The stream name's version on a single server: one stream per namespace.
WIRE_VERSION = 1
#: ... and on a Redis Cluster: several hash-tagged streams per namespace.
CLUSTER_WIRE_VERSION = 2
#: Redis Cluster's hash slots.
SLOTS = 16384

Action: TypeAlias = Literal["set", "del"]
#: ``(key, action, version)``, as :meth:`RedisBus.publish` takes them.
PublishItem: TypeAlias = tuple[str, str, int]

_ACTIONS = frozenset({"set", "del"})
#: The action of a marker entry: a bus adds one, with its origin and no key,
#: when it needs a position and the stream is empty or missing. It carries
#: no invalidation; readers skip it.
MARK = "mark"
_MARK_B = MARK.encode()


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One message: ``origin`` wrote ``key`` (``action`` ``"set"`` or ``"del"``)
    and the entry is now at ``version``.

    >>> Invalidation("a1b2c3d4e5f6", "chat:42", "set", 7).version
    7
    """

    origin: str
    key: str
    action: str
    version: int


def stream_key(namespace: str) -> str:
    """The Redis key of a namespace's stream (the wire version is in it).

    >>> stream_key("mybot")
    'tiercache:v1:mybot:inv'
    """
    return f"tiercache:v{WIRE_VERSION}:{namespace}:inv"


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key``: CRC16 (XMODEM) of its hash
    tag (the text between the first ``{`` and the next ``}``, if not empty)
    or of the whole key, modulo 16384. Pure, so this module needs no redis.

    >>> key_slot("foo"), key_slot("{user1000}.following") == key_slot("user1000")
    (12182, True)
    """
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc % SLOTS


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC16 = _crc16_table()


def cluster_stream_keys(namespace: str, streams: int) -> tuple[str, ...]:
    """The Redis keys of a namespace's ``streams`` streams on a cluster.

    The i-th is ``tiercache:v2:{<ns>:<t>}:inv:<i>/<streams>``, ``t`` the
    first tag (0, 1, ...) that puts it in the i-th of ``streams`` equal
    slices of the slots; a namespace whose tag cannot vary (it holds a
    ``}``) gets t = i, all in one slot. The count is in the name, so buses
    set to different counts share no stream.

    >>> cluster_stream_keys("mybot", 2)
    ('tiercache:v2:{mybot:0}:inv:0/2', 'tiercache:v2:{mybot:2}:inv:1/2')
    >>> [key_slot(k) * 2 // 16384 for k in cluster_stream_keys("mybot", 2)]
    [0, 1]
    """

    def name(tag: int, index: int) -> str:
        return f"tiercache:v{CLUSTER_WIRE_VERSION}:{{{namespace}:{tag}}}:inv:{index}/{streams}"

    keys = []
    for index in range(streams):
        low, high = index * SLOTS // streams, (index + 1) * SLOTS // streams
        # ~streams tries each: the slots of successive tags look random.
        for tag in range(64 * streams + 64):
            if low <= key_slot(name(tag, index)) < high:
                keys.append(name(tag, index))
                break
        else:  # the tag does not vary: one slot whatever we do
            return tuple(name(i, i) for i in range(streams))
    return tuple(keys)


def stream_index(key: str, streams: int) -> int:
    """Which of ``streams`` streams carries ``key``'s invalidations: stable
    across processes and runs (``hash()`` is not), so one key's messages
    stay in one stream, in order.

    >>> stream_index("chat:42", 16)
    6
    """
    return zlib.crc32(key.encode()) % streams


def _fields(origin: str, item: PublishItem) -> dict[Any, Any]:
    """The stream entry for one item, validated (the value is never sent).

    Typed ``dict[Any, Any]``: redis-py's field dict type is invariant, so a
    ``dict[str, str]`` would not pass its stubs.
    """
    key, action, version = item
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"bus keys are non-empty str, got {key!r}")
    if action not in _ACTIONS:
        raise ValueError(f"bus action must be 'set' or 'del', got {action!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"bus version must be an int >= 0, got {version!r}")
    return {"o": origin, "k": key, "a": action, "v": str(version)}


def _decode(fields: dict[bytes, bytes]) -> Invalidation | None:
    """An entry read back, or None when it is not one of ours (malformed)."""
    try:
        action = fields[b"a"].decode()
        if action not in _ACTIONS:
            return None
        return Invalidation(fields[b"o"].decode(), fields[b"k"].decode(), action, int(fields[b"v"]))
    except (KeyError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
