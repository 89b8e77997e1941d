"""tiercache: a multi-level cache for hot, mutable session objects.

Sessions live as change-tracked Python objects in an in-process LRU, read
through a local disk tier and a shared Redis tier, and are written back only
when they actually changed. Everything public is importable from here.
"""

from __future__ import annotations

from ._bus import Bus, Invalidation, LocalBus, LocalHub, RedisBus
from ._cache import MISSING, TieredCache
from ._clock import Clock, SystemClock
from ._defaults import AUTO, DEFAULT_MAX_STALE
from ._exceptions import (
    ConfigError,
    ConflictError,
    CorruptEntryError,
    DetachedError,
    InvalidKeyError,
    JournalFullError,
    SchemaError,
    SerializationError,
    SignatureError,
    TierCacheError,
    TierError,
    ValueTooLargeError,
    VersionNotReachedError,
)
from ._journal import Journal
from ._mergeable import Counter, Log
from ._policy import (
    Expiry,
    FlushPolicy,
    Lease,
    Quarantine,
    Resolver,
    Schema,
    WriteBehind,
    WriteThrough,
    keep_ours,
    keep_theirs,
    raise_conflict,
)
from ._publish import StatsPublisher, publish_stats
from ._serializers import MsgpackSerializer, PickleSerializer, Serializer
from ._session import LazySession, Scope, cached_session
from ._shutdown import ShutdownSignals, close_on_signals
from ._stats import CacheStats, TierStats
from ._tiers import DiskTier, MemoryTier, PersistentTier, RedisTier
from ._tracking import (
    PATH_DEPTH,
    FieldPath,
    detach,
    dirty_fields,
    dirty_paths,
    is_detached,
    is_dirty,
    mark_clean,
    to_plain,
    track,
)

__all__ = [
    "AUTO",
    "DEFAULT_MAX_STALE",
    "MISSING",
    "PATH_DEPTH",
    "Bus",
    "CacheStats",
    "Clock",
    "ConfigError",
    "ConflictError",
    "CorruptEntryError",
    "Counter",
    "DetachedError",
    "DiskTier",
    "Expiry",
    "FieldPath",
    "FlushPolicy",
    "InvalidKeyError",
    "Invalidation",
    "Journal",
    "JournalFullError",
    "LazySession",
    "Lease",
    "LocalBus",
    "LocalHub",
    "Log",
    "MemoryTier",
    "MsgpackSerializer",
    "PersistentTier",
    "PickleSerializer",
    "Quarantine",
    "RedisBus",
    "RedisTier",
    "Resolver",
    "Schema",
    "SchemaError",
    "Scope",
    "SerializationError",
    "Serializer",
    "ShutdownSignals",
    "SignatureError",
    "StatsPublisher",
    "SystemClock",
    "TierCacheError",
    "TierError",
    "TierStats",
    "TieredCache",
    "ValueTooLargeError",
    "VersionNotReachedError",
    "WriteBehind",
    "WriteThrough",
    "cached_session",
    "close_on_signals",
    "detach",
    "dirty_fields",
    "dirty_paths",
    "is_detached",
    "is_dirty",
    "keep_ours",
    "keep_theirs",
    "mark_clean",
    "publish_stats",
    "raise_conflict",
    "to_plain",
    "track",
]

__version__ = "0.1.0.dev0"
