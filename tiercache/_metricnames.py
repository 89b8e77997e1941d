"""What the metrics exporters (tiercache.prometheus, tiercache.otel) report:
one table, so both name the same numbers of :class:`~tiercache.CacheStats`.

Each row is (stats field, Prometheus name without ``tiercache_`` and
``_total``, OpenTelemetry name, OpenTelemetry unit, help). No I/O, no
third-party imports.
"""

from __future__ import annotations

__all__ = ["CACHE_COUNTERS", "TIER_COUNTERS"]

Row = tuple[str, str, str, str, str]

CACHE_COUNTERS: tuple[Row, ...] = (
    ("loads", "loads", "tiercache.loads", "{load}", "Values loaded from a persistent tier."),
    (
        "promotions",
        "promotions",
        "tiercache.promotions",
        "{write}",
        "Copies written into a faster tier after a hit below it.",
    ),
    (
        "writes_avoided",
        "writes_avoided",
        "tiercache.writes_avoided",
        "{scope}",
        "Scopes that changed nothing, so wrote nothing.",
    ),
    (
        "evictions",
        "evictions",
        "tiercache.evictions",
        "{entry}",
        "Entries the memory tier's policy pushed out.",
    ),
    (
        "corrupt_entries",
        "corrupt_entries",
        "tiercache.corrupt_entries",
        "{entry}",
        "Unreadable stored entries, each a counted miss.",
    ),
    (
        "quarantined",
        "quarantined",
        "tiercache.quarantined",
        "{entry}",
        "Unreadable entries moved aside.",
    ),
    (
        "merges",
        "merges",
        "tiercache.merges",
        "{write}",
        "Writes that lost a compare-and-set race and were merged.",
    ),
    (
        "conflicts",
        "conflicts",
        "tiercache.conflicts",
        "{conflict}",
        "Same-field conflicts handed to the resolver.",
    ),
    (
        "conflicts_lost",
        "conflicts_lost",
        "tiercache.conflicts_lost",
        "{conflict}",
        "Conflicts a background write or replay settled by keeping theirs.",
    ),
    (
        "invalidations",
        "invalidations",
        "tiercache.invalidations",
        "{entry}",
        "Memory copies dropped because another process wrote.",
    ),
    (
        "invalidations_sent",
        "invalidations_sent",
        "tiercache.invalidations.sent",
        "{message}",
        "Invalidations this process's writes announced.",
    ),
    (
        "invalidations_received",
        "invalidations_received",
        "tiercache.invalidations.received",
        "{message}",
        "Invalidations heard from other processes.",
    ),
    (
        "bus_gaps",
        "bus_gaps",
        "tiercache.bus.gaps",
        "{gap}",
        "Times invalidations were lost (every clean copy was dropped).",
    ),
    (
        "revalidations",
        "revalidations",
        "tiercache.revalidations",
        "{read}",
        "Copies re-read by version because of max_stale.",
    ),
    (
        "journaled",
        "journaled",
        "tiercache.journaled",
        "{change}",
        "Changes acknowledged into the journal.",
    ),
    (
        "served_unconfirmed",
        "served_unconfirmed",
        "tiercache.served_unconfirmed",
        "{read}",
        "Local copies served while the shared tier could not confirm them.",
    ),
)

#: Per tier. The OpenTelemetry bytes counters share one name, by direction.
TIER_COUNTERS: tuple[Row, ...] = (
    ("hits", "tier_hits", "tiercache.tier.hits", "{read}", "Reads that found the key."),
    ("misses", "tier_misses", "tiercache.tier.misses", "{read}", "Reads that missed."),
    ("reads", "tier_reads", "tiercache.tier.reads", "{read}", "Keys read."),
    ("writes", "tier_writes", "tiercache.tier.writes", "{write}", "Keys written."),
    ("deletes", "tier_deletes", "tiercache.tier.deletes", "{delete}", "Keys deleted."),
    ("touches", "tier_touches", "tiercache.tier.touches", "{touch}", "Expiry changes."),
    ("bytes_read", "tier_read_bytes", "tiercache.tier.io", "By", "Bytes read."),
    ("bytes_written", "tier_written_bytes", "tiercache.tier.io", "By", "Bytes written."),
    ("errors", "tier_errors", "tiercache.tier.errors", "{error}", "Failed calls."),
)
