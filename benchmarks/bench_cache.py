"""TieredCache against the raw libraries it wraps, measured in the same run.

Run: ``pytest benchmarks/bench_cache.py --benchmark-only``.

* memory hit through ``TieredCache.get`` vs a raw cachetools ``LRUCache`` hit;
* a disk-tier / Redis-tier hit through the cache (memory missed on purpose)
  vs the raw ``diskcache`` / redis-py GET of the same bytes *plus* the same
  deserialization (envelope decode, msgpack, adoption into tracked values);
* flushing 1,000 dirty values: one pipelined batch vs 1,000 single writes.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cachetools
import diskcache
import pytest
import redis

from tiercache import (
    DiskTier,
    MemoryTier,
    MsgpackSerializer,
    RedisTier,
    TieredCache,
    WriteBehind,
    track,
)
from tiercache._envelope import decode

SESSION: dict[str, Any] = {
    "user": {"id": 42, "name": "Ann", "lang": "en"},
    "state": "idle",
    "count": 17,
    "tags": ["a", "b"],
    "history": [{"t": i, "text": f"message {i}"} for i in range(10)],
}


@pytest.fixture
def mem_cache() -> Iterator[TieredCache]:
    cache = TieredCache(MemoryTier(), namespace=f"b{uuid.uuid4().hex[:6]}")
    cache.set("k", SESSION)
    yield cache
    cache.close()


@pytest.mark.benchmark(group="memory hit")
def test_memory_hit_tieredcache(benchmark: Any, mem_cache: TieredCache) -> None:
    get = mem_cache.get
    assert benchmark(get, "k") == SESSION


@pytest.mark.benchmark(group="memory hit")
def test_memory_hit_raw_cachetools(benchmark: Any) -> None:
    lru: cachetools.LRUCache[str, Any] = cachetools.LRUCache(10_000)
    lru["k"] = SESSION
    assert benchmark(lru.__getitem__, "k") == SESSION


@pytest.mark.benchmark(group="memory hit")
def test_memory_hit_with_ttl(benchmark: Any) -> None:
    cache = TieredCache(MemoryTier(), namespace="bttl", ttl=3600)
    cache.set("k", SESSION)
    assert benchmark(cache.get, "k") == SESSION
    cache.close()


def _decode_like_the_cache(data: bytes) -> Any:
    return track(MsgpackSerializer().loads(decode(data).payload))


def _two_key_reader(cache: TieredCache) -> Any:
    """Alternate between two keys in a one-entry memory tier: every read
    misses memory and hits the tier below."""
    cache.set("a", SESSION)
    cache.set("b", SESSION)
    keys = itertools.cycle(["a", "b"])

    def read() -> Any:
        return cache.get(next(keys))

    return read


@pytest.mark.benchmark(group="disk hit")
def test_disk_hit_through_cache(benchmark: Any, tmp_path: Path) -> None:
    cache = TieredCache(MemoryTier(maxsize=1), DiskTier(tmp_path / "d"), namespace="bd")
    assert benchmark(_two_key_reader(cache)) == SESSION
    cache.close()


@pytest.mark.benchmark(group="disk hit")
def test_disk_hit_raw_plus_deserialize(benchmark: Any, tmp_path: Path) -> None:
    cache = TieredCache(MemoryTier(), DiskTier(tmp_path / "d"), namespace="bd")
    cache.set("a", SESSION)
    cache.close()
    raw = diskcache.Cache(str(tmp_path / "d"))

    def read() -> Any:
        return _decode_like_the_cache(raw.get("bd:a"))

    assert benchmark(read) == SESSION
    raw.close()


@pytest.mark.benchmark(group="redis hit")
def test_redis_hit_through_cache(benchmark: Any, redis_url: str) -> None:
    cache = TieredCache(MemoryTier(maxsize=1), RedisTier(redis_url), namespace="br")
    assert benchmark(_two_key_reader(cache)) == SESSION
    cache.close()


@pytest.mark.benchmark(group="redis hit")
def test_redis_hit_raw_plus_deserialize(benchmark: Any, redis_url: str) -> None:
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace="br")
    cache.set("a", SESSION)
    cache.close()
    r = redis.Redis.from_url(redis_url)

    def read() -> Any:
        return _decode_like_the_cache(r.get("tc:br:a"))

    assert benchmark(read) == SESSION
    r.close()


def _dirty_cache(redis_url: str, n: int) -> TieredCache:
    cache = TieredCache(
        MemoryTier(maxsize=n * 2),
        RedisTier(redis_url),
        namespace=f"bf{uuid.uuid4().hex[:6]}",
        flush=WriteBehind(3600),
    )
    return cache


@pytest.mark.benchmark(group="flush 1000 dirty")
def test_flush_1000_pipelined(benchmark: Any, redis_url: str) -> None:
    cache = _dirty_cache(redis_url, 1000)
    counter = itertools.count()

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        i = next(counter)
        for k in range(1000):
            with cache.session(f"u{k}") as s:
                s["n"] = i
        return (), {}

    benchmark.pedantic(cache.flush, setup=setup, rounds=10)
    assert cache.stats().dirty == 0
    cache.close()


@pytest.mark.benchmark(group="flush 1000 dirty")
def test_flush_1000_single_writes(benchmark: Any, redis_url: str) -> None:
    """Baseline: the same 1,000 envelopes written one SET at a time."""
    tier = RedisTier(redis_url)
    data = [(f"bs:u{k}", b"x" * 200) for k in range(1000)]

    def write_all() -> None:
        for key, value in data:
            tier.set(key, value, None)

    benchmark.pedantic(write_all, rounds=10)
    tier.close()
