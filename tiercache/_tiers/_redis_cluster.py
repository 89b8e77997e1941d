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
from typing import Any, ClassVar, TypeVar

from redis.exceptions import (
    AskError,
    NoScriptError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from .._keys import session_of
from .._redisclient import BACKEND_ERRORS
from ._redis_durable import Durable, NotReplicated

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


# -- replicas= on a cluster: WAIT on the connection that wrote -------------------


class ClusterDurable:
    """:class:`~._redis_durable.Durable` for a cluster client: each write
    goes, with its WAIT, in one pipeline on the connection of the master
    serving the key it writes (a cluster client picks a connection per
    command, and WAIT counts what that one connection wrote). A slot that
    moved answers MOVED: an outage for this call (the next one asks the
    refreshed slot table)."""

    def __init__(self, cluster: Any, wanted: int, timeout_ms: int) -> None:
        self.cluster = cluster
        self.wanted = wanted
        self.timeout_ms = timeout_ms

    def _on(self, key: Any) -> Any:
        node = self.cluster.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no node serves the slot of {key!r}")
        return self.get_redis_connection(node)

    # What a batch (run_by_node) asks of its client.
    def get_node_from_key(self, key: Any) -> Any:
        return self.cluster.get_node_from_key(key)

    def get_redis_connection(self, node: Any) -> Any:
        return Durable(self.cluster.get_redis_connection(node), self.wanted, self.timeout_ms)

    # What the tier's single writes ask of it (the key is the first argument).
    def set(self, key: Any, *args: Any, **kwargs: Any) -> Any:
        return self._on(key).set(key, *args, **kwargs)

    def delete(self, key: Any) -> Any:
        return self._on(key).delete(key)

    def pexpire(self, key: Any, *args: Any) -> Any:
        return self._on(key).pexpire(key, *args)

    def eval(self, script: Any, numkeys: int, *keys_and_args: Any) -> Any:
        return self._on(keys_and_args[0]).eval(script, numkeys, *keys_and_args)

    def evalsha(self, sha: Any, numkeys: int, *keys_and_args: Any) -> Any:
        return self._on(keys_and_args[0]).evalsha(sha, numkeys, *keys_and_args)

    def script_load(self, script: Any) -> Any:
        return self.cluster.script_load(script)

    def pipeline(self, transaction: bool = True) -> _Deferred:
        return _Deferred(self, transaction)


class _Deferred:
    """A pipeline whose node is known once its first command names a key
    (touch's EXISTS + PERSIST, both on one key)."""

    def __init__(self, durable: ClusterDurable, transaction: bool) -> None:
        self._durable = durable
        self._transaction = transaction
        self._queued: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __enter__(self) -> _Deferred:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queued = []

    def __getattr__(self, name: str) -> Callable[..., _Deferred]:
        def queue(*args: Any, **kwargs: Any) -> _Deferred:
            self._queued.append((name, args, kwargs))
            return self

        return queue

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self._queued:
            return []
        with self._durable._on(self._queued[0][1][0]).pipeline(self._transaction) as pipe:
            for name, args, kwargs in self._queued:
                getattr(pipe, name)(*args, **kwargs)
            return list(pipe.execute(raise_on_error))


class AClusterDurable:
    """:class:`ClusterDurable` for ``redis.asyncio``: the commands and their
    WAIT are written on one connection of the key's master (taken from the
    cluster client's own node, so it is closed with the client) and read
    back in order. A connection an error left half-read is dropped."""

    def __init__(self, cluster: Any, wanted: int, timeout_ms: int) -> None:
        self.cluster = cluster
        self.wanted = wanted
        self.timeout_ms = timeout_ms

    def get_node_from_key(self, key: Any) -> Any:
        return self.cluster.get_node_from_key(key)

    async def initialize(self) -> None:
        await self.cluster.initialize()

    async def send(
        self, key: Any, commands: list[tuple[Any, ...]], transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """``commands`` on ``key``'s master, then WAIT; their replies."""
        node = self.cluster.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no node serves the slot of {key!r}")
        sent = [("MULTI",), *commands, ("EXEC",)] if transaction else list(commands)
        sent.append(("WAIT", self.wanted, self.timeout_ms))
        conn = node.acquire_connection()
        try:
            await conn.send_packed_command(conn.pack_commands(sent))
            replies: list[Any] = []
            for _ in sent:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)
        acked = replies.pop()
        if isinstance(acked, BaseException):
            raise acked
        if int(acked) < self.wanted:
            raise NotReplicated(int(acked), self.wanted, self.timeout_ms)
        if transaction:
            # OK, QUEUED..., then EXEC's list (or its error).
            if isinstance(replies[-1], BaseException):
                raise replies[-1]
            replies = list(replies[-1])
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, BaseException):
                    raise reply
        return replies

    async def _one(self, key: Any, *command: Any) -> Any:
        return (await self.send(key, [command], False, True))[0]

    async def set(self, key: Any, value: Any, px: int | None = None) -> Any:
        return await self._one(key, "SET", key, value, *(("PX", px) if px else ()))

    async def delete(self, key: Any) -> Any:
        return await self._one(key, "DEL", key)

    async def pexpire(self, key: Any, ms: int) -> Any:
        return await self._one(key, "PEXPIRE", key, ms)

    async def eval(self, script: Any, numkeys: int, *keys_and_args: Any) -> Any:
        return await self._one(keys_and_args[0], "EVAL", script, numkeys, *keys_and_args)

    async def evalsha(self, sha: Any, numkeys: int, *keys_and_args: Any) -> Any:
        return await self._one(keys_and_args[0], "EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: Any) -> Any:
        return await self.cluster.script_load(script)

    def register_script(self, script: Any) -> Any:
        return self.cluster.register_script(script)

    def pipeline(self, transaction: bool = True) -> _ADeferred:
        return _ADeferred(self, transaction)


class _ADeferred:
    """:class:`_Deferred` for :class:`AClusterDurable`: commands are queued
    by name (``get``, ``set``, ``exists``...) or by ``execute_command``."""

    _NAMES: ClassVar[dict[str, str]] = {
        "get": "GET",
        "delete": "DEL",
        "exists": "EXISTS",
        "persist": "PERSIST",
        "pexpire": "PEXPIRE",
    }

    def __init__(self, durable: AClusterDurable, transaction: bool) -> None:
        self._durable = durable
        self._transaction = transaction
        self._queued: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> _ADeferred:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._queued = []

    def execute_command(self, *command: Any) -> _ADeferred:
        self._queued.append(command)
        return self

    def set(self, key: Any, value: Any, px: int | None = None) -> _ADeferred:
        return self.execute_command("SET", key, value, *(("PX", px) if px else ()))

    def __getattr__(self, name: str) -> Callable[..., _ADeferred]:
        command = self._NAMES.get(name)
        if command is None:
            raise AttributeError(name)
        return lambda *args: self.execute_command(command, *args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if not self._queued:
            return []
        # Every command of a tier pipeline is on one slot's key: its master.
        first = self._queued[0]
        key = first[3] if first[0] in ("EVAL", "EVALSHA") else first[1]
        return await self._durable.send(key, self._queued, self._transaction, raise_on_error)
