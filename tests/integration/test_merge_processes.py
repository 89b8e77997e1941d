"""Field-level merging across real processes on one real redis-server, in
the default configuration (no lease, no ``update()``): a ``Counter`` several
processes increment is exact, appends to a ``Log`` are all kept, and
processes changing different keys of one nested dict lose nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tiercache import Counter, Log, MemoryTier, RedisTier, TieredCache

pytestmark = pytest.mark.redis

WORKER = textwrap.dedent(
    """
    import sys
    from tiercache import ConflictError, Counter, Log, MemoryTier, RedisTier, TieredCache

    url, namespace, mode, name, n = sys.argv[1:5] + [int(sys.argv[5])]
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
    conflicts = 0
    for i in range(n):
        try:
            if mode == "counter":
                with cache.session("counter") as s:
                    s["n"] += 1
                    s["data"]["hits"] += 2
                    s["data"]["log"] += [f"{name}-{i}"]
            else:  # each process its own key of one nested dict
                with cache.session("fsm") as s:
                    s["data"]["by"][name] = i + 1
                    s["data"].setdefault(name, {})["last"] = i
        except ConflictError:
            conflicts += 1
    st = cache.stats()
    cache.close()
    print(conflicts, st.merges, flush=True)
    """
)


def run(url: str, namespace: str, mode: str, names: list[str], n: int) -> list[tuple[int, int]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, namespace, mode, name, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in names
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()
        conflicts, merges = map(int, out.split())
        results.append((conflicts, merges))
    return results


def test_four_processes_increment_a_counter_exactly_without_leases(
    redis_url: str, namespace: str
) -> None:
    seed = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    seed.set("counter", {"n": Counter(), "data": {"hits": Counter(10), "log": Log()}})
    seed.close()
    names = [f"w{i}" for i in range(4)]
    results = run(redis_url, namespace, "counter", names, 300)
    assert [c for c, _ in results] == [0, 0, 0, 0], "no ConflictError"
    assert sum(m for _, m in results) > 0, "the processes did race (and merged)"
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    value = cache.get("counter")
    cache.close()
    assert value["n"] == Counter(1200) and type(value["n"]) is Counter
    assert value["data"]["hits"] == 10 + 2 * 1200
    log = value["data"]["log"]
    assert type(log) is Log and len(log) == 1200, "every append kept"
    for name in names:  # each process's appends in its own order
        mine = [x for x in log if x.startswith(f"{name}-")]
        assert mine == [f"{name}-{i}" for i in range(300)]


def test_three_processes_change_different_keys_of_one_nested_dict(
    redis_url: str, namespace: str
) -> None:
    seed = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    seed.set("fsm", {"state": "form", "data": {"by": {}}})
    seed.close()
    names = ["bot", "app", "cron"]
    results = run(redis_url, namespace, "nested", names, 300)
    assert [c for c, _ in results] == [0, 0, 0], "different keys never conflict"
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    value = cache.get("fsm")
    cache.close()
    assert value == {
        "state": "form",
        "data": {"by": dict.fromkeys(names, 300), **{n: {"last": 299} for n in names}},
    }
