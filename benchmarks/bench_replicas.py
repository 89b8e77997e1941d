"""The cost of ``RedisTier(replicas=1)``: each write waits (WAIT, in the
same round trip) until the replica has it. Baseline: the same write
without WAIT, in the same run, against the same master and replica.

Run: ``pytest benchmarks/bench_replicas.py --benchmark-only``. The master
and its replica are a :class:`~tiercache.testing.LocalSentinel`'s (both on
loopback: the replica's round trip is the least it can be here; over a
network add its RTT to every write).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
import redis

from tiercache import MemoryTier, TieredCache
from tiercache._envelope import Envelope, encode
from tiercache._tiers import RedisTier
from tiercache.testing import LocalSentinel


def envelope(version: int) -> bytes:
    return encode(Envelope(1, 0, version, 1, 1, 0, b"s" * 100))  # ~150 B session


@pytest.fixture(scope="module")
def master_url() -> Iterator[str]:
    with LocalSentinel() as deployment:
        yield f"redis://127.0.0.1:{deployment.master_port}/0"


@pytest.fixture(params=[0, 1], ids=["replicas=0", "replicas=1"])
def tier(request: pytest.FixtureRequest, master_url: str) -> Iterator[RedisTier]:
    t = RedisTier(master_url, prefix="bench:replicas:", replicas=request.param)
    t.get("warm")
    yield t
    t.close()


def cas_loop(tier: RedisTier) -> Callable[[], None]:
    tier.set("cas", envelope(1))
    versions = itertools.count(2)

    def cas() -> None:
        version = next(versions)
        if not tier.compare_and_set("cas", envelope(version), None, version - 1):
            raise AssertionError("compare-and-set lost its own race")

    return cas


@pytest.mark.benchmark(group="replicas: set")
def test_set(benchmark: Callable[..., object], tier: RedisTier) -> None:
    value = envelope(1)
    benchmark(tier.set, "k", value, 60.0)


@pytest.mark.benchmark(group="replicas: compare_and_set")
def test_compare_and_set(benchmark: Callable[..., object], tier: RedisTier) -> None:
    benchmark(cas_loop(tier))


@pytest.mark.benchmark(group="replicas: session write")
def test_session_write(benchmark: Callable[..., object], tier: RedisTier) -> None:
    cache = TieredCache(MemoryTier(), tier, namespace="bench-replicas", bus=None, max_stale=None)

    def scope() -> None:
        with cache.session("chat:1") as s:
            s["n"] = s.get("n", 0) + 1

    benchmark(scope)
    cache.close()


@pytest.mark.benchmark(group="replicas: raw redis-py")
@pytest.mark.parametrize("wait", [False, True], ids=["SET", "SET+WAIT"])
def test_raw(benchmark: Callable[..., object], master_url: str, wait: bool) -> None:
    client = redis.Redis.from_url(master_url)
    value = envelope(1)

    def call() -> None:
        with client.pipeline(transaction=False) as pipe:
            pipe.set("bench:raw", value)
            if wait:
                pipe.wait(1, 500)
            pipe.execute()

    benchmark(call)
    client.close()
