"""The Redis tier: envelope bytes shared by every process, sync and async.

::

    get/set/...   ──> redis.Redis (one thread-safe pool)           ──┐
    aget/aset/... ──> redis.asyncio.Redis, one per running loop    ──┴─> redis-server
                      (closed when that loop shuts down)

A ``redis.asyncio`` connection belongs to the event loop that opened it, and
a program (or a test suite) may run several loops over its life, so the
tier opens one async client per loop, on first use. Each client is closed
by the loop's own shutdown (``asyncio.run`` and ``asyncio.Runner`` close
async generators before the loop, and the tier parks one there), by
:meth:`RedisTier.aclose` / :meth:`RedisTier.close`, or, if the tier is
dropped while its loop still runs, by the loop's async-generator finalizer.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from .._exceptions import ConfigError, TierError
from .._redisclient import BACKEND_ERRORS as _BACKEND_ERRORS

# Importable from here before the client plumbing moved out; kept so.
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
from ._base import CasItem, PersistentTier, SetItem
from ._redis_scripts import (
    ACQUIRE_LUA,
    CAS_LUA,
    FENCED_CAS_LUA,
    QUARANTINE_LUA,
    RELEASE_LUA,
    RENEW_LUA,
)

__all__ = ["RedisTier"]

_U64 = struct.Struct("<Q")
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


def _lease_ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))


def _keep_ms(keep: float) -> int:
    return 0 if keep <= 0 else max(1, math.ceil(keep * 1000))


def _px(ttl: float | None) -> int:
    """Milliseconds for SET PX: 0 for no expiry, -1 for already expired.

    Rounds up: a backend TTL may be late, never early.
    """
    if ttl is None:
        return 0
    if ttl <= 0:
        return -1
    return max(1, math.ceil(ttl * 1000))


class RedisTier(PersistentTier):
    """A persistent tier in Redis, shared by every process that uses it.

    ``url_or_client`` is a URL (``redis://host:6379/0``, ``rediss://``,
    ``unix://``), from which the tier opens its own sync client and one
    async client per event loop, lazily; or a ``redis.Redis`` the caller
    owns, in which case async use needs ``async_client=`` (a
    ``redis.asyncio.Redis`` the caller also owns, and must use on one loop).
    Clients must keep ``decode_responses=False``. Keys are stored as
    ``prefix + key``.

    TLS: ``rediss://host:6380/0?ssl_ca_certs=/path/ca.pem`` (add
    ``ssl_certfile=`` and ``ssl_keyfile=`` for a client certificate;
    ``ssl_cert_reqs``, ``ssl_check_hostname``, ``ssl_ca_path`` and
    ``ssl_password``, redacted in reprs, work too). A URL is checked at
    construction (:func:`check_url`): a query parameter redis-py would not
    take (``ssl_ca_certs`` on a ``redis://`` URL, a misspelling) is a
    :class:`~tiercache.ConfigError`; a failed handshake (an untrusted
    certificate) is a TierError at first use.

    Timeouts (for clients the tier opens): ``socket_timeout`` (default 2 s)
    bounds each command, ``socket_connect_timeout`` (default 1 s) each
    connect, and a failed command is retried ``retries`` times (default 1,
    10-100 ms jittered backoff; the retry heals a pooled connection that a
    server restart cut). So a hung server fails a call after about
    ``(1 + retries) * socket_timeout`` = 4 s; a down one in milliseconds.
    Every failure surfaces as :class:`~tiercache.TierError`.

    >>> tier = RedisTier("redis://127.0.0.1:6379/0", prefix="tc:doc:")  # doctest: +SKIP
    >>> tier.set("mybot:chat:42", b"envelope", ttl=60)                   # doctest: +SKIP
    >>> tier.get_many(["mybot:chat:42", "nope"])                          # doctest: +SKIP
    [b'envelope', None]
    """

    name = "redis"
    supports_cas = True

    def __init__(
        self,
        url_or_client: str | SyncClient,
        *,
        prefix: str = "tc:",
        async_client: AsyncClient | None = None,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 1.0,
        retries: int = 1,
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
        if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
            raise ConfigError(
                f"async_client must be a redis.asyncio.Redis, got {type(async_client).__name__}"
            )
        self._prefix = prefix
        self._timeouts = (float(socket_timeout), float(socket_connect_timeout), retries)
        self._url: str | None = None
        self._sync: SyncClient | None = None
        self._owns_sync = False
        if isinstance(url_or_client, str):
            self._url = url_or_client
            self._owns_sync = True
            # Check now so a bad URL fails at construction, not first use.
            if urlsplit(url_or_client).scheme not in ("redis", "rediss", "unix"):
                raise ConfigError(
                    f"bad Redis URL {redact_url(url_or_client)!r}: the scheme must be redis://, "
                    "rediss:// or unix://"
                )
            check_url(url_or_client)
        elif isinstance(url_or_client, redis.asyncio.Redis):
            raise ConfigError(
                "RedisTier's first argument is a URL or a sync redis.Redis; "
                "pass a redis.asyncio.Redis as async_client="
            )
        elif isinstance(url_or_client, redis.Redis):
            self._sync = url_or_client
        else:
            raise ConfigError(
                "RedisTier needs a URL or a redis.Redis, got " + type(url_or_client).__name__
            )
        for client in (self._sync, async_client):
            if client is not None and _decodes(client):
                raise ConfigError(
                    "RedisTier needs clients with decode_responses=False: it stores bytes"
                )
        self._given_async = (
            None
            if async_client is None
            else _LoopClient(async_client, async_client.register_script(CAS_LUA), None)
        )
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
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

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url is not None else "client"
        return f"RedisTier({where!r}, prefix={self._prefix!r})"

    def _after_fork(self) -> None:
        """In a forked child: the parent's event loops and their clients are
        not ours (redis-py renews the sync client's connections itself)."""
        self._lock = threading.Lock()
        self._loops = {}
        self._closing = set()

    @property
    def prefix(self) -> str:
        return self._prefix

    # -- clients ---------------------------------------------------------------

    def _client(self) -> SyncClient:
        client = self._sync
        if client is None:
            with self._lock:
                client = self._sync
                if client is None:
                    timeout, connect_timeout, _ = self._timeouts
                    assert self._url is not None  # no URL means a client was given
                    client = self._sync = redis.Redis.from_url(
                        self._url,
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
        client = redis.asyncio.Redis.from_url(
            self._url,
            decode_responses=False,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        )
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

    def _key(self, key: str) -> str:
        return self._prefix + key

    # -- calls: retries, and what a failure means ------------------------------
    #
    # The tier retries a failed command itself (redis-py's own retry is off
    # for the clients it opens), so it knows whether any attempt could have
    # reached the server: one that failed while connecting did not; one that
    # failed later (a reset, a timeout waiting for the reply) may have been
    # applied. TierError.sent carries that to the cache, which tells "not
    # applied" from "may have landed" (see TieredCache's failure rules).

    def _run(self, op: str, key: str | None, call: Callable[[SyncClient], T], size: int = 0) -> T:
        attempt = 0
        maybe_sent = False
        while True:
            client = self._client()
            try:
                result = call(client)
            except _RETRYABLE as exc:
                maybe_sent = maybe_sent or not self._before_send(exc)
                if attempt >= self._retries:
                    self._fail(op, key, exc, maybe_sent, size)
                attempt += 1
                time.sleep(_retry_delay(attempt))
            except _BACKEND_ERRORS as exc:
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
            entry = self._loops.get(asyncio.get_running_loop()) or await self._aclient()
            try:
                result = await call(entry)
            except _RETRYABLE as exc:
                maybe_sent = maybe_sent or not self._before_send(exc)
                if attempt >= self._retries:
                    await self._afail(op, key, exc, maybe_sent, size)
                attempt += 1
                await asyncio.sleep(_retry_delay(attempt))
            except _BACKEND_ERRORS as exc:
                await self._afail(op, key, exc, maybe_sent, size)
            else:
                if self.max_value_size is None:
                    await self._alearn_limits(entry.client)
                return result

    def _before_send(self, exc: BaseException) -> bool:
        """Whether a failed attempt certainly never reached the server: it
        failed to connect. (Only for clients the tier opened: a client
        passed in may retry inside redis-py, hiding an attempt that did.)"""
        if isinstance(exc, AuthenticationError):
            return True  # refused at AUTH, before any command
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
        # attempt, a connection lost after sending may have come after.
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
        if err.transient and size >= _BIG_COMMAND and self._answers():
            # One command too big for the server is that command's error,
            # never an outage: the circuit stays closed, the rest drains.
            err = self._refused(op, key, exc, size)
        raise err from exc

    async def _afail(
        self, op: str, key: str | None, exc: BaseException, sent: bool, size: int
    ) -> NoReturn:
        err = self._error(op, key, exc, sent)
        if err.transient and size >= _BIG_COMMAND and await self._aanswers():
            err = self._refused(op, key, exc, size)
        raise err from exc

    def _answers(self) -> bool:
        try:
            return bool(self._client().ping())
        except _BACKEND_ERRORS:
            return False

    async def _aanswers(self) -> bool:
        try:
            entry = await self._aclient()
            return bool(await entry.client.ping())
        except _BACKEND_ERRORS:
            return False

    def _learn_limits(self, client: SyncClient) -> None:
        try:
            reply = client.config_get("proto-max-bulk-len")
        except _BACKEND_ERRORS:
            reply = {}  # no CONFIG for us (an ACL, a managed Redis): the default
        self.max_value_size = _bulk_limit(reply)

    async def _alearn_limits(self, client: AsyncClient) -> None:
        try:
            reply = await client.config_get("proto-max-bulk-len")
        except _BACKEND_ERRORS:
            reply = {}
        self.max_value_size = _bulk_limit(reply)

    # -- sync ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        skey = self._prefix + key
        return self._run("get", key, lambda c: cast("bytes | None", c.get(skey)))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        skeys = [self._key(k) for k in keys]
        return self._run("get_many", None, lambda c: cast("list[bytes | None]", c.mget(skeys)))

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
            # Not MULTI: the batch needs one round trip, not isolation.
            with c.pipeline(transaction=False) as pipe:
                _queue_sets(pipe, self._prefix, items)
                pipe.execute()

        self._run("set_many", None, call, sum(len(v) for _, v, _ in items))

    def compare_and_set_many(self, items: Sequence[CasItem]) -> list[bool]:
        if not items:
            return []
        script = self._script()

        def call(c: SyncClient) -> list[bool]:
            with c.pipeline(transaction=False) as pipe:
                for key, value, ttl, expected in items:
                    args = [value, _U64.pack(expected), _px(ttl)]
                    script(keys=[self._key(key)], args=args, client=pipe)
                return [bool(r) for r in pipe.execute()]

        return self._run("compare_and_set_many", None, call, sum(len(i[1]) for i in items))

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
        args = [value, _U64.pack(expected), _px(ttl)]
        keys = [self._key(key)]
        script = self._script()
        return self._run(
            "compare_and_set", key, lambda c: bool(script(keys=keys, args=args)), len(value)
        )

    # -- quarantine ------------------------------------------------------------

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        keys, args = [self._key(key), self._key(to)], [bad, _keep_ms(keep)]
        return bool(self._eval("quarantine", QUARANTINE_LUA, keys, args))

    async def aquarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        keys, args = [self._key(key), self._key(to)], [bad, _keep_ms(keep)]
        return bool(await self._aeval("quarantine", QUARANTINE_LUA, keys, args))

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

    def compare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        keys = [self._key(key), self._key(lease)]
        args = [value, _U64.pack(expected), max(0, _px(ttl)), token]
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
        keys = [self._key(key), self._key(lease)]
        args = [value, _U64.pack(expected), max(0, _px(ttl)), token]
        return int(await self._aeval("compare_and_set_fenced", FENCED_CAS_LUA, keys, args))

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

    # -- async: native redis.asyncio ------------------------------------------

    async def aget(self, key: str) -> bytes | None:
        skey = self._prefix + key

        async def call(e: _LoopClient) -> bytes | None:
            return cast("bytes | None", await e.client.get(skey))

        return await self._arun("get", key, call)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        skeys = [self._key(k) for k in keys]

        async def call(e: _LoopClient) -> list[bytes | None]:
            return cast("list[bytes | None]", await e.client.mget(skeys))

        return await self._arun("get_many", None, call)

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
            async with e.client.pipeline(transaction=False) as pipe:
                _queue_sets(pipe, self._prefix, items)
                await pipe.execute()

        await self._arun("set_many", None, call, sum(len(v) for _, v, _ in items))

    async def acompare_and_set_many(self, items: Sequence[CasItem]) -> list[bool]:
        if not items:
            return []

        async def call(e: _LoopClient) -> list[bool]:
            async with e.client.pipeline(transaction=False) as pipe:
                for key, value, ttl, expected in items:
                    args = [value, _U64.pack(expected), _px(ttl)]
                    await e.script(keys=[self._key(key)], args=args, client=pipe)
                return [bool(r) for r in await pipe.execute()]

        return await self._arun("compare_and_set_many", None, call, sum(len(i[1]) for i in items))

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
        args = [value, _U64.pack(expected), _px(ttl)]
        keys = [self._key(key)]

        async def call(e: _LoopClient) -> bool:
            return bool(await e.script(keys=keys, args=args))

        return await self._arun("compare_and_set", key, call, len(value))

    async def aclose(self) -> None:
        """Close what the tier opened, awaiting this loop's client."""
        here = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.pop(here, None)
        if entry is not None and entry.closer is not None:
            await entry.closer.aclose()
        self.close()


def _queue_sets(pipe: Any, prefix: str, items: Sequence[SetItem]) -> None:
    for key, value, ttl in items:
        px = _px(ttl)
        if px < 0:
            pipe.delete(prefix + key)
        else:
            pipe.set(prefix + key, value, px=px or None)


def _decodes(client: Any) -> bool:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    return bool(kwargs.get("decode_responses", False))
