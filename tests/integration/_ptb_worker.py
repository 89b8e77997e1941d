"""One bot process of test_ptb.py's two-process test: increments user 1's
``n`` (``counter``: a tiercache.Counter; ``inc``: a plain int) N times,
with ``update_persistence()`` after each, then prints how many of its
increments the adapter dropped (logged) for another process's.

    python _ptb_worker.py REDIS_URL NAMESPACE MODE N START_FILE INDEX
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from tests.integration import _ptb_app as ptb
from tiercache import MISSING, MemoryTier, RedisTier, TieredCache
from tiercache.ptb import TierCachePersistence


def wait_for(path: str) -> None:
    """Until the test says go: both processes start counting together."""
    deadline = time.monotonic() + 20
    while not os.path.exists(path):
        assert time.monotonic() < deadline
        time.sleep(0.002)


async def main(url: str, namespace: str, mode: str, n: int, start: str) -> None:
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
    persistence = TierCachePersistence(cache)
    app = ptb.build(persistence)
    await app.initialize()
    await asyncio.to_thread(wait_for, start)
    for _ in range(n):
        await ptb.send(app, ptb.message(1, mode))
        await app.update_persistence()
        await asyncio.sleep(0.001)  # let the other process in between
    await app.shutdown()
    await cache.aclose()
    dropped = sum(
        int(c.ours) - (0 if c.base is MISSING else int(c.base))
        for _, c in persistence.recent_conflicts
        if c.path == ("n",)
    )
    print(json.dumps({"dropped": dropped, "conflicts": persistence.conflicts}))


if __name__ == "__main__":
    url, namespace, mode, n, start, _index = sys.argv[1:]
    asyncio.run(main(url, namespace, mode, int(n), start))
