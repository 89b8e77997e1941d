"""Connection pools under fan-out (issue #11.5), against a real redis-server.

A burst of concurrent calls larger than the pool queues for a connection
instead of failing (a ``BlockingConnectionPool``); a wait that runs out is
a TierError marked ``saturated`` that leaves the circuit breaker closed;
``RedisBus`` connects with whatever ``RedisTier`` takes (a URL, a client, a
pool, an asyncio client), and the default bus shares the tier's settings.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from tiercache import ConfigError, MemoryTier, RedisBus, RedisTier, TieredCache, TierError
from tiercache.testing import RedisServer

from ._helpers import wait_until

pytestmark = pytest.mark.redis

BURST = 500
WAIT = 10.0  # a correctness bound, not a latency claim


def connections_received(admin: redis.Redis) -> int:
    return int(admin.info("stats")["total_connections_received"])


def stored(url: str, namespace: str, keys: list[str]) -> list[Any]:
    """What a fresh process would read for ``keys`` (no memory, no bus)."""
    with TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, bus=None) as fresh:
        return [fresh.get(k) for k in keys]


def take(pool: Any) -> Any:
    """One connection of a sync pool, held until given back."""
    try:
        return pool.get_connection()
    except TypeError:  # redis-py < 5.3 wants a command name
        return pool.get_connection("PING")


@contextmanager
def all_taken(pool: Any) -> Iterator[None]:
    """Every connection of a sync pool busy, as under a burst."""
    held = [take(pool) for _ in range(pool.max_connections)]
    try:
        yield
    finally:
        for conn in held:
            pool.release(conn)


def assert_saturated(err: TierError, *advice: str) -> None:
    assert err.saturated and err.transient and not err.sent
    assert "connection pool is exhausted" in str(err) and "Redis was not asked" in str(err)
    for text in advice:
        assert text in str(err)
    assert isinstance(err.__cause__, RedisConnectionError)


# -- bursts ------------------------------------------------------------------------


async def test_a_burst_of_async_scopes_queues_for_a_small_pool(
    redis_server: RedisServer, namespace: str
) -> None:
    """500 gathered scopes (python-telegram-bot's persistence, one coroutine
    per chat) over a pool of 4: all written, none failed, breaker closed.
    Before #11.5, 400 of them failed with MaxConnectionsError and the
    circuit opened."""
    url = redis_server.url
    admin = redis.Redis.from_url(url)
    cache = TieredCache(MemoryTier(), RedisTier(url, max_connections=4), namespace=namespace)

    async def one(i: int) -> None:
        async with cache.session(f"k{i}") as s:
            s["n"] = 1

    try:
        before = connections_received(admin)
        await asyncio.gather(*(one(i) for i in range(BURST)))
        opened = connections_received(admin) - before
        stats = cache.stats()
        assert stats.degraded is False and stats.unreachable_for_s == 0.0
        assert stats.dirty == 0
    finally:
        await cache.aclose()
        admin.close()
    # The tier's pool for this loop: the default bus's pools are not used
    # here (the write scripts publish) and its listener connected before.
    assert opened <= 4
    keys = [f"k{i}" for i in range(BURST)]
    assert stored(url, namespace, keys) == [{"n": 1}] * BURST


def test_a_burst_of_sync_scopes_from_threads_queues_for_a_small_pool(
    redis_server: RedisServer, namespace: str
) -> None:
    url = redis_server.url
    admin = redis.Redis.from_url(url)
    cache = TieredCache(MemoryTier(), RedisTier(url, max_connections=4), namespace=namespace)
    start = threading.Barrier(64)

    def one(i: int) -> None:
        if i < 64:
            start.wait(WAIT)  # all 64 threads at once
        with cache.session(f"k{i}") as s:
            s["n"] = 1

    try:
        before = connections_received(admin)
        with ThreadPoolExecutor(64) as workers:
            for done in [workers.submit(one, i) for i in range(BURST)]:
                done.result()
        opened = connections_received(admin) - before
        assert cache.stats().degraded is False
    finally:
        cache.close()
        admin.close()
    assert opened <= 4
    assert stored(url, namespace, [f"k{i}" for i in range(BURST)]) == [{"n": 1}] * BURST


# -- a wait that runs out ----------------------------------------------------------


def test_a_pool_wait_that_runs_out_is_a_saturated_tier_error(
    redis_url: str, namespace: str
) -> None:
    """Not MaxConnectionsError, not an outage: the calls that waited in vain
    fail (reads and writes alike, writes rolled back), the breaker stays
    closed, and the next call after the burst goes straight through."""
    tier = RedisTier(redis_url, max_connections=2, pool_timeout=0.05)
    cache = TieredCache(MemoryTier(), tier, namespace=namespace, bus=None)
    try:
        cache.set("held", {"n": 0})
        with all_taken(tier._client().connection_pool):
            with pytest.raises(TierError) as read:
                cache.get("missing")
            with pytest.raises(TierError) as write:
                with cache.session("held") as s:
                    s["n"] = 1
            assert cache.stats().degraded is False
        for err in (read.value, write.value):
            assert_saturated(err, "all 2 connections busy for 0.05 s", "max_connections=")
            assert "pool_timeout=" in str(err)
            assert not isinstance(err.__cause__, MaxConnectionsError)
            assert "MaxConnectionsError" not in str(err)
        assert cache.get("held") == {"n": 0}, "the write was rolled back"
        assert cache.get("missing") is None
        with cache.session("held") as s:
            s["n"] = 2
        assert cache.stats().degraded is False
    finally:
        cache.close()
    assert stored(redis_url, namespace, ["held"]) == [{"n": 2}]


async def test_an_async_pool_wait_that_runs_out_is_a_saturated_tier_error(
    redis_url: str, namespace: str
) -> None:
    tier = RedisTier(redis_url, max_connections=1, pool_timeout=0.05)
    cache = TieredCache(MemoryTier(), tier, namespace=namespace, bus=None)
    try:
        await cache.aset("k", 1)
        pool = (await tier._aclient()).client.connection_pool
        held = await pool.get_connection()
        try:
            with pytest.raises(TierError) as err:
                await cache.aget("other")
        finally:
            await pool.release(held)
        assert_saturated(err.value, "all 1 connections busy for 0.05 s", "RedisTier's")
        assert cache.stats().degraded is False
        assert await cache.aget("other") is None
    finally:
        await cache.aclose()


def test_a_given_pool_that_does_not_wait_is_named_in_the_error(
    redis_url: str, namespace: str
) -> None:
    """A client's own plain pool fails at once when full (MaxConnectionsError):
    the same saturated TierError, advising a BlockingConnectionPool."""
    pool = redis.ConnectionPool.from_url(redis_url, max_connections=1)
    tier = RedisTier(pool, prefix=f"{namespace}:")
    try:
        with all_taken(pool), pytest.raises(TierError) as err:
            tier.get("k")
        assert_saturated(err.value, "does not wait", "redis.BlockingConnectionPool")
        assert tier.get("k") is None
    finally:
        tier.close()
        pool.disconnect()


# -- the bus -----------------------------------------------------------------------


def test_the_listener_is_not_in_the_pool(redis_url: str, namespace: str) -> None:
    """The listener's blocking XREAD holds a connection of its own: with
    every pooled connection busy, invalidations still arrive (and a publish
    through the full pool is the saturated TierError)."""
    got: list[str] = []
    listening = RedisBus(redis_url, namespace=namespace, max_connections=1, pool_timeout=0.05)
    talking = RedisBus(redis_url, namespace=namespace)
    try:
        listening.start(lambda batch: got.extend(m.key for m in batch), lambda: None)
        with all_taken(listening._client().connection_pool):
            talking.publish([("chat:1", "set", 1)])
            wait_until(lambda: got == ["chat:1"], "the invalidation", WAIT)
            assert listening.healthy
            with pytest.raises(TierError) as err:
                listening.publish([("chat:2", "set", 1)])
        assert_saturated(err.value, "raise RedisBus's max_connections=")
    finally:
        listening.close()
        talking.close()


@pytest.mark.parametrize("given", ["client", "pool", "blocking pool"])
def test_a_bus_on_a_given_client_or_pool_carries_invalidations(
    redis_url: str, namespace: str, given: str
) -> None:
    """Process A (URL) and process B (a bus on a client or pool of the
    caller's) each drop their copy when the other writes."""
    connection: Any = {
        "client": lambda: redis.Redis.from_url(redis_url),
        "pool": lambda: redis.ConnectionPool.from_url(redis_url),
        "blocking pool": lambda: redis.BlockingConnectionPool.from_url(redis_url, timeout=1),
    }[given]()
    a = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    bus = RedisBus(connection, namespace=namespace)
    b = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, bus=bus)
    try:
        a.set("k", 1)
        assert b.get("k") == 1
        a.set("k", 2)
        wait_until(lambda: b.get("k") == 2, "b to hear a's write", WAIT)
        b.set("k", 3)  # published through the given client or pool
        wait_until(lambda: a.get("k") == 3, "a to hear b's write", WAIT)
        assert bus.stats()["published"] >= 1
    finally:
        a.close()
        b.close()
    if isinstance(connection, redis.Redis):
        assert connection.ping(), "left open: it is the caller's"
        connection.close()
    else:
        connection.disconnect()


async def test_a_bus_publishes_through_a_given_async_client(redis_url: str, namespace: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    pool = redis.asyncio.BlockingConnectionPool.from_url(redis_url, max_connections=2)
    bus = RedisBus(sync, namespace=namespace, async_client=pool)
    a = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    b = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, bus=bus)
    try:
        assert await a.aget("k") is None
        async with b.session("k") as s:
            s["n"] = 1  # its invalidation goes out on the given asyncio pool
        for _ in range(int(WAIT / 0.01)):
            if await a.aget("k") == {"n": 1}:
                break
            await asyncio.sleep(0.01)
        assert await a.aget("k") == {"n": 1}
        assert bus.stats()["published"] == 1
    finally:
        await a.aclose()
        await b.aclose()
    assert await redis.asyncio.Redis(connection_pool=pool).ping(), "the caller's, left open"
    await pool.disconnect()
    sync.close()


def test_the_default_bus_connects_as_the_tier_does(redis_url: str, namespace: str) -> None:
    """Same URL (TLS and credentials ride in it) and pool size; or the
    tier's own clients, so the write scripts publish for it."""
    by_url = TieredCache(
        MemoryTier(), RedisTier(redis_url, max_connections=7, pool_timeout=0.5), namespace=namespace
    )
    pool = redis.BlockingConnectionPool.from_url(redis_url)
    aclient = redis.asyncio.Redis.from_url(redis_url)
    by_pool = TieredCache(
        MemoryTier(),
        RedisTier(pool, async_client=aclient),
        namespace=namespace + "-p",
    )
    try:
        bus = by_url._s.bus
        assert isinstance(bus, RedisBus)
        assert (bus.connection, bus.max_connections, bus.pool_timeout) == (redis_url, 7, 0.5)
        assert by_url._s.tier_publishes
        bus = by_pool._s.bus
        assert isinstance(bus, RedisBus)
        assert bus.connection.connection_pool is pool  # type: ignore[union-attr]
        assert bus._given_async is not None and bus._given_async.client is aclient
        assert by_pool._s.tier_publishes
        # A tier and a bus given clients on one pool are one server.
        shared = TieredCache(
            MemoryTier(),
            RedisTier(redis.Redis(connection_pool=pool)),
            namespace=namespace + "-s",
            bus=RedisBus(pool, namespace=namespace + "-s"),
        )
        assert shared._s.tier_publishes
        shared.close()
    finally:
        by_url.close()
        by_pool.close()
        pool.disconnect()


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize("owner", ["tier", "bus"])
@pytest.mark.parametrize(
    ("setting", "bad"),
    [
        ("max_connections", 0),
        ("max_connections", -1),
        ("max_connections", 1.5),
        ("max_connections", True),
        ("max_connections", 10_001),
        ("pool_timeout", 0),
        ("pool_timeout", -1),
        ("pool_timeout", float("nan")),
        ("pool_timeout", float("inf")),
        ("pool_timeout", "5"),
        ("pool_timeout", True),
        ("pool_timeout", 3601),
    ],
)
def test_bad_pool_settings_are_config_errors(owner: str, setting: str, bad: object) -> None:
    url = "redis://127.0.0.1:1/0"  # never connected to
    with pytest.raises(ConfigError, match=setting):
        if owner == "tier":
            RedisTier(url, **{setting: bad})  # type: ignore[arg-type]
        else:
            RedisBus(url, namespace="ns", **{setting: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("owner", [RedisTier, RedisBus])
def test_what_a_tier_or_bus_connects_with_is_checked(owner: Any) -> None:
    kw = {"namespace": "ns"} if owner is RedisBus else {}
    name = owner.__name__
    with pytest.raises(ConfigError, match=f"pass max_connections= to {name}, not in the URL"):
        owner("redis://127.0.0.1:1/0?max_connections=5", **kw)
    with pytest.raises(ConfigError, match="as async_client="):
        owner(redis.asyncio.Redis(), **kw)
    with pytest.raises(ConfigError, match="as async_client="):
        owner(redis.asyncio.ConnectionPool(), **kw)
    with pytest.raises(ConfigError, match=re.escape(f"{name} needs a URL, a redis.Redis, a")):
        owner(42, **kw)
    with pytest.raises(ConfigError, match="as async_client="):
        owner(redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=1), **kw)
    with pytest.raises(ConfigError, match=r"async_client must be a redis\.asyncio\.Redis, "):
        owner("redis://127.0.0.1:1/0", async_client=redis.Redis(), **kw)
    with pytest.raises(ConfigError, match="scheme"):
        owner("127.0.0.1:6379", **kw)
    # Nothing connects yet: a pool and an asyncio pool are taken as they are.
    assert owner(redis.BlockingConnectionPool(), async_client=redis.asyncio.ConnectionPool(), **kw)
