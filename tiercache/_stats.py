"""Counters and their frozen snapshot.

Counting is split by cost: the memory-hit path bumps plain integers while it
already holds the memory lock; persistent-tier calls (which cost tens of
microseconds anyway) record counts, bytes and latency into a
:class:`TierCounters` under its own lock. :meth:`TieredCache.stats` copies
all of it into a :class:`CacheStats` snapshot that never changes.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CacheStats", "Histogram", "TierCounters", "TierStats"]

# Latency buckets: 8 per power of two (about 9% wide) from 1 us to ~67 s.
_PER_OCTAVE = 8
_BUCKETS = 26 * _PER_OCTAVE


class Histogram:
    """A cheap log-bucket latency histogram (microseconds).

    >>> h = Histogram()
    >>> for us in (10, 20, 30, 1000): h.record(us)
    >>> 18 < h.quantile(0.5) < 33, h.count
    (True, 4)
    """

    __slots__ = ("buckets", "count", "sum")

    #: How many buckets every histogram has.
    SIZE = _BUCKETS

    def __init__(self) -> None:
        self.buckets = [0] * _BUCKETS
        self.count = 0
        #: Total microseconds recorded (a metrics histogram's ``_sum``).
        self.sum = 0.0

    def record(self, micros: float) -> None:
        i = 0 if micros <= 1.0 else min(_BUCKETS - 1, int(math.log2(micros) * _PER_OCTAVE) + 1)
        self.buckets[i] += 1
        self.count += 1
        self.sum += micros

    @staticmethod
    def upper_edge(index: int) -> float:
        """Microseconds: the largest value bucket ``index`` holds."""
        return float(2.0 ** (index / _PER_OCTAVE))

    def quantile(self, q: float) -> float:
        """The upper edge of the bucket holding quantile ``q``; 0 when empty."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank and n:
                return float(2.0 ** (i / _PER_OCTAVE))
        return float(2.0 ** (_BUCKETS / _PER_OCTAVE))  # pragma: no cover - rank <= count


class TierCounters:
    """Live counters of one persistent tier (thread-safe)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.hits = self.misses = self.reads = self.writes = self.deletes = 0
        self.touches = self.bytes_read = self.bytes_written = self.errors = 0
        self.latency = Histogram()

    def snapshot(self) -> TierStats:
        with self.lock:
            return TierStats(
                name=self.name,
                hits=self.hits,
                misses=self.misses,
                reads=self.reads,
                writes=self.writes,
                deletes=self.deletes,
                touches=self.touches,
                bytes_read=self.bytes_read,
                bytes_written=self.bytes_written,
                errors=self.errors,
                latency_p50_us=self.latency.quantile(0.5),
                latency_p99_us=self.latency.quantile(0.99),
                latency_count=self.latency.count,
                latency_sum_us=self.latency.sum,
                latency_buckets=tuple(self.latency.buckets),
            )


@dataclass(frozen=True, slots=True)
class TierStats:
    """One tier's counters at the moment of the snapshot."""

    name: str
    hits: int = 0
    misses: int = 0
    reads: int = 0
    writes: int = 0
    deletes: int = 0
    touches: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    errors: int = 0
    latency_p50_us: float = 0.0
    latency_p99_us: float = 0.0
    #: Memory tier only: live entries and entries pushed out by the policy.
    size: int | None = None
    evictions: int | None = None
    #: The whole latency histogram, for metrics exporters: calls timed,
    #: their total microseconds, and the count of each log bucket (bucket
    #: ``i`` holds calls of at most :meth:`Histogram.upper_edge` ``(i)`` us).
    latency_count: int = 0
    latency_sum_us: float = 0.0
    latency_buckets: tuple[int, ...] = field(default=(), repr=False)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A frozen snapshot of a cache's counters; ``str()`` is a table.

    ``tiers`` runs fastest first (memory, then each persistent tier).
    ``flushes`` counts writes of dirty values by what triggered them
    (``exit``, ``evict``, ``timer``, ``close``, ``explicit``, ``set``).
    """

    namespace: str
    tiers: tuple[TierStats, ...]
    loads: int = 0
    promotions: int = 0
    flushes: dict[str, int] = field(default_factory=dict)
    writes_avoided: int = 0
    evictions: int = 0
    corrupt_entries: int = 0
    #: Unreadable entries moved aside (see :class:`~tiercache.Quarantine`).
    quarantined: int = 0
    #: Writes that lost a compare-and-set race and were merged and retried;
    #: same-field conflicts handed to the resolver; and conflicts that a
    #: background flush could not report to a handler (theirs was kept).
    merges: int = 0
    conflicts: int = 0
    conflicts_lost: int = 0
    #: Stored versions found lower than one this process stored or saw for
    #: the key: the store lost acknowledged writes (a failover, a restore).
    #: Each was logged and, where this process still held its value,
    #: written back as a merge over what is stored.
    versions_backwards: int = 0
    #: Memory copies dropped because another process wrote (or a bus gap);
    #: bus gaps seen; stale copies re-read because of ``max_stale``; whether
    #: the bus is healthy (None: no bus) and for how long it has not been.
    invalidations: int = 0
    #: Invalidations this process's writes announced, and those it heard
    #: from other processes (each may drop one copy or none).
    invalidations_sent: int = 0
    invalidations_received: int = 0
    #: Seconds between the server adding the last invalidation heard and
    #: this process handling it (the Redis server's clock against this
    #: host's: skew adds to it); 0 before the first.
    bus_lag_s: float = 0.0
    bus_gaps: int = 0
    revalidations: int = 0
    bus_healthy: bool | None = None
    bus_unhealthy_for_s: float = 0.0
    #: The shared tier is failing (circuit open or probing), for how long;
    #: writes acknowledged into the journal meanwhile, and how many wait.
    degraded: bool = False
    unreachable_for_s: float = 0.0
    journaled: int = 0
    journal_depth: int = 0
    #: Local (disk) copies served while the shared tier could not confirm
    #: them, within ``max_stale``; reconfirmed once it answers again.
    served_unconfirmed: int = 0
    dirty: int = 0
    oldest_dirty_age_s: float = 0.0

    def tier(self, name: str) -> TierStats:
        """The stats of the tier called ``name`` (``"memory"``, ``"disk"`` ...)."""
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """Plain builtins, for JSON export or a metrics system."""
        d = asdict(self)
        d["flushes_total"] = sum(self.flushes.values())
        return d

    def __str__(self) -> str:
        cols = (
            "tier",
            "hits",
            "misses",
            "reads",
            "writes",
            "deletes",
            "bytes in",
            "bytes out",
            "errors",
            "p50 us",
            "p99 us",
        )
        rows = [
            (
                t.name,
                str(t.hits),
                str(t.misses),
                str(t.reads),
                str(t.writes),
                str(t.deletes),
                str(t.bytes_read),
                str(t.bytes_written),
                str(t.errors),
                f"{t.latency_p50_us:.0f}" if t.name != "memory" else "-",
                f"{t.latency_p99_us:.0f}" if t.name != "memory" else "-",
            )
            for t in self.tiers
        ]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        line = "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
        out = [f"tiercache stats — namespace {self.namespace!r}", line, "-" * len(line)]
        for r in rows:
            out.append(
                "  ".join(
                    v.rjust(w) if i else v.ljust(w)
                    for i, (v, w) in enumerate(zip(r, widths, strict=True))
                )
            )
        flushes = ", ".join(f"{k} {v}" for k, v in sorted(self.flushes.items()) if v) or "none"
        out.append("")
        out.append(
            f"loads {self.loads}  promotions {self.promotions}"
            f"  writes avoided {self.writes_avoided}  evictions {self.evictions}"
            f"  corrupt {self.corrupt_entries}  quarantined {self.quarantined}"
        )
        out.append(
            f"merges {self.merges}  conflicts {self.conflicts}"
            f"  conflicts lost {self.conflicts_lost}"
            f"  versions backwards {self.versions_backwards}"
        )
        if self.bus_healthy is not None:
            state = "healthy" if self.bus_healthy else f"DOWN {self.bus_unhealthy_for_s:.1f} s"
            out.append(
                f"bus {state}  invalidations {self.invalidations}"
                f" (sent {self.invalidations_sent}, heard {self.invalidations_received},"
                f" lag {self.bus_lag_s * 1000:.1f} ms)  gaps {self.bus_gaps}"
                f"  revalidations {self.revalidations}"
            )
        if self.degraded or self.journal_depth or self.journaled or self.served_unconfirmed:
            state = f"DEGRADED {self.unreachable_for_s:.1f} s" if self.degraded else "ok"
            out.append(
                f"shared tier {state}  journal depth {self.journal_depth}"
                f"  journaled {self.journaled}  served unconfirmed {self.served_unconfirmed}"
            )
        out.append(f"flushes: {flushes}")
        out.append(f"dirty now {self.dirty}  oldest dirty {self.oldest_dirty_age_s:.3f} s")
        return "\n".join(out)
