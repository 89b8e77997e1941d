"""Several real OS processes against one real redis-server: no update is
lost. Workers are started with ``subprocess`` and get the Redis URL and the
namespace on their command line; the parent checks after all have exited."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tiercache import MemoryTier, RedisTier, TieredCache

pytestmark = pytest.mark.redis

WORKER = textwrap.dedent(
    """
    import sys, time
    from tiercache import MemoryTier, RedisTier, TieredCache

    url, namespace, mode, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)

    def bump(s):
        s["n"] = s.get("n", 0) + 1

    if mode == "update":
        for _ in range(n):
            cache.update("counter", bump)
    elif mode == "strict":
        from tiercache import Lease
        for _ in range(n):
            with cache.session("counter", lease=Lease(5)) as s:
                s["n"] = s.get("n", 0) + 1
    elif mode == "hold":
        from tiercache import Lease
        with cache.session("held", lease=Lease(float(n))) as s:
            s["by"] = "doomed"
            print("holding", flush=True)
            time.sleep(60)
    elif mode in ("bot", "app"):
        # Each process changes only its own fields of one shared session.
        for i in range(n):
            with cache.session("chat:1") as s:
                s[f"{mode}_count"] = s.get(f"{mode}_count", 0) + 1
                s.setdefault(f"{mode}_log", []).append(i)
                s[f"{mode}_log"] = s[f"{mode}_log"][-3:]
    cache.close()
    """
)


def spawn(url: str, namespace: str, mode: str, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url, namespace, mode, str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()


def test_four_processes_update_one_counter_exactly(redis_url: str, namespace: str) -> None:
    procs = [spawn(redis_url, namespace, "update", 500) for _ in range(4)]
    wait_all(procs)
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    assert cache.get("counter") == {"n": 2000}
    cache.close()


def test_bot_and_mini_app_change_different_fields_and_both_survive(
    redis_url: str, namespace: str
) -> None:
    procs = [spawn(redis_url, namespace, "bot", 300), spawn(redis_url, namespace, "app", 300)]
    wait_all(procs)
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    session = cache.get("chat:1")
    assert session["bot_count"] == 300, "no bot change was lost"
    assert session["app_count"] == 300, "no Mini App change was lost"
    assert session["bot_log"] == [297, 298, 299]
    assert session["app_log"] == [297, 298, 299]
    cache.close()


def test_four_processes_in_strict_mode_count_exactly(redis_url: str, namespace: str) -> None:
    procs = [spawn(redis_url, namespace, "strict", 500) for _ in range(4)]
    wait_all(procs)
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    assert cache.get("counter") == {"n": 2000}
    cache.close()


def test_a_killed_lease_holder_blocks_only_until_the_lease_expires(
    redis_url: str, namespace: str
) -> None:
    import signal
    import time

    from tiercache import Lease

    holder = spawn(redis_url, namespace, "hold", 2)  # a 2 s lease
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"holding"
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=10)  # reaps it and closes its pipes
    killed_at = time.monotonic()
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    with cache.session("held", lease=Lease(5, wait=10)) as s:
        waited = time.monotonic() - killed_at
        assert s == {}, "the holder died before writing"
        s["by"] = "next"
    assert 0.5 < waited < 4.0, f"blocked {waited:.2f} s by a 2 s lease"
    fresh = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    assert fresh.get("held") == {"by": "next"}
    fresh.close()
    cache.close()
