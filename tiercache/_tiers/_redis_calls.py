"""How the Redis tier runs a command: the clients it opens, the retry loop
every command runs in, and what a failure means.

::

    RedisTier.get/.../aget ──> _run(op, key, call, size)    (async: _arun)
                                 │ call(client): the sync pool, or this loop's client
                                 ├─ it answers ──> the result (the first answer also
                                 │                  learns the server's proto-max-bulk-len)
                                 ├─ no free connection in the pool for pool_timeout s
                                 │    ──> TierError.saturated at once (not retried: it
                                 │        waited already; the breaker ignores it)
                                 ├─ connection lost / timed out, retries left
                                 │    ──> sleep 10-100 ms, call again; remember whether
                                 │        the attempt may have reached the server
                                 └─ any other error, or no retries left ──> TierError
                                      .transient: an outage, not a refusal (transient())
                                      .sent: some attempt may have been applied
                                      a >= 1 MiB command whose connection dropped while
                                      the server answers PING ──> refused (not transient)

The tier retries a failed command itself (redis-py's own retry is off for
the clients it opens), so it knows whether any attempt could have reached
the server: one that failed while connecting did not; one that failed later
(a reset, a timeout waiting for the reply) may have been applied.
TierError.sent carries that to the cache, which tells "not applied" from
"may have landed" (see TieredCache's failure rules).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError

from .._exceptions import ConfigError, TierError
from .._redisclient import (
    BACKEND_ERRORS,
    AsyncClient,
    PoolSize,
    SyncClient,
    _close_at_loop_shutdown,
    _LoopClient,
    close_loop_clients,
    cluster_url,
    error_text,
    exhausted_text,
    is_cluster,
    open_async,
    open_sync,
    saturated,
    transient,
)
from .._sentinel import afollow_master, demoted, follow_master
from ._redis_cluster import AClusterDurable, ClusterDurable
from ._redis_durable import WRITES, ADurable, Durable, NotReplicated
from ._redis_scripts import CAS_LUA

__all__ = ["RedisCalls"]

#: Failures worth another attempt: the connection, not the command.
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
#: A command at least this big whose connection drops while the server
#: still answers others was refused for its size: Redis's smallest
#: proto-max-bulk-len and client-query-buffer-limit are both 1 MiB.
_BIG_COMMAND = 1 << 20
#: Redis's default proto-max-bulk-len.
_DEFAULT_BULK_LIMIT = 512 << 20

T = TypeVar("T")


def _retry_delay(attempt: int) -> float:
    """10-100 ms, jittered: a fleet of workers does not retry in lockstep."""
    return random.uniform(0.5, 1.0) * min(0.1, 0.01 * 2.0 ** (attempt - 1))


def _bulk_limit(reply: Any) -> int:
    """proto-max-bulk-len from a CONFIG GET reply (the default when absent)."""
    try:
        values = dict(reply).values()
        return int(next(iter(values)))
    except (StopIteration, TypeError, ValueError):
        return _DEFAULT_BULK_LIMIT


async def _initialized(client: Any) -> None:
    """Have an asyncio cluster client learn the slot table now, before any
    command: redis-py learns it lazily, and commands started concurrently
    with that first discovery can find their connection closed under them
    (``'NoneType' object has no attribute 'writelines'``; seen with
    redis-py 8.1 and 100 concurrent scopes)."""
    await client.initialize()


class RedisCalls:
    """The client side of :class:`~tiercache.RedisTier`: its clients, opened
    lazily (one sync pool, one async client per running loop), the retry
    loop its commands run in (:meth:`_run`, :meth:`_arun`) and the
    :class:`~tiercache.TierError` a failure becomes. The tier adds the
    commands.

    ``url`` and ``sync`` are what the tier was given (exactly one is set);
    ``async_client`` a ``redis.asyncio.Redis`` the caller owns, or None;
    ``pool`` the size of the pools opened for ``url``. The tier has checked
    them all.
    """

    def __init__(
        self,
        url: str | None,
        sync: SyncClient | None,
        async_client: AsyncClient | None,
        *,
        socket_timeout: float,
        socket_connect_timeout: float,
        retries: int,
        pool: PoolSize,
        replicas: int = 0,
        wait_ms: int = 1,
    ) -> None:
        #: Replicas each write waits for (WAIT), and for how long (ms).
        self.replicas = replicas
        self._wait_ms = wait_ms
        self._timeouts = (float(socket_timeout), float(socket_connect_timeout), retries)
        self._pool = pool
        self._url = url
        self._sync = sync
        #: Whether the server is a Redis Cluster: names get a slot tag,
        #: batches go per node (see _redis_cluster).
        self.cluster = is_cluster(sync) if url is None else cluster_url(url) is not None
        self._owns_sync = url is not None
        self._given_async = (
            None
            if async_client is None
            else _LoopClient(async_client, async_client.register_script(CAS_LUA), None)
        )
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        #: Whether a given asyncio cluster client has learnt its slot table.
        self._given_ready = False
        self._lock = threading.Lock()
        self._sync_script: Any = None
        self._closing: set[asyncio.Task[None]] = set()
        # Clients passed in keep their own retry policy; the tier adds none.
        self._owns_retries = self._owns_sync
        self._retries = retries if self._owns_sync else 0
        #: The largest value the server takes (its proto-max-bulk-len), once
        #: known; the cache refuses bigger values at scope exit, so a write
        #: it acknowledged can never be one Redis turns down.
        self.max_value_size: int | None = None

    @property
    def connection(self) -> str | SyncClient:
        """What the tier connects with: its URL, or the client it was given
        (a bus made for it uses the same)."""
        return self._url if self._url is not None else self._client()

    @property
    def async_connection(self) -> AsyncClient | None:
        """The ``redis.asyncio`` client the tier was given, if any."""
        return None if self._given_async is None else self._given_async.client

    @property
    def max_connections(self) -> int:
        """Connections per pool the tier opens for a URL (one sync pool,
        one per event loop)."""
        return self._pool.max_connections

    @property
    def pool_timeout(self) -> float:
        """Seconds a call waits for a free connection of a full pool."""
        return self._pool.timeout

    def _after_fork(self) -> None:
        """In a forked child: the parent's event loops and their clients are
        not ours (redis-py renews the sync client's connections itself)."""
        self._lock = threading.Lock()
        self._loops = {}
        self._closing = set()

    # -- clients ---------------------------------------------------------------

    def _client(self) -> SyncClient:
        client = self._sync
        if client is None:
            with self._lock:
                client = self._sync
                if client is None:
                    timeout, connect_timeout, _ = self._timeouts
                    assert self._url is not None  # no URL means a client was given
                    client = self._sync = open_sync(
                        self._url,
                        self._pool,
                        decode_responses=False,
                        socket_timeout=timeout,
                        socket_connect_timeout=connect_timeout,
                        # The tier retries itself (see _run).
                        retry=Retry(NoBackoff(), 0),
                    )
        return client

    def _script(self) -> Any:
        if self._sync_script is None:
            self._sync_script = self._client().register_script(CAS_LUA)
        return self._sync_script

    async def _aclient(self) -> _LoopClient:
        if self._given_async is not None:
            if self.cluster and not self._given_ready:
                await _initialized(self._given_async.client)
                self._given_ready = True
            return self._given_async
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is not None:
            return entry
        if self._url is None:
            raise ConfigError(
                "RedisTier was given a sync client only; pass async_client= "
                "(a redis.asyncio.Redis) or a URL to use the async methods"
            )
        timeout, connect_timeout, _ = self._timeouts
        client = open_async(
            self._url,
            self._pool,
            decode_responses=False,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
        if self.cluster:
            await _initialized(client)
        closer = _close_at_loop_shutdown(client, self._loops)
        entry = _LoopClient(client, client.register_script(CAS_LUA), closer)
        with self._lock:
            # Loops closed without shutting their async generators down
            # (loop.close() by hand) cannot close their clients any more;
            # forget them rather than keep their loops alive.
            for old in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[old]
            self._loops[loop] = entry
        # Running the generator to its yield registers it with the loop,
        # whose shutdown_asyncgens() will then run its ``finally``.
        await closer.__anext__()
        return entry

    # -- calls: retries, and what a failure means (see the module docstring) --

    def _run(self, op: str, key: str | None, call: Callable[[SyncClient], T], size: int = 0) -> T:
        attempt = 0
        maybe_sent = False
        while True:
            client = self._client()
            try:
                if self.replicas and op in WRITES:
                    kind = ClusterDurable if self.cluster else Durable
                    result = call(kind(client, self.replicas, self._wait_ms))  # type: ignore[arg-type]
                else:
                    result = call(client)
            except _RETRYABLE as exc:
                if saturated(exc):
                    raise self._exhausted(op, key, client, self._owns_sync, maybe_sent) from exc
                maybe_sent = maybe_sent or not self._before_send(exc)
                if attempt >= self._retries:
                    self._fail(op, key, exc, maybe_sent, size)
                attempt += 1
                time.sleep(_retry_delay(attempt))
            except BACKEND_ERRORS as exc:
                if demoted(exc):
                    follow_master(getattr(client, "connection_pool", None))
                self._fail(op, key, exc, maybe_sent, size)
            else:
                if self.max_value_size is None:
                    self._learn_limits(client)
                return result

    async def _arun(
        self,
        op: str,
        key: str | None,
        call: Callable[[_LoopClient], Awaitable[T]],
        size: int = 0,
    ) -> T:
        attempt = 0
        maybe_sent = False
        while True:
            entry = self._loops.get(asyncio.get_running_loop())
            try:
                # Opening a cluster client connects (see _initialized): in here.
                entry = entry or await self._aclient()
                if self.replicas and op in WRITES:
                    akind = AClusterDurable if self.cluster else ADurable
                    durable = akind(entry.client, self.replicas, self._wait_ms)
                    result = await call(_LoopClient(durable, entry.script, None))  # type: ignore[arg-type]
                else:
                    result = await call(entry)
            except _RETRYABLE as exc:
                if saturated(exc) and entry is not None:
                    own = entry.closer is not None
                    raise self._exhausted(op, key, entry.client, own, maybe_sent) from exc
                maybe_sent = maybe_sent or not self._before_send(exc)
                if attempt >= self._retries:
                    await self._afail(op, key, exc, maybe_sent, size)
                attempt += 1
                await asyncio.sleep(_retry_delay(attempt))
            except BACKEND_ERRORS as exc:
                if demoted(exc) and entry is not None:
                    await afollow_master(getattr(entry.client, "connection_pool", None))
                await self._afail(op, key, exc, maybe_sent, size)
            else:
                assert entry is not None
                if self.max_value_size is None:
                    await self._alearn_limits(entry.client)
                return result

    def _before_send(self, exc: BaseException) -> bool:
        """Whether a failed attempt certainly never reached the server: it
        failed to connect. (Only for clients the tier opened: a client
        passed in may retry inside redis-py, hiding an attempt that did.)"""
        if isinstance(exc, AuthenticationError | MasterNotFoundError):
            return True  # refused at AUTH, or no sentinel named a master
        if not self._owns_retries:
            return False
        text = str(exc)
        return " connecting to " in text or text.startswith("Timeout connecting")

    def _error(self, op: str, key: str | None, exc: BaseException, sent: bool) -> TierError:
        where = f" {key!r}" if key is not None else ""
        err = TierError(f"redis tier: {op}{where} failed: {error_text(exc)}")
        err.transient = transient(exc)
        # Whether any attempt may have been applied: a reply that refuses
        # the command (a ResponseError) means the server did not apply that
        # attempt, a connection lost after sending may have come after; a
        # write too few replicas acknowledged is on the master, maybe.
        err.sent = sent or isinstance(exc, NotReplicated)
        return err

    def _exhausted(self, op: str, key: str | None, client: Any, own: bool, sent: bool) -> TierError:
        """No free connection in the pool: a local queue that overflowed, not
        an outage, so not retried (it waited ``pool_timeout`` already)."""
        where = f" {key!r}" if key is not None else ""
        text = exhausted_text(getattr(client, "connection_pool", None), "RedisTier", own)
        err = TierError(f"redis tier: {op}{where} not sent: {text}")
        err.transient = True
        err.saturated = True
        err.sent = sent
        return err

    def _refused(self, op: str, key: str | None, exc: BaseException, size: int) -> TierError:
        err = TierError(
            f"redis tier: {op}{'' if key is None else f' {key!r}'} refused: Redis closed the "
            f"connection on a {size}-byte command but answers others (a value over its "
            f"proto-max-bulk-len, or a batch over client-query-buffer-limit): {error_text(exc)}"
        )
        err.transient = False
        err.sent = False
        return err

    def _fail(
        self, op: str, key: str | None, exc: BaseException, sent: bool = True, size: int = 0
    ) -> NoReturn:
        err = self._error(op, key, exc, sent)
        big = size >= _BIG_COMMAND and not isinstance(exc, NotReplicated)
        if err.transient and big and self._answers():
            # One command too big for the server is that command's error,
            # never an outage: the circuit stays closed, the rest drains.
            err = self._refused(op, key, exc, size)
        raise err from exc

    async def _afail(
        self, op: str, key: str | None, exc: BaseException, sent: bool, size: int
    ) -> NoReturn:
        err = self._error(op, key, exc, sent)
        big = size >= _BIG_COMMAND and not isinstance(exc, NotReplicated)
        if err.transient and big and await self._aanswers():
            err = self._refused(op, key, exc, size)
        raise err from exc

    def _answers(self) -> bool:
        try:
            return bool(self._client().ping())
        except BACKEND_ERRORS:
            return False

    async def _aanswers(self) -> bool:
        try:
            entry = await self._aclient()
            return bool(await entry.client.ping())
        except BACKEND_ERRORS:
            return False

    def _learn_limits(self, client: SyncClient) -> None:
        try:
            reply = client.config_get("proto-max-bulk-len")
        except BACKEND_ERRORS:
            reply = {}  # no CONFIG for us (an ACL, a managed Redis): the default
        self.max_value_size = _bulk_limit(reply)

    async def _alearn_limits(self, client: AsyncClient) -> None:
        try:
            reply = await client.config_get("proto-max-bulk-len")
        except BACKEND_ERRORS:
            reply = {}
        self.max_value_size = _bulk_limit(reply)

    # -- close -----------------------------------------------------------------

    def close(self) -> None:
        """Close the connections the tier opened; clients passed in stay open.

        The tier stays usable: a later call connects again.
        """
        with self._lock:
            sync, self._sync = (self._sync, None) if self._owns_sync else (None, self._sync)
            self._sync_script = None if self._owns_sync else self._sync_script
            loops, self._loops = self._loops, {}
        if sync is not None:
            sync.close()
        close_loop_clients(loops, self._closing, self._timeouts[0] + 1.0)

    async def aclose(self) -> None:
        """Close what the tier opened, awaiting this loop's client."""
        here = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.pop(here, None)
        if entry is not None and entry.closer is not None:
            await entry.closer.aclose()
        self.close()
