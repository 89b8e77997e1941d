"""What operating it costs: a metrics scrape, an OpenTelemetry collection,
and one stats publication for ``tiercache top``.

Run: ``pytest benchmarks/bench_ops.py --benchmark-only``.

A cache over memory + disk + Redis (and its bus) that served 200 keys;
``stats()`` itself is the baseline every exporter pays once per scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from tiercache import DiskTier, MemoryTier, RedisTier, TieredCache, publish_stats
from tiercache.otel import instrument
from tiercache.prometheus import CacheCollector


@pytest.fixture
def cache(tmp_path: Path, redis_url: str) -> Iterator[TieredCache]:
    c = TieredCache(MemoryTier(), DiskTier(tmp_path / "d"), RedisTier(redis_url), namespace="ops")
    for i in range(200):
        with c.session(f"k{i}") as s:
            s["n"] = i
    yield c
    c.close()


@pytest.mark.benchmark(group="metrics export, one cache")
def test_stats_snapshot(benchmark: Any, cache: TieredCache) -> None:
    benchmark(cache.stats)


@pytest.mark.benchmark(group="metrics export, one cache")
def test_prometheus_collect(benchmark: Any, cache: TieredCache) -> None:
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    benchmark(lambda: list(registry.collect()))


@pytest.mark.benchmark(group="metrics export, one cache")
def test_prometheus_scrape_text(benchmark: Any, cache: TieredCache) -> None:
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    benchmark(generate_latest, registry)


@pytest.mark.benchmark(group="metrics export, one cache")
def test_opentelemetry_collection(benchmark: Any, cache: TieredCache) -> None:
    reader = InMemoryMetricReader()
    handle = instrument(cache, meter_provider=MeterProvider(metric_readers=[reader]))
    benchmark(reader.get_metrics_data)
    handle.close()


@pytest.mark.benchmark(group="stats publication (tiercache top)")
def test_publish_stats_to_redis(benchmark: Any, cache: TieredCache) -> None:
    publisher = publish_stats(cache, every=3600)
    benchmark(publisher.publish)
    publisher.stop()
