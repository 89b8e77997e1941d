"""What every serializer is: the :class:`Serializer` protocol, and the
prefix of the instance attributes that no serializer stores."""

from __future__ import annotations

from typing import Any, Final, Protocol, runtime_checkable

__all__ = ["RESERVED_ATTR_PREFIX", "Serializer"]

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
