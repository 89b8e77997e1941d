"""``RedisTier(replicas=n)``: every write followed by ``WAIT n timeout`` on
the same connection, in the same round trip.

::

    _run(op in WRITES, call) ──> call(Durable(client))     (async: ADurable)
        Durable.set / delete / pexpire / eval / evalsha(...):
            pipeline(transaction=False): [the command, WAIT n ms] ──> one round trip
        Durable.pipeline(...) ──> DurablePipeline: the queued commands, then WAIT
            (a transaction's MULTI ... EXEC is sent by hand and WAIT after EXEC:
             inside MULTI, WAIT answers at once, without waiting)
        WAIT's answer < n ──> NotReplicated: the write may be on the master
            only; the tier raises it as a TierError, transient and sent

WAIT counts the replicas that acknowledged everything this connection wrote
so far, so it must run on the connection that wrote: one pipeline is one
connection. Scripts go through a ``Durable`` as they would through a client
(``script(keys, args, client=durable)``: EVALSHA, SCRIPT LOAD on NOSCRIPT).
"""

from __future__ import annotations

import math
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.client
import redis.client
from redis.exceptions import RedisError

__all__ = ["WRITES", "ADurable", "Durable", "NotReplicated", "wait_ms"]

#: The tier's operations (RedisCalls._run's ``op``) that write.
WRITES = frozenset(
    {
        "set",
        "set_many",
        "delete",
        "touch",
        "compare_and_set",
        "compare_and_set_many",
        "compare_and_set_fenced",
        "quarantine",
        "acquire_lease",
        "renew_lease",
        "release_lease",
    }
)


class NotReplicated(RedisError):
    """Fewer replicas than asked for acknowledged a write in time."""

    def __init__(self, acked: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"only {acked} of the {wanted} replica(s) asked for acknowledged the write "
            f"within {timeout_ms} ms (WAIT): it may be on the master only, not durable"
        )
        self.acked = acked
        self.wanted = wanted


def wait_ms(seconds: float) -> int:
    """WAIT's timeout: at least 1 ms (``WAIT n 0`` would block for ever)."""
    return max(1, math.ceil(seconds * 1000))


def _check(acked: Any, wanted: int, timeout_ms: int) -> None:
    if isinstance(acked, BaseException):
        raise acked
    if int(acked) < wanted:
        raise NotReplicated(int(acked), wanted, timeout_ms)


def _by_hand(stack: list[Any]) -> list[Any]:
    """A transaction's commands as MULTI ... EXEC queued one by one."""
    return [(("MULTI",), {}), *stack, (("EXEC",), {})]


class DurablePipeline(redis.client.Pipeline):
    """A pipeline that sends WAIT after its commands (see the module docstring)."""

    wanted: int
    timeout_ms: int

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        me: Any = self  # ``transaction`` is also a method of redis.Redis
        by_hand = bool(me.transaction)
        if by_hand:
            self.command_stack = _by_hand(self.command_stack)
            me.transaction = False
        self.pipeline_execute_command("WAIT", self.wanted, self.timeout_ms)
        results: list[Any] = super().execute(raise_on_error)
        _check(results.pop(), self.wanted, self.timeout_ms)
        # By hand: OK, QUEUED..., then EXEC's list of the commands' replies.
        return list(results[-1]) if by_hand else results


class Durable:
    """A client stand-in for one write: each command it sends is followed
    by WAIT (see the module docstring)."""

    def __init__(self, client: redis.Redis, wanted: int, timeout_ms: int) -> None:
        self.client = client
        self.wanted = wanted
        self.timeout_ms = timeout_ms

    def _one(self, name: str, *args: Any, **kwargs: Any) -> Any:
        with self.pipeline(transaction=False) as pipe:
            getattr(pipe, name)(*args, **kwargs)
            return pipe.execute()[0]

    def pipeline(self, transaction: bool = True) -> DurablePipeline:
        c = self.client
        pipe = DurablePipeline(c.connection_pool, c.response_callbacks, transaction, None)
        pipe.wanted, pipe.timeout_ms = self.wanted, self.timeout_ms
        return pipe

    def set(self, *args: Any, **kwargs: Any) -> Any:
        return self._one("set", *args, **kwargs)

    def delete(self, *args: Any) -> Any:
        return self._one("delete", *args)

    def pexpire(self, *args: Any) -> Any:
        return self._one("pexpire", *args)

    def eval(self, *args: Any) -> Any:
        return self._one("eval", *args)

    def evalsha(self, *args: Any) -> Any:
        return self._one("evalsha", *args)

    def script_load(self, script: Any) -> Any:
        return self.client.script_load(script)


class ADurablePipeline(redis.asyncio.client.Pipeline):
    """:class:`DurablePipeline` for ``redis.asyncio``."""

    wanted: int
    timeout_ms: int

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        by_hand = self.is_transaction
        if by_hand:
            self.command_stack = _by_hand(self.command_stack)
            self.is_transaction = False
        self.pipeline_execute_command("WAIT", self.wanted, self.timeout_ms)  # type: ignore[no-untyped-call]
        results: list[Any] = await super().execute(raise_on_error)
        _check(results.pop(), self.wanted, self.timeout_ms)
        return list(results[-1]) if by_hand else results


class ADurable:
    """:class:`Durable` for ``redis.asyncio``."""

    def __init__(self, client: redis.asyncio.Redis, wanted: int, timeout_ms: int) -> None:
        self.client = client
        self.wanted = wanted
        self.timeout_ms = timeout_ms

    async def _one(self, name: str, *args: Any, **kwargs: Any) -> Any:
        async with self.pipeline(transaction=False) as pipe:
            getattr(pipe, name)(*args, **kwargs)
            return (await pipe.execute())[0]

    def pipeline(self, transaction: bool = True) -> ADurablePipeline:
        c = self.client
        pipe = ADurablePipeline(c.connection_pool, c.response_callbacks, transaction, None)
        pipe.wanted, pipe.timeout_ms = self.wanted, self.timeout_ms
        return pipe

    def register_script(self, script: Any) -> Any:
        return self.client.register_script(script)

    async def set(self, *args: Any, **kwargs: Any) -> Any:
        return await self._one("set", *args, **kwargs)

    async def delete(self, *args: Any) -> Any:
        return await self._one("delete", *args)

    async def pexpire(self, *args: Any) -> Any:
        return await self._one("pexpire", *args)

    async def eval(self, *args: Any) -> Any:
        return await self._one("eval", *args)

    async def evalsha(self, *args: Any) -> Any:
        return await self._one("evalsha", *args)

    async def script_load(self, script: Any) -> Any:
        return await self.client.script_load(script)
