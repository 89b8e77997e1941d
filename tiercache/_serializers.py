"""Serializers: value <-> payload bytes inside an envelope.

(Being written: see the serializers work item. The protocol below is fixed.)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Serializer"]


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
