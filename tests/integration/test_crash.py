"""Crash safety, tested by crashing: a worker process is SIGKILLed at random
moments, over and over, and restarted; every update it acknowledged (a
scope that returned) must be in the store afterwards. Each worker is a new
OS process forked from a zygote that imported tiercache once (_zygote.py):
hundreds of restarts without hundreds of interpreter start-ups.

With write-through (the default) a returned scope has been written to
every tier, so the promise is "nothing acknowledged is lost". The worker
prints the counter value after each scope returns; the parent keeps the
highest value it saw acknowledged and checks the store never has less.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tiercache import DiskTier, Journal, MemoryTier, RedisTier, TieredCache

from ._zygote import Zygote

pytestmark = [pytest.mark.redis, pytest.mark.slow]

KILLS = int(os.environ.get("TIERCACHE_CRASH_KILLS", "200"))

WORKER = """
import sys
from tiercache import ConflictError, DiskTier, MemoryTier, RedisTier, TieredCache
url, directory, namespace = sys.argv[1:4]
cache = TieredCache(MemoryTier(), DiskTier(directory), RedisTier(url), namespace=namespace)
while True:
    try:
        with cache.session("counter") as s:
            s["n"] = s.get("n", 0) + 1
            n = s["n"]
    except ConflictError:
        # A killed predecessor's last write landed in Redis but not on the
        # disk copy this worker read: its increment of that stale copy is
        # refused (not applied) and, as a framework would, it runs again.
        continue
    # The scope returned: the update is acknowledged.
    sys.stdout.write(f"{n}\\n")
    sys.stdout.flush()
"""


@pytest.mark.timeout(60 + 2 * KILLS)
def test_sigkilled_workers_lose_no_acknowledged_update(
    redis_url: str, tmp_path: Path, namespace: str
) -> None:
    rng = random.Random(1234)
    acked = 0
    with Zygote(tmp_path) as zygote:
        for _ in range(KILLS):
            worker = zygote.spawn(WORKER, [redis_url, str(tmp_path / "d"), namespace])
            acked = max(acked, int(worker.first_line()))  # it is up and writing
            time.sleep(rng.uniform(0.0, 0.05))  # a random moment, mid-scope or not
            worker.kill()
            for line in worker.lines():
                acked = max(acked, int(line))
    cache = TieredCache(
        MemoryTier(), DiskTier(tmp_path / "d"), RedisTier(redis_url), namespace=namespace
    )
    stored = cache.get("counter")["n"]
    cache.close()
    assert stored >= acked, f"acknowledged {acked}, stored {stored}"
    # A kill between the write and the print loses at most the one
    # unacknowledged increment per crash: never more than that.
    assert stored <= acked + KILLS


TIMER_WORKER = """
import sys, time
from tiercache import DiskTier, MemoryTier, RedisTier, TieredCache, WriteBehind
url, directory, namespace, interval = sys.argv[1:5]
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace,
                    flush=WriteBehind(float(interval)))
while True:
    with cache.session("counter") as s:
        s["n"] = s.get("n", 0) + 1
        n = s["n"]
    sys.stdout.write(f"{n} {time.time():.6f}\\n")
    sys.stdout.flush()
    time.sleep(0.001)
"""


def test_write_behind_crash_loses_at_most_one_interval(
    redis_url: str, tmp_path: Path, namespace: str
) -> None:
    """With a timer, a crash may lose what changed since the last tick, never
    more: everything acknowledged more than an interval before the kill (plus
    one write's time) is in the store."""
    interval, slack = 0.1, 0.3  # slack: the timer thread waits for the GIL too
    rng = random.Random(99)
    args = [redis_url, str(tmp_path), namespace, str(interval)]
    with Zygote(tmp_path) as zygote:
        for _ in range(20):
            worker = zygote.spawn(TIMER_WORKER, args)
            worker.first_line()
            time.sleep(rng.uniform(0.2, 0.5))
            killed_at = time.time()
            worker.kill()
            acks = [tuple(map(float, ln.split())) for ln in worker.lines() if ln.strip()]
            must_have = max((n for n, t in acks if t < killed_at - interval - slack), default=0)
            cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
            stored = (cache.get("counter") or {}).get("n", 0)
            cache.close()
            assert stored >= must_have, f"lost more than one interval: {stored} < {must_have}"


WAL_WORKER = """
import sys
from tiercache import Journal, MemoryTier, RedisTier, TieredCache, WriteBehind
url, journal_dir, namespace = sys.argv[1:4]
# Write-behind with a journal: every change is in the journal (one write(2))
# before its scope returns; the timer sends them to Redis in batches.
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace,
                    flush=WriteBehind(0.05), journal=Journal(journal_dir))
while True:
    with cache.session("counter") as s:
        s["n"] = s.get("n", 0) + 1
        n = s["n"]
    sys.stdout.write(f"{n}\\n")
    sys.stdout.flush()
"""

WAL_KILLS = int(os.environ.get("TIERCACHE_WAL_KILLS", "100"))


@pytest.mark.timeout(60 + 2 * WAL_KILLS)  # bounded by the kills, not by the suite's 120 s
def test_write_behind_with_a_journal_loses_nothing_to_sigkill(
    redis_url: str, tmp_path: Path, namespace: str
) -> None:
    """The journal turns write-behind's "at most one interval" into "nothing
    acknowledged": each restarted worker replays what the killed one left
    in the journal before it reads the counter again."""
    rng = random.Random(4321)
    acked = 0
    journal_dir = str(tmp_path / "journal")
    with Zygote(tmp_path) as zygote:
        for _ in range(WAL_KILLS):
            worker = zygote.spawn(WAL_WORKER, [redis_url, journal_dir, namespace])
            first = int(worker.first_line())
            assert first > acked, "a restarted worker goes on from what was acknowledged"
            acked = max(acked, first)
            time.sleep(rng.uniform(0.0, 0.1))  # mid-scope, mid-tick, or between
            worker.kill()
            for line in worker.lines():
                acked = max(acked, int(line))
    # What the last worker left in its journal is replayed by the next start.
    cache = TieredCache(
        MemoryTier(),
        RedisTier(redis_url),
        namespace=namespace,
        journal=Journal(journal_dir),
    )
    stored = cache.get("counter")["n"]
    cache.close()
    assert stored >= acked, f"acknowledged {acked}, stored {stored}"
    assert stored <= acked + WAL_KILLS
