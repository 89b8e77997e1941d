"""TieredCache: the sync and async shells around the core.

::

    get(key) ──memory hit──> live value (returned before any flow starts)
       │
       └─miss──> single-flight ──> core.load_flow ──run()/arun()──> tiers
                                        │
                                        └─> install in memory (one live object per key)

    scope exit / set / evict / timer / flush / close
       └─> seal dirty value once (envelope bytes, version + 1) ─> entry.pending
           └─> core.write_flow ──> every persistent tier ──> pending cleared

Every algorithm is a generator flow written once; the public sync method
drives it with :func:`~tiercache._flow.run`, its ``a``-prefixed twin with
:func:`~tiercache._flow.arun`. The only code kept twice is how to wait: a
``threading`` lock or event for sync callers, an awaited future for async
ones.

Values rest *detached* in memory: ``get`` hands out the live object, and a
mutation of it outside a session scope raises :class:`DetachedError` (use
``cache.session(key)`` or ``cache.set``), so no change is ever silently lost
and every change happens under the key's lock.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar, cast

from . import _fork
from ._breaker import Breaker
from ._bus import Bus, Invalidation
from ._clock import Clock, SystemClock
from ._core import TOMBSTONE_SECONDS, Core, Loaded
from ._envelope import decode as _envelope_decode
from ._envelope import is_tombstone as _is_tombstone
from ._envelope import peek_version
from ._exceptions import (
    ConfigError,
    ConflictError,
    CorruptEntryError,
    JournalFullError,
    TierCacheError,
    TierError,
)
from ._flow import Call, Flow, Pause, arun, run
from ._journal import Journal, Record
from ._keys import check_key, check_namespace
from ._locks import POLL, Hold, LockRegistry, owner
from ._policy import (
    Expiry,
    FlushPolicy,
    Lease,
    Quarantine,
    Resolver,
    Schema,
    WriteThrough,
    raise_conflict,
)
from ._serializers import MsgpackSerializer, Serializer
from ._session import Scope
from ._stats import CacheStats, TierCounters, TierStats
from ._tiers._base import CasItem, PersistentTier, SetItem
from ._tiers._memory import Entry, MemoryTier
from ._tracking import (
    MISSING as _TRACKING_MISSING,
)
from ._tracking import (
    WHOLE,
    attach,
    changes,
    detach,
    is_dirty,
    mark_clean,
    quick_clean,
    revert,
    root_of,
    to_plain,
    track,
)
from ._tracking import _same as same

__all__ = ["MISSING", "TieredCache"]

log = logging.getLogger("tiercache")
T = TypeVar("T")


#: Returned by ``get(key, MISSING)`` on a miss; never a stored value. The
#: same object marks a missing field in merges and in ``changes()``.
MISSING: Any = _TRACKING_MISSING


class _Flight:
    """A sync load in progress that other threads wait for."""

    __slots__ = ("done", "entry", "error", "event")

    def __init__(self) -> None:
        self.done = False
        # Made by the first waiter only: an Event costs more than the rest
        # of an uncontended load's bookkeeping.
        self.event: threading.Event | None = None
        self.entry: Entry | None = None
        self.error: BaseException | None = None


class _Undo:
    """What sealing changed in an entry, to put back if its write fails."""

    __slots__ = (
        "base",
        "created_ms",
        "expires_at",
        "initial",
        "pending",
        "pending_since",
        "size",
        "version",
    )

    def __init__(self, entry: Entry) -> None:
        self.version = entry.version
        self.pending = entry.pending
        self.pending_since = entry.pending_since
        self.size = entry.size
        self.expires_at = entry.expires_at
        self.created_ms = entry.created_ms
        self.initial = entry.initial
        self.base = None if entry.base is None else dict(entry.base)

    def restore(self, entry: Entry) -> None:
        entry.version = self.version
        entry.pending = self.pending
        entry.pending_since = self.pending_since
        entry.size = self.size
        entry.expires_at = self.expires_at
        entry.created_ms = self.created_ms
        entry.initial = self.initial
        entry.base = self.base


class TieredCache:
    """A multi-level cache of live, change-tracked values.

    ``tiers`` run fastest first: a :class:`MemoryTier`, then any persistent
    tiers (:class:`DiskTier`, :class:`RedisTier`, your own
    :class:`PersistentTier`). ``namespace`` prefixes every stored key.
    ``serializer`` defaults to :class:`MsgpackSerializer`; ``flush`` to
    :class:`WriteThrough`; ``ttl`` is ``None`` (no expiry), seconds (absolute
    expiry after each write) or an :class:`Expiry`; ``schema`` is the
    default :class:`Schema` of stored values.

    Across processes: ``bus`` (a :class:`RedisBus`) carries invalidations,
    ``max_stale`` bounds how old a served copy may be, ``conflict`` settles
    same-field conflicts, ``lease`` makes every scope strict. When things
    go wrong: ``journal`` (a :class:`Journal`) acknowledges changes the
    shared tier cannot take and replays them (with :class:`WriteBehind` it
    journals every change, so a crash loses nothing); ``max_value_bytes``
    bounds a value; ``corrupt`` (a :class:`Quarantine`) says how long
    unreadable bytes are kept aside.

    >>> from tiercache import TieredCache, MemoryTier
    >>> cache = TieredCache(MemoryTier(maxsize=100), namespace="doc")
    >>> cache.set("greeting", {"text": "hi"})
    >>> cache.get("greeting")
    {'text': 'hi'}
    >>> with cache.session("chat:1") as s:
    ...     s["count"] = s.get("count", 0) + 1
    >>> cache.get("chat:1")["count"]
    1
    >>> cache.close()
    """

    def __init__(
        self,
        *tiers: MemoryTier | PersistentTier,
        namespace: str,
        serializer: Serializer | None = None,
        flush: FlushPolicy | None = None,
        ttl: float | Expiry | None = None,
        clock: Clock | None = None,
        schema: Schema | None = None,
        conflict: Resolver = raise_conflict,
        lease: Lease | None = None,
        bus: Bus | None = None,
        max_stale: float | None = None,
        max_value_bytes: int | None = None,
        journal: Journal | None = None,
        max_key_length: int = 1024,
        corrupt: Quarantine | None = None,
    ) -> None:
        if not tiers or not isinstance(tiers[0], MemoryTier):
            raise ConfigError("the first tier must be a MemoryTier (tiers run fastest first)")
        persistent: list[PersistentTier] = []
        for t in tiers[1:]:
            if not isinstance(t, PersistentTier):
                raise ConfigError(
                    f"tiers after the first must be PersistentTier instances, got {t!r}"
                )
            persistent.append(t)
        check_namespace(namespace)
        if serializer is None:
            serializer = MsgpackSerializer()
        elif not isinstance(serializer, Serializer):
            raise ConfigError(f"serializer must implement Serializer, got {serializer!r}")
        flush = flush if flush is not None else WriteThrough()
        if not isinstance(flush, FlushPolicy):
            raise ConfigError(f"flush must be WriteThrough() or WriteBehind(...), got {flush!r}")
        if ttl is None or isinstance(ttl, Expiry):
            expiry = ttl
        else:
            expiry = Expiry(ttl)
        if (
            isinstance(max_key_length, bool)
            or not isinstance(max_key_length, int)
            or not (1 <= max_key_length <= 65536)
        ):
            raise ConfigError(f"max_key_length must be an int in 1..65536, got {max_key_length!r}")

        if not callable(conflict):
            raise ConfigError(f"conflict must be a resolver function, got {conflict!r}")
        if corrupt is not None and not isinstance(corrupt, Quarantine):
            raise ConfigError(
                f"corrupt must be a Quarantine(keep=seconds) or None, got {corrupt!r}"
            )
        if max_value_bytes is not None and (
            isinstance(max_value_bytes, bool)
            or not isinstance(max_value_bytes, int)
            or max_value_bytes < 1
        ):
            raise ConfigError(
                f"max_value_bytes must be None or an int >= 1, got {max_value_bytes!r}"
            )
        self.namespace = namespace
        self.flush_policy = flush
        #: Settles same-field write conflicts (see :data:`Resolver`).
        self.conflict = conflict
        if lease is not None and not isinstance(lease, Lease):
            raise ConfigError(f"lease must be a Lease(...) or None, got {lease!r}")
        #: Strict mode for every scope of this cache (a scope may override).
        self.lease = lease
        self._renewer = _Renewer()
        if max_stale is not None:
            Expiry(max_stale)  # validates: a number > 0
        #: Longest time a memory copy is served without being known current
        #: (a healthy bus, or a re-read of the shared tier); None: no bound.
        self.max_stale = max_stale
        if bus is not None:
            if not isinstance(bus, Bus):
                raise ConfigError(f"bus must implement Bus (RedisBus, LocalBus), got {bus!r}")
            if getattr(bus, "namespace", namespace) != namespace:
                raise ConfigError(
                    f"the bus is for namespace {bus.namespace!r}, the cache for {namespace!r}"  # type: ignore[attr-defined]
                )
        self._bus = bus
        self._bus_counters = TierCounters("bus")
        self._invalidated = 0
        self._gaps = 0
        self._revalidations = 0
        self.max_key_length = max_key_length
        self._memory = tiers[0]
        self._memory.on_drop = _drop
        self._mlock = self._memory.lock
        self._peek = self._memory.peek
        self._recent = self._memory.recent
        self._clock: Clock = clock or SystemClock()
        # Memory-side time bounds (expiry, sliding touches, remembered misses)
        # run on the monotonic clock: a wall clock stepped back must not
        # stretch them. time.monotonic itself for the system clock: one call
        # fewer per TTL hit.
        self._now = time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic
        self._core = Core(
            persistent,
            namespace=namespace,
            serializer=serializer,
            clock=self._clock,
            expiry=expiry,
            schema=schema or Schema(),
            max_value_bytes=max_value_bytes,
            quarantine=corrupt,
        )
        self._breaker: Breaker | None = None
        if persistent:
            # Every call to the shared tier goes through a circuit breaker:
            # a dead server fails fast instead of costing a timeout per call.
            self._breaker = Breaker(
                persistent[-1],
                self._clock,
                self._on_recovered,
                probe_key=self._core.names.probe,
            )
            self._core.tiers[-1] = cast(PersistentTier, self._breaker)
        if journal is not None and not isinstance(journal, Journal):
            raise ConfigError(f"journal must be a Journal(directory) or None, got {journal!r}")
        if journal is not None and not persistent:
            raise ConfigError("a journal needs a persistent tier to replay into")
        self._journal = journal
        #: A journal replay is running (guarded by the flight lock).
        self._replaying = False
        self._journaled = 0
        #: key -> records of it waiting in the journal (under the memory
        #: lock): a key with records is never loaded from, nor written to,
        #: the shared tier before they are replayed.
        self._journal_keys: dict[str, int] = {}
        #: Keys whose journaled records expect a version that a merge at
        #: replay made wrong: their next replay merges with what is stored.
        self._journal_rebase: set[str] = set()
        #: Keys served from a local copy the shared tier could not confirm
        #: (it was down): dropped from memory when it answers again.
        self._unconfirmed: set[str] = set()
        self._served_unconfirmed = 0
        if journal is not None:
            for rec in journal.snapshot(serializer):
                self._journal_keys[rec.key] = self._journal_keys.get(rec.key, 0) + 1
        self._sliding = self._core.sliding
        # Neither sliding expiry nor a staleness bound: a hit is one
        # comparison at most.
        self._plain_hits = not self._sliding and self.max_stale is None
        self._ttl_seconds = expiry.seconds if expiry is not None else 0.0
        self._touch_interval = expiry.touch_interval if expiry is not None else 0.0
        self._write_through = flush.interval is None
        #: The journal as a write-ahead log: with WriteBehind, every change
        #: is journaled when its scope exits and the timer replays it.
        self._wal = journal is not None and not self._write_through
        self._locks = LockRegistry(self._mlock)
        self._flights: dict[str, _Flight] = {}
        self._aflights: dict[str, asyncio.Task[Entry | None]] = {}
        self._flight_lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        #: No new scopes or calls (close() has begun).
        self._closed = False
        #: close() is past its last flush: nothing more can be written.
        self._shut = False
        self._id = id(self)
        self._timer: threading.Thread | None = None
        self._stop = threading.Event()
        self._timer_lock = threading.Lock()
        ref = weakref.ref(self)
        self._atexit = lambda: _flush_at_exit(ref)
        atexit.register(self._atexit)
        #: Memory copies loaded before this moment are not vouched for by the
        #: bus (it starts, or lost track at a gap, here).
        self._trusted_since = self._clock.monotonic()
        if bus is not None:
            bus.start(self._on_invalidations, self._on_gap)
        _fork.watch(self)
        if journal is not None and journal.depth:
            # Changes a previous run acknowledged while the shared tier was
            # down: put them where they belong now, if it is back.
            try:
                run(self._replay_flow())
            except TierError as exc:
                log.warning("tiercache: journal replay deferred: %s", exc)

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`tiercache._fork`): new locks and
        threads, an empty memory, a new writer tag and bus origin; the
        parent's journal refused."""
        memory = self._memory
        memory._after_fork()
        self._mlock = memory.lock
        self._locks = LockRegistry(self._mlock)
        self._flights = {}
        self._aflights = {}
        self._flight_lock = threading.Lock()
        self._replaying = False
        self._timer = None
        self._stop = threading.Event()
        self._timer_lock = threading.Lock()
        self._renewer = _Renewer()
        self._unconfirmed = set()
        self._journal_keys = {}
        self._journal_rebase = set()
        core = self._core
        core.new_writer()
        for counters in (*core.counters, self._bus_counters):
            counters.lock = threading.Lock()
        for tier in core.tiers:
            hook = getattr(tier, "_after_fork", None)
            if hook is not None:
                hook()
        if self._journal is not None:
            self._journal._after_fork()
        self._trusted_since = self._clock.monotonic()
        hook = getattr(self._bus, "_after_fork", None)
        if hook is not None:
            hook()

    # -- reading ---------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when no tier has it.

        A memory hit returns the live value, read-only: mutate it in
        ``cache.session(key)``. Pass ``default=MISSING`` to tell a stored
        ``None`` from a miss.
        """
        # ``with``, not acquire()/release(): an interrupt (a signal's
        # exception) can land right after an acquire() call, never inside
        # the with statement's own entry, so the lock is always released.
        with self._mlock:
            try:
                entry = self._peek(key)
            except TypeError:  # an unhashable key: the slow path names the problem
                entry = None
            if entry is not None and entry.initial is None:
                exp = entry.expires_at
                if (exp is None or self._now() < exp) if self._plain_hits else self._hit_ok(entry):
                    self._recent(key)
                    self._hits += 1
                    return entry.value
        return self._get_slow(key, default)

    async def aget(self, key: str, default: Any = None) -> Any:
        """Async :meth:`get`; never blocks the event loop on network I/O."""
        with self._mlock:
            try:
                entry = self._peek(key)
            except TypeError:
                entry = None
            if entry is not None and entry.initial is None:
                exp = entry.expires_at
                if (exp is None or self._now() < exp) if self._plain_hits else self._hit_ok(entry):
                    self._recent(key)
                    self._hits += 1
                    return entry.value
        return await self._aget_slow(key, default)

    def _hit_ok(self, entry: Entry) -> bool:
        """Under the memory lock, for caches with sliding expiry or
        ``max_stale``: whether a hit can be served without a flow."""
        return (entry.expires_at is None or self._fresh(entry)) and (
            self.max_stale is None or not self._stale(entry)
        )

    def _fresh(self, entry: Entry) -> bool:
        """Under the memory lock: true when a hit needs no flow (not expired,
        no persistent touch due); extends a sliding expiry."""
        now = self._now()
        if now >= cast(float, entry.expires_at):
            return False
        if self._sliding:
            if now - entry.touched_at >= self._touch_interval:
                return False
            entry.expires_at = now + (entry.ttl or self._ttl_seconds)
        return True

    def _stale(self, entry: Entry) -> bool:
        """Under the memory lock: true when the entry must be re-read before
        it is served: it was last confirmed more than ``max_stale`` ago."""
        # A hard bound, whatever the bus says: a healthy bus delivers
        # invalidations in well under a millisecond, but a writer whose
        # publish failed would leave a copy stale forever without it.
        if self._clock.monotonic() - entry.checked_at <= cast(float, self.max_stale):
            return False
        return entry.pins == 0 and entry.pending is None

    def _get_slow(self, key: str, default: Any) -> Any:
        entry = run(self._lookup_flow(key))
        if entry is None:
            entry = self._load_shared(key)
        return default if entry is None or entry.initial is not None else entry.value

    async def _aget_slow(self, key: str, default: Any) -> Any:
        entry = await arun(self._lookup_flow(key))
        if entry is None:
            entry = await self._aload_shared(key)
        return default if entry is None or entry.initial is not None else entry.value

    def _lookup_flow(self, key: str, *, pin: Scope | None = None) -> Flow[Entry | None]:
        """The memory entry (cache or evicted area) after expiry and sliding
        refresh; ``None`` when it must be loaded. Counts the hit or miss."""
        self._check_key(key)
        self._check_open()
        now = self._now()
        with self._mlock:
            entry = self._memory.lookup(key)
            if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
                self._expire(entry)
                entry = None
            if entry is None:
                self._misses += 1
                return None
            stale = self.max_stale is not None and self._stale(entry)
            if not stale:
                self._hits += 1
                if pin is not None:
                    entry.pins += 1
                    pin._entry = entry
                due = self._slide(entry, now)
        if stale:
            return (yield from self._revalidate_flow(entry, pin))
        if due:
            yield from self._core.touch_flow(key, self._core.ttl_for(entry.ttl))
        return entry

    def _revalidate_flow(self, entry: Entry, pin: Scope | None) -> Flow[Entry | None]:
        """Re-read a stale entry's version from the shared tier: keep the
        memory copy if it is current, else drop it (the caller loads)."""
        self._revalidations += 1
        if not self._core.tiers:
            entry.checked_at = self._clock.monotonic()
            return entry
        if entry.journaled:
            # Our own changes wait in the journal: write them (merging what
            # others wrote), which brings the memory copy up to date;
            # TierError if the store is still out of reach, rather than
            # serve a copy older than max_stale.
            yield from self._replay_flow()
            with self._mlock:
                if (
                    self._memory.peek(entry.key) is entry
                    and not entry.journaled
                    and not entry.outdated
                ):
                    self._hits += 1
                    if pin is not None:
                        entry.pins += 1
                        pin._entry = entry
                    return entry
                self._misses += 1
            return None
        _, version = yield from self._read_stored_flow(entry.key, self._core.skey(entry.key))
        with self._mlock:
            if version == entry.stored and not entry.outdated:
                entry.checked_at = self._clock.monotonic()
                self._hits += 1
                if pin is not None:
                    entry.pins += 1
                    pin._entry = entry
                return entry
            if not entry.pins and entry.pending is None:
                self._memory.remove(entry.key)
                detach(entry.value)
            self._misses += 1
        return None

    def _slide(self, entry: Entry, now: float) -> bool:
        """Extend a sliding expiry; whether the persistent tiers are due a touch."""
        if not self._sliding:
            return False
        entry.expires_at = now + (entry.ttl or self._ttl_seconds)
        if now - entry.touched_at >= self._touch_interval and self._core.tiers:
            entry.touched_at = now
            return True
        return False

    def _expire(self, entry: Entry) -> None:
        # Under the memory lock. An expired value is gone, pending or not,
        # unless a scope is using it: then it waits in the evicted area, so
        # what that scope commits is still written.
        self._memory.remove(entry.key)
        if entry.pins:
            self._memory.evicted[entry.key] = entry
        else:
            detach(entry.value)

    # -- loading (single-flight) ------------------------------------------------

    def _load_shared(self, key: str) -> Entry | None:
        """One load per key at a time: threads that ask meanwhile wait for
        it and share its result."""
        mine = False
        flight: _Flight | None = None
        try:
            with self._flight_lock:
                flight = self._flights.get(key)
                if flight is None or flight.done:
                    flight = _Flight()
                    # Registered and ``mine`` in one run of stores: an
                    # interrupt after it still reaches the finally below.
                    self._flights[key] = flight
                    mine = True
                else:
                    # The owner marks the flight done before it reads the
                    # event under this lock, so an event made here is set.
                    flight.event = flight.event or threading.Event()
            if not mine:
                return self._wait_for_flight(key, flight)
            flight.entry = run(self._load_flow(key, None))
            return flight.entry
        except BaseException as exc:
            if mine and flight is not None:
                flight.error = exc
            raise
        finally:
            if mine and flight is not None:
                flight.done = True
                with self._flight_lock:
                    if self._flights.get(key) is flight:
                        del self._flights[key]
                    event = flight.event
                if event is not None:
                    event.set()

    def _wait_for_flight(self, key: str, flight: _Flight) -> Entry | None:
        event = flight.event
        assert event is not None
        # Polled: a wake-up the loader could not send (it was interrupted
        # on its way out) costs POLL seconds, never a hang.
        while not event.wait(POLL) and not flight.done:
            pass
        if flight.error is not None or not flight.done:
            if not isinstance(flight.error, Exception):
                # The loading thread was interrupted (KeyboardInterrupt,
                # SystemExit): that is its own business, not a failure of
                # the load. Load again.
                return self._load_shared(key)
            raise flight.error
        return flight.entry

    async def _aload_shared(self, key: str) -> Entry | None:
        """One load per key and event loop at a time, shared by every task
        that asks meanwhile. The load runs as a task of its own, so a
        caller cancelled while waiting cancels only its own wait: the
        others still get the value (and the load still installs it)."""
        loop = asyncio.get_running_loop()
        task = self._aflights.get(key)
        if task is None or task.get_loop() is not loop or task.done():
            task = loop.create_task(arun(self._load_flow(key, None)))
            self._aflights[key] = task
            task.add_done_callback(functools.partial(self._aflight_done, key))
        return await asyncio.shield(task)

    def _aflight_done(self, key: str, task: asyncio.Task[Entry | None]) -> None:
        if self._aflights.get(key) is task:
            del self._aflights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    def _load_flow(self, key: str, schema: Schema | None) -> Flow[Entry | None]:
        with self._mlock:
            if self._memory.known_absent(key, self._now()):
                return None
        if key in self._journal_keys:
            # The shared tier must have our acknowledged changes before we
            # read it: loading an older value past an unreplayed journal
            # would hand the handler a session without its own changes.
            yield from self._replay_flow()
        corrupt_before = self._core.corrupt
        loaded = yield from self._core.load_flow(key, schema)
        if loaded is None and self._core.corrupt != corrupt_before:
            # Unreadable, not absent: do not remember it as a miss (the
            # failure may pass; a write replaces the bad bytes anyway).
            with self._mlock:
                return self._memory.lookup(key)
        if loaded is not None and self._local_copy_suspect(loaded):
            loaded = yield from self._confirm_flow(key, loaded, schema)
        entry = self._install(key, loaded)
        if (
            loaded is not None
            and loaded.migrated
            and entry is not None
            and entry.value is loaded.value
        ):
            # Migrations changed what was stored: write the new form once.
            self._seal(entry)
            yield from self._write_flow([entry], "migrate")
        yield from self._drain_flow()
        return entry

    def _local_copy_suspect(self, loaded: Loaded) -> bool:
        """Whether a copy found in a local tier (disk) must be checked
        against the shared tier before it is served: it was written before
        the bus started listening (no invalidation could have removed it),
        or longer ago than ``max_stale``."""
        tiers = self._core.tiers
        if loaded.tier_index >= len(tiers) - 1:
            return False
        if loaded.updated_ms <= self._core.suspect_before[loaded.tier_index]:
            return True  # a write to that tier failed since: it may be stale
        age = self._clock.time() - loaded.updated_ms / 1000.0
        if self.max_stale is not None and age > self.max_stale:
            return True
        if self._bus is None:
            return False
        listening_for = self._clock.monotonic() - self._trusted_since
        return age > listening_for

    def _confirm_flow(self, key: str, loaded: Loaded, schema: Schema | None) -> Flow[Loaded | None]:
        """Compare a local copy's version with the shared tier's; when they
        differ, drop the local copies and load from the shared tier.

        When the shared tier cannot be reached, the local copy is served
        anyway if it is within ``max_stale`` (always, without one): that is
        what the disk tier is for during an outage. It is counted, and
        dropped from memory once the shared tier answers again, so it is
        confirmed then.
        """
        core = self._core
        self._revalidations += 1
        skey = core.skey(key)
        try:
            _, version = yield from self._read_stored_flow(key, skey)
        except TierError as exc:
            age = self._clock.time() - loaded.updated_ms / 1000.0
            if not exc.transient or (self.max_stale is not None and age > self.max_stale):
                raise
            with self._mlock:
                self._unconfirmed.add(key)
                self._served_unconfirmed += 1
            return loaded
        if version == loaded.version:
            loaded.updated_ms = int(self._clock.time() * 1000)  # confirmed now
            return loaded
        yield from core.delete_flow(key, range(len(core.tiers) - 1))
        return (yield from core.load_flow(key, schema))

    def _absent_until(self) -> float | None:
        """How long "no tier has this key" is believed: the cache TTL, and
        never longer than ``max_stale`` (another process may create it)."""
        until = self._core.memory_expiry(None)
        if self.max_stale is None:
            return until
        bound = self._now() + self.max_stale
        return bound if until is None else min(until, bound)

    def _install(self, key: str, loaded: Loaded | None) -> Entry | None:
        """Insert a loaded value unless another caller already did."""
        with self._mlock:
            existing = self._memory.lookup(key)
            if existing is None and loaded is None:
                self._memory.absent[key] = self._absent_until()
            if existing is not None or loaded is None:
                return existing
            entry = Entry(
                key,
                loaded.value,
                version=loaded.version,
                expires_at=loaded.expires_at,
                created_ms=loaded.created_ms,
                schema_version=loaded.schema_version,
                size=loaded.size,
            )
            entry.touched_at = entry.checked_at = self._now()
            if loaded.tier_index < len(self._core.tiers) - 1:
                # A local copy: only as current as when it was written.
                age = max(0.0, self._clock.time() - loaded.updated_ms / 1000.0)
                entry.checked_at -= age
            detach(entry.value)
            self._memory.insert(entry)
            return entry

    # -- writing ----------------------------------------------------------------

    def _seal(self, entry: Entry, *, clean: bool = True) -> None:
        """Serialize the entry's value once into ``entry.pending`` and mark it
        clean; raises SerializationError and then changes nothing.

        ``clean=False`` keeps the value's clean point where it was (the
        scope's start), so a write that then fails can still be rolled
        back in place (:meth:`_roll_back`); the caller marks it clean once
        the write succeeded."""
        if (
            not self._core.tiers
            and self._memory.max_bytes is None
            and self._core.max_value_bytes is None
        ):
            # Memory only: nothing to write and no byte budget to measure.
            mark_clean(entry.value)
            entry.version += 1
            entry.expires_at = self._core.memory_expiry(entry.ttl)
            return
        base = entry.base
        if base is not None and entry.root is not None:
            # First change of a field since the stored version: remember
            # what it was then, the base of a merge if our write loses.
            for field, was in changes(entry.value).items():
                base.setdefault(field, was)
        version = self._core.next_version(entry.version)
        data = self._core.seal(
            entry.key,
            entry.value,
            version=version,
            created_ms=entry.created_ms,
            ttl=entry.ttl,
            schema_version=entry.schema_version,
        )
        if clean:
            mark_clean(entry.value)
        entry.version = version
        if entry.pending is None:
            entry.pending_since = self._clock.monotonic()
        entry.pending = data
        entry.size = len(data)
        entry.expires_at = self._core.memory_expiry(entry.ttl)
        if not entry.created_ms:
            entry.created_ms = int(self._clock.time() * 1000)

    def _write_flow(
        self, entries: Iterable[Entry], reason: str, *, journal: bool = True
    ) -> Flow[None]:
        """Write the pending bytes of ``entries`` (caller holds their key locks).

        When the last (shared, authoritative) tier can compare-and-set, each
        entry is written there only if it still holds the version this
        process last saw; a lost race is merged (:meth:`_merge_flow`) and
        retried. The tiers above get the same bytes once it succeeded.
        Without compare-and-set the batch is written as is (last writer
        wins).
        """
        batch = [(e, e.pending) for e in entries if e.pending is not None]
        if not batch:
            return
        core = self._core
        tiers = core.tiers
        journaling = journal and self._journal is not None
        if (
            journaling
            and cast(Journal, self._journal).depth
            and (not self._wal or any(e.key in self._journal_keys for e, _ in batch))
        ):
            # Older acknowledged changes first: they go to the shared tier
            # in the order they were made, or this batch joins them. (As a
            # write-ahead log the journal always holds something; only the
            # records of these keys must go first, and the timer sends them.)
            try:
                yield from self._replay_flow()
            except TierError as exc:
                if not exc.transient:
                    raise  # refused, not unreachable: journaling cannot help
                self._journal_or_raise(batch, sent=False)  # the batch never went out
                return
        written: list[tuple[Entry, bytes]] = []
        #: Entries that could not be written, each with its own error: one
        #: of them never holds the rest of a batch back.
        failures: list[tuple[Entry, TierCacheError]] = []
        if tiers and tiers[-1].supports_cas:
            # An outdated entry's idea of the stored version cannot be
            # trusted (the store moved on, or a replay merged what it
            # believed): a compare-and-set on it could match a version that
            # now holds other content. It merges with what is stored instead.
            trusted = [(e, data) for e, data in batch if not e.outdated]
            items: list[CasItem] = [
                (core.skey(e.key), data, core.ttl_for(e.ttl), e.stored) for e, data in trusted
            ]
            try:
                results = yield from self._cas_flow(items)
            except TierError as exc:
                if exc.sent:
                    # The connection may have died after the server applied
                    # it: if these bytes turn up stored, they are our own.
                    for e, data in batch:
                        e.uncertain = (e.uncertain or set()) | {data}
                if not journaling or not exc.transient:
                    # Refused by a server that answered (a permission, a
                    # wrong type): the handler hears it; a journal entry
                    # could never be replayed.
                    raise
                self._journal_or_raise(batch, sent=exc.sent)
                return
            except BaseException:
                # Interrupted mid-write (KeyboardInterrupt, the flow closed):
                # it may have landed, and if it did it is our own.
                for e, data in batch:
                    e.uncertain = (e.uncertain or set()) | {data}
                raise
            by_entry = {id(e): ok for (e, _), ok in zip(trusted, results, strict=True)}
            unreached: list[Entry] = []
            for e, data in batch:
                ok = by_entry.get(id(e), False)
                if ok is True:
                    written.append((e, data))
                    continue
                if isinstance(ok, TierError):
                    failures.append((e, ok))  # refused: this entry's own error
                    continue
                # What this entry believed stored is not: until a merge
                # succeeds, no compare-and-set may be made on that belief.
                e.outdated = True
                if reason == "migrate":
                    # Someone wrote since we loaded: forget our migrated
                    # copy; the next access loads (and migrates) theirs.
                    with self._mlock:
                        self._memory.remove(e.key)
                        e.pending = None
                    continue
                try:
                    merged = yield from self._merge_flow(e, core.skey(e.key), core.ttl_for(e.ttl))
                except ConflictError as exc:
                    if reason in ("exit", "set"):
                        failures.append((e, exc))
                        continue
                    # No handler to tell: theirs is kept, and it is loud.
                    core.conflicts_lost += 1
                    log.error(
                        "tiercache: %s flush of %r lost a same-field conflict; the stored "
                        "value was kept (use a conflict resolver to merge)",
                        reason,
                        e.key,
                    )
                    continue
                except TierError as exc:
                    if journaling and exc.transient:
                        unreached.append(e)  # the store went away mid-merge
                    else:
                        failures.append((e, exc))
                    continue
                written.append((e, merged))
            if unreached:
                self._journal_or_raise([(e, cast(bytes, e.pending)) for e in unreached], sent=True)
            upper: list[SetItem] = [
                (core.skey(e.key), data, core.ttl_for(e.ttl)) for e, data in written
            ]
            # The local tiers get the same bytes; their failures are
            # bypassed (the shared tier took the write).
            yield from core.write_flow(upper, range(len(tiers) - 1))
        else:
            if tiers:
                plain_items: list[SetItem] = [
                    (core.skey(e.key), data, core.ttl_for(e.ttl)) for e, data in batch
                ]
                yield from core.write_flow(plain_items)
            written = batch
        published = [(e.key, "set", peek_version(data)) for e, data in written]
        with self._mlock:
            mono = self._clock.monotonic()
            for (e, data), (_, _, version) in zip(written, published, strict=True):
                if e.pending is data:
                    e.pending = None
                    e.uncertain = None
                    e.touched_at = e.checked_at = mono
                    e.stored = version
                    # Written by compare-and-set (or merged): current now.
                    e.outdated = False
                    e.journaled = e.key in self._journal_keys
                    if e.base is None or e.base:
                        e.base = {}
            self._core.flushes[reason] += len(written)
            self._drop_evicted()
        yield from self._publish_flow(published)
        if failures:
            if reason not in ("exit", "set"):
                for e, error in failures:
                    log.warning(
                        "tiercache: %s flush of %r failed; it stays pending: %s",
                        reason,
                        e.key,
                        error,
                    )
            raise failures[0][1]

    def _cas_flow(self, items: list[CasItem]) -> Flow[list[bool | TierError]]:
        """Compare-and-set ``items`` on the shared tier: one call, or one
        pipelined batch. A batch the server refused (an error that is not
        an outage) is retried one item at a time, so the items it took are
        written and only the one it refuses carries the error. An outage
        raises."""
        core = self._core
        last, counters = core.tiers[-1], core.counters[-1]
        if not items:
            return []
        if len(items) == 1:
            return [(yield Call(last, counters, "compare_and_set", items[0]))]
        try:
            return list((yield Call(last, counters, "compare_and_set_many", (items,))))
        except TierError as exc:
            if exc.transient:
                raise
        out: list[bool | TierError] = []
        for item in items:
            try:
                out.append((yield Call(last, counters, "compare_and_set", item)))
            except TierError as exc:
                if exc.transient:
                    raise
                out.append(exc)
        return out

    def _journal_or_raise(self, batch: list[tuple[Entry, bytes]], *, sent: bool) -> None:
        """:meth:`_journal_batch` for writes the shared tier could not take;
        a full journal says, as the failed write did (``sent``), whether the
        change may have landed all the same."""
        try:
            self._journal_batch(batch)
        except JournalFullError as full:
            full.sent = sent
            raise

    def _journal_batch(self, batch: list[tuple[Entry, bytes]]) -> None:
        """Acknowledge ``batch`` by appending it to the journal (durable once
        this returns), to be replayed in order into the shared tier: when
        the tier is down, or on every change when the journal is the
        write-ahead log of :class:`WriteBehind`. JournalFullError when there
        is no room: then nothing is acknowledged and the entries stay
        pending."""
        records = [
            Record(
                e.key,
                data,
                e.stored,
                None if e.base is None else dict(e.base),
                tuple(e.uncertain or ()),
            )
            for e, data in batch
        ]

        def acknowledge() -> None:
            for e, data in batch:
                if e.outdated:
                    # Sealed on a belief about the store that is wrong: its
                    # replay must merge, not compare-and-set on that belief.
                    self._journal_rebase.add(e.key)
                if e.pending is data:
                    # The journal owns the write now; the entry continues
                    # from the version it will have once replayed.
                    e.pending = None
                    e.journaled = True
                    e.stored = peek_version(data)
                    e.base = {}
                    # The record holds them now (its replay knows its own
                    # bytes); carrying them on would copy every earlier
                    # write of an outage into every later record.
                    e.uncertain = None
            self._journaled += len(batch)
            self._drop_evicted()

        self._append_to_journal(records, acknowledge)
        self._ensure_timer()

    def _append_to_journal(
        self, records: list[Record], then: Callable[[], None] | None = None
    ) -> None:
        """Write ``records`` to the journal and count them per key, in one
        memory-lock section with ``then`` (so a replay sees a record, its
        key's count and the entry's state together, or none of them);
        durable (fsync=True: synced, outside the lock) when this returns."""
        journal = cast(Journal, self._journal)
        frames = journal.encode(records, self._core.serializer)
        with self._mlock:
            journal.write(frames)
            keys = self._journal_keys
            for rec in records:
                keys[rec.key] = keys.get(rec.key, 0) + 1
            if then is not None:
                then()
        journal.sync()

    def _replay_flow(self, reason: str = "replay") -> Flow[int]:
        """Write the journal's records to the shared tier, one
        compare-and-set per key that merges like a live write, as one
        batch; then forget them and bring the memory copies up to date.

        One replay at a time per cache; a caller that finds one running
        waits for it (its records must be in the store before it reads or
        writes them). A TierError stops it with the records still in the
        journal: replaying a key again is harmless, since finding its own
        bytes stored it merges to the same value.
        """
        journal = self._journal
        if journal is None or not journal.depth:
            return 0
        if self._breaker is not None:
            # While the circuit is open the replay would fail anyway: do not
            # read (and re-read, at every scope exit) a growing journal.
            self._breaker.check("journal replay")
        waited = 0
        mine = False
        try:
            while True:
                # A flag set under a lock, not a lock held across the replay:
                # the flag and ``mine`` are set together (see _locks), so an
                # interrupt can never leave the replay taken and not given back.
                with self._flight_lock:
                    if not self._replaying:
                        self._replaying = True
                        mine = True
                if mine:
                    break
                if waited >= _REPLAY_WAIT:
                    raise TierError(
                        f"the journal of {self.namespace!r} is being replayed; try again"
                    )
                waited += 1
                yield Pause(0.001)
            if not journal.depth:  # the replay we waited for did it all
                return 0
            core = self._core
            taken = journal.take(core.serializer)
            # One write per key: all of this process's journaled changes of
            # it since the version the first record expected. Replaying a
            # chain record by record would make a merged record look, to
            # the next one, like another writer's change of the same field.
            groups: dict[str, list[Record]] = {}
            for rec in taken.records:
                groups.setdefault(rec.key, []).append(rec)
            replays = [self._replay_entry(key, recs) for key, recs in groups.items()]
            try:
                yield from self._write_flow(replays, reason, journal=False)
            except TierError:
                # A merged write made here may have landed before the
                # error: remember its bytes too, so the next replay knows
                # them for its own.
                extra = []
                for e in replays:
                    recs = groups[e.key]
                    known = {rec.data for rec in recs}.union(*(rec.maybe for rec in recs))
                    more = (e.uncertain or set()) - known
                    if more:
                        extra.append(
                            Record(
                                e.key,
                                recs[-1].data,
                                recs[0].expected,
                                _group_base(recs),
                                tuple(more),
                            )
                        )
                if extra:
                    self._append_to_journal(extra)
                raise
            journal.done(taken)
            self._after_replay(groups, replays)
            return len(taken.records)
        finally:
            if mine:
                self._replaying = False

    def _replay_entry(self, key: str, recs: list[Record]) -> Entry:
        """A stand-in entry that writes a key's journaled records as one."""
        env = _envelope_decode(recs[-1].data)
        # The value is decoded only if a merge needs it (see _merge_flow).
        e = Entry(key, None, version=env.version)
        e.value = _UNDECODED
        e.stored, e.base, e.pending = recs[0].expected, _group_base(recs), recs[-1].data
        # Any of them may have landed before its reply was lost.
        e.uncertain = {rec.data for rec in recs}.union(*(rec.maybe for rec in recs))
        e.schema_version, e.created_ms = env.schema_version, env.created_ms
        e.outdated = key in self._journal_rebase
        if env.expires_ms:
            e.ttl = max(0.001, env.expires_ms / 1000.0 - self._clock.time())
        if env.schema_version < self._core.schema.version:
            self._migrate_replay(e, env.payload, env.schema_version)
        return e

    def _migrate_replay(self, e: Entry, payload: bytes, stored_schema: int) -> None:
        """A journaled change sealed before the code's schema moved on: bring
        it, and its merge base, to the current schema before it is written.

        Written as journaled, it would be migrated again by whoever loads it
        next; merged as it is, the fields of the stored value (which reads
        already migrate) would be sealed under the old schema version and
        migrated twice. Our change is re-expressed in the new schema: the
        old base is rebuilt as a whole value (ours with our changed fields
        put back), both are migrated, and the fields where they differ are
        what we changed.
        """
        core = self._core
        schema = core.schema
        loads = core.serializer.loads
        ours = schema.migrate(loads(payload), stored_schema)
        if e.base is not None and type(ours) is dict:
            before = loads(payload)
            if type(before) is dict:
                for field, was in e.base.items():
                    if was is MISSING:
                        before.pop(field, None)
                    else:
                        before[field] = was
                before = schema.migrate(before, stored_schema)
                if type(before) is dict:
                    e.base = {
                        f: before.get(f, MISSING)
                        for f in {*before, *ours}
                        if not same(before.get(f, MISSING), ours.get(f, MISSING))
                    }
                else:
                    e.base = None  # the migration changed its shape: replace
        e.value = track(ours, label=e.key)
        e.root = root_of(e.value, label=e.key)
        e.schema_version = schema.version
        e.pending = core.seal(
            e.key,
            e.value,
            version=e.version,
            created_ms=e.created_ms,
            ttl=e.ttl,
            schema_version=schema.version,
        )

    def _after_replay(self, groups: dict[str, list[Record]], replays: list[Entry]) -> None:
        """Replayed keys: count their records off and make each memory copy
        what the store now holds.

        A group written as journaled confirms what the memory copy (and any
        later record of the key) believes is stored. A group that merged
        with another writer's version does not: the memory copy takes the
        merged value when no scope uses it, else it is marked outdated, and
        later records of the key are marked to merge at their replay; either
        way no compare-and-set is ever made on the broken belief.
        """
        mono = self._clock.monotonic()
        with self._mlock:
            memory = self._memory
            for e in replays:
                key = e.key
                merged = e.merged or e.pending is not None
                left = self._journal_keys.get(key, 0) - len(groups[key])
                if left > 0:
                    self._journal_keys[key] = left
                else:
                    self._journal_keys.pop(key, None)
                if merged and left > 0:
                    self._journal_rebase.add(key)
                else:
                    self._journal_rebase.discard(key)
                entry = memory.peek(key) or memory.evicted.get(key)
                if entry is None:
                    continue
                if left > 0:
                    if merged:
                        entry.outdated = True
                    continue  # newer records wait: their replay settles it
                entry.journaled = False
                if not merged:
                    # Stored exactly as journaled: the compare-and-set found
                    # no newer version, whatever an invalidation said before.
                    if entry.stored == peek_version(groups[key][-1].data):
                        entry.checked_at = mono
                        entry.outdated = False
                elif entry.pins or entry.pending is not None or key in memory.evicted:
                    entry.outdated = True
                else:
                    # Take the merged value, so the next request is still a
                    # memory hit and the entry knows what is stored.
                    self._replace_value(entry, e.value, e.stored)
                    entry.base = {}
                    entry.outdated = False
                    entry.checked_at = mono
            self._drop_evicted()

    def _publish_flow(self, items: list[tuple[str, str, int]]) -> Flow[None]:
        """Tell other processes, after the write was acknowledged. A failed
        publish does not undo the write: it is logged, and readers elsewhere
        stay within ``max_stale`` through revalidation."""
        if self._bus is None or not items:
            return
        try:
            yield Call(self._bus, self._bus_counters, "publish", (items,))
        except TierError as exc:
            log.warning("tiercache: publishing %d invalidation(s) failed: %s", len(items), exc)

    def _merge_flow(self, e: Entry, skey: str, ttl: float | None) -> Flow[bytes]:
        core = self._core
        tier, counters = core.tiers[-1], core.counters[-1]
        resolver = e.conflict or self.conflict
        if e.value is _UNDECODED:  # a journal replay's stand-in entry
            data = cast(bytes, e.pending)
            e.value = track(core.serializer.loads(_envelope_decode(data).payload), label=e.key)
            e.root = root_of(e.value, label=e.key)
        for attempt in range(_MAX_MERGES):
            if attempt:
                yield _backoff(attempt)
            theirs, version, raw = yield from self._read_raw_flow(e.key, skey, check=True)
            if raw is not None and raw == e.pending:
                # Our write did land: its reply said otherwise (the client
                # retried a command whose first reply was lost, and the
                # retry found its own version). Never merge with ourselves.
                return e.pending
            if e.uncertain is not None and raw in e.uncertain:
                if e.base is not None and type(theirs) is dict:
                    # A write whose reply we lost did land: the stored value
                    # is our own, so what we changed since is relative to it.
                    e.base = {f: theirs.get(f, MISSING) for f in e.base}
                e.uncertain = None
            elif e.uncertain and e.base and type(theirs) is dict:
                # It may have landed and been written over by others since:
                # a field whose stored value is exactly what one of our
                # lost-reply writes set is our own change, not a conflict.
                self._rebase_on_own_writes(e, theirs)
            try:
                merged = core.merge(e.key, e.base, to_plain(e.value), theirs, resolver)
            except ConflictError:
                # Keep theirs in memory so the next scope starts from it.
                self._replace_value(
                    e, track({} if theirs is MISSING else theirs, label=e.key), version
                )
                e.merged = True
                e.pending = None
                e.base = {}
                raise
            self._replace_value(e, track(merged, label=e.key), version)
            e.merged = True
            if e.base is not None:
                # If this write loses again, theirs is the new common base.
                e.base = {
                    f: (theirs.get(f, MISSING) if type(theirs) is dict else theirs) for f in e.base
                }
            e.version = core.next_version(version)
            data = core.seal(
                e.key,
                e.value,
                version=e.version,
                created_ms=e.created_ms,
                ttl=e.ttl,
                schema_version=e.schema_version,
            )
            e.pending = data
            try:
                ok = yield Call(tier, counters, "compare_and_set", (skey, data, ttl, version))
            except BaseException as exc:
                # A reply lost, or an interrupt mid-write: if these bytes turn
                # up stored, they are our own.
                if not isinstance(exc, TierError) or exc.sent:
                    e.uncertain = (e.uncertain or set()) | {data}
                raise
            if ok:
                core.merges += 1
                return data
        raise TierError(f"gave up writing {e.key!r}: {_MAX_MERGES} other writers won in a row")

    def _rebase_on_own_writes(self, e: Entry, theirs: dict[Any, Any]) -> None:
        base = cast(dict[Any, Any], e.base)
        core = self._core
        for blob in cast(set[bytes], e.uncertain):
            try:
                ours = core.serializer.loads(_envelope_decode(blob).payload)
            except Exception:
                continue
            if type(ours) is not dict:
                continue
            for field in base:
                mine = ours.get(field, MISSING)
                if mine is not MISSING and same(theirs.get(field, MISSING), mine):
                    base[field] = mine

    def _read_stored_flow(
        self, key: str, skey: str, *, adopt: bool = False
    ) -> Flow[tuple[Any, int]]:
        """The value and version in the authoritative (last) tier, fresh:
        ``(MISSING, version)`` when it is absent or unreadable. ``adopt``:
        the value comes back tracked (else plain, or only checked)."""
        value, version, _ = yield from self._read_raw_flow(key, skey, adopt=adopt)
        return value, version

    def _read_raw_flow(
        self, key: str, skey: str, *, adopt: bool = False, check: bool = False
    ) -> Flow[tuple[Any, int, bytes | None]]:
        """:meth:`_read_stored_flow` plus the stored bytes themselves;
        ``check``: a plain value the tracker would refuse is unreadable."""
        core = self._core
        tier = core.tiers[-1]
        raw = yield Call(tier, core.counters[-1], "get", (skey,))
        if raw is None:
            return MISSING, 0, None
        try:
            opened = core.read(key, raw, core.schema, self._clock.time())
            if opened is not None and (adopt or check):
                tracked = core.adopt(opened[0])
                if adopt:
                    opened = (tracked, *opened[1:])
        except CorruptEntryError as exc:
            if (yield from core.quarantine_flow(key, len(core.tiers) - 1, raw, str(exc))):
                return MISSING, 0, None  # moved aside: the key is absent now
            return MISSING, _safe_version(raw), raw
        if opened is None:  # expired
            return MISSING, _safe_version(raw), raw
        return opened[0], opened[1].version, raw

    def _replace_value(self, e: Entry, value: Any, stored: int) -> None:
        """Swap the entry's live value (key lock held); handles to the old
        one go stale and raise on mutation."""
        old = e.value
        mark_clean(value)
        detach(value)
        e.value = value
        e.root = root_of(value, label=e.key)
        e.stored = e.version = stored
        if old is not value:
            detach(old)

    def _drop_evicted(self) -> None:
        # Under the memory lock: evicted entries that are written and unused go.
        ev = self._memory.evicted
        for key in [
            k for k, e in ev.items() if e.pending is None and not e.pins and not e.journaled
        ]:
            detach(ev.pop(key).value)

    def _drain_flow(self) -> Flow[None]:
        """Write entries the memory policy pushed out (write-through only;
        under write-behind they stay readable until the next tick)."""
        if not self._memory.evicted:
            return
        with self._mlock:
            self._drop_evicted()
            waiting = [e for e in self._memory.evicted.values() if e.pending is not None]
        if waiting and self._write_through:
            try:
                yield from self._locked_write_flow(waiting, "evict")
            except (TierError, ConflictError) as exc:
                # Other keys' writes: never this caller's error (its own
                # change, if any, is already settled). They stay in the
                # evicted area, readable, for the next drain or tick.
                log.warning("tiercache: writing evicted entries failed: %s", exc)
                self._ensure_timer(retry=True)

    def _locked_write_flow(self, entries: list[Entry], reason: str) -> Flow[None]:
        """Write the entries whose key lock is free now (or is this
        caller's own: a flush inside a scope writes its key). A busy key's
        holder writes it at its scope exit (or the next flush), so an older
        pending write can never land after a newer one."""
        me = owner()
        holds: list[Hold] = []
        chosen: list[Entry] = []
        try:
            with self._mlock:
                for e in entries:
                    if self._locks.held_by(e.key, me):
                        chosen.append(e)
                        continue
                    hold = Hold()
                    holds.append(hold)
                    if self._locks.take_locked(e.key, me, hold):
                        chosen.append(e)
            yield from self._write_flow(chosen, reason)
        finally:
            for hold in holds:
                lock = hold._key_lock
                if lock is not None:
                    lock.owner = None  # first, and inline: nothing can skip it
            for hold in holds:
                self._locks.release(hold)

    def set(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Store ``value`` (adopted: see :func:`tiercache.track`) under ``key``.

        It is written to every tier before ``set`` returns, whatever the
        flush policy (use a session scope for write-behind).
        """
        run(self._locked(key, ttl, lambda: self._set_flow(key, value, ttl)))

    async def aset(self, key: str, value: Any, *, ttl: float | None = None) -> None:
        """Async :meth:`set`."""
        await self._alocked(key, ttl, lambda: self._set_flow(key, value, ttl))

    def _begin_write(self, key: str, ttl: float | None) -> Any:
        """Checks before set/delete/touch/update take ``key``'s lock; who
        is asking."""
        self._check_key(key)
        self._check_open()
        if ttl is not None:
            Expiry(ttl)  # validates: ConfigError names the setting
        me = owner()
        if self._locks.held_by(key, me):
            raise TierCacheError(
                f"key {key!r} has a session scope open in this context: change the session "
                "value instead of calling set/delete/touch/update on its key"
            )
        return me

    def _locked(
        self, key: str, ttl: float | None, flow: Callable[[], Flow[T]], *, own: bool = False
    ) -> Flow[T]:
        """``flow()`` with ``key``'s lock held (sync callers). ``own``: a
        lock this caller already holds (a flush inside a scope) will do."""
        if own:
            me = owner()
            if self._locks.held_by(key, me):
                return (yield from flow())
        else:
            me = self._begin_write(key, ttl)
        hold = Hold()
        try:
            self._locks.acquire(key, me, hold)
            return (yield from flow())
        finally:
            lock = hold._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self._locks.release(hold)

    async def _alocked(
        self, key: str, ttl: float | None, flow: Callable[[], Flow[T]], *, own: bool = False
    ) -> T:
        """``flow()`` with ``key``'s lock held, driven by :func:`arun`."""
        if own:
            me = owner()
            if self._locks.held_by(key, me):
                return await arun(flow())
        else:
            me = self._begin_write(key, ttl)
        hold = Hold()
        try:
            await self._locks.aacquire(key, me, hold)
            return await arun(flow())
        finally:
            lock = hold._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self._locks.release(hold)

    def _set_flow(self, key: str, value: Any, ttl: float | None) -> Flow[None]:
        entry = Entry(key, track(value, label=key), ttl=ttl)
        entry.schema_version = self._core.schema.version
        entry.base = None  # a replacement: it overwrites whatever is stored
        with self._mlock:
            old = self._memory.lookup(key)
        if old is not None:
            entry.version = old.version
            entry.stored = old.stored
            entry.created_ms = old.created_ms
        self._seal(entry)  # raises before anything changed
        detach(entry.value)
        entry.touched_at = self._now()
        with self._mlock:
            self._memory.remove(key)
            self._memory.insert(entry)
        # A replaced value is gone: writes through old references must fail.
        if old is not None and old.value is not entry.value:
            detach(old.value)
        try:
            yield from self._write_flow([entry], "set")
        except TierError as exc:
            if exc.transient and exc.sent:
                # It may have landed: acknowledged, retried until written.
                log.warning("tiercache: set %r failed (%s); it stays pending", key, exc)
                self._ensure_timer(retry=True)
            else:
                # Not applied, and never will be: memory goes back too.
                with self._mlock:
                    if self._memory.peek(key) is entry or self._memory.evicted.get(key) is entry:
                        self._memory.remove(key)
                        if old is not None:
                            self._memory.insert(old)
                detach(entry.value)
                raise
        yield from self._drain_flow()

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        initial: Callable[[], Any] = dict,
        ttl: float | None = None,
    ) -> Any:
        """Apply ``fn`` to the stored value of ``key`` atomically; return the
        new value (read-only, like :meth:`get`).

        ``fn`` gets a live tracked copy of the value in the authoritative
        (last) tier, or ``initial()`` when there is none, and changes it in
        place or returns a replacement. The write is a compare-and-set: if
        another writer got there first, ``fn`` runs again on their value.
        For Mini App backends, admin scripts and jobs that are not handlers::

            cache.update("chat:42", lambda s: s.update(plan="pro"))
        """
        if not callable(fn):
            raise ConfigError(f"update needs a function, got {fn!r}")
        return run(self._locked(key, ttl, lambda: self._update_flow(key, fn, initial, ttl)))

    async def aupdate(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        initial: Callable[[], Any] = dict,
        ttl: float | None = None,
    ) -> Any:
        """Async :meth:`update` (``fn`` itself is a plain function)."""
        if not callable(fn):
            raise ConfigError(f"update needs a function, got {fn!r}")
        return await self._alocked(key, ttl, lambda: self._update_flow(key, fn, initial, ttl))

    def _update_flow(
        self, key: str, fn: Callable[[Any], Any], initial: Callable[[], Any], ttl: float | None
    ) -> Flow[Any]:
        core = self._core
        tiers = core.tiers
        skey = core.skey(key)
        cas = bool(tiers) and tiers[-1].supports_cas
        if key in self._journal_keys:
            yield from self._replay_flow()  # our journaled changes first
        for attempt in range(_MAX_MERGES):
            if attempt:
                yield _backoff(attempt)
            if tiers:
                plain, version = yield from self._read_stored_flow(key, skey, adopt=True)
            else:
                with self._mlock:
                    current = self._memory.lookup(key)
                if current is None or current.initial is not None:
                    plain, version = MISSING, 0
                else:
                    plain, version = to_plain(current.value), current.version
            value = track(initial() if plain is MISSING else plain, label=key)
            result = fn(value)
            if result is not None and result is not value:
                value = track(result, label=key)
                changed = _changed_fields(plain, value)  # a replacement
            else:
                # What fn changed, against what it was given: the merge base
                # should this write have to be retried.
                changed = changes(value) if plain is not MISSING else _changed_fields(plain, value)
            entry = Entry(key, value, version=version, ttl=ttl)
            entry.schema_version = core.schema.version
            entry.base = None
            entry.checked_at = self._clock.monotonic()
            self._seal(entry)
            detach(value)
            if cas:
                data = cast(bytes, entry.pending)
                try:
                    ok = yield Call(
                        tiers[-1],
                        core.counters[-1],
                        "compare_and_set",
                        (skey, data, core.ttl_for(ttl), version),
                    )
                except TierError as exc:
                    if not (exc.transient and exc.sent):
                        raise  # not applied; memory was not touched
                    # It may have landed: acknowledged. It stays pending and
                    # is retried; if others wrote meanwhile, what fn changed
                    # (against what it saw) merges into theirs.
                    log.warning("tiercache: update of %r failed (%s); it stays pending", key, exc)
                    entry.stored = version
                    entry.uncertain = {data}
                    entry.base = changed
                    with self._mlock:
                        old = self._memory.remove(key)
                        self._memory.insert(entry)
                    if old is not None and old.value is not value:
                        detach(old.value)
                    self._ensure_timer(retry=True)
                    return value
                if not ok:
                    core.conflicts += 1
                    continue
                yield from core.write_flow([(skey, data, core.ttl_for(ttl))], range(len(tiers) - 1))
                entry.stored = entry.version
                entry.pending = None
                entry.base = {}
                core.flushes["set"] += 1
                yield from self._publish_flow([(key, "set", entry.version)])
            with self._mlock:
                old = self._memory.remove(key)
                self._memory.insert(entry)
            if not cas:
                try:
                    yield from self._write_flow([entry], "set")
                except TierError as exc:
                    if not (exc.transient and exc.sent):
                        with self._mlock:  # not applied: memory goes back too
                            self._memory.remove(key)
                            if old is not None:
                                self._memory.insert(old)
                        raise
                    log.warning("tiercache: update of %r failed (%s); it stays pending", key, exc)
                    self._ensure_timer(retry=True)
            if old is not None and old.value is not value:
                detach(old.value)
            yield from self._drain_flow()
            return value
        raise TierError(f"gave up updating {key!r}: {_MAX_MERGES} other writers won in a row")

    def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier; whether any tier had it."""
        return run(self._locked(key, None, lambda: self._delete_flow(key)))

    async def adelete(self, key: str) -> bool:
        """Async :meth:`delete`."""
        return await self._alocked(key, None, lambda: self._delete_flow(key))

    def _delete_flow(self, key: str) -> Flow[bool]:
        with self._mlock:
            entry = self._memory.remove(key)
        if entry is not None:
            detach(entry.value)
        core = self._core
        if core.tiers and core.tiers[-1].supports_cas:
            known = entry.stored if entry is not None and not entry.outdated else 0
            existed = yield from self._tombstone_flow(key, known)
            existed = (yield from core.delete_flow(key, range(len(core.tiers) - 1))) or existed
        else:
            existed = yield from core.delete_flow(key)
        with self._mlock:
            self._memory.absent[key] = self._absent_until()
        yield from self._publish_flow([(key, "del", 0)])
        return existed or (entry is not None and entry.initial is None)

    def _tombstone_flow(self, key: str, known: int) -> Flow[bool]:
        """Delete ``key`` from the shared tier by writing its tombstone: the
        next version, marked deleted, kept :data:`TOMBSTONE_SECONDS`. A copy
        from before the delete then never matches a re-created key's
        version (a plain DEL would let versions start over). ``known`` is
        the version this process believes stored (0: unknown, read it).
        Whether a value was there."""
        core = self._core
        tier, counters = core.tiers[-1], core.counters[-1]
        skey = core.skey(key)
        expected = known
        for attempt in range(_MAX_MERGES):
            if attempt:
                yield _backoff(attempt)
            if not expected:
                raw = yield Call(tier, counters, "get", (skey,))
                if raw is None or _is_tombstone(raw):
                    return False  # nothing stored: nothing to mark
                expected = _safe_version(raw)
            tomb = core.tombstone(core.next_version(expected))
            if (
                yield Call(
                    tier, counters, "compare_and_set", (skey, tomb, TOMBSTONE_SECONDS, expected)
                )
            ):
                return True
            expected = 0  # someone wrote meanwhile: read what is there now
        raise TierError(f"gave up deleting {key!r}: {_MAX_MERGES} other writers won in a row")

    def touch(self, key: str, ttl: float | None = None) -> bool:
        """Restart the expiry of ``key``; whether it exists.

        With sliding expiry this refreshes the persistent tiers' TTL without
        rewriting the value; with absolute expiry (sealed into the stored
        envelope) it rewrites the entry once.
        """
        return run(self._locked(key, ttl, lambda: self._touch_flow(key, ttl)))

    async def atouch(self, key: str, ttl: float | None = None) -> bool:
        """Async :meth:`touch`."""
        return await self._alocked(key, ttl, lambda: self._touch_flow(key, ttl))

    def _touch_flow(self, key: str, ttl: float | None) -> Flow[bool]:
        with self._mlock:
            entry = self._memory.lookup(key)
        if entry is None:
            entry = yield from self._load_flow(key, None)
        if entry is None or entry.initial is not None:
            return False
        if ttl is not None:
            entry.ttl = ttl
        entry.expires_at = self._core.memory_expiry(entry.ttl)
        if self._sliding:
            entry.touched_at = self._now()
            yield from self._core.touch_flow(key, self._core.ttl_for(entry.ttl))
        else:
            self._seal(entry)
            yield from self._write_flow([entry], "set")
        return True

    # -- flushing -----------------------------------------------------------------

    def _pending_entries(self) -> list[Entry]:
        with self._mlock:
            return [e for e in self._memory.entries() if e.pending is not None]

    def flush(self) -> int:
        """Write every pending change now; how many entries were written."""
        return self._flush_all("explicit")

    async def aflush(self) -> int:
        """Async :meth:`flush`."""
        return await self._aflush_all("explicit")

    def _flush_all(self, reason: str) -> int:
        if self._journal is not None and self._journal.depth:
            try:
                run(self._replay_flow(reason if self._wal else "replay"))
            except TierError:
                if reason != "close":
                    raise
                # The records stay in the journal for the next start.
                log.warning("tiercache: closing with %d journaled change(s)", self._journal.depth)
        # One batch for every key whose lock is free; then, one at a time,
        # the keys an open scope holds (waiting for it), so an older pending
        # write can never land after a newer one.
        entries = self._pending_entries()
        run(self._locked_write_flow(entries, reason))
        for e in entries:
            if e.pending is not None:
                flow = functools.partial(self._write_flow, [e], reason)
                run(self._locked(e.key, None, flow, own=True))
        return len(entries)

    async def _aflush_all(self, reason: str) -> int:
        if self._journal is not None and self._journal.depth:
            try:
                await arun(self._replay_flow(reason if self._wal else "replay"))
            except TierError:
                if reason != "close":
                    raise
                log.warning("tiercache: closing with %d journaled change(s)", self._journal.depth)
        entries = self._pending_entries()
        await arun(self._locked_write_flow(entries, reason))
        for e in entries:
            if e.pending is not None:
                flow = functools.partial(self._write_flow, [e], reason)
                await self._alocked(e.key, None, flow, own=True)
        return len(entries)

    def _ensure_timer(self, *, retry: bool = False) -> None:
        """Start the background flusher: the WriteBehind timer, or, for a
        write-through cache that journaled changes or holds a write that
        may have landed (``retry``), the retrier."""
        if self._timer is not None or self._closed:
            return
        if self._write_through and self._journal is None and not retry:
            return
        interval = self.flush_policy.interval or _JOURNAL_RETRY
        with self._timer_lock:
            if self._timer is None:
                t = threading.Thread(
                    target=_timer_loop,
                    args=(weakref.ref(self), self._stop, interval),
                    name=f"tiercache-flush-{self.namespace}",
                    daemon=True,
                )
                t.start()
                # Recorded once running: a timer interrupted before it
                # started is simply made again by the next caller.
                self._timer = t

    def _tick(self) -> None:
        """One timer flush: the journal's records, then pending entries
        whose lock is free, batched."""
        if self._journal is not None and self._journal.depth:
            run(self._replay_flow("timer" if self._wal else "replay"))
        entries = self._pending_entries()
        if entries:
            run(self._locked_write_flow(entries, "timer"))

    # -- closing --------------------------------------------------------------------

    def close(self, wait: float = 30.0) -> None:
        """Write everything pending, stop the timer and close the tiers;
        idempotent.

        New scopes and calls are refused from the start. Scopes other
        threads or tasks have open are waited for, up to ``wait`` (real)
        seconds, so what they change is written too; one still open after
        that cannot write any more: its exit raises and rolls its change
        back (a scope that never ends does not hold the close up). A sync
        ``close()`` on a running event loop's thread cannot wait for that
        loop's tasks: use ``aclose()`` there. If a write fails, the
        :class:`TierError` propagates and the cache stays open with the
        change still pending, so ``close`` can be retried.
        """
        if self._shut:
            return
        self._closed = True
        try:
            # Real time: the other scopes run on it, whatever the cache's clock.
            deadline = time.monotonic() + wait
            if asyncio._get_running_loop() is not None:
                deadline = 0.0  # this loop's tasks cannot run while we wait
            while self._others_in_scopes() and time.monotonic() < deadline:
                time.sleep(POLL)
            self._stop_timer()
            self._flush_all("close")
        except BaseException:
            self._reopen()
            raise
        self._shut_down()
        atexit.unregister(self._atexit)
        closers: list[Callable[[], None]] = [t.close for t in self._core.tiers]
        if self._bus is not None:
            closers.insert(0, self._bus.close)
        if self._journal is not None:
            closers.insert(0, self._journal.close)
        _close_all(closers)

    async def aclose(self, wait: float = 30.0) -> None:
        """Async :meth:`close`: waits for other tasks' scopes without
        blocking the loop."""
        if self._shut:
            return
        self._closed = True
        try:
            deadline = time.monotonic() + wait
            # Polled: the scopes may be other threads', with nothing to await.
            while self._others_in_scopes() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(POLL)
            self._stop_timer()
            await self._aflush_all("close")
        except BaseException:
            self._reopen()
            raise
        self._shut_down()
        atexit.unregister(self._atexit)
        first: BaseException | None = None
        closers: list[Callable[[], Awaitable[None]]] = [t.aclose for t in self._core.tiers]
        if self._bus is not None:
            closers.insert(0, self._bus.aclose)
        for aclose in closers:
            try:
                await aclose()
            except Exception as exc:  # close the others all the same
                first = first or exc
        if self._journal is not None:
            self._journal.close()
        if first is not None:
            raise first

    def _others_in_scopes(self) -> bool:
        """Whether a key's lock is held by another thread or task than the
        caller (a scope, or a set/update, under way)."""
        me = owner()
        with self._mlock:
            return any(
                lock.owner is not None and lock.owner is not me and lock.owner != me
                for lock in self._locks._locks.values()
            )

    def _reopen(self) -> None:
        """close() failed: the cache stays usable, its timer running again."""
        self._closed = False
        self._stop = threading.Event()
        self._timer = None
        self._ensure_timer(retry=bool(self._pending_entries()))

    def _shut_down(self) -> None:
        """Past the last flush: a scope still open can no longer write."""
        with self._mlock:
            self._shut = True

    def _stop_timer(self) -> None:
        self._stop.set()
        t = self._timer
        if t is not None and t is not threading.current_thread():
            t.join(timeout=30)

    def __enter__(self) -> TieredCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> TieredCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- sessions ---------------------------------------------------------------------

    def session(
        self,
        key: str,
        *,
        initial: Callable[[], Any] = dict,
        ttl: float | None = None,
        schema: Schema | None = None,
        commit_on_error: bool = False,
        conflict: Resolver | None = None,
        lease: Lease | None = None,
    ) -> Scope:
        """A scope over ``key``'s live value, for ``with`` and ``async with``.

        The key is locked for the scope (one scope per key at a time in this
        process), loaded through the tiers or created with ``initial()``,
        and yielded as a live tracked value. On exit a changed value is
        written once (now with :class:`WriteThrough`, on the next tick with
        :class:`WriteBehind`); an unchanged one is not written at all. If
        the body raises, the value is rolled back to how it was before the
        scope and nothing is written, unless ``commit_on_error=True``.
        """
        if not callable(initial):
            raise ConfigError(f"initial must be a callable (like dict), got {initial!r}")
        if ttl is not None:
            Expiry(ttl)  # validates: ConfigError names the setting
        return Scope(
            self, key, initial, ttl, schema, commit_on_error, conflict, lease or self.lease
        )

    def _scope_open(
        self, scope: Scope, key: str, initial: Callable[[], Any], me: Any
    ) -> Entry | None:
        """A scope's hot path, in one memory-lock section: take the key's
        lock if it is free (into ``scope``) and look the entry up.

        Returns the entry on a memory hit: pinned (``scope._entry``) and
        attached; no flow starts at all. None otherwise: the caller waits
        for the lock if ``scope`` did not get it, and runs the flow."""
        with self._mlock:
            if not self._locks.take_locked(key, me, scope):
                return None
            entry = self._peek(key)
            if (
                entry is None
                or (entry.initial is not None and entry.initial is not initial)
                or (entry.expires_at is not None and not self._fresh(entry))
                or (self.max_stale is not None and self._stale(entry))
            ):
                return None
            self._recent(key)
            self._hits += 1
            # The pin and the scope's record of it: stores only, one unit.
            entry.pins += 1
            scope._entry = entry
        root = entry.root
        if root is not None:
            root.detached = False
        return entry

    def _scope_close_clean(self, scope: Scope) -> int:
        """A read-only scope's exit: 0 when there is something to write (run
        :meth:`_exit_flow`); else unpin and unlock (inline, as
        :meth:`Scope._let_go`), and return 2 when evicted entries wait to
        be drained, 1 otherwise."""
        entry = scope._entry
        if entry is None or (entry.pending is not None and self._write_through):
            # Write-through retries a failed earlier write at the next exit;
            # under write-behind pending bytes are the timer's business.
            return 0
        root = entry.root
        if root is not None:
            # A clean root with nothing watched answers from its flag.
            if (root.dirty or root.backup) and not quick_clean(root) and is_dirty(scope._value):
                return 0
            root.detached = True
        waiter = None
        with self._mlock:
            self._core.writes_avoided += 1
            entry.pins -= 1
            scope._entry = None
            lock = scope._key_lock
            if lock is not None:
                if lock.holder == id(scope):
                    lock.owner = None
                    lock.holder = 0
                scope._key_lock = None
                if lock.waiters:
                    waiter = lock.waiters[0]
            if entry.outdated:
                self._drop_outdated(entry)
            locks = self._locks
            if len(locks) > locks._sweep_at:
                locks.sweep_locked()
            drain = 2 if self._memory.evicted else 1
        if waiter is not None:
            waiter.wake()
        return drain

    def _enter_flow(
        self,
        scope: Scope,
        key: str,
        initial: Callable[[], Any],
        ttl: float | None,
        schema: Schema | None,
    ) -> Flow[Any]:
        """Scope entry, key lock held: find or load, pin (into ``scope``),
        attach; the live value."""
        entry = yield from self._lookup_flow(key, pin=scope)
        if entry is not None and entry.initial is not None and entry.initial is not initial:
            # A virtual entry made by another initial factory: start afresh.
            with self._mlock:
                entry.pins -= 1
                scope._entry = None
                self._memory.remove(key)
            detach(entry.value)
            entry = None
        if entry is None:
            entry = yield from self._load_flow(key, schema)
            if entry is not None:
                with self._mlock:
                    entry.pins += 1
                    scope._entry = entry
        if entry is None:
            # Virtual until changed: a read-only scope on a new key stores
            # nothing, but keeps the value in memory for the next scope.
            entry = Entry(
                key, track(initial(), label=key), ttl=ttl, expires_at=self._core.memory_expiry(ttl)
            )
            entry.initial = initial
            entry.schema_version = (schema or self._core.schema).version
            entry.touched_at = self._now()
            entry.checked_at = self._clock.monotonic()
            with self._mlock:
                self._memory.insert(entry)
                entry.pins = 1
                scope._entry = entry
            return entry.value
        if ttl is not None:
            entry.ttl = ttl
        if entry.pending is None and is_dirty(entry.value):
            # Changed outside any scope through a path interception cannot
            # see (a buffer write): seal it now so rollback starts from here.
            self._seal(entry)
        attach(entry.value)
        return entry.value

    def _exit_flow(self, scope: Scope, failed: bool) -> Flow[None]:
        """Scope exit, key lock held: commit or roll back, detach, write.

        Under write-through, an error raised here means the change was not
        applied and never will be: the value is rolled back to the scope's
        start. A write that may have landed (its connection died after
        sending) is not an error: it stays pending, is retried in the
        background until written, and the scope returns (acknowledged).
        """
        key, entry, value = scope.key, scope._entry, scope._value
        undo: _Undo | None = None
        try:
            if entry is None:  # pragma: no cover - an open scope always pins one
                raise TierCacheError(f"the scope of {key!r} holds no entry")
            if failed:
                revert(value)
            elif self._shut and is_dirty(value):
                revert(value)
                raise self._closed_under(key)
            elif is_dirty(value):
                if self._write_through or self._wal:
                    undo = _Undo(entry)
                self._seal_or_revert(entry, clean=undo is None)
                entry.initial = None  # changed: a real entry from now on
                entry.conflict = scope.conflict
            else:
                self._core.writes_avoided += 1
        finally:
            detach(value)
            if entry is not None:
                with self._mlock:
                    entry.pins -= 1
                    scope._entry = None
        if entry is not None and entry.pending is not None and not failed:
            if self._write_through:
                # Also retries a write that failed at an earlier exit.
                try:
                    yield from self._write_flow([entry], "exit")
                except TierError as exc:
                    if undo is not None and self._roll_back(entry, value, undo, exc):
                        raise  # not applied, and rolled back
                    # Pending from an earlier scope, or it may have landed:
                    # acknowledged, and retried until it is written.
                    log.warning(
                        "tiercache: writing %r failed (%s); it stays pending and is retried",
                        key,
                        exc,
                    )
                    self._ensure_timer(retry=True)
                finally:
                    if undo is not None:
                        mark_clean(value)
            else:
                self._ensure_timer()
                if self._wal:
                    # Durable before the scope returns; the timer writes it.
                    try:
                        self._journal_batch([(entry, entry.pending)])
                    except TierError:
                        if undo is not None:
                            # Not journaled, so not acknowledged: not applied.
                            with self._mlock:
                                revert(value)
                                undo.restore(entry)
                        raise
                    finally:
                        if undo is not None:
                            mark_clean(value)
        if entry is not None and entry.outdated:
            self._let_go(entry)
        yield from self._drain_flow()

    def _roll_back(self, entry: Entry, value: Any, undo: _Undo, exc: TierError) -> bool:
        """A write-through exit's write failed: if it cannot have been
        applied, put memory back to how the scope found it and return True
        (the handler hears the error); if it may have landed, return False
        (it stays pending: acknowledged)."""
        if exc.transient and exc.sent:
            return False
        with self._mlock:
            if entry.value is value:
                revert(value)
                undo.restore(entry)
                return True
            if undo.pending is not None:
                # A merge replaced the value, and it carries an earlier
                # acknowledged change too: it must still be written.
                return False
            # A merge replaced the value with theirs plus ours: forget it;
            # the next access loads what is stored.
            self._memory.remove(entry.key)
            detach(entry.value)
            entry.pending = None
        return True

    def _let_go(self, entry: Entry) -> None:
        with self._mlock:
            self._drop_outdated(entry)

    def _drop_outdated(self, entry: Entry) -> None:
        """Under the memory lock, when a scope let go of an outdated entry
        that is still the key's memory copy: see :meth:`_drop_or_mark`."""
        memory = self._memory
        if entry.outdated and (
            memory.peek(entry.key) is entry or memory.evicted.get(entry.key) is entry
        ):
            self._drop_or_mark(entry)

    def _drop_or_mark(self, entry: Entry, *, count: bool = True) -> None:
        """Under the memory lock: a newer version of this memory copy exists
        elsewhere. Drop it (the next access loads), unless a scope uses it
        or it holds changes of ours still to be written (pending, or
        journaled: newer than the store); then mark it outdated, so its
        write merges and the last scope to let go of it drops it."""
        if not entry.pins and entry.pending is None and not entry.journaled:
            self._memory.remove(entry.key)
            detach(entry.value)
            if count:
                self._invalidated += 1
        else:
            entry.outdated = True

    # -- strict mode: leases ----------------------------------------------------------

    def _lease_keys(self, key: str) -> tuple[str, str]:
        names = self._core.names
        return names.lease(key), names.fence(key)

    def _strict_enter_flow(
        self, scope: Scope, key: str, initial: Callable[[], Any], ttl: float | None, lease: Lease
    ) -> Flow[tuple[Any, int]]:
        """Strict scope entry, local key lock held: take the lease, then read
        the value fresh from the authoritative tier (memory may be stale)."""
        core = self._core
        if not core.tiers or not core.tiers[-1].supports_lease:
            raise ConfigError("strict mode (lease=...) needs a last tier with leases (RedisTier)")
        tier, counters = core.tiers[-1], core.counters[-1]
        skey = core.skey(key)
        lkey, fkey = self._lease_keys(key)
        deadline = self._clock.monotonic() + lease.wait
        attempt = 0
        while True:
            token = yield Call(tier, counters, "acquire_lease", (lkey, fkey, lease.seconds))
            if token:
                break
            if self._clock.monotonic() > deadline:
                raise TierError(f"the lease of {key!r} stayed busy for {lease.wait} s")
            attempt += 1
            yield _backoff(min(attempt, 6))
        try:
            if key in self._journal_keys:
                yield from self._replay_flow()  # our journaled changes first
            plain, version = yield from self._read_stored_flow(key, skey, adopt=True)
        except BaseException:
            yield Call(tier, counters, "release_lease", (lkey, token))
            raise
        value = track(initial() if plain is MISSING else plain, label=key)
        entry = Entry(key, value, version=version, ttl=ttl, expires_at=core.memory_expiry(ttl))
        entry.schema_version = core.schema.version
        entry.touched_at = self._now()
        entry.checked_at = self._clock.monotonic()
        if plain is MISSING:
            entry.initial = initial
        with self._mlock:
            old = self._memory.remove(key)
            self._memory.insert(entry)
            entry.pins = 1
            scope._entry = entry
        if old is not None:
            detach(old.value)
        self._renewer.hold(tier, lkey, token, lease.seconds)
        return value, token

    def _strict_exit_flow(self, scope: Scope, failed: bool, token: int) -> Flow[None]:
        """Strict scope exit: write with the fencing token, release the lease."""
        key, entry, value = scope.key, cast(Entry, scope._entry), scope._value
        core = self._core
        tier, counters = core.tiers[-1], core.counters[-1]
        skey = core.skey(key)
        lkey, _ = self._lease_keys(key)
        self._renewer.drop(lkey)
        try:
            if failed:
                revert(value)
            elif self._shut and is_dirty(value):
                revert(value)
                raise self._closed_under(key)
            elif is_dirty(value):
                self._seal_or_revert(entry)
                entry.initial = None
                data = cast(bytes, entry.pending)
                ttl = core.ttl_for(entry.ttl)
                args = (skey, data, ttl, entry.stored, lkey, token)
                try:
                    written = yield Call(tier, counters, "compare_and_set_fenced", args)
                except TierError as exc:
                    if not (exc.transient and exc.sent):
                        with self._mlock:  # not applied: strict scopes re-read anyway
                            self._memory.remove(key)
                        raise
                    # It may have landed: acknowledged; retried (merging)
                    # until it is written, recognised if it did land.
                    entry.uncertain = {data}
                    log.warning("tiercache: strict write of %r failed (%s); retried", key, exc)
                    self._ensure_timer(retry=True)
                    return
                if written != 1:
                    with self._mlock:
                        self._memory.remove(key)
                    refused = TierError(
                        f"strict write of {key!r} refused: "
                        + (
                            "the lease expired and another process holds it"
                            if written == -1
                            else "the stored version changed under the lease"
                        )
                        + "; nothing was written"
                    )
                    refused.transient = refused.sent = False
                    raise refused
                yield from core.write_flow([(skey, data, ttl)], range(len(core.tiers) - 1))
                with self._mlock:
                    entry.pending = None
                    entry.stored = entry.version
                    entry.base = {}
                    entry.checked_at = self._clock.monotonic()
                    core.flushes["exit"] += 1
                yield from self._publish_flow([(key, "set", entry.version)])
            else:
                core.writes_avoided += 1
        finally:
            detach(value)
            with self._mlock:
                entry.pins -= 1
                scope._entry = None
                if entry.outdated:
                    self._drop_outdated(entry)
            try:
                yield Call(tier, counters, "release_lease", (lkey, token))
            except TierError as exc:
                # The lease expires by itself; what the scope did is settled.
                log.warning("tiercache: releasing the lease of %r failed: %s", key, exc)
        yield from self._drain_flow()

    def _seal_or_revert(self, entry: Entry, *, clean: bool = True) -> None:
        try:
            self._seal(entry, clean=clean)
        except BaseException:
            # Nothing was stored; memory goes back to the scope's start too.
            revert(entry.value)
            raise

    # -- misc ------------------------------------------------------------------------

    # -- invalidations from other processes -------------------------------------------

    def _on_invalidations(self, batch: list[Invalidation]) -> None:
        """Listener thread: drop memory copies older than what another
        process wrote (and the local tiers' copies); they reload lazily on
        next access, so there is no refresh storm. A copy in use by a scope,
        or with changes of ours not yet written, stays, marked outdated: its
        write-back is a compare-and-set and merges, and a scope that wrote
        nothing drops it as it ends."""
        newest: dict[str, int] = {}
        with self._mlock:
            memory = self._memory
            for inv in batch:
                key = inv.key
                memory.absent.pop(key, None)
                entry = memory.peek(key) or memory.evicted.get(key)
                if entry is not None and (inv.action == "del" or entry.stored < inv.version):
                    self._drop_or_mark(entry)
                # A delete drops every local copy, whatever its version.
                version = inv.version if inv.action != "del" else _ALL_VERSIONS
                newest[key] = max(newest.get(key, 0), version)
        core = self._core
        for index, tier in enumerate(core.tiers[:-1]):
            for key, version in newest.items():
                skey = core.skey(key)
                try:
                    # A copy as new as the message stays: on a disk shared by
                    # the processes of a host it is often the writer's own.
                    # (Local copies only ever hold versions the shared tier
                    # stored, so a version names one content.)
                    raw = tier.get(skey)
                    if raw is not None and _safe_version(raw) < version:
                        tier.delete(skey)
                except Exception as exc:
                    # The stale copy may still be there: it is confirmed
                    # before it is ever served.
                    core.local_failed(index, "delete", exc)

    def _on_gap(self) -> None:
        """Listener thread: invalidations were lost and cannot be replayed
        (server restart, stream trimmed). Every clean memory copy is dropped
        and the remembered misses forgotten; loads go to the shared tier."""
        with self._mlock:
            self._gaps += 1
            self._trusted_since = self._clock.monotonic()
            memory = self._memory
            memory.absent.clear()
            for entry in list(memory.data.values()):
                self._drop_or_mark(entry)

    def _on_recovered(self) -> None:
        """The shared tier answers again after failing: local copies served
        meanwhile without confirmation are dropped from memory (or marked
        outdated while in use), so the next access confirms them."""
        with self._mlock:
            keys, self._unconfirmed = self._unconfirmed, set()
            memory = self._memory
            for key in keys:
                entry = memory.peek(key) or memory.evicted.get(key)
                if entry is not None:
                    self._drop_or_mark(entry, count=False)

    def _check_open(self) -> None:
        if self._closed:
            raise TierCacheError(f"cache {self.namespace!r} is closed")

    def _closed_under(self, key: str) -> TierCacheError:
        return TierCacheError(
            f"cache {self.namespace!r} was closed while the scope of {key!r} was open (close() "
            "waited its timeout for it): its change was not applied"
        )

    def _check_key(self, key: object) -> None:
        check_key(key, self.max_key_length)

    def stats(self) -> CacheStats:
        """A frozen snapshot of every counter; ``str()`` of it is a table."""
        with self._mlock:
            mem = TierStats(
                name="memory",
                hits=self._hits,
                misses=self._misses,
                reads=self._hits + self._misses,
                size=len(self._memory),
                evictions=self._memory.evictions,
            )
            pending = [e for e in self._memory.entries() if e.pending is not None]
            now = self._clock.monotonic()
            oldest = max((now - e.pending_since for e in pending), default=0.0)
        core = self._core
        bus = self._bus
        extra = (self._bus_counters.snapshot(),) if bus is not None else ()
        since = bus.unhealthy_since if bus is not None else None
        return CacheStats(
            namespace=self.namespace,
            tiers=(mem, *(c.snapshot() for c in core.counters), *extra),
            invalidations=self._invalidated,
            bus_gaps=self._gaps,
            revalidations=self._revalidations,
            bus_healthy=None if bus is None else bus.healthy,
            bus_unhealthy_for_s=0.0 if since is None else self._clock.monotonic() - since,
            degraded=self._breaker is not None and self._breaker.degraded,
            unreachable_for_s=(
                self._clock.monotonic() - self._breaker.down_since
                if self._breaker is not None and self._breaker.down_since is not None
                else 0.0
            ),
            journal_depth=self._journal.depth if self._journal is not None else 0,
            journaled=self._journaled,
            loads=core.loads,
            promotions=core.promotions,
            flushes=dict(core.flushes),
            writes_avoided=core.writes_avoided,
            evictions=self._memory.evictions,
            corrupt_entries=core.corrupt,
            quarantined=core.quarantined,
            served_unconfirmed=self._served_unconfirmed,
            merges=core.merges,
            conflicts=core.conflicts,
            conflicts_lost=core.conflicts_lost,
            dirty=len(pending),
            oldest_dirty_age_s=max(0.0, oldest),
        )

    def __repr__(self) -> str:
        names = ", ".join(["memory", *(t.name for t in self._core.tiers)])
        return f"<TieredCache {self.namespace!r} [{names}]>"


#: Above every entry version (u64): an invalidation that drops any copy.
_ALL_VERSIONS = 2**64

#: Seconds between replay attempts of a write-through cache's journal.
_JOURNAL_RETRY = 1.0

#: A value not decoded yet: journal replays decode one only to merge it.
_UNDECODED: Any = object()

#: Polls (1 ms apart) a caller waits for another thread's journal replay.
_REPLAY_WAIT = 30_000


def _changed_fields(before: Any, after: Any) -> dict[Any, Any]:
    """The merge base of a change from ``before`` (MISSING, or a value fn
    did not change in place) to ``after``: each top-level field that
    differs, as it was before."""
    plain = to_plain(after)
    if before is not MISSING:
        before = to_plain(before)
    if type(plain) is dict and (before is MISSING or type(before) is dict):
        was = {} if before is MISSING else before
        return {
            f: was.get(f, MISSING)
            for f in {*was, *plain}
            if not same(was.get(f, MISSING), plain.get(f, MISSING))
        }
    return {WHOLE: before}


def _group_base(recs: list[Record]) -> dict[Any, Any] | None:
    """The merge base of a key's journaled records taken together: each
    field as it was before the first record that changed it."""
    base: dict[Any, Any] | None = {}
    for rec in recs:
        if rec.base is None or base is None:
            base = None
        else:
            for field, was in rec.base.items():
                base.setdefault(field, was)
    return base


#: Merge-and-retry rounds before a write gives up with TierError. Between
#: rounds a lost writer backs off (jittered, doubling from 1 ms up to 50 ms):
#: without it, optimistic writers on one hot key starve each other.
_MAX_MERGES = 64


def _backoff(attempt: int) -> Pause:
    return Pause(random.uniform(0.5, 1.0) * min(0.05, 0.001 * 2**attempt))


def _safe_version(data: bytes) -> int:
    """The version field of stored bytes the cache cannot read; 0 when they
    are not even an envelope (the tiers' compare-and-set does the same)."""
    try:
        return peek_version(data)
    except Exception:
        return 0


class _Renewer:
    """Renews the leases this cache holds, from one daemon thread.

    A lease is renewed every third of its duration while its scope runs;
    a renewal that finds the lease gone is logged (the scope's write will
    then be refused by the fencing check).
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[PersistentTier, int, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, tier: PersistentTier, lease: str, token: int, seconds: float) -> None:
        with self._lock:
            self._held[lease] = (tier, token, seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tiercache-leases", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def drop(self, lease: str) -> None:
        with self._lock:
            self._held.pop(lease, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._thread = None
                    return
            period = min(seconds for _, _, seconds in held.values()) / 3
            self._wake.clear()
            self._wake.wait(period)
            for lease, (tier, token, seconds) in held.items():
                with self._lock:
                    if self._held.get(lease, (None, None))[1] != token:
                        continue
                try:
                    if not tier.renew_lease(lease, token, seconds):
                        log.warning("tiercache: a lease was lost before its scope ended")
                except Exception:
                    log.warning("tiercache: renewing a lease failed", exc_info=True)


def _close_all(closers: list[Callable[[], None]]) -> None:
    """Call every closer even if one fails; re-raise the first failure."""
    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


def _drop(entry: Entry) -> None:
    detach(entry.value)


def _timer_loop(ref: weakref.ref[TieredCache], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        cache = ref()
        if cache is None:
            return
        try:
            cache._tick()
        except TierError as exc:
            # The entries stay pending (or journaled) and the next tick
            # retries them. An outage is logged once, by the breaker, not
            # once per tick.
            log.debug("tiercache: background flush of %r failed: %s", cache.namespace, exc)
        except Exception:
            log.exception("tiercache: background flush of %r failed", cache.namespace)
        del cache


def _flush_at_exit(ref: weakref.ref[TieredCache]) -> None:
    cache = ref()
    if cache is None or cache._shut:
        return
    try:
        cache.close()
    except Exception:
        log.exception("tiercache: flush at interpreter exit failed for %r", cache.namespace)
