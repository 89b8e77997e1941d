"""Soak: three worker processes, Redis stopped mid-workload and restarted.

Not in the default test run yet. It used to fail about once in ten to
twenty runs (a false same-field conflict on a worker's own field at
journal replay); the cause found, a load that read the store past an
unreplayed journal, is fixed and 50 runs in a row passed after it. Kept
out of CI until it has a longer record. Run it with:

    python -m pytest soak -p no:cacheprovider
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiercache import MemoryTier, RedisTier, TieredCache

pytestmark = pytest.mark.redis


@pytest.fixture
def namespace() -> str:
    import uuid

    return f"soak-{uuid.uuid4().hex[:8]}"


OUTAGE_WORKER = textwrap.dedent(
    """
    import sys, time
    from tiercache import Journal, MemoryTier, RedisTier, TieredCache, TierError
    url, namespace, name, journal_dir, n = sys.argv[1:6]
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace,
                        journal=Journal(journal_dir))
    acked = 0
    for i in range(int(n)):
        try:
            with cache.session("shared") as s:
                s[name] = s.get(name, 0) + 1
                value = s[name]
        except TierError:
            time.sleep(0.01)  # a miss while Redis is down: nothing to serve
            continue
        acked = value
        print(acked, flush=True)
        time.sleep(0.005)
    # Drain the journal before exiting (Redis is back by now).
    deadline = time.monotonic() + 20
    while cache.stats().journal_depth and time.monotonic() < deadline:
        try:
            cache.flush()
        except TierError:
            time.sleep(0.1)
    print("journaled", cache.stats().journaled, flush=True)
    print("depth", cache.stats().journal_depth, flush=True)
    cache.close()
    """
)


def test_redis_restart_mid_workload_loses_no_acknowledged_update(
    namespace: str, tmp_path: Path
) -> None:
    import time

    from tiercache.testing import RedisServer

    # With persistence: a restart must keep what was written before it.
    with RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        url = server.url
        seed = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
        seed.set("shared", {})
        seed.close()
        names = ["w0", "w1", "w2"]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    OUTAGE_WORKER,
                    url,
                    namespace,
                    name,
                    str(tmp_path / name),
                    "300",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for name in names
        ]
        time.sleep(0.4)
        server.stop()  # mid-workload
        time.sleep(0.8)
        server.start()
        acked = {}
        journaled = 0
        for name, p in zip(names, procs, strict=True):
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
            lines = out.decode().split()
            assert lines[-2:] == ["depth", "0"], "the journal drained"
            assert lines[-4] == "journaled"
            journaled += int(lines[-3])
            acked[name] = max(int(x) for x in lines[:-4])
        cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
        stored = cache.get("shared")
        cache.close()
    assert journaled > 0, "the outage was long enough for writes to be journaled"
    for name in names:
        assert stored[name] == acked[name], (name, stored, acked)
