"""Where a value fails to serialize: the first part that does, as "path: why".

::

    dumps failed ──> _locate_failure(value, exc, children, probe)
        depth first, without recursion (the values it explains may be too
        deep for it), from "value":
          a leaf (no children) ──> probe(leaf) fails? "path: its error"
          a container ─────────> each child, then probe(container) itself
          already on the path ─> "path: circular reference", unless cycles_ok
          1000 levels down ────> "path: nested too deeply"
        nothing found ──> "value: <the original error>"

Each serializer brings its own children and probe (:class:`MsgpackSerializer`
adds the state of registered objects, :class:`PickleSerializer` ``__dict__``);
:func:`_container_children` is the part both share. This runs only after a
failure, so a dumps that works pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final


def _container_children(obj: Any, path: str) -> Iterable[tuple[str, Any]] | None:
    if isinstance(obj, dict):
        return (
            pair
            for k, v in obj.items()
            for pair in ((f"{path} key {k!r}", k), (f"{path}[{k!r}]", v))
        )
    if isinstance(obj, list | tuple):
        return ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    if isinstance(obj, set | frozenset):
        return ((f"{path} item {v!r}", v) for v in obj)
    return None


# Deeper than this, a failure is reported as too deep without probing: both
# msgpack (about 1000 levels) and pickle (the recursion limit) give up there.
_WALK_DEPTH: Final = 1000


def _locate_failure(
    value: Any,
    exc: Exception,
    children: Callable[[Any, str], Iterable[tuple[str, Any]] | None],
    probe: Callable[[Any], str | None],
    *,
    cycles_ok: bool,
) -> str:
    """Find the first part of ``value`` that cannot be serialized: "path: why".

    Runs only after a failure, so the fast path never tracks paths. The
    walk is iterative, because the values it explains include ones too deep
    for recursion.
    """
    active: set[int] = set()
    frames: list[tuple[Any, str, Iterator[tuple[str, Any]]]] = []

    def enter(obj: Any, path: str) -> str | None:
        kids = children(obj, path)
        if kids is None:
            reason = probe(obj)
            return None if reason is None else f"{path}: {reason}"
        if id(obj) in active:
            return None if cycles_ok else f"{path}: circular reference"
        if len(frames) >= _WALK_DEPTH:
            return f"{path}: nested too deeply"
        active.add(id(obj))
        frames.append((obj, path, iter(kids)))
        return None

    found = enter(value, "value")
    while found is None and frames:
        obj, path, it = frames[-1]
        step = next(it, None)
        if step is None:
            frames.pop()
            active.discard(id(obj))
            # every part packs alone, so the container itself is the problem
            reason = probe(obj)
            if reason is not None:
                found = f"{path}: {reason}"
            continue
        found = enter(step[1], step[0])
    return found or f"value: {exc}"
