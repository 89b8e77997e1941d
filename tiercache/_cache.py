"""TieredCache: the public facade over the cache's layers.

::

    TieredCache ── checks its settings (_settings), builds the layers, and
       │           gives each public method a few lines that drive one flow:
       ├─ get / aget ──────────> memory hit here; else _read.Reader
       ├─ set / update / delete / touch ──> _direct.DirectWrites (key lock held)
       ├─ session(key) ────────> _scope.Scope over _scopeflows.ScopeFlows
       ├─ flush / close ───────> _lifecycle.Lifecycle
       └─ stats() ─────────────> _snapshot.stats_of

    layers, bottom up:  _sealing ─ _core (bytes; flows between tiers) ─
                        _state (shared parts) ─ _invalidation ─ _journaling ─
                        _merge ─ _write ─ _replay ─ _read ─ _direct ─ _leases ─
                        _scopeflows ─ _scope ─ _lifecycle ─ _cache (this facade)

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

import atexit
import inspect
import logging
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

from . import _fork
from ._atleast import check_at_least
from ._breaker import Breaker
from ._bus import Bus
from ._clock import Clock, SystemClock
from ._core import Core
from ._defaults import AUTO, _Auto, publish_in_tier, tiers_from_url
from ._direct import DirectWrites
from ._exceptions import ConfigError, TierError
from ._flow import arun, run
from ._invalidation import Invalidations
from ._journal import Journal
from ._journaling import Journaling
from ._leases import Leases
from ._lifecycle import Lifecycle, flush_at_exit
from ._locks import LockRegistry
from ._merge import Merger
from ._policy import (
    Expiry,
    FlushPolicy,
    Lease,
    Quarantine,
    Resolver,
    Schema,
    raise_conflict,
)
from ._queries import Queries
from ._read import Reader
from ._replay import Replayer
from ._scope import Scope, ScopeFlows, ScopeOptions, scope_options
from ._serializers import Serializer
from ._settings import check_settings
from ._snapshot import stats_of
from ._state import CacheState
from ._stats import CacheStats
from ._tiers._base import PersistentTier
from ._tiers._memory import MemoryTier
from ._tracking import MISSING as _TRACKING_MISSING
from ._write import Writer

__all__ = ["MISSING", "TieredCache"]

log = logging.getLogger("tiercache")


#: Returned by ``get(key, MISSING)`` on a miss; never a stored value. The
#: same object marks a missing field in merges and in ``changes()``.
MISSING: Any = _TRACKING_MISSING


class TieredCache(Queries):
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
        bus: Bus | _Auto | None = AUTO,
        max_stale: float | _Auto | None = AUTO,
        max_value_bytes: int | None = None,
        journal: Journal | None = None,
        max_key_length: int = 1024,
        corrupt: Quarantine | None = None,
    ) -> None:
        clock = clock or SystemClock()
        cfg = check_settings(
            tiers,
            namespace=namespace,
            serializer=serializer,
            flush=flush,
            ttl=ttl,
            conflict=conflict,
            lease=lease,
            bus=bus,
            max_stale=max_stale,
            clock=clock,
            max_value_bytes=max_value_bytes,
            journal=journal,
            max_key_length=max_key_length,
            corrupt=corrupt,
        )
        persistent, serializer, flush = cfg.persistent, cfg.serializer, cfg.flush
        expiry, bus, stale_bound = cfg.expiry, cfg.bus, cfg.max_stale
        core = Core(
            persistent,
            namespace=namespace,
            serializer=serializer,
            clock=clock,
            expiry=expiry,
            schema=schema or Schema(),
            max_value_bytes=max_value_bytes,
            quarantine=corrupt,
        )
        s = self._s = CacheState(
            namespace=namespace,
            memory=cfg.memory,
            core=core,
            clock=clock,
            flush=flush,
            expiry=expiry,
            conflict=conflict,
            lease=lease,
            max_stale=stale_bound,
            max_key_length=max_key_length,
            bus=bus,
            journal=journal,
        )
        # The layers, bottom up; each holds the state and the few below it.
        inval = Invalidations(s)
        journaling = Journaling(s, inval)
        merger = Merger(s)
        writer = Writer(s, inval, journaling, merger)
        replayer = Replayer(s, writer, merger, journaling, inval)
        self._reader = Reader(s, writer)
        self._direct = DirectWrites(s, self._reader, writer, inval)
        leases = Leases(s, writer, inval)
        self._scopes = ScopeFlows(s, self._reader, writer, journaling, inval, leases)
        self._life = Lifecycle(s, writer, leases, self._direct.locked, self._direct.alocked)
        s.ensure_timer = self._life.ensure_timer
        s.replay_flow = replayer.replay_flow
        #: The options of a scope made with every default.
        self._plain = ScopeOptions(dict, None, None, False, None, lease)
        if persistent:
            # Every call to the shared tier goes through a circuit breaker:
            # a dead server fails fast instead of costing a timeout per call.
            s.breaker = Breaker(
                persistent[-1], clock, inval.on_recovered, probe_key=core.names.probe
            )
            core.tiers[-1] = cast(PersistentTier, s.breaker)
        if journal is not None:
            for rec in journal.snapshot(serializer):
                s.journal_keys[rec.key] = s.journal_keys.get(rec.key, 0) + 1
        ref = weakref.ref(self)
        self._atexit = lambda: flush_at_exit(ref)
        atexit.register(self._atexit)
        if bus is not None:
            s.tier_publishes = publish_in_tier(s.shared, bus, core.prefix)
            bus.start(inval.on_messages, inval.on_gap)
        _fork.watch(self)
        if journal is not None and journal.depth:
            # Changes a previous run acknowledged while the shared tier was
            # down: put them where they belong now, if it is back.
            try:
                run(replayer.replay_flow())
            except TierError as exc:
                log.warning("tiercache: journal replay deferred: %s", exc)

    @classmethod
    def from_url(
        cls, url: str, *, namespace: str, memory: MemoryTier | None = None, **options: Any
    ) -> TieredCache:
        """The safe configuration in one line: ``redis://``, ``rediss://``,
        ``unix://`` or ``redis+cluster://`` (a Redis Cluster) builds memory +
        :class:`RedisTier` + the default bus and
        ``max_stale``; ``file:///dir`` the embedded default, memory +
        :class:`DiskTier`. ``options``: this constructor's settings, and the
        tier's (``socket_timeout=``, ``size_limit=``...); ``memory``: a
        :class:`MemoryTier` other than the default one."""
        tiers, settings = tiers_from_url(url, memory, options, _SETTINGS)
        return cls(*tiers, namespace=namespace, **settings)

    # -- settings (read-only) --------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self._s.namespace

    @property
    def flush_policy(self) -> FlushPolicy:
        return self._s.flush_policy

    @property
    def conflict(self) -> Resolver:
        """Settles same-field write conflicts (see :data:`Resolver`)."""
        return self._s.conflict

    @property
    def lease(self) -> Lease | None:
        """Strict mode for every scope of this cache (a scope may override)."""
        return self._s.lease

    @property
    def max_stale(self) -> float | None:
        """Longest time a memory copy is served without being known current
        (a healthy bus, or a re-read of the shared tier); None: no bound."""
        return self._s.max_stale

    @property
    def max_key_length(self) -> int:
        return self._s.max_key_length

    # -- reading ---------------------------------------------------------------------

    def get(self, key: str, default: Any = None, *, at_least: int | None = None) -> Any:
        """The value of ``key``, or ``default`` when no tier has it.

        A memory hit returns the live value, read-only: mutate it in
        ``cache.session(key)``. Pass ``default=MISSING`` to tell a stored
        ``None`` from a miss. ``at_least``: a version a scope reported
        (:attr:`Scope.version`, maybe in another process): an older copy is
        reloaded first, waiting up to ``AT_LEAST_WAIT`` seconds for the
        shared tier to reach it, else :class:`VersionNotReachedError`.
        """
        if at_least is not None:
            return run(self._scopes.catchup.get_flow(key, default, at_least))
        s = self._s
        mlock = s.mlock
        # Not ``with``: a third of the cost. The memory lock is an RLock: a
        # release finding it not ours (an interrupt landed in the acquire)
        # raises instead of freeing another thread's hold.
        try:
            mlock.acquire()
            try:
                entry = s.peek(key)
            except TypeError:  # an unhashable key: the slow path names the problem
                entry = None
            if entry is not None and entry.initial is None:
                exp = entry.expires_at
                if (
                    (exp is None or s.now() < exp)
                    and ((bound := s.max_stale) is None or s.now() - entry.checked_at <= bound)
                    if s.plain_hits
                    else self._reader.hit_ok(entry)
                ):
                    s.recent(key)
                    s.hits += 1
                    return entry.value
        finally:
            try:
                mlock.release()
            except RuntimeError:
                pass  # never acquired
        return self._reader.get_slow(key, default)

    async def aget(self, key: str, default: Any = None, *, at_least: int | None = None) -> Any:
        """Async :meth:`get`; never blocks the event loop on network I/O."""
        if at_least is not None:
            return await arun(self._scopes.catchup.get_flow(key, default, at_least))
        s = self._s
        mlock = s.mlock
        try:  # as in get()
            mlock.acquire()
            try:
                entry = s.peek(key)
            except TypeError:
                entry = None
            if entry is not None and entry.initial is None:
                exp = entry.expires_at
                if (
                    (exp is None or s.now() < exp)
                    and ((bound := s.max_stale) is None or s.now() - entry.checked_at <= bound)
                    if s.plain_hits
                    else self._reader.hit_ok(entry)
                ):
                    s.recent(key)
                    s.hits += 1
                    return entry.value
        finally:
            try:
                mlock.release()
            except RuntimeError:
                pass  # never acquired
        return await self._reader.aget_slow(key, default)

    # -- writing from outside a scope -----------------------------------------------------

    def set(
        self, key: str, value: Any, *, ttl: float | None = None, expected_version: int | None = None
    ) -> None:
        """Store ``value`` (adopted: see :func:`tiercache.track`) under ``key``.

        It is written to every tier before ``set`` returns, whatever the
        flush policy (use a session scope for write-behind).
        ``expected_version`` (from :meth:`get_versioned` or
        :attr:`Scope.version`; 0: absent): write only if the shared tier
        still holds that version, else :class:`ConflictError`, nothing written.
        """
        d = self._direct
        flow = self._set_flow(key, value, ttl, expected_version)
        run(d.locked(key, ttl, flow))

    async def aset(
        self, key: str, value: Any, *, ttl: float | None = None, expected_version: int | None = None
    ) -> None:
        """Async :meth:`set`."""
        await self._direct.alocked(key, ttl, self._set_flow(key, value, ttl, expected_version))

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
        d = self._direct
        return run(d.locked(key, ttl, lambda: d.update_flow(key, fn, initial, ttl)))

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
        d = self._direct
        return await d.alocked(key, ttl, lambda: d.update_flow(key, fn, initial, ttl))

    def delete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Remove ``key`` from every tier; whether any tier had it.
        ``expected_version``: as in :meth:`set` (ConflictError, nothing deleted)."""
        d, v = self._direct, self._checked(expected_version)
        return run(d.locked(key, None, lambda: d.delete_flow(key, v)))

    async def adelete(self, key: str, *, expected_version: int | None = None) -> bool:
        """Async :meth:`delete`."""
        d, v = self._direct, self._checked(expected_version)
        return await d.alocked(key, None, lambda: d.delete_flow(key, v))

    def touch(self, key: str, ttl: float | None = None) -> bool:
        """Restart the expiry of ``key``; whether it exists.

        With sliding expiry this refreshes the persistent tiers' TTL without
        rewriting the value; with absolute expiry (sealed into the stored
        envelope) it rewrites the entry once.
        """
        d = self._direct
        return run(d.locked(key, ttl, lambda: d.touch_flow(key, ttl)))

    async def atouch(self, key: str, ttl: float | None = None) -> bool:
        """Async :meth:`touch`."""
        d = self._direct
        return await d.alocked(key, ttl, lambda: d.touch_flow(key, ttl))

    # -- flushing and closing --------------------------------------------------------------

    def flush(self) -> int:
        """Write every pending change now; how many entries were written."""
        return self._life.flush_all("explicit")

    async def aflush(self) -> int:
        """Async :meth:`flush`."""
        return await self._life.aflush_all("explicit")

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
        if not self._life.close(wait):
            return
        atexit.unregister(self._atexit)
        self._life.close_parts()

    async def aclose(self, wait: float = 30.0) -> None:
        """Async :meth:`close`: waits for other tasks' scopes without
        blocking the loop."""
        if not await self._life.aclose(wait):
            return
        atexit.unregister(self._atexit)
        await self._life.aclose_parts()

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

    # -- sessions ----------------------------------------------------------------------------

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
        at_least: int | None = None,
    ) -> Scope:
        """A scope over ``key``'s live value, for ``with`` and ``async with``.

        The key is locked for the scope (one scope per key at a time in this
        process), loaded through the tiers or created with ``initial()``,
        and yielded as a live tracked value. On exit a changed value is
        written once (now with :class:`WriteThrough`, on the next tick with
        :class:`WriteBehind`); an unchanged one is not written at all. If
        the body raises, the value is rolled back to how it was before the
        scope and nothing is written, unless ``commit_on_error=True``.
        ``at_least``: as in :meth:`get`, the value the scope opens on is at
        that version or newer. After the block, :attr:`Scope.version` is
        the version it committed (or read, if it changed nothing).
        """
        if (
            initial is dict
            and ttl is None
            and schema is None
            and lease is None
            and conflict is None
            and not commit_on_error
            and at_least is None
        ):
            return Scope(self._scopes, key, self._plain)  # the common case
        return Scope(
            self._scopes,
            key,
            scope_options(
                initial,
                ttl,
                schema,
                commit_on_error,
                conflict,
                lease or self._s.lease,
                None if at_least is None else check_at_least(at_least),
            ),
        )

    def _scope_host(self) -> ScopeFlows:
        """The narrow interface a scope talks to (``cached_session`` binds
        it once, with options checked once by :meth:`_scope_options`)."""
        return self._scopes

    def _scope_options(
        self,
        initial: Callable[[], Any],
        ttl: float | None,
        schema: Schema | None,
        commit_on_error: bool,
        conflict: Resolver | None,
        lease: Lease | None,
    ) -> ScopeOptions:
        """Checked options for :meth:`_scope`; the cache's lease when none."""
        return scope_options(
            initial, ttl, schema, commit_on_error, conflict, lease or self._s.lease
        )

    # -- stats and the rest ------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """A frozen snapshot of every counter; ``str()`` of it is a table."""
        return stats_of(self._s)

    def __repr__(self) -> str:
        names = ", ".join(["memory", *(t.name for t in self._s.core.tiers)])
        return f"<TieredCache {self._s.namespace!r} [{names}]>"

    def _after_fork(self) -> None:
        self._life.after_fork()

    # Internals the test suite reaches for (nothing else uses these).

    @property
    def _core(self) -> Core:
        return self._s.core

    @property
    def _bus(self) -> Bus | None:
        return self._s.bus

    @property
    def _journal(self) -> Journal | None:
        return self._s.journal

    @property
    def _locks(self) -> LockRegistry:
        return self._s.locks

    @property
    def _closed(self) -> bool:
        return self._s.closed

    @_closed.setter
    def _closed(self, value: bool) -> None:
        self._s.closed = value

    def _tick(self) -> None:
        self._life.tick()


#: The names of the constructor's settings (for :meth:`TieredCache.from_url`).
_SETTINGS = frozenset(inspect.signature(TieredCache.__init__).parameters) - {"self", "tiers"}
