"""OpenTelemetry metrics of a tiercache cache: ``pip install 'tiercache[otel]'``.

::

    reader collects ──> each observable instrument's callback, in the order
                        they were made: the first takes a cache.stats()
                        snapshot, the others reuse it (for at most 0.5 s)

Every number comes from :meth:`TieredCache.stats` (the same as the
Prometheus collector, :mod:`tiercache.prometheus`). Counters are
asynchronous (observed) counters, levels are observable gauges; nothing
runs on the cache's paths. Attributes: ``tiercache.namespace``,
``tiercache.tier`` and, where OpenTelemetry's database conventions apply,
``db.system.name`` (``redis`` for the Redis tier, ``sqlite`` for the disk
tier, which keeps its index in SQLite); a flush's ``tiercache.flush.reason``;
never a key.

>>> from opentelemetry.sdk.metrics import MeterProvider
>>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
>>> from tiercache import MemoryTier, TieredCache
>>> from tiercache.otel import instrument
>>> reader = InMemoryMetricReader()
>>> cache = TieredCache(MemoryTier(), namespace="doc")
>>> handle = instrument(cache, meter_provider=MeterProvider(metric_readers=[reader]))
>>> cache.set("k", 1)
>>> data = reader.get_metrics_data()
>>> handle.close(); cache.close()

Latency: the OpenTelemetry API has no observable histogram, so each tier's
p50 and p99 are gauges (``tiercache.tier.latency``, attribute
``tiercache.quantile``), in seconds.

Spans (off by default: ``spans=True``): ``tiercache.load`` around each
load from the persistent tiers (a memory hit makes none; attribute
``tiercache.hit``) and ``tiercache.flush`` around each write of changed
values (``tiercache.flush.reason``, ``tiercache.entries``), children of
the span current when they start, with the tier calls' exceptions
recorded. A span names its key only with ``span_keys=True``: keys are
often user ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from ._cache import TieredCache
from ._metricnames import CACHE_COUNTERS, TIER_COUNTERS
from ._stats import CacheStats, TierStats

__all__ = ["Instrumentation", "instrument"]

#: db.system.name of the built-in tiers (OpenTelemetry's well-known values).
_DB_SYSTEMS = {"redis": "redis", "disk": "sqlite"}
#: How long one snapshot serves the instruments of a collection.
_SNAPSHOT_S = 0.5


def _tier_attrs(namespace: str, t: TierStats) -> dict[str, str]:
    attrs = {"tiercache.namespace": namespace, "tiercache.tier": t.name}
    system = _DB_SYSTEMS.get(t.name)
    if system is not None:
        attrs["db.system.name"] = system
    return attrs


class _Span:
    __slots__ = ("_load", "_span")

    def __init__(self, span: trace.Span, load: bool) -> None:
        self._span = span
        self._load = load

    def end(self, error: BaseException | None, result: Any) -> None:
        span = self._span
        if error is None:
            if self._load:
                span.set_attribute("tiercache.hit", result is not None)
        elif not isinstance(error, GeneratorExit):  # GeneratorExit: abandoned, not failed
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


class _Spans:
    """The cache's tracer (tiercache._flow.Tracer) over an OpenTelemetry one."""

    def __init__(self, tracer: trace.Tracer, keys: bool) -> None:
        self._tracer = tracer
        self._keys = keys

    def start(self, name: str, attributes: dict[str, Any]) -> _Span:
        if not self._keys:
            attributes = {k: v for k, v in attributes.items() if k != "tiercache.key"}
        span = self._tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
        return _Span(span, name == "tiercache.load")


class Instrumentation:
    """What :func:`instrument` registered; :meth:`close` stops reporting
    (OpenTelemetry cannot take instruments back; they observe nothing)
    and tracing."""

    def __init__(self, cache: TieredCache, meter: metrics.Meter, spans: _Spans | None) -> None:
        self._cache: TieredCache | None = cache
        self._lock = threading.Lock()
        self._snap: CacheStats | None = None
        self._taken = 0.0
        self._spans = spans
        self._register(meter)
        if spans is not None:
            cache._s.tracer = spans

    def close(self) -> None:
        cache, self._cache = self._cache, None
        if cache is not None and self._spans is not None and cache._s.tracer is self._spans:
            cache._s.tracer = None

    def _stats(self, fresh: bool = False) -> CacheStats | None:
        cache = self._cache
        if cache is None:
            return None
        with self._lock:
            now = time.monotonic()
            if fresh or self._snap is None or now - self._taken > _SNAPSHOT_S:
                self._snap = cache.stats()
                self._taken = now
            return self._snap

    def _observe(
        self,
        each: Callable[[CacheStats], Iterable[tuple[float, dict[str, str]]]],
        fresh: bool = False,
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            st = self._stats(fresh)
            if st is None:
                return []
            return [Observation(v, a) for v, a in each(st)]

        return callback

    def _register(self, meter: metrics.Meter) -> None:
        ns = "tiercache.namespace"
        tier_rows: dict[str, list[tuple[str, str, str, str]]] = {}
        for field, _, name, unit, doc in TIER_COUNTERS:
            tier_rows.setdefault(name, []).append((field, unit, doc, field))

        def tier_counter(fields: list[tuple[str, str, str, str]]) -> Any:
            def each(st: CacheStats) -> Iterable[tuple[float, dict[str, str]]]:
                for t in st.tiers:
                    for field, _, _, _ in fields:
                        attrs = _tier_attrs(st.namespace, t)
                        if len(fields) > 1:  # bytes: one counter, by direction
                            attrs["tiercache.io.direction"] = (
                                "read" if field == "bytes_read" else "write"
                            )
                        yield getattr(t, field), attrs

            return each

        for i, (name, fields) in enumerate(tier_rows.items()):
            _, unit, doc, _ = fields[0]
            if len(fields) > 1:
                doc = "Bytes read from and written to the tier."
            # The first instrument's callback takes the collection's snapshot.
            callback = self._observe(tier_counter(fields), fresh=i == 0)
            meter.create_observable_counter(name, [callback], unit=unit, description=doc)

        def latency(st: CacheStats) -> Iterable[tuple[float, dict[str, str]]]:
            for t in st.tiers:
                if t.name == "memory" or not t.latency_count:
                    continue
                for q, us in (("0.5", t.latency_p50_us), ("0.99", t.latency_p99_us)):
                    yield us / 1e6, {**_tier_attrs(st.namespace, t), "tiercache.quantile": q}

        meter.create_observable_gauge(
            "tiercache.tier.latency",
            [self._observe(latency)],
            unit="s",
            description="Latency quantiles of the calls to a persistent tier (or the bus).",
        )

        def counter_of(field: str) -> Callable[[CacheStats], Iterable[tuple[float, Any]]]:
            return lambda st: [(float(getattr(st, field)), {ns: st.namespace})]

        for field, _, name, unit, doc in CACHE_COUNTERS:
            meter.create_observable_counter(
                name, [self._observe(counter_of(field))], unit=unit, description=doc
            )

        def flushes(st: CacheStats) -> Iterable[tuple[float, dict[str, str]]]:
            for reason, n in sorted(st.flushes.items()):
                yield n, {ns: st.namespace, "tiercache.flush.reason": reason}

        meter.create_observable_counter(
            "tiercache.flushes",
            [self._observe(flushes)],
            unit="{write}",
            description="Writes of changed values, by what caused them.",
        )

        def memory(st: CacheStats) -> Iterable[tuple[float, dict[str, str]]]:
            return [(t.size, {ns: st.namespace}) for t in st.tiers if t.size is not None]

        def bus(field: str) -> Callable[[CacheStats], Iterable[tuple[float, Any]]]:
            def each(st: CacheStats) -> Iterable[tuple[float, dict[str, str]]]:
                if st.bus_healthy is None:
                    return []
                return [(float(getattr(st, field)), {ns: st.namespace})]

            return each

        gauges: list[tuple[str, Callable[[CacheStats], Iterable[Any]], str, str]] = [
            ("tiercache.memory.entries", memory, "{entry}", "Entries in the memory tier."),
            ("tiercache.bus.healthy", bus("bus_healthy"), "1", "1 while the bus is caught up."),
            (
                "tiercache.bus.unhealthy_duration",
                bus("bus_unhealthy_for_s"),
                "s",
                "How long the invalidation bus has been unhealthy.",
            ),
            (
                "tiercache.bus.lag",
                bus("bus_lag_s"),
                "s",
                "Age of the last invalidation heard when it was handled.",
            ),
            (
                "tiercache.degraded",
                counter_of("degraded"),
                "1",
                "1 while the shared tier's circuit breaker is open or probing.",
            ),
            (
                "tiercache.unreachable_duration",
                counter_of("unreachable_for_s"),
                "s",
                "How long the shared tier has been failing.",
            ),
            (
                "tiercache.journal.depth",
                counter_of("journal_depth"),
                "{change}",
                "Journaled changes waiting for the shared tier.",
            ),
            ("tiercache.dirty.entries", counter_of("dirty"), "{entry}", "Unwritten changes."),
            (
                "tiercache.dirty.oldest_age",
                counter_of("oldest_dirty_age_s"),
                "s",
                "Age of the oldest unwritten change.",
            ),
        ]
        for name, each, unit, doc in gauges:
            meter.create_observable_gauge(name, [self._observe(each)], unit=unit, description=doc)


def instrument(
    cache: TieredCache,
    meter_provider: metrics.MeterProvider | None = None,
    *,
    spans: bool = False,
    tracer_provider: trace.TracerProvider | None = None,
    span_keys: bool = False,
) -> Instrumentation:
    """Report ``cache``'s stats through OpenTelemetry metrics, with
    ``meter_provider`` (the global one when None); with ``spans=True``,
    also spans of its loads and flushes, with ``tracer_provider`` (the
    global one when None), naming the key only if ``span_keys``.
    Instrument each cache once; :meth:`Instrumentation.close` stops it."""
    if not isinstance(cache, TieredCache):
        raise TypeError(f"instrument() takes a TieredCache, got {cache!r}")
    from . import __version__

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter("tiercache", __version__)
    tracing = None
    if spans:
        tracers = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        tracing = _Spans(tracers.get_tracer("tiercache", __version__), span_keys)
    return Instrumentation(cache, meter, tracing)
