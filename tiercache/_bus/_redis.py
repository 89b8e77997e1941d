"""The invalidation bus over a capped Redis Stream: publish, and the bus's
connections.

::

    process A                         redis-server                     process B
    ─────────                         ────────────                     ─────────
    cache write acknowledged
      └─> RedisBus.publish(items) ──> XADD ... MAXLEN ~ N  (one pipeline)
                                      stream  tiercache:v1:{ns}:inv
                                      │  id-ordered, capped, replayable
                                      └──> listener thread, own connection
                                           (see _listener) ──> on_messages([...])
                                                           or on_gap()
    the bus's connections:
      _client()        publish, CLIENT UNBLOCK   the client (or pool) passed in, or
                                                 one of its own (2 s timeout, one
                                                 retry, a blocking pool)
      _aclient()       apublish                  the async client passed in, or, given
                                                 a URL, one of its own per loop
      _new_listener()  the listener thread       a connection of its own, outside every
                                                 pool: no retries, RESP2, named
                                                 tiercache-bus-listener

One capped Redis Stream gives both live delivery and replay: a listener that
lost its connection resumes from the last id it saw, so a short outage
loses nothing. How the listener reads, replays and detects gaps is in
:mod:`._listener`; the entry format in :mod:`._message`. On a Redis
Cluster the bus has several streams, each followed on its own (see
:mod:`._cluster`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from .._clock import Clock
from .._exceptions import TierCacheError, TierError
from .._redisclient import (
    BACKEND_ERRORS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_TIMEOUT,
    AsyncClient,
    PoolSize,
    _close_at_loop_shutdown,
    _LoopClient,
    close_loop_clients,
    cluster_url,
    error_text,
    exhausted_text,
    is_cluster,
    open_async,
    open_sync,
    redact_url,
    saturated,
    take_connection,
)
from .._sentinel import is_sentinel_url, listener_pool
from ._cluster import DEFAULT_STREAMS, _ShardedListener, check_streams
from ._listener import _listener_like, _listener_settings
from ._message import PublishItem, _fields, stream_index

__all__ = ["RedisBus"]


class RedisBus(_ShardedListener):
    """The invalidation bus over a capped Redis Stream.

    ``url_or_client`` is a URL (the bus opens its own clients) or a
    ``redis.Redis`` or ``redis.ConnectionPool`` the caller owns and closes
    (then the listener opens its own connection with the same settings, and
    ``apublish`` runs the sync publish in a worker thread, unless
    ``async_client=`` gives a ``redis.asyncio.Redis`` or ``ConnectionPool``,
    also the caller's, to use on one loop), as :class:`~tiercache.RedisTier`
    takes them. The clients opened for a URL are on blocking pools of
    ``max_connections`` (default 50) where a publish waits up to
    ``pool_timeout`` (default 5 s) for a free connection, as the tier's.
    The listener's connection is its own, in no pool: a burst cannot starve
    it, nor it a burst. ``maxlen`` caps the stream (approximately,
    ``MAXLEN ~``): it is how much a disconnected listener can miss and still
    replay. ``block_ms`` is how long one ``XREAD`` waits (``close``
    unblocks it); it bounds how soon an idle listener notices that its
    stream was emptied or deleted with nothing published since. A URL is
    checked as :class:`~tiercache.RedisTier` checks it (``rediss://`` works
    the same).

    On a Redis Cluster (a ``redis+cluster://`` URL, or a
    ``redis.cluster.RedisCluster``, with a ``redis.asyncio.cluster``
    client as ``async_client=``) the namespace has ``streams`` streams
    (default 16, 1..256) spread over the cluster's slots, each key's
    invalidations always in the same one, and the listener is one thread
    and connection per stream, to the master serving it; each stream has
    its own replay and gaps (see :mod:`._cluster`). ``maxlen`` caps each
    stream, so the namespace holds up to ``streams * maxlen`` entries.
    Every process of the namespace must use the same ``streams``. On a
    single server ``streams`` is not used: one stream, as always.

    ``on_messages`` and ``on_gap`` run on the listener thread: keep them
    short and thread-safe.

    >>> bus = RedisBus("redis://127.0.0.1:6379/0", namespace="mybot")  # doctest: +SKIP
    >>> bus.start(on_messages=print, on_gap=lambda: None)              # doctest: +SKIP
    >>> bus.publish([("chat:42", "set", 7), ("chat:7", "del", 3)])      # doctest: +SKIP
    >>> bus.healthy, bus.stats()["published"]                           # doctest: +SKIP
    (True, 2)
    >>> bus.close()                                                     # doctest: +SKIP
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis | redis.ConnectionPool,
        *,
        namespace: str,
        maxlen: int = 100_000,
        block_ms: int = 1000,
        origin: str | None = None,
        clock: Clock | None = None,
        async_client: AsyncClient | redis.asyncio.ConnectionPool | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        streams: int = DEFAULT_STREAMS,
    ) -> None:
        shards = check_streams(streams)
        url, sync, given = take_connection("RedisBus", url_or_client, async_client)
        on_cluster = cluster_url(url) is not None if url is not None else is_cluster(sync)
        super().__init__(
            namespace,
            origin,
            clock,
            maxlen=maxlen,
            block_ms=block_ms,
            shards=shards if on_cluster else None,
        )
        self._pool = PoolSize(max_connections, pool_timeout)
        self._url, self._sync = url, sync
        self._owns_sync = self._url is not None
        self._given_async = None if given is None else _LoopClient(given, None, None)
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url is not None else "client"
        return f"RedisBus({where!r}, namespace={self._namespace!r})"

    @property
    def connection(self) -> str | redis.Redis:
        """Its URL, or the client it was given."""
        return self._url if self._url is not None else self._client()

    @property
    def max_connections(self) -> int:
        """Connections per pool the bus opens for a URL."""
        return self._pool.max_connections

    @property
    def pool_timeout(self) -> float:
        """Seconds a publish waits for a free connection of a full pool."""
        return self._pool.timeout

    @property
    def maxlen(self) -> int:
        """The stream's cap (approximate)."""
        return self._maxlen

    def _after_fork(self) -> None:
        """In a forked child: as :meth:`_StreamListener._after_fork`; the
        parent's clients are left to it."""
        self._loops = {}
        self._closing = set()
        super()._after_fork()

    # -- clients ---------------------------------------------------------------

    def _client(self) -> redis.Redis:
        client = self._sync
        if client is None:
            if self._on_cluster:
                return self._open_cluster()
            with self._lock:
                client = self._sync
                if client is None:
                    client = self._sync = self._open()
        return client

    def _open(self) -> redis.Redis:
        assert self._url is not None  # no URL means a client was given
        # One retry heals a pooled connection that a server restart cut. A
        # retried pipeline may add an entry twice: harmless, invalidations
        # are idempotent.
        return open_sync(
            self._url,
            self._pool,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1),
        )

    def _open_cluster(self) -> redis.Redis:
        # A cluster client connects as it is made (it asks for the slots),
        # so not under the lock: during an outage the followers' attempts
        # would queue behind one another (2 s each on a hung node), and
        # close() behind them all. Two made at once: one is kept.
        new: redis.Redis | None = self._open()
        with self._lock:
            client = self._sync
            if client is None and not self._closed:
                client = self._sync = new
                new = None
        if new is not None:
            new.close()
        if client is None:  # closed meanwhile: nothing to use or unblock
            raise redis.ConnectionError("bus is closed")
        return client

    def _new_listener(self) -> redis.Redis:
        # Its own connection: XREAD BLOCK holds a connection for block_ms.
        if self._url is not None:
            settings = _listener_settings(self._block_ms)
            if is_sentinel_url(self._url):
                # The master the sentinels name, rechecked as it reads.
                return open_sync(self._url, PoolSize(1), **settings)
            return redis.Redis.from_url(self._url, max_connections=1, **settings)
        assert self._sync is not None
        pool = self._sync.connection_pool
        following = listener_pool(pool, **_listener_settings(self._block_ms))
        if following is not None:
            # A client of Sentinel's master_for: a plain pool made from its
            # connection_kwargs would stay on today's master forever.
            return redis.Redis(connection_pool=following)
        # Same server, credentials and TLS, not the pool's retries.
        return _listener_like(pool, self._block_ms)

    async def _aclient(self) -> _LoopClient:
        if self._given_async is not None:
            return self._given_async
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is not None:
            return entry
        assert self._url is not None  # callers check
        client = open_async(
            self._url,
            self._pool,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=redis.asyncio.retry.Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1),
        )
        # As RedisTier does: one client per running loop, closed by that
        # loop's shutdown_asyncgens() (asyncio.run does it) or by aclose().
        closer = _close_at_loop_shutdown(client, self._loops)
        entry = _LoopClient(client, None, closer)
        with self._lock:
            for old in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[old]
            self._loops[loop] = entry
        await closer.__anext__()
        return entry

    # -- publish ---------------------------------------------------------------

    def publish(self, items: Sequence[PublishItem]) -> None:
        """Append ``(key, action, version)`` items to the stream in one round
        trip (on a cluster, each to its key's stream: one batch per node).

        Call it after the write it announces was acknowledged. Raises
        :class:`~tiercache.TierError` when Redis fails (the cause attached).
        """
        if not items:
            return
        if self._closed:
            raise TierCacheError("bus is closed")
        entries = self._entries(items)
        client: Any = None
        try:
            # Inside: a cluster client connects as it is made.
            client = self._client()
            if self._on_cluster and len(entries) == 1:
                # The usual case (one write, one key): a cluster pipeline's
                # bookkeeping costs more than the command (76 us, 59 direct).
                stream, fields = entries[0]
                client.xadd(stream, fields, maxlen=self._maxlen, approximate=True)
            else:
                # Not MULTI: the batch needs one round trip, not isolation.
                # A cluster client's pipeline sends each node its own XADDs.
                with client.pipeline(transaction=False) as pipe:
                    for stream, fields in entries:
                        pipe.xadd(stream, fields, maxlen=self._maxlen, approximate=True)
                    pipe.execute()
        except BACKEND_ERRORS as exc:
            raise self._error(len(entries), exc, client, self._owns_sync) from exc
        self._count_published(len(entries))

    async def apublish(self, items: Sequence[PublishItem]) -> None:
        """:meth:`publish` with ``redis.asyncio`` (one client per event loop)."""
        if not items:
            return
        if self._closed:
            raise TierCacheError("bus is closed")
        if self._url is None and self._given_async is None:
            await asyncio.to_thread(self.publish, items)
            return
        entries = self._entries(items)
        entry = await self._aclient()
        try:
            if self._on_cluster and len(entries) == 1:  # as in publish()
                stream, fields = entries[0]
                await entry.client.xadd(stream, fields, maxlen=self._maxlen, approximate=True)
            else:
                async with entry.client.pipeline(transaction=False) as pipe:
                    for stream, fields in entries:
                        pipe.xadd(stream, fields, maxlen=self._maxlen, approximate=True)
                    await pipe.execute()
        except BACKEND_ERRORS as exc:
            raise self._error(len(entries), exc, entry.client, entry.closer is not None) from exc
        self._count_published(len(entries))

    def _entries(self, items: Sequence[PublishItem]) -> list[tuple[str, dict[Any, Any]]]:
        """Each item's stream and entry, all checked before anything is sent."""
        streams = self._streams
        if len(streams) == 1:
            return [(streams[0], _fields(self._origin, item)) for item in items]
        entries = []
        for item in items:
            fields = _fields(self._origin, item)  # checks the key first
            entries.append((streams[stream_index(item[0], len(streams))], fields))
        return entries

    def _error(self, count: int, exc: BaseException, client: Any, own: bool) -> TierError:
        if not saturated(exc):
            return TierError(f"bus: publishing {count} invalidations failed: {error_text(exc)}")
        text = exhausted_text(getattr(client, "connection_pool", None), "RedisBus", own)
        err = TierError(f"bus: publishing {count} invalidations not sent: {text}")
        err.saturated = True
        err.sent = False
        return err

    # -- close -----------------------------------------------------------------

    def close(self) -> None:
        """Stop the listener and close the clients the bus opened; idempotent.

        The listener is woken with ``CLIENT UNBLOCK`` rather than waited
        for, so this returns in milliseconds while Redis is up, and within
        about ``block_ms`` + 3 s when it hangs.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._stop_listener()
        with self._lock:
            sync = self._sync if self._owns_sync else None
            self._sync = None if self._owns_sync else self._sync
            loops, self._loops = self._loops, {}
        if sync is not None:
            sync.close()
        close_loop_clients(loops, self._closing, 3.0)
        self._healthy = False

    async def aclose(self) -> None:
        """:meth:`close`, awaiting this loop's async client."""
        here = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.pop(here, None)
        if entry is not None and entry.closer is not None:
            await entry.closer.aclose()
        # The rest blocks for a few milliseconds at most (thread join).
        await asyncio.to_thread(self.close)
