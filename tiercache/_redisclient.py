"""What the Redis tier and the Redis bus share in talking to redis-py: what
they accept to connect with, URL checks, their connection pools, what an
error means, and the per-event-loop async clients.

::

    url_or_client, async_client= ──> take_connection(): a URL (checked), or a
              redis.Redis / redis.ConnectionPool, and optionally a redis.asyncio
              Redis / ConnectionPool the caller owns; else ConfigError now
    a URL ──> check_url(): both redis-py clients take it, or ConfigError now
              redact_url(): the same URL without its passwords, for logs and reprs
              open_sync() / open_async(): a client on a BlockingConnectionPool of
              PoolSize.max_connections, waiting PoolSize.timeout for a free one
    a redis-py error ──> error_text(): "Type: message", for TierError and logs
                         transient(): an outage (may heal) or a refusal (will not)
                         saturated(): this process's pool had no free connection

    first await on loop L ──> owner._aclient(): redis.asyncio.Redis for L
                                loops[L] = _LoopClient(client, ..., closer)
                                closer = _close_at_loop_shutdown(), parked on L
    L shuts down (asyncio.run) ──> shutdown_asyncgens() ──> closer: del loops[L], aclose()
    owner.close(), any thread  ──> close_loop_clients(loops): each closer on its own loop

A ``redis.asyncio`` connection belongs to the event loop that opened it, and
a program (or a test suite) may run several loops over its life, so the
tier and the bus (the owners) open one async client per loop, on first use.
Each client is closed by the loop's own shutdown (``asyncio.run`` and
``asyncio.Runner`` close async generators before the loop, and the owner
parks one there), by the owner's ``aclose()`` / ``close()``, or, if the
owner is dropped while its loop still runs, by the loop's async-generator
finalizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    ClusterDownError,
    ClusterError,
    MaxConnectionsError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from ._exceptions import ConfigError
from ._sentinel import (
    SENTINEL_SCHEMES,
    check_sentinel_url,
    demoted,
    is_sentinel_url,
    open_sentinel_async,
    open_sentinel_sync,
)

__all__ = [
    "BACKEND_ERRORS",
    "AsyncClient",
    "PoolSize",
    "SyncClient",
    "check_url",
    "close_loop_client",
    "close_loop_clients",
    "cluster_url",
    "error_text",
    "exhausted_text",
    "is_cluster",
    "open_async",
    "open_sync",
    "redact_url",
    "same_connection",
    "saturated",
    "take_connection",
    "transient",
]

SyncClient: TypeAlias = "redis.Redis"
AsyncClient: TypeAlias = "redis.asyncio.Redis"

#: What a call into redis-py raises when the backend fails (a cluster
#: client's own errors, such as a slot no node serves, are not RedisErrors).
BACKEND_ERRORS = (RedisError, OSError, RedisClusterException)

#: URL schemes that ask for a Redis Cluster client (``redis://`` and
#: ``rediss://`` behind them): ``redis+cluster://host:port`` names one seed
#: node, the client finds the rest.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The plain ``redis://`` (or ``rediss://``) URL of a seed node when
    ``url`` asks for a cluster, else None.

    >>> cluster_url("redis+cluster://10.0.0.1:7000"), cluster_url("redis://h:6379/0")
    ('redis://10.0.0.1:7000', None)
    """
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower()) if sep else None
    return None if plain is None else f"{plain}://{rest}"


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a redis-py cluster client, sync or asyncio."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def redact_url(url: str) -> str:
    """A Redis URL fit for logs and reprs: any password replaced by ``***``,
    the user's and a TLS key's (``ssl_password=``).

    >>> redact_url("redis://bot:s3cret@10.0.0.1:6379/0")
    'redis://bot:***@10.0.0.1:6379/0'
    >>> redact_url("rediss://h:6380/0?ssl_keyfile=k.pem&ssl_password=s3cret")
    'rediss://h:6380/0?ssl_keyfile=k.pem&ssl_password=***'
    """
    url = re.sub(r"(?<=[:/])([^:/@]*):([^@]*)@", r"\1:***@", url, count=1)
    return re.sub(r"([?&](?:ssl|sentinel)_password=)[^&#]*", r"\1***", url)


def check_url(url: str) -> None:
    """Raise :class:`ConfigError` unless redis-py, sync and asyncio, takes ``url``.

    Builds (without connecting) the connection each client would open, so
    a query parameter redis-py does not take fails here, at construction,
    instead of as a bare ``TypeError`` at first use: ``ssl_*`` on a
    ``redis://`` URL, a misspelling (``ssl_ca_cert``), a bad value
    (``ssl_cert_reqs=requried``), or one only the sync client knows
    (``ssl_validate_ocsp``). redis-py hands every query parameter it does
    not parse itself to the connection class, as a string; the error names it.

    >>> check_url("rediss://h:6380/0?ssl_ca_certs=ca.pem&ssl_cert_reqs=required")
    >>> check_url("redis://h:6379/0?ssl_ca_certs=ca.pem")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiercache._exceptions.ConfigError: bad Redis URL 'redis://h:6379/0?ssl_ca_certs=ca.pem': ...
    """
    if is_sentinel_url(url):
        check_sentinel_url(url, redact_url(url))
        return
    plain = cluster_url(url)
    if plain is not None:
        db = urlsplit(plain).path.strip("/")
        if db not in ("", "0"):
            raise ConfigError(
                f"bad Redis URL {redact_url(url)!r}: a cluster has database 0 only, got /{db}"
            )
    for pool_class in (redis.ConnectionPool, redis.asyncio.ConnectionPool):
        try:
            pool = pool_class.from_url(plain or url)
            pool.connection_class(**pool.connection_kwargs)
        except (TypeError, ValueError, RedisError) as exc:
            text = str(exc)
            # A password with an unquoted "/", "?" or "#" cuts the URL short,
            # and urllib's "Port could not be cast" then quotes a piece of it.
            for secret in re.findall(r"(?<=[:/])[^:/@]*:([^@]*)@", url):
                for piece in re.split(r"[/?#]", secret):
                    if piece:
                        text = text.replace(piece, "***")
            # Not chained: the original's message may hold those fragments.
            raise ConfigError(
                f"bad Redis URL {redact_url(url)!r}: {type(exc).__name__}: {text}"
            ) from None


def take_connection(
    owner: str, url_or_client: Any, async_client: Any
) -> tuple[str | None, SyncClient | None, AsyncClient | None]:
    """What a Redis tier or bus (``owner``, for messages) was given to
    connect with, checked: ``(url, sync, async)``, exactly one of the first
    two set.

    ``url_or_client`` is a URL (checked now, see :func:`check_url`), a
    ``redis.Redis``, or a ``redis.ConnectionPool`` (a
    ``BlockingConnectionPool`` too) to make one on; ``async_client`` None,
    a ``redis.asyncio.Redis`` or a ``redis.asyncio.ConnectionPool``. What
    the caller passes in, the caller owns and closes.

    >>> take_connection("RedisBus", "redis://h:6379/0", None)
    ('redis://h:6379/0', None, None)
    >>> take_connection("RedisBus", redis.asyncio.Redis(), None)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiercache._exceptions.ConfigError: RedisBus's first argument is ...; pass ... as async_client=
    """
    if isinstance(async_client, redis.asyncio.ConnectionPool):
        async_client = redis.asyncio.Redis(connection_pool=async_client)
    elif async_client is not None and not isinstance(
        async_client, redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
    ):
        raise ConfigError(
            "async_client must be a redis.asyncio.Redis, a redis.asyncio.ConnectionPool "
            f"or a redis.asyncio.cluster.RedisCluster, got {type(async_client).__name__}"
        )
    if isinstance(url_or_client, str):
        redacted = redact_url(url_or_client)
        parts = urlsplit(url_or_client)
        if parts.scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES):
            raise ConfigError(
                f"bad Redis URL {redacted!r}: the scheme must be redis://, rediss://, "
                "unix://, redis+cluster://, rediss+cluster://, redis+sentinel:// or "
                "rediss+sentinel://"
            )
        if "max_connections" in parse_qs(parts.query):
            # redis-py lets the URL's win over the keyword: one setting, one place.
            raise ConfigError(
                f"bad Redis URL {redacted!r}: pass max_connections= to {owner}, not in the URL"
            )
        check_url(url_or_client)
        return url_or_client, None, async_client
    if isinstance(url_or_client, redis.cluster.RedisCluster):
        if async_client is not None and not is_cluster(async_client):
            raise ConfigError(f"{owner} was given a cluster client and a non-cluster async_client")
        # Typed as the plain client: the commands used have the same shape.
        return None, cast(SyncClient, url_or_client), async_client
    if isinstance(
        url_or_client,
        redis.asyncio.Redis | redis.asyncio.ConnectionPool | redis.asyncio.cluster.RedisCluster,
    ):
        raise ConfigError(
            f"{owner}'s first argument is a URL, a redis.Redis or a redis.ConnectionPool; "
            "pass a redis.asyncio client or pool as async_client="
        )
    if isinstance(url_or_client, redis.ConnectionPool):
        return None, redis.Redis(connection_pool=url_or_client), async_client
    if isinstance(url_or_client, redis.Redis):
        return None, url_or_client, async_client
    raise ConfigError(
        f"{owner} needs a URL, a redis.Redis, a redis.ConnectionPool or a "
        "redis.cluster.RedisCluster, "
        f"got {type(url_or_client).__name__}"
    )


def same_connection(a: str | SyncClient, b: str | SyncClient) -> bool:
    """Whether two owners' connections are certainly to one server: the
    same URL, or clients on one pool."""
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    pool = getattr(a, "connection_pool", None)
    return a is b or (pool is not None and pool is getattr(b, "connection_pool", None))


# -- the pools opened for a URL ---------------------------------------------------

#: Connections per pool the tier and the bus open for a URL: one sync pool,
#: and one per event loop. redis-py's own BlockingConnectionPool default.
DEFAULT_MAX_CONNECTIONS = 50
#: Seconds a call waits for a free connection of a full pool. A burst
#: queues, each call waiting for one in front to finish (0.1-1 ms each on a
#: LAN), so even thousands at once get through well within it.
DEFAULT_POOL_TIMEOUT = 5.0
_MAX_POOL = 10_000  # Redis's default maxclients
_MAX_POOL_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class PoolSize:
    """How many connections a pool opened for a URL may hold
    (``max_connections=``), and how long a call waits for one when all are
    busy (``pool_timeout=``) before it fails with a TierError.

    >>> PoolSize(4, 0.5)
    PoolSize(max_connections=4, timeout=0.5)
    >>> PoolSize(0, 1.0)
    Traceback (most recent call last):
    ...
    tiercache._exceptions.ConfigError: max_connections must be an int in 1..10000, got 0
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    timeout: float = DEFAULT_POOL_TIMEOUT

    def __post_init__(self) -> None:
        size, wait = self.max_connections, self.timeout
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= _MAX_POOL:
            raise ConfigError(f"max_connections must be an int in 1..{_MAX_POOL}, got {size!r}")
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or not math.isfinite(wait)
            or not 0 < wait <= _MAX_POOL_TIMEOUT
        ):
            raise ConfigError(
                f"pool_timeout must be a number of seconds > 0 and <= {_MAX_POOL_TIMEOUT:g}, "
                f"got {wait!r}"
            )


def open_sync(url: str, size: PoolSize, **settings: Any) -> SyncClient:
    """A client for ``url`` on a ``redis.BlockingConnectionPool`` of ``size``
    (a full pool makes a call wait, not fail), closing its pool with it as
    ``Redis.from_url``'s does. ``settings`` go to the connections.

    For a cluster URL, a ``redis.cluster.RedisCluster`` with such a pool per
    node; ``retry`` is then the cluster client's (redirections are followed
    whatever it says).

    A ``redis+sentinel://`` URL gets the master the sentinels name, on a
    pool that follows it (:mod:`tiercache._sentinel`; it does not wait for
    a free connection: a full pool fails the call at once, as saturated)."""
    if is_sentinel_url(url):
        return open_sentinel_sync(url, size.max_connections, **settings)
    plain = cluster_url(url)
    if plain is not None:
        cluster = redis.cluster.RedisCluster.from_url(
            plain,
            connection_pool_class=redis.BlockingConnectionPool,
            max_connections=size.max_connections,
            timeout=size.timeout,
            **settings,
        )
        return cast(SyncClient, cluster)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=size.max_connections, timeout=size.timeout, **settings
    )
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def open_async(url: str, size: PoolSize, **settings: Any) -> AsyncClient:
    """:func:`open_sync` for ``redis.asyncio`` (one per event loop). A
    cluster client's nodes do not queue for a free connection: a full one
    fails at once (a saturated TierError)."""
    if is_sentinel_url(url):
        return open_sentinel_async(url, size.max_connections, **settings)
    plain = cluster_url(url)
    if plain is not None:
        cluster = redis.asyncio.cluster.RedisCluster.from_url(
            plain, max_connections=size.max_connections, **settings
        )
        return cast(AsyncClient, cluster)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=size.max_connections, timeout=size.timeout, **settings
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


#: What redis-py raises when a pool has no free connection: a blocking pool
#: once its timeout is over (sync and asyncio alike, redis-py 5 to 8), a
#: plain pool at once (MaxConnectionsError; redis-py 5 raised it as a plain
#: ConnectionError).
_EXHAUSTED = ("No connection available.", "Too many connections")


def saturated(exc: BaseException) -> bool:
    """Whether a redis-py error is this process's own pool having no free
    connection: a local queue, not a sign of the server's health (the
    command was never sent).

    >>> from redis.exceptions import ConnectionError
    >>> saturated(ConnectionError("No connection available.")), saturated(ConnectionError())
    (True, False)
    """
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(exc, RedisConnectionError) and str(exc) in _EXHAUSTED


def exhausted_text(pool: Any, owner: str, own: bool) -> str:
    """What a :func:`saturated` error says, and which setting to raise:
    ``owner``'s own (``own``: it opened ``pool``) or the given pool's
    (None: a cluster client's node pools)."""
    if pool is None:
        return (
            "a cluster node's connection pool is exhausted (Redis was not asked): "
            f"raise {owner}'s max_connections=, or make fewer calls at once"
        )
    size = getattr(pool, "max_connections", "?")
    if isinstance(pool, redis.BlockingConnectionPool | redis.asyncio.BlockingConnectionPool):
        wait = pool.timeout
        busy = f"all {size} connections busy" + ("" if wait is None else f" for {wait:g} s")
        fix = (
            f"raise {owner}'s max_connections= (or pool_timeout=)"
            if own
            else f"raise max_connections (or timeout) of the pool given to {owner}"
        )
    else:
        busy = f"all {size} connections busy; the given client's pool does not wait"
        fix = f"give {owner} a redis.BlockingConnectionPool (or a URL)"
    return (
        f"this process's connection pool is exhausted ({busy}; Redis was not asked): "
        f"{fix}, or make fewer calls at once"
    )


#: Replies of a server in the middle of a failover: a replica cut off from
#: its master, a master short of the replicas min-replicas-to-write asks for,
#: WAIT sent to a master that was just demoted, a blocked command released
#: by a demotion. Each heals when the failover completes.
_FAILOVER_REPLIES = (
    "MASTERDOWN",
    "NOREPLICAS",
    "UNBLOCKED",
    "WAIT cannot be used with replica instances",
)


def transient(exc: BaseException) -> bool:
    """Whether a redis-py error means "unavailable now" rather than "the
    server refused this command": a permission (``NOPERM``), a wrong type
    or a bad argument is not fixed by waiting; a read-only replica (a
    failover in progress) or a full server (``OOM``) may be.

    >>> from redis.exceptions import ConnectionError, NoPermissionError, ReadOnlyError
    >>> transient(ConnectionError()), transient(ReadOnlyError()), transient(NoPermissionError())
    (True, True, False)
    >>> from redis.exceptions import AuthenticationError, ResponseError
    >>> transient(AuthenticationError()), transient(ResponseError("MASTERDOWN link down"))
    (False, True)
    """
    if isinstance(exc, ClusterError | ClusterDownError | TryAgainError | AskError):
        # CLUSTERDOWN, MASTERDOWN, TRYAGAIN (a slot mid-migration), a
        # redirection not followed: the cluster is re-forming, not refusing.
        return True
    if isinstance(exc, ResponseError):
        return (
            isinstance(exc, ReadOnlyError | OutOfMemoryError)
            or str(exc).startswith(_FAILOVER_REPLIES)
            or demoted(exc)
        )
    # Credentials the server turns down are a refusal too, not an outage
    # (redis-py raises it as a ConnectionError, while connecting).
    return not isinstance(exc, AuthenticationError)


def error_text(exc: BaseException) -> str:
    """``"Type: message"`` of a backend error, for TierError messages and logs.

    Not ``repr``: redis-py 8's ``RedisError.__repr__`` is only the category
    and class (``network:ConnectionError``), without the message that says
    what failed (refused, or ``certificate verify failed``).
    """
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def close_loop_clients(
    loops: dict[asyncio.AbstractEventLoop, _LoopClient],
    closing: set[asyncio.Task[None]],
    timeout: float,
) -> None:
    """Close every per-loop async client, each on its own loop."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    # list(): each closer removes its own entry from the map as it runs.
    for loop, entry in list(loops.items()):
        close_loop_client(loop, entry, here, closing, timeout)


def close_loop_client(
    loop: asyncio.AbstractEventLoop,
    entry: _LoopClient,
    here: asyncio.AbstractEventLoop | None,
    closing: set[asyncio.Task[None]],
    timeout: float,
) -> None:
    """Close an async client on the loop it belongs to, from wherever
    ``close()`` runs (``here`` is the caller's running loop, if any)."""
    closer = entry.closer
    if closer is None or loop.is_closed():
        return
    if loop is here:
        # close() called from a coroutine on this loop: cannot wait here.
        task = loop.create_task(closer.aclose())
        closing.add(task)
        task.add_done_callback(closing.discard)
    elif loop.is_running():
        future = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
        try:
            future.result(timeout=timeout)
        except (concurrent.futures.TimeoutError, *BACKEND_ERRORS):
            pass  # best effort: its loop's shutdown will try again
    elif here is None:
        loop.run_until_complete(closer.aclose())


class _LoopClient:
    """The async client of one event loop and the generator that closes it."""

    __slots__ = ("client", "closer", "script")

    def __init__(
        self,
        client: AsyncClient,
        script: Any,
        closer: AsyncGenerator[None, None] | None,
    ) -> None:
        self.client = client
        self.script = script
        self.closer = closer


async def _close_at_loop_shutdown(
    client: AsyncClient, loops: dict[asyncio.AbstractEventLoop, _LoopClient]
) -> AsyncGenerator[None, None]:
    """Park until the loop shuts its async generators down, then close ``client``.

    It must not hold the loop itself (the owner's map would then keep every
    loop alive); it looks the loop up when it runs, which is on that loop.
    """
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        entry = loops.get(loop)
        if entry is not None and entry.client is client:
            del loops[loop]
        await client.aclose()
