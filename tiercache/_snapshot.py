"""The stats snapshot: every counter of one cache, frozen at one moment."""

from __future__ import annotations

from ._state import CacheState
from ._stats import CacheStats, TierStats

__all__ = ["stats_of"]


def stats_of(s: CacheState) -> CacheStats:
    """A frozen snapshot of every counter; ``str()`` of it is a table."""
    with s.mlock:
        mem = TierStats(
            name="memory",
            hits=s.hits,
            misses=s.misses,
            reads=s.hits + s.misses,
            size=len(s.memory),
            evictions=s.memory.evictions,
        )
        pending = [e for e in s.memory.entries() if e.pending is not None]
        now = s.clock.monotonic()
        oldest = max((now - e.pending_since for e in pending), default=0.0)
    core = s.core
    bus = s.bus
    extra = (s.bus_counters.snapshot(),) if bus is not None else ()
    since = bus.unhealthy_since if bus is not None else None
    return CacheStats(
        namespace=s.namespace,
        tiers=(mem, *(c.snapshot() for c in core.counters), *extra),
        invalidations=s.invalidated,
        invalidations_sent=s.invalidations_sent,
        invalidations_received=s.invalidations_received,
        bus_lag_s=s.bus_lag_s,
        bus_gaps=s.gaps,
        revalidations=s.revalidations,
        bus_healthy=None if bus is None else bus.healthy,
        bus_unhealthy_for_s=0.0 if since is None else s.clock.monotonic() - since,
        degraded=s.breaker is not None and s.breaker.degraded,
        unreachable_for_s=(
            s.clock.monotonic() - s.breaker.down_since
            if s.breaker is not None and s.breaker.down_since is not None
            else 0.0
        ),
        journal_depth=s.journal.depth if s.journal is not None else 0,
        journaled=s.journaled,
        loads=core.loads,
        promotions=core.promotions,
        flushes=dict(core.flushes),
        writes_avoided=s.writes_avoided,
        evictions=s.memory.evictions,
        corrupt_entries=core.corrupt,
        quarantined=core.quarantined,
        served_unconfirmed=s.served_unconfirmed,
        merges=core.merges,
        conflicts=core.conflicts,
        conflicts_lost=core.conflicts_lost,
        versions_backwards=core.versions_backwards,
        dirty=len(pending),
        oldest_dirty_age_s=max(0.0, oldest),
    )
