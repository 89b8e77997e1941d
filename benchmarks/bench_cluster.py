"""Aggregate throughput of 1, 2 and 4 worker processes on distinct keys:
a local 3-master Redis Cluster against a single Redis, in the same run.

Run: ``pytest benchmarks/bench_cluster.py --benchmark-only``.

Each round starts N worker processes, each running the same number of
mutating write-through scopes over its own 50 users, with the default
configuration (the bus included); process start-up is measured apart and
left out of ``extra_info["scopes_per_second"]``. On one machine the
cluster's three servers share the cores with the workers, so this shows
what the cluster costs a client (a slot tag, per-node batches, a bus over
several streams), not the capacity a cluster of machines adds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tiercache.testing import LocalCluster

WORKER = """
import sys
from tiercache import MemoryTier, RedisTier, TieredCache
url, namespace, wid, n = sys.argv[1:5]
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
for i in range(int(n)):
    with cache.session(f"user:{wid}:{i % 50}") as s:
        s["n"] = s.get("n", 0) + 1
cache.close()
"""

SCOPES = 1000


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    with LocalCluster(masters=3) as cluster:
        yield cluster.url


def run_workers(url: str, processes: int, n: int) -> float:
    namespace = f"bc{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, namespace, str(w), str(n)])
        for w in range(processes)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    return time.perf_counter() - start


@pytest.mark.parametrize("processes", [1, 2, 4])
@pytest.mark.parametrize("target", ["single", "cluster"])
@pytest.mark.benchmark(group="cluster")
def test_cluster_throughput(
    benchmark: Any, redis_url: str, cluster_url: str, target: str, processes: int
) -> None:
    url = cluster_url if target == "cluster" else redis_url
    base = statistics.median(run_workers(url, processes, 0) for _ in range(2))
    benchmark.pedantic(lambda: run_workers(url, processes, SCOPES), rounds=3, iterations=1)
    work = max(1e-9, benchmark.stats.stats.median - base)
    benchmark.extra_info.update(
        target=target,
        processes=processes,
        startup_s=round(base, 3),
        scopes_per_second=round(processes * SCOPES / work),
    )
