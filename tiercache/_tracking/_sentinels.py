"""Sentinels: markers for "no value" where ``None`` is a legal value.

:data:`MISSING` marks a field that did not exist (in :func:`changes` and in
a root's saved copies), :data:`WHOLE` the one field of a list or set root,
``_SELF`` the field of a dict or object root's own node (each key or
attribute is its own field). Each is one object that pickles and copies as
itself; they are atoms (see _atoms).
"""

from __future__ import annotations

from typing import Any, Final


class _Sentinel:
    __slots__ = ("_name",)
    # Pickled by name from the package, where they have always been
    # importable: pickles keep loading whichever module defines them.
    __module__ = __name__.rpartition(".")[0]

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name  # pickles as the module-level singleton


#: In :func:`changes`: the field did not exist at the last clean point.
MISSING: Final[Any] = _Sentinel("MISSING")
#: The one field of a list or set root (``dirty_fields(lst) == {WHOLE}``).
WHOLE: Final[Any] = _Sentinel("WHOLE")
# _tc_field of a dict or object root: the field is the key / attribute.
_SELF: Final[Any] = _Sentinel("_SELF")
