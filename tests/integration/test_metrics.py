"""The metrics exporters report what ``stats()`` says: a real
``prometheus_client`` registry scraped, and the real OpenTelemetry SDK read
through its in-memory reader, while a workload runs on real tiers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tiercache import (
    CacheStats,
    ConflictError,
    DiskTier,
    MemoryTier,
    RedisTier,
    TieredCache,
    WriteThrough,
    keep_theirs,
)
from tiercache.otel import instrument
from tiercache.prometheus import CacheCollector

ROOT = Path(__file__).resolve().parents[2]


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, through the text format a Prometheus reads."""
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def otel_points(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[Any, ...]], Any]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, tuple[Any, ...]], Any] = {}
    if data is None:  # nothing observed at all
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    out[(m.name, tuple(sorted(p.attributes.items())))] = p.value
    return out


@pytest.fixture
def pair(
    tmp_path: Path, redis_url: str, namespace: str
) -> Iterator[tuple[TieredCache, TieredCache]]:
    """Two caches of one namespace (two processes' worth: two buses), the
    first over memory + disk + Redis."""
    a = TieredCache(
        MemoryTier(), DiskTier(tmp_path / "a"), RedisTier(redis_url), namespace=namespace
    )
    b = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    yield a, b
    a.close()
    b.close()


def workload(a: TieredCache, b: TieredCache, rounds: int) -> None:
    for i in range(rounds):
        key = f"chat:{i % 7}"
        with a.session(key) as s:
            s["n"] = s.get("n", 0) + 1
        with a.session(key) as s:  # read only: a write avoided
            s.get("n")
        a.get(f"absent:{i % 3}")
        with b.session(key) as s:
            s["b"] = i


def conflicts(a: TieredCache, b: TieredCache) -> None:
    """A merge and a conflict on a: b writes behind a's open scope."""
    with a.session("race") as s:
        s["x"] = 0
    try:
        with a.session("race") as s:
            s["x"] = 1
            b.set("race", {"x": 2, "y": 1})
    except ConflictError:
        pass
    with a.session("race", conflict=keep_theirs) as s:
        s["z"] = 1
        b.set("race", {"x": 3})


def wait_quiet(*caches: TieredCache) -> None:
    """Until the buses have delivered everything (counters stop moving)."""
    last: list[CacheStats] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = [c.stats() for c in caches]
        if last and all(
            x.invalidations_received == y.invalidations_received
            for x, y in zip(now, last, strict=True)
        ):
            return
        last = now
        time.sleep(0.2)


@pytest.mark.redis
def test_a_scrape_during_a_workload_reports_what_stats_says(
    pair: tuple[TieredCache, TieredCache],
) -> None:
    a, b = pair
    registry = CollectorRegistry()
    registry.register(CacheCollector(a))
    ns = a.namespace
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            workload(a, b, 100)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run)
    worker.start()
    seen = []
    while not done.is_set():  # scrapes while the workload runs: counters only grow
        time.sleep(0.005)
        seen.append(
            scrape(registry)[
                ("tiercache_tier_writes_total", (("namespace", ns), ("tier", "redis")))
            ]
        )
    worker.join()
    assert not errors
    assert len(seen) >= 2 and seen == sorted(seen)
    conflicts(a, b)
    wait_quiet(a, b)

    got = scrape(registry)
    st = a.stats()

    def v(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted({"namespace": ns, **labels}.items())))]

    for t in st.tiers:
        assert v("tiercache_tier_hits_total", tier=t.name) == t.hits
        assert v("tiercache_tier_misses_total", tier=t.name) == t.misses
        assert v("tiercache_tier_writes_total", tier=t.name) == t.writes
        assert v("tiercache_tier_read_bytes_total", tier=t.name) == t.bytes_read
        assert v("tiercache_tier_written_bytes_total", tier=t.name) == t.bytes_written
        assert v("tiercache_tier_errors_total", tier=t.name) == t.errors
        if t.name != "memory":
            assert v("tiercache_tier_latency_seconds_count", tier=t.name) == t.latency_count
            assert v("tiercache_tier_latency_seconds_sum", tier=t.name) == pytest.approx(
                t.latency_sum_us / 1e6
            )
            inf = v("tiercache_tier_latency_seconds_bucket", tier=t.name, le="+Inf")
            below = v("tiercache_tier_latency_seconds_bucket", tier=t.name, le="0.001")
            assert inf == t.latency_count and below <= inf
    assert {t.name for t in st.tiers} == {"memory", "disk", "redis", "bus"}
    assert st.tier("redis").writes > 100 and st.tier("memory").hits > 0

    for field in (
        "loads",
        "writes_avoided",
        "merges",
        "conflicts",
        "conflicts_lost",
        "invalidations",
        "invalidations_sent",
        "invalidations_received",
        "corrupt_entries",
        "served_unconfirmed",
    ):
        assert v(f"tiercache_{field}_total") == getattr(st, field), field
    # The workload made each of these happen at least once.
    assert st.writes_avoided >= 100 and st.merges >= 1 and st.conflicts >= 1
    assert st.conflicts_lost == 0 and st.invalidations_sent >= 100
    assert st.invalidations_received >= 100 and st.invalidations >= 1
    for reason, n in st.flushes.items():
        assert v("tiercache_flushes_total", reason=reason) == n
    assert st.flushes["exit"] > 0
    assert v("tiercache_bus_healthy") == 1.0
    assert v("tiercache_bus_lag_seconds") == pytest.approx(st.bus_lag_s)
    assert 0 < st.bus_lag_s < 5
    assert v("tiercache_degraded") == 0.0
    assert v("tiercache_journal_depth") == st.journal_depth == 0
    assert v("tiercache_memory_entries") == st.tier("memory").size
    # Another cache of the namespace would make series with the same labels.
    with pytest.raises(ValueError, match="already reports"):
        CacheCollector(a, b)
    # Labels stay bounded: never a key.
    labels = {k for _, pairs in got for k, _ in pairs}
    values = {v for _, pairs in got for k, v in pairs if k != "le"}
    assert labels == {"namespace", "tier", "reason", "le"}
    assert not any("chat:" in v or "race" in v for v in values)


@pytest.mark.redis
def test_opentelemetry_reader_gets_the_same_numbers(pair: tuple[TieredCache, TieredCache]) -> None:
    a, b = pair
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    handle = instrument(a, meter_provider=provider)
    workload(a, b, 40)
    mid = otel_points(reader)  # read while it runs on: then once more at rest
    conflicts(a, b)
    wait_quiet(a, b)
    got = otel_points(reader)
    st = a.stats()
    ns = ("tiercache.namespace", a.namespace)

    def tier_attrs(name: str, **more: str) -> tuple[Any, ...]:
        attrs = {"tiercache.namespace": a.namespace, "tiercache.tier": name, **more}
        if name == "redis":
            attrs["db.system.name"] = "redis"
        if name == "disk":
            attrs["db.system.name"] = "sqlite"
        return tuple(sorted(attrs.items()))

    for t in st.tiers:
        assert got[("tiercache.tier.hits", tier_attrs(t.name))] == t.hits
        assert got[("tiercache.tier.writes", tier_attrs(t.name))] == t.writes
        io = ("tiercache.tier.io", tier_attrs(t.name, **{"tiercache.io.direction": "write"}))
        assert got[io] == t.bytes_written
        p99 = ("tiercache.tier.latency", tier_attrs(t.name, **{"tiercache.quantile": "0.99"}))
        if t.latency_count:  # (the bus publishes in the tier's scripts: no calls)
            assert got[p99] == pytest.approx(t.latency_p99_us / 1e6)
        else:
            assert p99 not in got
    assert got[("tiercache.merges", (ns,))] == st.merges >= 1
    assert got[("tiercache.conflicts", (ns,))] == st.conflicts >= 1
    assert got[("tiercache.invalidations.sent", (ns,))] == st.invalidations_sent
    assert got[("tiercache.invalidations.received", (ns,))] == st.invalidations_received > 0
    assert got[("tiercache.writes_avoided", (ns,))] == st.writes_avoided == 40
    exit_ = ("tiercache.flushes", tuple(sorted((ns, ("tiercache.flush.reason", "exit")))))
    assert got[exit_] == st.flushes["exit"] > mid[exit_]
    assert got[("tiercache.bus.healthy", (ns,))] == 1.0
    assert got[("tiercache.bus.lag", (ns,))] == pytest.approx(st.bus_lag_s)
    assert got[("tiercache.journal.depth", (ns,))] == 0
    handle.close()
    assert not any(name.startswith("tiercache.") for name, _ in otel_points(reader))


def test_collector_takes_several_caches_and_refuses_bad_buckets() -> None:
    one = TieredCache(MemoryTier(), namespace="one", flush=WriteThrough())
    two = TieredCache(MemoryTier(), namespace="two")
    try:
        collector = CacheCollector(one)
        collector.add(two)
        collector.add(two)  # once only
        registry = CollectorRegistry()
        registry.register(collector)
        one.set("k", 1)
        got = scrape(registry)
        assert got[("tiercache_memory_entries", (("namespace", "one"),))] == 1
        assert got[("tiercache_memory_entries", (("namespace", "two"),))] == 0
        collector.remove(two)
        assert ("tiercache_memory_entries", (("namespace", "two"),)) not in scrape(registry)
        with pytest.raises(ValueError, match="increasing"):
            CacheCollector(one, buckets=(0.1, 0.01))
        with pytest.raises(ValueError, match="Duplicated"):
            registry.register(CacheCollector(two))  # the same names twice
    finally:
        one.close()
        two.close()


def test_import_tiercache_loads_no_exporter_nor_the_cli() -> None:
    # redis-py 8 imports opentelemetry itself when it is installed: what
    # the dependencies load is the baseline, tiercache must add none of it.
    code = (
        "import sys, cachetools, diskcache, msgpack, redis, redis.asyncio\n"
        "before = set(sys.modules)\n"
        "import tiercache\n"
        "new = set(sys.modules) - before\n"
        "bad = sorted(m for m in new if m.split('.')[0] in ('prometheus_client', 'opentelemetry')"
        " or m in ('tiercache.prometheus', 'tiercache.otel', 'tiercache.__main__', 'argparse')"
        " or m.startswith('tiercache._cli'))\n"
        "assert 'tiercache._core' in new\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_spans_of_loads_and_flushes_are_opt_in_and_children_of_the_handlers_span(
    tmp_path: Path,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from tiercache import TierError
    from tiercache.testing import DictTier, Faults, FaultyTier

    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.get_tracer("handler")
    faults = Faults(methods={"compare_and_set"})
    cache = TieredCache(
        MemoryTier(), FaultyTier(DictTier(), faults), namespace="spans", max_stale=None
    )
    try:
        quiet = instrument(cache, meter_provider=MeterProvider(), tracer_provider=tracing)
        with cache.session("k0") as s:
            s["n"] = 1
        assert exporter.get_finished_spans() == ()  # metrics only, by default
        quiet.close()

        handle = instrument(
            cache, meter_provider=MeterProvider(), spans=True, tracer_provider=tracing
        )
        with tracer.start_as_current_span("on_message") as parent:
            with cache.session("k1") as s:  # a miss: a load, then the exit's flush
                s["n"] = 1
            cache.get("k1")  # a memory hit: no span
        ours = [sp for sp in exporter.get_finished_spans() if sp.name.startswith("tiercache.")]
        spans = [(sp.name, dict(sp.attributes or {})) for sp in ours]
        assert spans == [
            ("tiercache.load", {"tiercache.namespace": "spans", "tiercache.hit": False}),
            (
                "tiercache.flush",
                {
                    "tiercache.namespace": "spans",
                    "tiercache.flush.reason": "exit",
                    "tiercache.entries": 1,
                },
            ),
        ]
        ctx = parent.get_span_context()
        for sp in ours:
            assert sp.parent is not None and sp.parent.span_id == ctx.span_id
        # close() stops tracing; keys are named only when asked for.
        handle.close()
        exporter.clear()
        with cache.session("k3") as s:
            s["n"] = 3
        assert exporter.get_finished_spans() == ()
        keyed = instrument(
            cache,
            meter_provider=MeterProvider(),
            spans=True,
            tracer_provider=tracing,
            span_keys=True,
        )
        cache.get("absent")
        (load,) = exporter.get_finished_spans()
        assert dict(load.attributes or {})["tiercache.key"] == "absent"
        # A failed flush is an error span with the exception recorded.
        exporter.clear()
        faults.fail_next(1)
        with pytest.raises(TierError):
            with cache.session("k2") as s:
                s["n"] = 2
        failed = exporter.get_finished_spans()[-1]
        assert failed.name == "tiercache.flush" and failed.status.status_code is StatusCode.ERROR
        assert any(e.name == "exception" for e in failed.events)
        keyed.close()
    finally:
        cache.close()
