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

No I/O here: the cache core imports :class:`Invalidation` without redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .._exceptions import InvalidKeyError

__all__ = [
    "MARK",
    "WIRE_VERSION",
    "Action",
    "Invalidation",
    "PublishItem",
    "stream_key",
]

WIRE_VERSION = 1

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
