"""What the layers of one cache share: its parts, settings and counters.

::

    TieredCache (facade) ──builds──> CacheState ──read and written by──> every layer
                                         │
        memory tier + its lock, key-lock registry, core (tiers, envelopes),
        clock, bus, breaker, journal, flags, counters; and two hooks the
        lower layers call up through: ensure_timer() and replay_flow()

There is no logic here beyond the checks every entry point makes. Each
layer (read path, write path, merge, journaling, replay, direct writes,
leases, scopes, invalidation, lifecycle) holds this object and the few
layers below it that it calls; the module graph runs one way only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ._breaker import Breaker
from ._bus import Bus
from ._clock import Clock, SystemClock
from ._core import Core
from ._exceptions import TierCacheError
from ._flow import Flow, Tracer
from ._journal import Journal
from ._keys import check_key
from ._locks import LockRegistry
from ._policy import Expiry, FlushPolicy, Lease, Resolver
from ._stats import TierCounters
from ._tiers._base import PersistentTier
from ._tiers._memory import Entry, MemoryTier
from ._tracking import detach

__all__ = ["CacheState", "Flight", "OpenScope", "Pinner"]


class Pinner(Protocol):
    """What pins an entry (a scope): it records the entry it pinned in the
    same stores as the pin, so letting go can never miss it."""

    _entry: Entry | None


class OpenScope(Pinner, Protocol):
    """What the layers below a scope see of it: its key, the entry it pins
    and the live value it handed out."""

    key: str
    _value: Any

    @property
    def conflict(self) -> Resolver | None:
        """The scope's own resolver for same-field conflicts, if any."""


class Flight:
    """A sync load in progress that other threads wait for."""

    __slots__ = ("done", "entry", "error", "event")

    def __init__(self) -> None:
        self.done = False
        # Made by the first waiter only: an Event costs more than the rest
        # of an uncontended load's bookkeeping.
        self.event: threading.Event | None = None
        self.entry: Entry | None = None
        self.error: BaseException | None = None


def _drop(entry: Entry) -> None:
    detach(entry.value)


def _no_timer(*, retry: bool = False) -> None:
    return None


def _no_replay(reason: str = "replay") -> Flow[int]:
    return 0
    yield  # pragma: no cover - a generator, like the flow it stands for


class CacheState:
    """The shared parts of one cache (see the module docstring)."""

    def __init__(
        self,
        *,
        namespace: str,
        memory: MemoryTier,
        core: Core,
        clock: Clock,
        flush: FlushPolicy,
        expiry: Expiry | None,
        conflict: Resolver,
        lease: Lease | None,
        max_stale: float | None,
        max_key_length: int,
        bus: Bus | None,
        journal: Journal | None,
    ) -> None:
        self.namespace = namespace
        self.memory = memory
        memory.on_drop = _drop
        self.mlock = memory.lock
        self.peek = memory.peek
        self.recent = memory.recent
        #: Entries pushed out of memory that still wait to be written.
        self.evicted = memory.evicted
        #: Per-key locks; guarded by the memory lock.
        self.locks = LockRegistry(self.mlock)
        self.core = core
        self.clock = clock
        # Memory-side time bounds (expiry, sliding touches, remembered
        # misses) run on the monotonic clock: a wall clock stepped back must
        # not stretch them. time.monotonic itself for the system clock: one
        # call fewer per TTL hit.
        self.now: Callable[[], float] = (
            time.monotonic if type(clock) is SystemClock else clock.monotonic
        )
        self.flush_policy = flush
        self.write_through = flush.interval is None
        #: Settles same-field write conflicts (see :data:`Resolver`).
        self.conflict = conflict
        #: Strict mode for every scope (a scope may override).
        self.lease = lease
        #: Longest time a memory copy is served without being known current.
        self.max_stale = max_stale
        self.max_key_length = max_key_length
        self.sliding = core.sliding
        # No sliding expiry: a hit is checked inline, two comparisons at most
        # (expiry, and age against max_stale), by the hot paths.
        self.plain_hits = not self.sliding
        self.ttl_seconds = expiry.seconds if expiry is not None else 0.0
        self.touch_interval = expiry.touch_interval if expiry is not None else 0.0
        self.bus = bus
        self.bus_counters = TierCounters("bus")
        #: The shared (last persistent) tier as given, before the breaker
        #: wraps it; None without persistent tiers.
        self.shared: PersistentTier | None = core.tiers[-1] if core.tiers else None
        #: The shared tier adds each write's invalidation to the bus's stream
        #: in the write's own script (tiercache._defaults.publish_in_tier):
        #: nothing is published separately.
        self.tier_publishes = False
        #: Set when the shared tier sits behind a circuit breaker.
        self.breaker: Breaker | None = None
        self.journal = journal
        #: The journal as a write-ahead log: with WriteBehind, every change
        #: is journaled when its scope exits and the timer replays it.
        self.wal = journal is not None and not self.write_through
        #: key -> records of it waiting in the journal (under the memory
        #: lock): a key with records is never loaded from, nor written to,
        #: the shared tier before they are replayed.
        self.journal_keys: dict[str, int] = {}
        #: Keys whose journaled records expect a version that a merge at
        #: replay made wrong: their next replay merges with what is stored.
        self.journal_rebase: set[str] = set()
        #: Keys served from a local copy the shared tier could not confirm
        #: (it was down): dropped from memory when it answers again.
        self.unconfirmed: set[str] = set()
        #: A journal replay is running (guarded by the flight lock).
        self.replaying = False
        self.flights: dict[str, Flight] = {}
        self.aflights: dict[str, asyncio.Task[Entry | None]] = {}
        self.flight_lock = threading.Lock()
        #: No new scopes or calls (close() has begun).
        self.closed = False
        #: close() is past its last flush: nothing more can be written.
        self.shut = False
        #: Memory copies loaded before this moment are not vouched for by the
        #: bus (it starts, or lost track at a gap, here).
        self.trusted_since = clock.monotonic()
        # Counters, bumped under the memory lock (or by one flow per key).
        self.hits = 0
        self.misses = 0
        self.writes_avoided = 0
        self.invalidated = 0
        self.invalidations_sent = 0
        self.invalidations_received = 0
        self.bus_lag_s = 0.0
        self.gaps = 0
        self.revalidations = 0
        self.served_unconfirmed = 0
        self.journaled = 0
        #: Upward hooks, set by the facade once every layer exists: start
        #: the background flusher; replay the journal before a read or write.
        #: Spans around loads and flushes (tiercache.otel; None: off).
        self.tracer: Tracer | None = None
        self.ensure_timer: Callable[..., None] = _no_timer
        self.replay_flow: Callable[..., Flow[int]] = _no_replay

    # -- the checks every entry point makes ----------------------------------------

    def check_key(self, key: object) -> None:
        check_key(key, self.max_key_length)

    def check_open(self) -> None:
        if self.closed:
            raise TierCacheError(f"cache {self.namespace!r} is closed")

    def closed_under(self, key: str) -> TierCacheError:
        """The error of a scope whose cache was closed while it was open."""
        return TierCacheError(
            f"cache {self.namespace!r} was closed while the scope of {key!r} was open (close() "
            "waited its timeout for it): its change was not applied"
        )

    def pending_entries(self) -> list[Entry]:
        with self.mlock:
            return [e for e in self.memory.entries() if e.pending is not None]

    def others_in_scopes(self, me: Any) -> bool:
        """Whether a key's lock is held by another thread or task than ``me``
        (a scope, or a set/update, under way)."""
        with self.mlock:
            return self.locks.held_by_others_locked(me)
