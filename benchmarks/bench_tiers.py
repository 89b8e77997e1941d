"""Persistent tiers against their raw backends, measured in the same run.

Run: ``pytest benchmarks/bench_tiers.py --benchmark-only``. Each group pits
a tier call against the raw diskcache / redis-py call it wraps, so the ratio
is the tier's overhead on this machine, not a number from another day.

Async cases run a batch of ``BATCH`` sequential awaits per round inside one
event loop (``run_until_complete`` alone costs tens of microseconds); divide
their times by ``BATCH`` for a per-call figure.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest
import redis
import redis.asyncio

from tiercache._envelope import Envelope, encode
from tiercache._tiers import DiskTier, RedisTier

BATCH = 100
VALUE = encode(Envelope(1, 0, 1, 1, 1, 0, b"s" * 100))  # a small session, ~150 B


def envelope(version: int) -> bytes:
    return encode(Envelope(1, 0, version, 1, 1, 0, b"s" * 100))


def cas_loop(tier: DiskTier | RedisTier, ttl: float | None) -> Callable[[], None]:
    """A successful compare-and-set per call: each bumps the version by one."""
    tier.set("cas", envelope(1))
    versions = itertools.count(2)

    def cas() -> None:
        version = next(versions)
        if not tier.compare_and_set("cas", envelope(version), ttl, version - 1):
            raise AssertionError("compare-and-set lost its own race")

    return cas


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def batched(
    loop: asyncio.AbstractEventLoop, op: Callable[[], Awaitable[Any]]
) -> Callable[[], None]:
    async def run() -> None:
        for _ in range(BATCH):
            await op()

    return lambda: loop.run_until_complete(run())


# -- disk ----------------------------------------------------------------------


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[DiskTier, diskcache.Cache]]:
    tier = DiskTier(tmp_path)
    raw = diskcache.Cache(str(tmp_path))  # same directory, its own connection
    tier.set("hit", VALUE)
    yield tier, raw
    raw.close()
    tier.close()


@pytest.mark.benchmark(group="disk-get-hit")
def test_disk_get_raw(benchmark: Any, disk: tuple[DiskTier, diskcache.Cache]) -> None:
    assert benchmark(disk[1].get, "hit") == VALUE


@pytest.mark.benchmark(group="disk-get-hit")
def test_disk_get_tier(benchmark: Any, disk: tuple[DiskTier, diskcache.Cache]) -> None:
    assert benchmark(disk[0].get, "hit") == VALUE


@pytest.mark.benchmark(group="disk-set")
def test_disk_set_raw(benchmark: Any, disk: tuple[DiskTier, diskcache.Cache]) -> None:
    benchmark(disk[1].set, "k", VALUE)


@pytest.mark.benchmark(group="disk-set")
def test_disk_set_tier(benchmark: Any, disk: tuple[DiskTier, diskcache.Cache]) -> None:
    benchmark(disk[0].set, "k", VALUE)


@pytest.mark.benchmark(group="disk-set")
def test_disk_cas_tier(benchmark: Any, disk: tuple[DiskTier, diskcache.Cache]) -> None:
    benchmark(cas_loop(disk[0], None))


# Async disk: is the thread hop worth it? (x BATCH per round)


@pytest.mark.benchmark(group="disk-async-get-x100")
def test_disk_aget_inline(benchmark: Any, disk: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = disk[0]

    async def op() -> Any:
        return tier.get("hit")

    benchmark(batched(loop, op))


@pytest.mark.benchmark(group="disk-async-get-x100")
def test_disk_aget_thread_hop(benchmark: Any, disk: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = disk[0]
    benchmark(batched(loop, lambda: asyncio.to_thread(tier.get, "hit")))


@pytest.mark.benchmark(group="disk-async-get-x100")
def test_disk_aget_tier(benchmark: Any, disk: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = disk[0]
    benchmark(batched(loop, lambda: tier.aget("hit")))


@pytest.mark.benchmark(group="disk-async-set-x100")
def test_disk_aset_inline(benchmark: Any, disk: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = disk[0]

    async def op() -> None:
        tier.set("k", VALUE)

    benchmark(batched(loop, op))


@pytest.mark.benchmark(group="disk-async-set-x100")
def test_disk_aset_thread_hop(benchmark: Any, disk: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = disk[0]
    benchmark(batched(loop, lambda: asyncio.to_thread(tier.set, "k", VALUE)))


@pytest.mark.benchmark(group="disk-async-set-x100")
def test_disk_aset_tier(benchmark: Any, disk: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = disk[0]
    benchmark(batched(loop, lambda: tier.aset("k", VALUE)))


# -- redis ---------------------------------------------------------------------


@pytest.fixture
def rds(redis_url: str) -> Iterator[tuple[RedisTier, redis.Redis, str]]:
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    tier = RedisTier(redis_url, prefix=prefix)
    raw = redis.Redis.from_url(redis_url)
    tier.set("hit", VALUE)
    yield tier, raw, prefix
    raw.close()
    tier.close()


@pytest.mark.benchmark(group="redis-get-hit")
def test_redis_get_raw(benchmark: Any, rds: tuple[RedisTier, redis.Redis, str]) -> None:
    _, raw, prefix = rds
    assert benchmark(raw.get, prefix + "hit") == VALUE


@pytest.mark.benchmark(group="redis-get-hit")
def test_redis_get_tier(benchmark: Any, rds: tuple[RedisTier, redis.Redis, str]) -> None:
    assert benchmark(rds[0].get, "hit") == VALUE


@pytest.mark.benchmark(group="redis-async-get-x100")
def test_redis_aget_raw(
    benchmark: Any, rds: Any, redis_url: str, loop: asyncio.AbstractEventLoop
) -> None:
    key = rds[2] + "hit"
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        benchmark(batched(loop, lambda: client.get(key)))
    finally:
        loop.run_until_complete(client.aclose())


@pytest.mark.benchmark(group="redis-async-get-x100")
def test_redis_aget_tier(benchmark: Any, rds: Any, loop: asyncio.AbstractEventLoop) -> None:
    tier = rds[0]
    benchmark(batched(loop, lambda: tier.aget("hit")))
    loop.run_until_complete(tier.aclose())


ITEMS = [(f"many:{i}", VALUE, 600.0) for i in range(1000)]


@pytest.mark.benchmark(group="redis-write-1000")
def test_redis_set_many_1000_pipelined(benchmark: Any, rds: Any) -> None:
    benchmark(rds[0].set_many, ITEMS)


@pytest.mark.benchmark(group="redis-write-1000")
def test_redis_set_1000_single(benchmark: Any, rds: Any) -> None:
    tier = rds[0]

    def singles() -> None:
        for key, value, ttl in ITEMS:
            tier.set(key, value, ttl)

    benchmark(singles)


@pytest.mark.benchmark(group="redis-cas-vs-set")
def test_redis_set_raw(benchmark: Any, rds: Any) -> None:
    _, raw, prefix = rds
    benchmark(raw.set, prefix + "plain", VALUE, px=600_000)


@pytest.mark.benchmark(group="redis-cas-vs-set")
def test_redis_set_tier(benchmark: Any, rds: Any) -> None:
    benchmark(rds[0].set, "plain", VALUE, 600.0)


@pytest.mark.benchmark(group="redis-cas-vs-set")
def test_redis_cas_tier(benchmark: Any, rds: Any) -> None:
    benchmark(cas_loop(rds[0], 600.0))
