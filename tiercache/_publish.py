"""Stats publication: each process's small snapshot in the shared tier, for
``tiercache top``.

::

    publish_stats(cache, every=5.0) ──> one daemon thread ──every `every` s──>
        cache.stats() ──> ~400 bytes of JSON ──> shared tier SET
            esc(namespace) "\\0stats\\0" origin, expiring after 3 x every
        (a process that dies or closes its cache disappears from ``top``
        within that time; stop() deletes it at once)

Off unless asked for: it is one small write every few seconds per process
(measured: ~0.2 ms of one background thread per publish), but a cache
that writes nothing a handler did not ask for is what the write-counting
tests and the promise "a scope that only reads writes nothing" rest on,
and an operator should choose what lands in their Redis. ``top`` says
how to turn it on when it finds nothing.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigError, TierError
from ._keys import KeyNames
from ._stats import CacheStats

if TYPE_CHECKING:
    from ._cache import TieredCache

__all__ = ["SNAPSHOT_VERSION", "StatsPublisher", "publish_stats", "snapshot_of"]

log = logging.getLogger("tiercache")

#: The format of a published snapshot (its ``"v"``).
SNAPSHOT_VERSION = 1
#: The shortest interval: ``top`` is a human's view, not a metrics pipeline.
MIN_EVERY = 0.2


def snapshot_of(st: CacheStats, origin: str, every: float) -> dict[str, Any]:
    """What one process publishes: a few cache-wide numbers, no keys."""
    memory = st.tiers[0]
    persistent = [t for t in st.tiers[1:] if t.name != "bus"]
    shared = persistent[-1] if persistent else None
    return {
        "v": SNAPSHOT_VERSION,
        "origin": origin,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "namespace": st.namespace,
        "at": time.time(),
        "every": every,
        "hits": memory.hits,
        "misses": memory.misses,
        "entries": memory.size or 0,
        "loads": st.loads,
        "writes": shared.writes if shared is not None else 0,
        "errors": shared.errors if shared is not None else 0,
        "writes_avoided": st.writes_avoided,
        "merges": st.merges,
        "conflicts": st.conflicts,
        "conflicts_lost": st.conflicts_lost,
        "invalidations": st.invalidations,
        "bus_healthy": st.bus_healthy,
        "bus_lag_s": st.bus_lag_s,
        "degraded": st.degraded,
        "journal_depth": st.journal_depth,
        "dirty": st.dirty,
    }


class StatsPublisher:
    """What :func:`publish_stats` started; :meth:`stop` ends it."""

    def __init__(self, cache: TieredCache, every: float) -> None:
        if isinstance(every, bool) or not isinstance(every, int | float) or every < MIN_EVERY:
            raise ConfigError(f"publish_stats every must be >= {MIN_EVERY} seconds, got {every!r}")
        tiers = cache._core.tiers
        if not tiers:
            raise ConfigError("publish_stats needs a persistent tier to publish into")
        self.every = float(every)
        self.origin = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.name = KeyNames(cache.namespace).stats(self.origin)
        self.published = 0
        #: Seconds the last publish took (stats, encoding and the write).
        self.last_cost_s = 0.0
        self._cache = weakref.ref(cache)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"tiercache-stats-{cache.namespace}", daemon=True
        )
        self._thread.start()

    def publish(self) -> bool:
        """Publish one snapshot now; False when the cache is gone or closed
        or the tier refused (logged at debug: the next one retries)."""
        cache = self._cache()
        if cache is None or cache._closed:
            return False
        start = time.perf_counter()
        doc = snapshot_of(cache.stats(), self.origin, self.every)
        data = json.dumps(doc, separators=(",", ":")).encode()
        try:
            cache._core.tiers[-1].set(self.name, data, 3 * self.every)
        except TierError as exc:
            log.debug("tiercache: publishing stats failed: %s", exc)
            return False
        self.published += 1
        self.last_cost_s = time.perf_counter() - start
        return True

    def _loop(self) -> None:
        while True:
            cache = self._cache()
            if cache is None or cache._closed:
                return
            del cache
            self.publish()
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        """Stop publishing and delete this process's snapshot."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
        cache = self._cache()
        if cache is not None and not cache._closed:
            try:
                cache._core.tiers[-1].delete(self.name)
            except TierError:
                pass  # it expires by itself


def publish_stats(cache: TieredCache, *, every: float = 5.0) -> StatsPublisher:
    """Publish ``cache``'s stats to its shared tier every ``every`` seconds
    (a few hundred bytes, under an internal name that expires after three
    intervals), so ``tiercache top`` can show every process of the
    namespace. Returns the :class:`StatsPublisher`; ``stop()`` ends it,
    and it ends by itself once the cache is closed.

    >>> import tempfile
    >>> from tiercache import DiskTier, MemoryTier, TieredCache
    >>> cache = TieredCache(MemoryTier(), DiskTier(tempfile.mkdtemp()), namespace="doc")
    >>> publisher = publish_stats(cache, every=5.0)
    >>> publisher.stop(); cache.close()
    """
    return StatsPublisher(cache, every)
