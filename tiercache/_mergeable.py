"""Mergeable values: types that say how two concurrent changes combine.

::

    field both sides changed ──merge_values(was, mine, other)──>
        Counter, Counter, Counter (or MISSING was: 0) ──> other + mine - was
        Log, Log, Log (or MISSING was: empty), was a prefix of both
                                                     ──> other, then mine's appends
        anything else ──> NOT_MERGEABLE: the caller asks the conflict resolver

A plain int that two processes each took from 5 to 6 is a conflict: the
merge cannot tell two increments from two writers agreeing on 6. A
:class:`Counter` is an int whose only mergeable change is adding to it, so
the delta each side made is ``value - was`` and both deltas are kept. A
:class:`Log` is a tuple whose only mergeable change is appending, so each
side's appends are what follows ``was``, and both are kept: theirs first
(they were stored first), then ours, in the same order in every process.

Both are immutable atoms for the tracker (stored as they are, never copied
or watched): ``s["n"] += 1`` stores a new Counter through ``__setitem__``,
which is what marks the field changed. Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, Final, Literal, NoReturn, TypeVar, final

from ._tracking import MISSING, _same
from ._tracking._atoms import _atom_type, _is_immutable
from ._tracking._depth import MAX_DEPTH, _Refused

__all__ = ["NOT_MERGEABLE", "Counter", "Log", "merge_values"]

_T_co = TypeVar("_T_co", covariant=True)
_S = TypeVar("_S")


class _Unmergeable(enum.Enum):
    NOT_MERGEABLE = "NOT_MERGEABLE"

    def __repr__(self) -> str:
        return "NOT_MERGEABLE"


#: What :func:`merge_values` returns when the values' types do not say how
#: two changes combine (then the caller asks the conflict resolver). Not
#: ``None``: ``None`` is a legal merged value.
NOT_MERGEABLE: Final = _Unmergeable.NOT_MERGEABLE


def _no_subclass(base: type, cls: type) -> NoReturn:
    # Atoms are matched by exact type, and a subclass could change what
    # arithmetic or appending returns: it would merge as something else.
    raise TypeError(f"{base.__name__} cannot be subclassed (by {cls.__qualname__})")


@final
@_atom_type
class Counter(int):
    """An int that merges by deltas: concurrent ``+= 1`` in two processes make +2.

    Adding or subtracting an int gives a Counter; any other arithmetic
    (``*``, ``/``, ``-c``, ``5 - c``...) gives what it gives for an int, so a
    product is never mistaken for a delta. It compares, hashes and prints
    like its int, and ``json.dumps`` writes the number.

    >>> c = Counter()
    >>> c += 2
    >>> c, c - 1, 1 + c, c * 2, f"{c} points"
    (Counter(2), Counter(1), Counter(3), 4, '2 points')
    >>> Counter(2.5)
    Traceback (most recent call last):
    ...
    TypeError: Counter() takes an int, not float (2.5)

    Start a counter from ``Counter()``: when both processes create the field
    in the same round the merge counts from 0, so ``Counter(5)`` written by
    both merges to 10.
    """

    __slots__ = ()

    def __new__(cls, value: int = 0) -> Counter:
        t = type(value)
        if t is not int and t is not Counter:
            # bool is an int to Python, but Counter(True) is more likely a
            # bug than a count; a float or str would silently truncate.
            raise TypeError(f"Counter() takes an int, not {t.__name__} ({value!r})")
        return int.__new__(cls, value)

    def __init_subclass__(cls, **kwargs: Any) -> NoReturn:
        _no_subclass(Counter, cls)

    def __repr__(self) -> str:
        return f"Counter({int.__repr__(self)})"

    def __str__(self) -> str:
        # int's str is its repr, which would print "Counter(5)" in f-strings.
        return int.__repr__(self)

    # An int delta (bool included: it is 0 or 1) keeps the Counter; others
    # (float, Fraction...) fall through to what int does. (``True + c``
    # gives an int: Python asks __radd__ first only of a subclass of the
    # left operand's type, and Counter is no bool.) int's own methods
    # do the sum: an int subclass's __int__ could say something else.
    def __add__(self, other: int) -> Counter:
        if isinstance(other, int):
            return int.__new__(Counter, int.__add__(self, other))
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: int) -> Counter:
        if isinstance(other, int):
            return int.__new__(Counter, int.__sub__(self, other))
        return NotImplemented

    def __reduce__(self) -> tuple[type[Counter], tuple[int]]:
        return (Counter, (int(self),))

    def __copy__(self) -> Counter:
        return self

    def __deepcopy__(self, memo: object) -> Counter:
        return self


def _checked(items: Iterable[Any], start: int) -> tuple[Any, ...]:
    """``items`` as a tuple, each an immutable value (index from ``start``)."""
    if isinstance(items, str | bytes | bytearray):
        raise TypeError(
            f"Log items come from a sequence, not {type(items).__name__}; "
            "append one value with .appended(x)"
        )
    if isinstance(items, set | frozenset):
        raise TypeError(f"Log items need an order: a {type(items).__name__} has none")
    got = tuple(items)
    for i, x in enumerate(got, start):
        try:
            ok = _is_immutable(x, 2)
        except _Refused:
            raise TypeError(
                f"Log item {i} is nested more than {MAX_DEPTH - 1} levels deep"
            ) from None
        if not ok:
            raise TypeError(
                f"Log item {i} is a {type(x).__name__}, which can change in place; Log "
                "items must be immutable (numbers, str, bytes, tuples, frozensets, "
                "enums, frozen dataclasses of those...)"
            )
    return got


@final
@_atom_type
class Log(tuple[_T_co, ...]):
    """An append-only log: concurrent appends in two processes keep both.

    Immutable: ``log + [x, y]`` and ``log.appended(x)`` return a new Log,
    so ``s["events"] += ["joined"]`` stores one (and marks the field
    changed). Items must be immutable values, checked when the Log is built:
    a list or dict inside could change without the Log, and the merge,
    knowing. Slicing, ``*`` and ``tuple + log`` give plain tuples: they are
    not appends, and storing one ends the merging (wrap it in ``Log()``).

    >>> log = Log(["start"])
    >>> log += ["a", ("b", 2)]
    >>> log, log.appended("c")[-1], log[1:]
    (Log(['start', 'a', ('b', 2)]), 'c', ('a', ('b', 2)))
    >>> Log([["mutable"]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: Log item 0 is a list, which can change in place; Log items must be ...

    A Log that was rewritten rather than appended to (trimmed, reordered)
    in a round where the other side also changed it goes to the resolver.
    """

    __slots__ = ()

    def __new__(cls, items: Iterable[_T_co] = ()) -> Log[_T_co]:
        if type(items) is Log:
            return items
        return tuple.__new__(cls, _checked(items, 0))

    def __init_subclass__(cls, **kwargs: Any) -> NoReturn:
        _no_subclass(Log, cls)

    def __repr__(self) -> str:
        return f"Log({list(self)!r})"

    def __add__(self, other: Iterable[_S]) -> Log[_T_co | _S]:
        # A tuple takes only a tuple; a Log takes any ordered iterable,
        # so ``s["events"] += [x]`` reads like a list's.
        return tuple.__new__(Log, (*self, *_checked(other, len(self))))

    def appended(self, item: _S) -> Log[_T_co | _S]:
        """A new Log: this one, then ``item``."""
        return tuple.__new__(Log, (*self, *_checked((item,), len(self))))

    def __reduce__(self) -> tuple[type[Log[Any]], tuple[tuple[Any, ...]]]:
        return (Log, (tuple(self),))

    def __copy__(self) -> Log[_T_co]:
        return self

    def __deepcopy__(self, memo: object) -> Log[_T_co]:
        return self  # its items are immutable: nothing to copy


_EMPTY: Final[Log[Any]] = Log()


def merge_values(
    was: object, mine: object, other: object
) -> Counter | Log[Any] | Literal[_Unmergeable.NOT_MERGEABLE]:
    """Merge a leaf both sides changed from ``was``, or say NOT_MERGEABLE.

    ``was`` is the value both sides started from (``MISSING``: the field did
    not exist, so both created it), ``mine`` ours, ``other`` theirs (the one
    stored first). Counters add both deltas; Logs keep theirs, then our
    appends.

    >>> merge_values(Counter(5), Counter(6), Counter(7))
    Counter(8)
    >>> merge_values(Log(["a"]), Log(["a", "ours"]), Log(["a", "theirs"]))
    Log(['a', 'theirs', 'ours'])
    >>> merge_values(5, Counter(6), Counter(6))
    NOT_MERGEABLE

    Every other combination is NOT_MERGEABLE, because only these types
    promise how they change. A plain int ``was`` made a Counter by both
    sides may have been reset as well as counted; a side that deleted the
    field (``MISSING``) or stored another type made a change that is no
    delta; a Log that is not an extension of ``was`` was trimmed or
    rewritten, and which of its items to keep is the resolver's call.
    """
    if type(mine) is Counter and type(other) is Counter:
        if was is MISSING:
            return Counter(int(other) + int(mine))
        if type(was) is Counter:
            return Counter(int(other) + int(mine) - int(was))
        return NOT_MERGEABLE
    if type(mine) is Log and type(other) is Log:
        if was is MISSING:
            was = _EMPTY
        if type(was) is not Log or not (_prefix(was, mine) and _prefix(was, other)):
            return NOT_MERGEABLE
        return tuple.__new__(Log, (*other, *mine[len(was) :]))
    return NOT_MERGEABLE


def _prefix(head: Log[Any], log: Log[Any]) -> bool:
    """Whether ``log`` starts with ``head``, item by item type-strictly."""
    return len(head) <= len(log) and all(map(_same, head, log))
