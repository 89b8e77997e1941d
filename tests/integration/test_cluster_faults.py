"""A Redis Cluster changing under load: a master SIGKILLed and replaced by
its replica, slots migrated by a reshard. Real worker processes count
with ``update()``; every increment a worker saw acknowledged is stored,
and nothing beyond what may have landed unacknowledged."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tiercache import Journal, MemoryTier, RedisTier, TieredCache
from tiercache.testing import LocalCluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from tiercache import Counter, Journal, MemoryTier, RedisTier, TieredCache, TierError

    import os
    url, namespace, stop, keys, replicas, journal = sys.argv[1:7]
    tier = RedisTier(url, socket_timeout=0.5, replicas=int(replicas), replicas_timeout=0.2)
    cache = TieredCache(MemoryTier(), tier, namespace=namespace, journal=Journal(journal))
    acked, maybe, failed = {}, {}, 0

    def bump(s):
        # A Counter: an update acknowledged while its write's outcome was
        # unknown is retried, and merges with others' by its delta.
        s["n"] = s.get("n", Counter(0)) + 1

    print("ready", flush=True)
    deadline = time.monotonic() + 60
    i = 0
    while not os.path.exists(stop) and time.monotonic() < deadline:
        key = f"k{i % int(keys)}"
        try:
            cache.update(key, bump)
        except TierError as exc:
            failed += 1
            if exc.sent:
                maybe[key] = maybe.get(key, 0) + 1
            time.sleep(0.02)
            continue
        acked[key] = acked.get(key, 0) + 1
        i += 1
    cache.close()
    # Writes whose outcome was unknown (each an error of the Redis tier):
    # one may have landed and be merged again, counted twice, never lost.
    uncertain = sum(t.errors for t in cache.stats().tiers if t.name == "redis")
    report = {"acked": acked, "maybe": maybe, "failed": failed, "done": i, "uncertain": uncertain}
    print(json.dumps(report), flush=True)
    """
)


def _stored_name(url: str, namespace: str, key: str) -> str:
    return RedisTier(url)._key(f"{namespace}:{key}")


def _start(url: str, namespace: str, stop: Path, keys: int, replicas: int, journal: Path) -> Any:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            url,
            namespace,
            str(stop),
            str(keys),
            str(replicas),
            str(journal),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _results(procs: list[Any], stop: Path) -> tuple[Counter[str], Counter[str], int, int, int]:
    """Let the workers run one more second, stop them, and sum their reports."""
    time.sleep(1.0)
    stop.touch()
    acked: Counter[str] = Counter()
    maybe: Counter[str] = Counter()
    done = failed = uncertain = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        acked.update(report["acked"])
        maybe.update(report["maybe"])
        done += report["done"]
        failed += report["failed"]
        uncertain += report["uncertain"]
    return acked, maybe, done, failed, uncertain


def _replay(url: str, namespace: str, journals: list[Path]) -> None:
    """Start each worker's cache again on its journal, as a restarted
    process does: what a worker acknowledged into its journal (a write
    still pending when it closed) is replayed, then the journal is empty."""
    for directory in journals:
        cache = TieredCache(
            MemoryTier(), RedisTier(url), namespace=namespace, journal=Journal(directory), bus=None
        )
        cache.flush()
        assert cache.stats().journal_depth == 0, directory
        cache.close()


def _check(
    url: str, namespace: str, keys: int, acked: Counter[str], maybe: Counter[str], uncertain: int
) -> None:
    """Every acknowledged increment is stored; beyond them, only ones that
    may have landed (a failed call that was sent, or an acknowledged one
    whose write had an unknown outcome: retried, merged by its delta)."""
    reader = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, bus=None)
    extra = 0
    for i in range(keys):
        key = f"k{i}"
        stored = int((reader.get(key) or {}).get("n", 0))
        assert stored >= acked[key], f"{key}: {acked[key]} acknowledged, {stored} stored"
        extra += max(0, stored - acked[key] - maybe[key])
    assert extra <= uncertain
    reader.close()


def test_a_killed_master_loses_no_acknowledged_update_with_replicas_1(
    killable_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """A master SIGKILLed under load: its replica takes over, and every
    increment a worker saw acknowledged (each waited for the replica) is
    there; the old master comes back as a replica of the new one."""
    cluster = killable_cluster
    stop = tmp_path / "stop"
    procs = [_start(cluster.url, namespace, stop, 30, 1, tmp_path / f"j{w}") for w in range(3)]
    time.sleep(1.0)
    victim = cluster.kill_master_of(_stored_name(cluster.url, namespace, "k0"))
    cluster.wait_promoted(timeout=20)
    # Until it is back the promoted shard has no replica: writes there are
    # not acknowledged (replicas=1), the rest go on.
    cluster.restart(victim)
    acked, maybe, done, failed, uncertain = _results(procs, stop)
    assert failed > 0, "the kill happened while the workers were writing"
    assert done > 100
    _replay(cluster.url, namespace, [tmp_path / f"j{w}" for w in range(3)])
    _check(cluster.url, namespace, 30, acked, maybe, uncertain)


def test_a_reshard_under_load_loses_nothing(
    killable_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    cluster = killable_cluster
    stop = tmp_path / "stop"
    procs = [_start(cluster.url, namespace, stop, 30, 0, tmp_path / f"j{w}") for w in range(3)]
    time.sleep(0.5)
    name = _stored_name(cluster.url, namespace, "k0")
    client = cluster.client()
    source = cluster.master_of(name)
    target = next(n for n in cluster.nodes if n.role == "master" and n.port != source.port)
    cluster.move_slot(client.keyslot(name), target)
    acked, maybe, done, _, uncertain = _results(procs, stop)
    assert done > 100
    _replay(cluster.url, namespace, [tmp_path / f"j{w}" for w in range(3)])
    _check(cluster.url, namespace, 30, acked, maybe, uncertain)
    assert cluster.master_of(name).port == target.port
    client.close()
