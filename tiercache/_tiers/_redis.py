"""The Redis tier: envelope bytes shared by every process, sync and async.

::

    get/set/...   ──> redis.Redis (one thread-safe pool)           ──┐
    aget/aset/... ──> redis.asyncio.Redis, one per running loop    ──┴─> redis-server
                      (closed when that loop shuts down)

Each command here is one redis-py call, or one Lua script where a check
guards the write (:mod:`._redis_scripts`), run by the tier's retry loop,
which also opens the clients and turns a failure into a
:class:`~tiercache.TierError` (:class:`._redis_calls.RedisCalls`). URL
checks, error classification and the per-loop async clients, shared with
the Redis bus, are in :mod:`tiercache._redisclient`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from .._envelope import is_tombstone, peek_version
from .._exceptions import ConfigError
from .._fields import FIELDS_MIN_BYTES

# Importable from here before the client plumbing moved out; kept so.
from .._redisclient import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT, PoolSize, take_connection
from .._redisclient import AsyncClient as AsyncClient
from .._redisclient import SyncClient as SyncClient
from .._redisclient import _close_at_loop_shutdown as _close_at_loop_shutdown
from .._redisclient import _LoopClient as _LoopClient
from .._redisclient import check_url as check_url
from .._redisclient import close_loop_client as close_loop_client
from .._redisclient import close_loop_clients as close_loop_clients
from .._redisclient import error_text as error_text
from .._redisclient import redact_url as redact_url
from .._redisclient import transient as transient
from ._base import PersistentTier, SetItem
from ._redis_cluster import arun_by_node, run_by_node
from ._redis_durable import wait_ms
from ._redis_fields import _first_error, _px
from ._redis_scan import ScanCalls
from ._redis_scripts import (
    ACQUIRE_LUA,
    CAS_LUA,
    FENCED_CAS_LUA,
    RELEASE_LUA,
    RENEW_LUA,
)

__all__ = ["RedisTier"]

_U64 = struct.Struct("<Q")
#: Seconds a write waits for ``replicas=`` acknowledgements (WAIT).
DEFAULT_REPLICAS_TIMEOUT = 0.5


def _lease_ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _keep_ms(keep: float) -> int:
    return 0 if keep <= 0 else max(1, math.ceil(keep * 1000))


class RedisTier(ScanCalls, PersistentTier):
    """A persistent tier in Redis, shared by every process that uses it.

    ``url_or_client`` is a URL (``redis://host:6379/0``, ``rediss://``,
    ``unix://``), from which the tier opens its own sync client and one
    async client per event loop, lazily; or a ``redis.Redis`` or a
    ``redis.ConnectionPool`` the caller owns, in which case async use needs
    ``async_client=`` (a ``redis.asyncio.Redis`` or ``ConnectionPool`` the
    caller also owns, and must use on one loop). Clients must keep
    ``decode_responses=False``. Keys are stored as ``prefix + key``.

    TLS: ``rediss://host:6380/0?ssl_ca_certs=/path/ca.pem`` (add
    ``ssl_certfile=`` and ``ssl_keyfile=`` for a client certificate;
    ``ssl_cert_reqs``, ``ssl_check_hostname``, ``ssl_ca_path`` and
    ``ssl_password``, redacted in reprs, work too). A URL is checked at
    construction (:func:`check_url`): a query parameter redis-py would not
    take (``ssl_ca_certs`` on a ``redis://`` URL, a misspelling) is a
    :class:`~tiercache.ConfigError`; a failed handshake (an untrusted
    certificate) is a TierError at first use.

    Redis Cluster: ``redis+cluster://host:port`` (``rediss+cluster://``
    for TLS; one seed node, the client finds the rest), or a
    ``redis.cluster.RedisCluster`` (with ``async_client=`` a
    ``redis.asyncio.cluster.RedisCluster``). Every name stored for one key
    (value, quarantine, lease, fence) carries the same hash tag, a digest
    of the key (``tc:{1a2b3c4d}mybot:chat:42``), so each script runs in one
    slot and keys spread over every shard; a ``{...}`` in ``prefix`` would
    put them all in one slot instead. Batches run as one pipeline per
    master: a master that is down or failing over fails only its own keys
    (journaled where a journal is configured). Redirections (a slot
    migrating) are followed; ``CLUSTERDOWN`` and ``TRYAGAIN`` are outages.
    Invalidations cannot ride in the write's script there (the bus's
    streams are in other slots): the cache publishes them right after.

    Timeouts (for clients the tier opens): ``socket_timeout`` (default 2 s)
    bounds each command, ``socket_connect_timeout`` (default 1 s) each
    connect, and a failed command is retried ``retries`` times (default 1,
    10-100 ms jittered backoff; the retry heals a pooled connection that a
    server restart cut). So a hung server fails a call after about
    ``(1 + retries) * socket_timeout`` = 4 s; a down one in milliseconds.
    Every failure surfaces as :class:`~tiercache.TierError`.

    Pools (for clients the tier opens): each is a ``BlockingConnectionPool``
    of ``max_connections`` (default 50; one sync pool, one per event loop),
    so a burst of concurrent calls (one coroutine per chat, gathered)
    queues for a free connection instead of failing. A call that waits
    ``pool_timeout`` (default 5 s) in vain raises a TierError marked
    ``saturated`` that names both settings; the circuit breaker ignores it,
    since Redis was never asked. A client passed in keeps its own pool
    (give it a ``BlockingConnectionPool`` for the same behaviour).

    Sentinel: ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]``
    (``rediss+sentinel://`` for TLS, with the ``ssl_*`` options above;
    ``sentinel_username=`` / ``sentinel_password=`` to authenticate to the
    sentinels, ``user:pass@`` to the master) connects to the master the
    sentinels name. The pools opened for it ask them again at most every
    second, so after a failover no write keeps going to the old master
    (which stays writable until the sentinels demote it); a call made
    during the switch fails as an outage (transient). These pools do not
    wait for a free connection (redis-py has no blocking sentinel pool): a
    full one fails the call at once, as ``saturated``. A
    ``Sentinel(...).master_for(service)`` client (and ``redis.asyncio``'s,
    as ``async_client=``) works too; the bus's listener then follows the
    master the same way.

    Durability: ``replicas=n`` (default 0) makes every write wait, in the
    same round trip (``WAIT n``), until ``n`` replicas have it, for at
    most ``replicas_timeout`` seconds (default 0.5, shorter than
    ``socket_timeout``). A write fewer replicas acknowledged is not
    acknowledged: TierError, ``transient`` and ``sent`` (it may be on the
    master alone, and a failover would lose it), which the cache handles as
    an outage (a journal keeps it). Without it, a failover can discard
    acknowledged writes; the cache then counts ``versions_backwards``.

    >>> tier = RedisTier("redis://127.0.0.1:6379/0", prefix="tc:doc:")  # doctest: +SKIP
    >>> tier.set("mybot:chat:42", b"envelope", ttl=60)                   # doctest: +SKIP
    >>> tier.get_many(["mybot:chat:42", "nope"])                          # doctest: +SKIP
    [b'envelope', None]
    """

    name = "redis"
    supports_cas = True

    def __init__(
        self,
        url_or_client: str | SyncClient | redis.ConnectionPool,
        *,
        prefix: str = "tc:",
        async_client: AsyncClient | redis.asyncio.ConnectionPool | None = None,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 1.0,
        retries: int = 1,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        fields: int | None = FIELDS_MIN_BYTES,
        replicas: int = 0,
        replicas_timeout: float = DEFAULT_REPLICAS_TIMEOUT,
    ) -> None:
        if not isinstance(prefix, str):
            raise ConfigError(f"prefix must be a str, got {type(prefix).__name__}")
        for setting, seconds in (
            ("socket_timeout", socket_timeout),
            ("socket_connect_timeout", socket_connect_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise ConfigError(
                    f"{setting} must be a positive number of seconds, got {seconds!r}"
                )
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise ConfigError(f"retries must be an int in 0..10, got {retries!r}")
        if fields is not None and (
            isinstance(fields, bool) or not isinstance(fields, int) or fields < 0
        ):
            raise ConfigError(f"fields must be None or an int >= 0 (bytes), got {fields!r}")
        wait = _check_replicas(replicas, replicas_timeout, socket_timeout)
        pool = PoolSize(max_connections, pool_timeout)
        url, sync, async_client = take_connection("RedisTier", url_or_client, async_client)
        for client in (sync, async_client):
            if client is not None and _decodes(client):
                raise ConfigError(
                    "RedisTier needs clients with decode_responses=False: it stores bytes"
                )
        super().__init__(
            url,
            sync,
            async_client,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            retries=retries,
            pool=pool,
            replicas=replicas,
            wait_ms=wait,
        )
        self._prefix = prefix
        #: Values whose envelope is at least this many bytes are stored as
        #: a hash of fields (None: never); see tiercache._fields.
        self.fields_min_bytes = fields
        #: Whether a hash was met or written: reads go through READ_LUA then.
        self._hashes = False
        self._lua = {}
        #: Stored-key prefix (a cache's namespace) -> where its writes'
        #: invalidations go: see :meth:`publish_into`.
        self._notes: dict[str, tuple[str, str, str]] = {}

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url is not None else "client"
        return f"RedisTier({where!r}, prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        return self._prefix

    # -- invalidations in the write's own script ------------------------------

    def publish_into(self, prefix: str, stream: str, origin: str, maxlen: int) -> None:
        """From now on, every compare-and-set of a key under ``prefix`` (a
        cache's namespace) also adds that write's invalidation to the Redis
        stream ``stream`` -- in the same script, so the write and the news
        of it are one atomic step and one round trip. ``origin`` and
        ``maxlen`` are the bus's (its listener skips its own origin). Set
        again for the same prefix (a forked child's new origin) it
        replaces the old; :meth:`stop_publishing` ends it.

        Not on a cluster: a session's slot is not its stream's (the
        script would be CROSSSLOT); the cache publishes after the write."""
        if self.cluster:
            raise ConfigError(
                "a cluster RedisTier cannot publish invalidations in its write scripts "
                "(the stream is in another hash slot); publish through the bus"
            )
        self._notes[prefix] = (stream, origin, str(maxlen))

    def stop_publishing(self, prefix: str) -> None:
        self._notes.pop(prefix, None)

    def _note(self, key: str, value: bytes, keys: list[str], args: list[Any]) -> None:
        """Add the stream and the note's fields to a write script's keys
        and args, when ``key`` is under a prefix that publishes."""
        if not self._notes:
            return
        for prefix, (stream, origin, maxlen) in self._notes.items():
            if key.startswith(prefix):
                action = "del" if is_tombstone(value) else "set"
                keys.append(stream)
                args += [origin, maxlen, key[len(prefix) :], action, str(peek_version(value))]
                return

    # -- sync ------------------------------------------------------------------

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px, skey = _px(ttl), self._key(key)

        def call(c: SyncClient) -> None:
            if px < 0:
                c.delete(skey)
            else:
                c.set(skey, value, px=px or None)

        self._run("set", key, call, len(value))

    def set_many(self, items: Sequence[SetItem]) -> None:
        if not items:
            return

        def call(c: SyncClient) -> None:
            if self.cluster:
                skeys = [self._key(k) for k, _, _ in items]
                out = run_by_node(
                    c,
                    skeys,
                    lambda pipe, i: _queue_set(pipe, skeys[i], *items[i][1:]),
                    lambda i: _queue_set(c, skeys[i], *items[i][1:]),
                    lambda exc: exc,
                )
                _first_error(out)
                return
            # Not MULTI: the batch needs one round trip, not isolation.
            with c.pipeline(transaction=False) as pipe:
                _queue_sets(pipe, self._key, items)
                pipe.execute()

        self._run("set_many", None, call, sum(len(v) for _, v, _ in items))

    def delete(self, key: str) -> bool:
        skey = self._key(key)
        return self._run("delete", key, lambda c: bool(c.delete(skey)))

    def touch(self, key: str, ttl: float | None) -> bool:
        px, skey = _px(ttl), self._key(key)

        def call(c: SyncClient) -> bool:
            if px:
                # PEXPIRE answers whether the key exists; px <= 0 deletes it.
                return bool(c.pexpire(skey, max(px, 0)))
            # PERSIST answers 0 both for "absent" and "had no expiry", so
            # ask EXISTS in the same MULTI.
            with c.pipeline(transaction=True) as pipe:
                pipe.exists(skey)
                pipe.persist(skey)
                exists, _ = pipe.execute()
            return bool(exists)

        return self._run("touch", key, call)

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        keys, args = self._cas_args(key, value, ttl, expected)
        script = self._script()
        return self._run(
            "compare_and_set",
            key,
            lambda c: bool(script(keys=keys, args=args, client=c)),
            len(value),
        )

    # -- quarantine ------------------------------------------------------------

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        return bool(self._eval("quarantine", *self.quarantine_args(key, bad, to, _keep_ms(keep))))

    async def aquarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        args = self.quarantine_args(key, bad, to, _keep_ms(keep))
        return bool(await self._aeval("quarantine", *args))

    # -- leases (strict mode) ----------------------------------------------------

    supports_lease = True

    def _eval(self, op: str, script: str, keys: list[str], args: list[Any]) -> Any:
        size = sum(len(a) for a in args if isinstance(a, bytes))
        return self._run(op, keys[0], lambda c: c.eval(script, len(keys), *keys, *args), size)

    async def _aeval(self, op: str, script: str, keys: list[str], args: list[Any]) -> Any:
        size = sum(len(a) for a in args if isinstance(a, bytes))

        async def call(e: _LoopClient) -> Any:
            return await e.client.eval(script, len(keys), *keys, *args)

        return await self._arun(op, keys[0], call, size)

    def _lease_args(self, lease: str, fence: str) -> list[str]:
        return [self._key(lease), self._key(fence)]

    def acquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        keys = self._lease_args(lease, fence)
        return int(self._eval("acquire_lease", ACQUIRE_LUA, keys, [_lease_ms(ttl)]))

    def renew_lease(self, lease: str, token: int, ttl: float) -> bool:
        keys, args = [self._key(lease)], [token, _lease_ms(ttl)]
        return bool(self._eval("renew_lease", RENEW_LUA, keys, args))

    def release_lease(self, lease: str, token: int) -> bool:
        return bool(self._eval("release_lease", RELEASE_LUA, [self._key(lease)], [token]))

    def _fenced_args(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> tuple[list[str], list[Any]]:
        keys = [self._key(key), self._key(lease)]
        args: list[Any] = [value, _U64.pack(expected), max(0, _px(ttl)), token]
        self._note(key, value, keys, args)
        return keys, args

    def compare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        keys, args = self._fenced_args(key, value, ttl, expected, lease, token)
        return int(self._eval("compare_and_set_fenced", FENCED_CAS_LUA, keys, args))

    async def aacquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        keys = self._lease_args(lease, fence)
        return int(await self._aeval("acquire_lease", ACQUIRE_LUA, keys, [_lease_ms(ttl)]))

    async def arenew_lease(self, lease: str, token: int, ttl: float) -> bool:
        keys, args = [self._key(lease)], [token, _lease_ms(ttl)]
        return bool(await self._aeval("renew_lease", RENEW_LUA, keys, args))

    async def arelease_lease(self, lease: str, token: int) -> bool:
        keys = [self._key(lease)]
        return bool(await self._aeval("release_lease", RELEASE_LUA, keys, [token]))

    async def acompare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        keys, args = self._fenced_args(key, value, ttl, expected, lease, token)
        return int(await self._aeval("compare_and_set_fenced", FENCED_CAS_LUA, keys, args))

    # -- async: native redis.asyncio ------------------------------------------

    async def aset(self, key: str, value: bytes, ttl: float | None = None) -> None:
        px, skey = _px(ttl), self._key(key)

        async def call(e: _LoopClient) -> None:
            if px < 0:
                await e.client.delete(skey)
            else:
                await e.client.set(skey, value, px=px or None)

        await self._arun("set", key, call, len(value))

    async def aset_many(self, items: Sequence[SetItem]) -> None:
        if not items:
            return

        async def call(e: _LoopClient) -> None:
            if self.cluster:
                skeys = [self._key(k) for k, _, _ in items]

                async def alone(i: int) -> Any:
                    return await _queue_set(e.client, skeys[i], *items[i][1:])

                out = await arun_by_node(
                    e.client,
                    skeys,
                    lambda pipe, i: _queue_set(pipe, skeys[i], *items[i][1:]),
                    alone,
                    lambda exc: exc,
                )
                _first_error(out)
                return
            async with e.client.pipeline(transaction=False) as pipe:
                _queue_sets(pipe, self._key, items)
                await pipe.execute()

        await self._arun("set_many", None, call, sum(len(v) for _, v, _ in items))

    async def adelete(self, key: str) -> bool:
        skey = self._key(key)

        async def call(e: _LoopClient) -> bool:
            return bool(await e.client.delete(skey))

        return await self._arun("delete", key, call)

    async def atouch(self, key: str, ttl: float | None) -> bool:
        px, skey = _px(ttl), self._key(key)

        async def call(e: _LoopClient) -> bool:
            if px:
                return bool(await e.client.pexpire(skey, max(px, 0)))
            async with e.client.pipeline(transaction=True) as pipe:
                pipe.exists(skey)
                pipe.persist(skey)
                exists, _ = await pipe.execute()
            return bool(exists)

        return await self._arun("touch", key, call)

    async def acompare_and_set(
        self, key: str, value: bytes, ttl: float | None, expected: int
    ) -> bool:
        keys, args = self._cas_args(key, value, ttl, expected)

        async def call(e: _LoopClient) -> bool:
            return bool(await self._ascript(e, CAS_LUA, keys, args))

        return await self._arun("compare_and_set", key, call, len(value))


def _queue_set(pipe: Any, skey: str, value: bytes, ttl: float | None) -> Any:
    """Queue (or, on a client, send) the command that stores ``value``."""
    px = _px(ttl)
    if px < 0:
        return pipe.delete(skey)
    return pipe.set(skey, value, px=px or None)


def _queue_sets(pipe: Any, skey: Callable[[str], str], items: Sequence[SetItem]) -> None:
    for key, value, ttl in items:
        _queue_set(pipe, skey(key), value, ttl)


def _check_replicas(replicas: Any, timeout: Any, socket_timeout: float) -> int:
    """Validate ``replicas=`` and ``replicas_timeout=``; WAIT's timeout in ms."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ConfigError(f"replicas must be an int >= 0, got {replicas!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigError(f"replicas_timeout must be a number of seconds > 0, got {timeout!r}")
    if replicas and timeout >= socket_timeout:
        # WAIT holds the reply that long: the socket must not give up first.
        raise ConfigError(
            f"replicas_timeout ({timeout!r} s) must be shorter than socket_timeout "
            f"({socket_timeout!r} s)"
        )
    return wait_ms(timeout)


def _decodes(client: Any) -> bool:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:
        # A cluster client: the settings its nodes' connections get.
        manager = getattr(client, "nodes_manager", None)
        kwargs = getattr(manager, "connection_kwargs", None) or {}
        if hasattr(client, "get_connection_kwargs"):
            kwargs = client.get_connection_kwargs()
    return bool(kwargs.get("decode_responses", False))
