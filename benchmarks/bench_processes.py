"""Throughput of several real worker processes against one Redis.

Run: ``pytest benchmarks/bench_processes.py --benchmark-only``.

Each round starts N worker processes (``subprocess``), each running the
same number of mutating scopes, and times until all have exited; process
start-up is measured separately (a worker that does nothing) and reported
beside it, so read ``extra_info["scopes_per_second"]``, which excludes it.

* distinct keys: each worker changes its own users' sessions;
* one hot key, default mode: every worker increments one counter field
  through ``update()`` (compare-and-set, re-run on conflict);
* one hot key, strict mode: the same through scopes with a ``Lease``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

WORKER = """
import sys
from tiercache import Lease, MemoryTier, RedisBus, RedisTier, TieredCache
url, namespace, mode, wid, n = sys.argv[1:6]
n = int(n)
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace,
                    bus=RedisBus(url, namespace=namespace))
if mode == "distinct":
    for i in range(n):
        with cache.session(f"user:{wid}:{i % 50}") as s:
            s["n"] = s.get("n", 0) + 1
elif mode == "hot-update":
    for _ in range(n):
        cache.update("hot", lambda s: s.__setitem__("n", s.get("n", 0) + 1))
elif mode == "hot-strict":
    for _ in range(n):
        with cache.session("hot", lease=Lease(5)) as s:
            s["n"] = s.get("n", 0) + 1
cache.close()
"""

SCOPES = 300


def run_workers(url: str, mode: str, processes: int, n: int) -> tuple[float, str]:
    namespace = f"bp{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, namespace, mode, str(w), str(n)])
        for w in range(processes)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return time.perf_counter() - start, namespace


def startup_cost(url: str, processes: int) -> float:
    times = [run_workers(url, "none", processes, 0)[0] for _ in range(2)]
    return statistics.median(times)


@pytest.mark.parametrize("processes", [1, 2, 4])
@pytest.mark.parametrize("mode", ["distinct", "hot-update", "hot-strict"])
@pytest.mark.benchmark(group="processes")
def test_processes(benchmark: Any, redis_url: str, mode: str, processes: int) -> None:
    base = startup_cost(redis_url, processes)
    elapsed = benchmark.pedantic(
        lambda: run_workers(redis_url, mode, processes, SCOPES)[0], rounds=3, iterations=1
    )
    del elapsed
    median = benchmark.stats.stats.median
    work = max(1e-9, median - base)
    benchmark.extra_info.update(
        processes=processes,
        scopes_total=processes * SCOPES,
        startup_s=round(base, 3),
        scopes_per_second=round(processes * SCOPES / work),
    )
