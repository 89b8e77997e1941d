"""Prometheus metrics of tiercache caches: ``pip install 'tiercache[prometheus]'``.

::

    scrape ──> registry.collect() ──> CacheCollector.collect()
                                         └─> cache.stats() of each cache (one
                                             frozen snapshot; nothing is counted
                                             twice, nothing runs between scrapes)

Every number comes from :meth:`TieredCache.stats`, so a scrape shows what
``print(cache.stats())`` shows. Names follow Prometheus conventions
(``tiercache_..._total`` counters, seconds and bytes); the labels are
bounded: ``namespace``, ``tier`` (``memory``, ``disk``, ``redis``, ``bus``
or your tier's name) and ``reason`` (of a flush), never a key.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from tiercache import MemoryTier, TieredCache
>>> from tiercache.prometheus import CacheCollector
>>> cache = TieredCache(MemoryTier(), namespace="doc")
>>> registry = CollectorRegistry()
>>> registry.register(CacheCollector(cache))
>>> cache.set("k", 1)
>>> registry.get_sample_value("tiercache_memory_entries", {"namespace": "doc"})
1
>>> cache.close()

One collector serves any number of caches of different namespaces
(``CacheCollector(a, b)`` or :meth:`CacheCollector.add`); two collectors
in one registry would report the same series twice, which the registry
refuses.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ._cache import TieredCache
from ._metricnames import CACHE_COUNTERS, TIER_COUNTERS
from ._stats import CacheStats, Histogram

__all__ = ["DEFAULT_BUCKETS", "CacheCollector"]

#: Latency buckets (seconds): tier calls take microseconds (memory, disk
#: reads) to seconds (a Redis timeout).
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _bucket_map(bounds: Sequence[float]) -> list[int]:
    """For each of the stats' log buckets, the index of the first bound
    (seconds) that holds its upper edge (len(bounds): only +Inf does)."""
    return [
        bisect.bisect_left(bounds, Histogram.upper_edge(i) / 1e6) for i in range(Histogram.SIZE)
    ]


class CacheCollector(Collector):
    """A ``prometheus_client`` collector of one or more caches' stats.

    Register it once: ``registry.register(CacheCollector(cache))`` (or
    ``prometheus_client.REGISTRY``). Each scrape takes one
    :meth:`~tiercache.TieredCache.stats` snapshot per cache.

    ``buckets`` (seconds, increasing) are the latency histogram's bounds.
    The stats keep latency in log buckets 9% wide; each is counted in the
    first bound at or above its upper edge, so a call can show up to 9%
    slower than it was, never faster.
    """

    def __init__(self, *caches: TieredCache, buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"buckets must be increasing seconds, got {bounds!r}")
        self._bounds = bounds
        self._map = _bucket_map(bounds)
        self._lock = threading.Lock()
        self._caches: list[TieredCache] = []
        for cache in caches:
            self.add(cache)

    def add(self, cache: TieredCache) -> None:
        """Report ``cache`` too (its namespace tells it apart)."""
        if not isinstance(cache, TieredCache):
            raise TypeError(f"CacheCollector takes TieredCache objects, got {cache!r}")
        with self._lock:
            if any(c is cache for c in self._caches):
                return
            if any(c.namespace == cache.namespace for c in self._caches):
                # Their series would have the same labels: not a valid scrape.
                raise ValueError(
                    f"CacheCollector already reports a cache of namespace {cache.namespace!r}"
                )
            self._caches.append(cache)

    def remove(self, cache: TieredCache) -> None:
        """Stop reporting ``cache``."""
        with self._lock:
            self._caches = [c for c in self._caches if c is not cache]

    def describe(self) -> Iterator[Metric]:
        # The names without samples: the registry checks them for clashes.
        return iter(self._families([]))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            caches = list(self._caches)
        return iter(self._families([c.stats() for c in caches]))

    def _families(self, snapshots: list[CacheStats]) -> list[Metric]:
        ns = ["namespace"]
        tier_labels = ["namespace", "tier"]
        out: list[Metric] = []

        def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
            m = CounterMetricFamily(f"tiercache_{name}", doc, labels=labels)
            out.append(m)
            return m

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            m = GaugeMetricFamily(f"tiercache_{name}", doc, labels=labels)
            out.append(m)
            return m

        for field, name, _, _, doc in TIER_COUNTERS:
            m = counter(name, doc, tier_labels)
            for st in snapshots:
                for t in st.tiers:
                    m.add_metric([st.namespace, t.name], getattr(t, field))
        latency = HistogramMetricFamily(
            "tiercache_tier_latency_seconds",
            "Time of each call to a persistent tier (or the bus).",
            labels=tier_labels,
        )
        out.append(latency)
        entries = gauge("memory_entries", "Entries in the memory tier.", ns)
        for st in snapshots:
            for t in st.tiers:
                if t.size is not None:
                    entries.add_metric([st.namespace], t.size)
                if t.name != "memory":
                    latency.add_metric(
                        [st.namespace, t.name],
                        self._buckets(t.latency_buckets, t.latency_count),
                        t.latency_sum_us / 1e6,
                    )
        flushes = counter("flushes", "Writes of changed values, by their cause.", [*ns, "reason"])
        for st in snapshots:
            for reason, n in sorted(st.flushes.items()):
                flushes.add_metric([st.namespace, reason], n)
        for field, name, _, _, doc in CACHE_COUNTERS:
            m = counter(name, doc, ns)
            for st in snapshots:
                m.add_metric([st.namespace], getattr(st, field))
        healthy = gauge("bus_healthy", "1 while the invalidation bus is caught up.", ns)
        down = gauge("bus_unhealthy_seconds", "How long the bus has been unhealthy.", ns)
        lag = gauge("bus_lag_seconds", "Age of the last invalidation when it was handled.", ns)
        degraded = gauge(
            "degraded", "1 while the shared tier's circuit breaker is open or probing.", ns
        )
        unreachable = gauge("unreachable_seconds", "How long the shared tier has failed.", ns)
        depth = gauge("journal_depth", "Journaled changes waiting for the shared tier.", ns)
        dirty = gauge("dirty_entries", "Changed values not yet written.", ns)
        oldest = gauge("oldest_dirty_age_seconds", "Age of the oldest unwritten change.", ns)
        for st in snapshots:
            v = [st.namespace]
            if st.bus_healthy is not None:
                healthy.add_metric(v, 1.0 if st.bus_healthy else 0.0)
                down.add_metric(v, st.bus_unhealthy_for_s)
                lag.add_metric(v, st.bus_lag_s)
            degraded.add_metric(v, 1.0 if st.degraded else 0.0)
            unreachable.add_metric(v, st.unreachable_for_s)
            depth.add_metric(v, st.journal_depth)
            dirty.add_metric(v, st.dirty)
            oldest.add_metric(v, st.oldest_dirty_age_s)
        return out

    def _buckets(self, counts: Sequence[int], total: int) -> list[tuple[str, float]]:
        per = [0] * (len(self._bounds) + 1)
        where = self._map
        for i, n in enumerate(counts):
            if n:
                per[where[i]] += n
        out = []
        running = 0
        for bound, n in zip(self._bounds, per, strict=False):
            running += n
            out.append((repr(bound), float(running)))
        out.append(("+Inf", float(total)))
        return out
