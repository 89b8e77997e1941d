"""What the exporters build on: the latency histogram as a whole, the
invalidations counted on both sides of a bus, and the folding of the
stats' log buckets into Prometheus bounds (never faster than it was, at
most one log bucket slower)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import LocalBus, LocalHub, MemoryTier, TieredCache
from tiercache._invalidation import _lag_s
from tiercache._stats import Histogram
from tiercache.prometheus import DEFAULT_BUCKETS, CacheCollector
from tiercache.testing import DictTier

WIDTH = 2 ** (1 / 8)  # one log bucket


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 5e7, allow_nan=False), max_size=200))
def test_folded_buckets_never_count_a_call_faster_and_at_most_one_bucket_slower(
    micros: list[float],
) -> None:
    h = Histogram()
    for us in micros:
        h.record(us)
    assert h.count == len(micros) and h.sum == sum(micros)
    folded = CacheCollector()._buckets(h.buckets, h.count)
    assert folded[-1] == ("+Inf", float(len(micros)))
    for (le, n), bound in zip(folded, DEFAULT_BUCKETS, strict=False):
        assert float(le) == bound
        at_most = sum(1 for us in micros if us / 1e6 <= bound)
        surely = sum(1 for us in micros if us / 1e6 * WIDTH * 1.000001 <= bound)
        assert surely <= n <= at_most, (bound, n, at_most, surely)


def test_invalidations_are_counted_where_sent_and_where_heard() -> None:
    hub = LocalHub()
    shared = DictTier()
    a = TieredCache(MemoryTier(), shared, namespace="n", bus=LocalBus(hub, namespace="n"))
    b = TieredCache(MemoryTier(), shared, namespace="n", bus=LocalBus(hub, namespace="n"))
    try:
        b.get("k")
        for i in range(3):
            a.set("k", i)
        a.delete("k")
        sa, sb = a.stats(), b.stats()
        assert sa.invalidations_sent == 4 and sa.invalidations_received == 0
        assert sb.invalidations_received == 4 and sb.invalidations_sent == 0
        assert sb.bus_lag_s == 0.0  # a local bus's ids carry no clock
        assert "sent 4, heard 0" in str(sa)
    finally:
        a.close()
        b.close()


def test_lag_is_read_from_a_redis_stream_id() -> None:
    assert _lag_s("1800000000000-3", 1800000000.25) == 0.25
    assert _lag_s("1800000000000-0", 1700000000.0) == 0.0  # a clock behind: never negative
    assert _lag_s("17-0", 1800000000.0) is None
    assert _lag_s(None, 1.0) is None and _lag_s("x-1", 1.0) is None
