"""The depth limit, and what a walk raises at it or at a cycle.

The policy ("Cycles and depth") is in the package docs. A walk that meets a
cycle or goes past :data:`MAX_DEPTH` raises :class:`_Refused`; whoever
started it puts back what it changed and raises the SerializationError
that names the path (_refusals).
"""

from __future__ import annotations

from typing import Final

from .._exceptions import SerializationError

#: How many containers deep a tracked root may nest, the root itself being
#: level 1 (``{"a": [{}]}`` is 3 deep); deeper values are refused with a
#: SerializationError. See the package docs for why 100.
MAX_DEPTH: Final = 100


class _Refused(SerializationError):
    """Raised inside an adoption walk at a cycle or past :data:`MAX_DEPTH`.

    Whoever started the walk puts back what it changed and raises a
    SerializationError naming the path instead (:func:`_refusal`); this
    message is seen only for values that entered without adoption and are
    met by the re-walk at a clean point."""

    def __init__(self) -> None:
        super().__init__(
            f"a value holding a cycle or nested deeper than {MAX_DEPTH} levels entered "
            "without adoption (heapq, C code) and cannot be tracked"
        )
