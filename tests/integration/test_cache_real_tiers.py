"""TieredCache over a real diskcache directory and a real redis-server:
write counts seen by the server itself, promotion, corrupt bytes planted
directly in the backends, timer coalescing, and async never blocking."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest
import redis

from tiercache import (
    MISSING,
    DiskTier,
    Expiry,
    MemoryTier,
    RedisTier,
    TieredCache,
    WriteBehind,
    cached_session,
)

pytestmark = pytest.mark.redis


def write_commands(r: redis.Redis) -> dict[str, int]:
    """Calls per write command since the last CONFIG RESETSTAT, by the server.

    Subcommands are summed under their command: Redis 7 counts them apart
    (``config|resetstat``), 6.2 does not, and the answer must not depend on it.
    """
    calls: dict[str, int] = {}
    for name, entry in r.info("commandstats").items():
        command = name.removeprefix("cmdstat_").partition("|")[0]
        calls[command] = calls.get(command, 0) + int(entry["calls"])
    writes = ("set", "mset", "evalsha", "eval", "pexpire", "expire", "persist", "del")
    return {name: calls[name] for name in writes if calls.get(name)}


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make(redis_url: str, tmp_path: Path, namespace: str) -> Iterator[Callable[..., TieredCache]]:
    made: list[TieredCache] = []

    def factory(*, memory: MemoryTier | None = None, disk: bool = True, **kw: Any) -> TieredCache:
        tiers: list[Any] = [memory or MemoryTier()]
        if disk:
            tiers.append(DiskTier(tmp_path / "disk"))
        tiers.append(RedisTier(redis_url))
        kw.setdefault("namespace", namespace)
        cache = TieredCache(*tiers, **kw)
        made.append(cache)
        return cache

    yield factory
    for c in made:
        c.close()


def test_read_only_scopes_send_no_write_to_redis(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make()
    with cache.session("chat:1") as s:
        s["n"] = 1
    r.config_resetstat()
    for _ in range(50):
        with cache.session("chat:1") as s:
            assert s["n"] == 1
    assert write_commands(r) == {}
    assert cache.stats().writes_avoided == 50


async def test_async_read_only_scopes_send_no_write(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make()

    @cached_session(cache, key=lambda chat: f"chat:{chat}")
    async def handler(chat: int, session: dict[str, Any] | None = None) -> int:
        assert session is not None
        if chat == 0:
            session["seen"] = True
        return len(session)

    await handler(0)
    r.config_resetstat()
    for _ in range(20):
        await handler(0)
    for i in range(1, 20):
        assert await handler(i) == 0  # a miss plus a read-only handler stores nothing
    assert write_commands(r) == {}


def test_each_mutating_scope_is_one_redis_write(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make()
    r.config_resetstat()
    for i in range(10):
        with cache.session("k") as s:
            s["i"] = i
    cmds = write_commands(r)
    # Each write is one compare-and-set script call, and Redis counts the SET
    # the script runs as well: 10 round trips, 10 value writes.
    assert cmds == {"evalsha": 10, "set": 10}


def test_timer_coalesces_writes_on_the_server(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make(flush=WriteBehind(0.1), disk=False)
    r.config_resetstat()
    for i in range(300):
        with cache.session(f"user:{i % 3}") as s:
            s["n"] = i
    deadline = time.monotonic() + 5
    while cache.stats().dirty and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cache.stats().dirty == 0
    writes = write_commands(r).get("set", 0)  # value writes, scripted or not
    # 300 scopes over 3 keys: at most 3 writes per tick, a tick or two.
    assert 1 <= writes <= 6, writes
    fresh = make(disk=False)
    assert [fresh.get(f"user:{k}") for k in range(3)] == [{"n": 297}, {"n": 298}, {"n": 299}]


def test_redis_hit_is_promoted_into_disk_with_remaining_ttl(
    make: Callable[..., TieredCache], r: redis.Redis, tmp_path: Path
) -> None:
    writer = make(disk=False, ttl=100)
    writer.set("k", {"v": 1})
    reader = make(ttl=100)
    assert reader.get("k") == {"v": 1}
    assert reader.stats().promotions == 1
    with diskcache.Cache(str(tmp_path / "disk")) as raw:
        value, expire_time = raw.get(f"{reader.namespace}:k", expire_time=True)
    assert value is not None
    remaining = expire_time - time.time()
    assert 90 < remaining <= 100.5


def test_corrupt_bytes_in_redis_and_disk_are_counted_misses_and_quarantined(
    make: Callable[..., TieredCache], r: redis.Redis, tmp_path: Path
) -> None:
    cache = make()
    skey = f"{cache.namespace}:bad"
    r.set(f"tc:{skey}", b"\x00not an envelope")
    with diskcache.Cache(str(tmp_path / "disk")) as raw:
        raw.set(skey, b"TC\x01garbage")
    assert cache.get("bad", MISSING) is MISSING
    st = cache.stats()
    assert st.corrupt_entries == 2
    # Both moved aside on the real backends, kept a week to inspect.
    assert st.quarantined == 2
    assert r.get(f"tc:{skey}") is None
    qkey = f"{cache.namespace}\x00quarantine\x00bad"
    assert r.get(f"tc:{qkey}") == b"\x00not an envelope"
    assert 7 * 86400 * 1000 - 60_000 < r.pttl(f"tc:{qkey}") <= 7 * 86400 * 1000
    with diskcache.Cache(str(tmp_path / "disk")) as raw:
        assert raw.get(skey) is None
        assert raw.get(qkey) == b"TC\x01garbage"
    # A handler on that key gets a fresh session, and its write is stored.
    with cache.session("bad") as s:
        s["fixed"] = True
    assert make().get("bad") == {"fixed": True}


def test_sliding_touch_uses_pexpire_not_a_rewrite(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make(disk=False, ttl=Expiry(60, sliding=True, touch_every=0.01))
    cache.set("k", {"v": 1})
    r.config_resetstat()
    for _ in range(3):
        time.sleep(0.02)
        assert cache.get("k") == {"v": 1}
    cmds = write_commands(r)
    assert cmds.get("set", 0) == 0 and cmds.get("evalsha", 0) == 0
    assert cmds.get("pexpire", 0) >= 2
    assert 55_000 < r.pttl(f"tc:{cache.namespace}:k") <= 60_000


async def test_async_reads_do_not_block_the_loop(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make(disk=False)
    await cache.aset("k", {"v": 1})
    fresh = make(disk=False)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    pauser = redis.Redis.from_url(cache_url(r))
    pauser.execute_command("CLIENT", "PAUSE", "300", "ALL")
    try:
        assert await fresh.aget("k") == {"v": 1}
    finally:
        pauser.close()
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    assert ticks >= 10, "the event loop kept running while Redis was paused"


def cache_url(r: redis.Redis) -> str:
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/0"


def test_interpreter_exit_flushes_pending_writes(tmp_path: Path, namespace: str) -> None:
    """A write-behind change made just before the process exits (without
    close()) is written by the exit hook, and a new process reads it."""
    import subprocess
    import sys

    script = f"""
from tiercache import DiskTier, MemoryTier, TieredCache, WriteBehind
cache = TieredCache(MemoryTier(), DiskTier({str(tmp_path / "d")!r}),
                    namespace={namespace!r}, flush=WriteBehind(3600))
with cache.session("k") as s:
    s["v"] = 42
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    reader = TieredCache(MemoryTier(), DiskTier(tmp_path / "d"), namespace=namespace)
    assert reader.get("k") == {"v": 42}
    reader.close()


def test_redis_down_raises_tier_error_and_rolls_the_change_back(
    redis_server: Any, namespace: str
) -> None:
    """#10.18: Redis refuses the connection, so the write never reached it:
    the handler hears a TierError and the change is not applied, not then
    and not later."""
    from tiercache import TierError
    from tiercache.testing import RedisServer

    server: RedisServer = redis_server
    cache = TieredCache(MemoryTier(), RedisTier(server.url), namespace=namespace)
    with cache.session("k") as s:
        s["v"] = 1
    server.stop()
    with pytest.raises(TierError) as caught, cache.session("k") as s:
        s["v"] = 2
    assert caught.value.__cause__ is not None
    assert caught.value.sent is False, "refused at connect: it never left"
    assert cache.get("k") == {"v": 1}, "memory is back where the scope found it"
    assert cache.stats().dirty == 0
    assert cache.stats().tier("redis").errors >= 1
    assert cache.stats().degraded is True
    server.start()  # same port, empty
    # The circuit breaker refuses calls until its backoff (0.1 s after one
    # failure) has passed; the first call after it is the probe.
    deadline = time.monotonic() + 5
    while True:
        try:
            with cache.session("k") as s:
                s["v"] = 3
            break
        except TierError:
            assert time.monotonic() < deadline, "the breaker never let the probe through"
            time.sleep(0.05)
    assert cache.flush() == 0, "nothing of the failed scope was left to write"
    assert cache.stats().degraded is False
    fresh = TieredCache(MemoryTier(), RedisTier(server.url), namespace=namespace)
    assert fresh.get("k") == {"v": 3}
    fresh.close()
    cache.close()


async def test_async_write_behind_flush_is_one_batched_compare_and_set(
    make: Callable[..., TieredCache], r: redis.Redis
) -> None:
    cache = make(disk=False, flush=WriteBehind(3600))
    for i in range(20):
        async with cache.session(f"u{i}") as s:
            s["i"] = i
    r.config_resetstat()
    assert await cache.aflush() == 20
    cmds = write_commands(r)
    assert cmds.get("evalsha") == 20 and cmds.get("set") == 20
    fresh = make(disk=False)
    assert [await fresh.aget(f"u{i}") for i in range(20)] == [{"i": i} for i in range(20)]
