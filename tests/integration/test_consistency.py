"""One truth across real processes: after process A's write is acknowledged,
process B (this test process, with a RedisBus) serves the new value within a
bounded time, also when B's listener connection is killed and when the Redis
server restarts; ``max_stale`` bounds what B serves throughout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tiercache import MemoryTier, RedisBus, RedisTier, TieredCache
from tiercache.testing import RedisServer

pytestmark = pytest.mark.redis

WRITER = """
import sys
from tiercache import MemoryTier, RedisBus, RedisTier, TieredCache
url, namespace, value = sys.argv[1], sys.argv[2], int(sys.argv[3])
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace,
                    bus=RedisBus(url, namespace=namespace))
cache.update("k", lambda s: s.__setitem__("v", value))
cache.close()
"""


def write_from_another_process(url: str, namespace: str, value: int) -> float:
    """Run a writer process; the time its write was acknowledged (it exited)."""
    subprocess.run([sys.executable, "-c", WRITER, url, namespace, str(value)], check=True)
    return time.monotonic()


def until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll ``predicate``; how long it took to hold (fails after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - start


def reader(url: str, namespace: str, **kw: Any) -> TieredCache:
    return TieredCache(
        MemoryTier(),
        RedisTier(url),
        namespace=namespace,
        bus=RedisBus(url, namespace=namespace, block_ms=200),
        **kw,
    )


def test_another_process_write_is_seen_promptly(redis_url: str, namespace: str) -> None:
    b = reader(redis_url, namespace)
    write_from_another_process(redis_url, namespace, 1)
    assert b.get("k") == {"v": 1}
    write_from_another_process(redis_url, namespace, 2)
    took = until(lambda: b.get("k") == {"v": 2}, timeout=2.0)
    assert took < 1.0
    assert b.stats().invalidations >= 1
    b.close()


def test_killed_listener_connection_recovers_and_max_stale_holds(
    redis_url: str, namespace: str
) -> None:
    b = reader(redis_url, namespace, max_stale=0.5)
    write_from_another_process(redis_url, namespace, 1)
    assert b.get("k") == {"v": 1}
    admin = redis.Redis.from_url(redis_url)
    listeners = [c for c in admin.client_list() if c["name"] == "tiercache-bus-listener"]
    for c in listeners:
        admin.client_kill_filter(_id=c["id"])
    acked = write_from_another_process(redis_url, namespace, 2)
    # Whether the bus replays the message or max_stale forces a re-read,
    # B serves the new value within max_stale of the acknowledged write.
    until(lambda: b.get("k") == {"v": 2}, timeout=2.0)
    assert time.monotonic() - acked < 0.5 + 0.5
    until(lambda: b.stats().bus_healthy is True, timeout=5.0)
    write_from_another_process(redis_url, namespace, 3)
    until(lambda: b.get("k") == {"v": 3}, timeout=2.0)
    admin.close()
    b.close()


def test_redis_restart_is_a_gap_not_stale_data(redis_server: RedisServer, namespace: str) -> None:
    url = redis_server.url
    b = reader(url, namespace, max_stale=1.0)
    write_from_another_process(url, namespace, 1)
    assert b.get("k") == {"v": 1}
    redis_server.restart()  # all data and the stream are gone
    write_from_another_process(url, namespace, 7)
    until(lambda: b.get("k") == {"v": 7}, timeout=5.0)
    until(lambda: b.stats().bus_gaps >= 1 or b.stats().revalidations >= 1, timeout=5.0)
    b.close()
