"""Repeated master SIGKILLs under load on a local Redis Cluster, counting
acknowledged updates lost. Not part of any test run (the bounded version
is tests/integration/test_cluster_faults.py). Run::

    export TIERCACHE_REDIS_SERVER=/usr/bin/redis-server
    python soak/cluster_failover.py --rounds 10 --replicas 1

Each round starts a fresh 3-master cluster with a replica each, three
worker processes counting with ``update()`` over 30 keys (the test's
worker), SIGKILLs the master of one key, waits for its replica to take
over, restarts the old master (it rejoins as a replica), lets the workers
run a second more and stops them, and replays what each acknowledged
into its journal (as a restarted process would). It prints, per round and in total, the
increments acknowledged, those missing from the store (lost) and those
beyond (writes whose outcome was unknown, which may land).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.test_cluster_faults import _replay, _results, _start, _stored_name
from tiercache import MemoryTier, RedisTier, TieredCache
from tiercache.testing import LocalCluster


def one_round(replicas: int) -> tuple[int, int, int]:
    namespace = f"soak{uuid.uuid4().hex[:8]}"
    with LocalCluster(masters=3, replicas=1) as cluster, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stop = root / "stop"
        procs = [
            _start(cluster.url, namespace, stop, 30, replicas, root / f"j{w}") for w in range(3)
        ]
        time.sleep(1.0)
        victim = cluster.kill_master_of(_stored_name(cluster.url, namespace, "k0"))
        cluster.wait_promoted(timeout=30)
        cluster.restart(victim)
        acked, _, _, _, _ = _results(procs, stop)
        _replay(cluster.url, namespace, [root / f"j{w}" for w in range(3)])
        reader = TieredCache(MemoryTier(), RedisTier(cluster.url), namespace=namespace, bus=None)
        stored = {f"k{i}": int((reader.get(f"k{i}") or {}).get("n", 0)) for i in range(30)}
        reader.close()
    lost = sum(max(0, acked[k] - v) for k, v in stored.items())
    extra = sum(max(0, v - acked[k]) for k, v in stored.items())
    return sum(acked.values()), lost, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    totals = [0, 0, 0]
    for r in range(args.rounds):
        acked, lost, extra = one_round(args.replicas)
        totals = [totals[0] + acked, totals[1] + lost, totals[2] + extra]
        print(f"round {r + 1}: acknowledged {acked}, lost {lost}, beyond {extra}", flush=True)
    print(
        f"replicas={args.replicas}, {args.rounds} kills: acknowledged {totals[0]}, "
        f"lost {totals[1]}, beyond {totals[2]}"
    )


if __name__ == "__main__":
    main()
