"""The Redis tier on a Redis Cluster: one hash slot per session, batches
split per node.

::

    stored name ──> slot_tag(): "{" crc32(session_of(name)) "}" in front, so a
                    session's value, quarantine, lease and fence share a slot
                    (every script stays single-slot) and sessions spread
                    over all shards
    a batch (get_many, set_many, compare_and_set_many)
      ──> by_node(): the items of each master, in order
      ──> one pipeline per node (async: all nodes at once)
            ├─ item answered ──> its result
            ├─ item redirected (MOVED/ASK: a slot moving), TRYAGAIN, NOSCRIPT
            │    (a promoted replica has no script cache)
            │    ──> sent again alone through the cluster client, which
            │        follows the redirection and loads the script
            └─ the node fails (down, failing over) ──> a TierError for each of
                 its items only; the other nodes' items are written

A batch over one node that is down fails for that node's keys, not for
the rest: the cache journals (or reports) those and keeps the others.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.exceptions import (
    AskError,
    NoScriptError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from .._keys import session_of
from .._redisclient import BACKEND_ERRORS

__all__ = ["Outcome", "arun_by_node", "by_node", "run_by_node", "slot_tag"]

T = TypeVar("T")
#: An item's result, or the error that item alone met.
Outcome = Any


def slot_tag(name: str) -> str:
    """The hash tag that puts every stored name of one session in one slot.

    A digest, not the key itself: a key may hold ``{`` or ``}``, and an
    empty tag (``{}``) would hash the whole name instead.

    >>> from tiercache._keys import KeyNames
    >>> n = KeyNames("bot")
    >>> slot_tag(n.value("chat:1")) == slot_tag(n.lease("chat:1")) != slot_tag(n.value("chat:2"))
    True
    >>> slot_tag(n.value("chat:1"))
    '{c5a7b3b2}'
    """
    digest = zlib.crc32(session_of(name).encode("utf-8", "surrogatepass"))
    return f"{{{digest:08x}}}"


def _again(result: object) -> bool:
    """Whether an item's error means "not applied, ask again elsewhere"."""
    if isinstance(result, NoScriptError | AskError | TryAgainError):
        return True  # MovedError is an AskError
    return isinstance(result, ResponseError) and str(result).startswith(("MOVED", "ASK"))


def by_node(client: Any, skeys: Sequence[str]) -> list[tuple[Any, list[int]]]:
    """The indices of ``skeys`` grouped by the master serving each (as the
    client's slot table has it), in their order, with that master."""
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, skey in enumerate(skeys):
        node = client.get_node_from_key(skey)
        groups.setdefault(node.name if node is not None else "", (node, []))[1].append(i)
    return list(groups.values())


def run_by_node(
    client: Any,
    skeys: Sequence[str],
    queue: Callable[[Any, int], None],
    alone: Callable[[int], Any],
    failed: Callable[[BaseException], Any],
    scripts: Sequence[str] = (),
) -> list[Outcome]:
    """Run a batch as one pipeline per node: ``queue(pipe, i)`` adds item
    ``i``; ``alone(i)`` runs it by itself through the cluster client (for
    an item to send again); ``failed(exc)`` is what each item of a node
    that failed gets. ``scripts`` are loaded into a node that answers
    NOSCRIPT (a promoted replica), and those items sent again at once.

    A plain pipeline on each master's own client, not redis-py's cluster
    pipeline: that one sends every command of a node that timed out again,
    one by one, each waiting for its own timeout.
    """
    out: list[Outcome] = [None] * len(skeys)
    for node, group in by_node(client, skeys):
        try:
            if node is None:
                raise SlotNotCoveredError("no node serves the slot of this batch's keys")
            conn = client.get_redis_connection(node)
            results = _pipelined(conn, group, queue)
            missing = [i for i, r in zip(group, results, strict=True) if _noscript(r)]
            if missing and scripts:
                for text in scripts:
                    conn.script_load(text)
                again = dict(zip(missing, _pipelined(conn, missing, queue), strict=True))
                results = [again.get(i, r) for i, r in zip(group, results, strict=True)]
        except BACKEND_ERRORS as exc:
            for i in group:
                out[i] = failed(exc)
            continue
        for i, result in zip(group, results, strict=True):
            if _again(result):
                try:
                    result = alone(i)
                except BACKEND_ERRORS as exc:
                    result = failed(exc)
            out[i] = result
    return out


def _pipelined(conn: Any, group: list[int], queue: Callable[[Any, int], None]) -> list[Any]:
    with conn.pipeline(transaction=False) as pipe:
        for i in group:
            queue(pipe, i)
        return list(pipe.execute(raise_on_error=False))


def _noscript(result: object) -> bool:
    return isinstance(result, NoScriptError)


async def arun_by_node(
    client: Any,
    skeys: Sequence[str],
    queue: Callable[[Any, int], None],
    alone: Callable[[int], Awaitable[Any]],
    failed: Callable[[BaseException], Any],
) -> list[Outcome]:
    """:func:`run_by_node` for ``redis.asyncio``: the nodes' pipelines run
    at once (redis-py's asyncio cluster pipeline sends a redirected command
    again, not one that timed out). An item that meets NOSCRIPT goes
    alone: the tier's asyncio script call falls back to EVAL."""
    out: list[Outcome] = [None] * len(skeys)

    async def node(group: list[int]) -> None:
        try:
            async with client.pipeline(transaction=False) as pipe:
                for i in group:
                    queue(pipe, i)
                results = await pipe.execute(raise_on_error=False)
        except BACKEND_ERRORS as exc:
            for i in group:
                out[i] = failed(exc)
            return
        for i, result in zip(group, results, strict=True):
            if _again(result):
                try:
                    result = await alone(i)
                except BACKEND_ERRORS as exc:
                    result = failed(exc)
            out[i] = result

    # An asyncio cluster client learns the slot table on first use only.
    await client.initialize()
    await asyncio.gather(*(node(g) for _, g in by_node(client, skeys)))
    return out
