"""Session scopes: ``with cache.session(key)`` and ``async with``.

::

    __enter__ ──> ScopeFlows.open: in one memory-lock section, the key's lock
                  (free? taken, recorded in the scope) and the entry (a hit?
                  pinned and attached: no flow at all)
        │ busy: wait for the lock │ miss, expired, stale: enter_flow (load)
        ▼
    handler ──> the live tracked value
        ▼
    __exit__ ──> nothing changed: close_clean (unpin, unlock; no write)
             ──> changed: exit_flow (seal once; write now, or leave it to the
                 timer; on failure, roll back to the scope's start)
             ──> body raised: exit_flow rolls the value back, writes nothing

A scope's lock is taken before the load, so two scopes on one key in this
process run one after the other; scopes on different keys run concurrently.
The scope reaches the cache only through its :class:`ScopeFlows` host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._exceptions import TierCacheError, TierError
from ._flow import Flow, arun, run
from ._invalidation import Invalidations
from ._journaling import Journaling
from ._leases import Leases
from ._locks import KeyLock, owner
from ._policy import Lease, Resolver, Schema
from ._read import Reader
from ._state import CacheState
from ._tiers._memory import Entry
from ._tracking import attach, detach, is_dirty, mark_clean, quick_clean, revert, track
from ._write import Writer

__all__ = ["Scope", "ScopeFlows"]

log = logging.getLogger("tiercache")


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


class Scope:
    """One session scope over a key: ``with`` or ``async with`` (not both).

    Made by :meth:`TieredCache.session`; entering yields the live tracked
    value, leaving commits (or, if the body raised, rolls back). A scope
    may be left in another thread or task than the one that entered it.
    """

    __slots__ = (
        "_entry",
        "_fence",
        "_host",
        "_key_lock",
        "_value",
        "commit_on_error",
        "conflict",
        "initial",
        "key",
        "lease",
        "schema",
        "ttl",
    )

    def __init__(
        self,
        host: ScopeFlows,
        key: str,
        initial: Callable[[], Any],
        ttl: float | None,
        schema: Schema | None,
        commit_on_error: bool,
        conflict: Resolver | None = None,
        lease: Lease | None = None,
    ) -> None:
        self._host = host
        self.conflict = conflict
        self.lease = lease
        self.key = key
        self.initial = initial
        self.ttl = ttl
        self.schema = schema
        self.commit_on_error = commit_on_error
        #: The key's lock while the scope holds it (set by the lock
        #: registry in the same stores that take it: see tiercache._locks).
        self._key_lock: KeyLock | None = None
        #: The memory entry while the scope pins it (set with the pin).
        self._entry: Entry | None = None
        self._value: Any = None
        self._fence = 0

    def _check(self) -> None:
        state, key = self._host.s, self.key
        state.check_key(key)
        state.check_open()
        if self._key_lock is not None:
            raise TierCacheError(f"the scope of {key!r} is already open; make a new one")

    def _let_go(self) -> None:
        """Unpin and unlock, whatever is held (nothing: nothing to do).

        The callers free the lock inline before calling this (a signal's
        exception can land at the start of any call, so this one might not
        run): see tiercache._locks."""
        if self._key_lock is None and self._entry is None:
            self._value = None
            return  # already let go (the read-only exit does it itself)
        host = self._host
        waiter = None
        with host.mlock:
            entry = self._entry
            if entry is not None:
                entry.pins -= 1
                self._entry = None
            lock = self._key_lock
            if lock is not None:
                if lock.holder == id(self):
                    lock.owner = None
                    lock.holder = 0
                self._key_lock = None
                if lock.waiters:
                    waiter = lock.waiters[0]
                host.locks.sweep_if_due_locked()
        self._value = None
        if waiter is not None:
            waiter.wake()

    def __del__(self) -> None:
        # A scope dropped while it still holds its key (its __exit__ never
        # ran: an interrupt landed on the call itself, or __enter__ was
        # called by hand): free the key rather than leave it locked for
        # good. No lock is taken here (the collector may run anywhere);
        # these stores are atomic for threads and signals alike. A waiter
        # notices within POLL seconds. (getattr: __init__ may itself have
        # been interrupted.)
        lock = getattr(self, "_key_lock", None)
        if lock is not None and lock.holder == id(self):
            lock.owner = None
            lock.holder = 0
        entry = getattr(self, "_entry", None)
        if entry is not None:
            entry.pins -= 1
            self._entry = None

    def __enter__(self) -> Any:
        # The hot path is written out flat: every call saved here is ~5% of a
        # read-only scope on a memory hit.
        host, key = self._host, self.key
        if type(key) is not str or host.s.closed or self._key_lock is not None:
            self._check()
        me = owner()
        try:
            if self.lease is not None:
                host.locks.acquire(key, me, self)
                self._value, self._fence = run(
                    host.leases.strict_enter_flow(self, key, self.initial, self.ttl, self.lease)
                )
                return self._value
            entry = host.open(self, key, self.initial, me)
            if entry is not None:
                value = self._value = entry.value
                return value
            if self._key_lock is None:
                host.locks.acquire(key, me, self)
            self._value = run(host.enter_flow(self, key, self.initial, self.ttl, self.schema))
            return self._value
        except BaseException:
            lock = self._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self._let_go()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        host = self._host
        if self._key_lock is None:
            return
        failed = exc is not None and not self.commit_on_error
        try:
            if self._fence:
                fence, self._fence = self._fence, 0
                run(host.leases.strict_exit_flow(self, failed, fence))
            elif not failed and (done := host.close_clean(self)):
                if done == 2:
                    run(host.writer.drain_flow())
            else:
                run(host.exit_flow(self, failed))
        finally:
            lock = self._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self._let_go()

    async def __aenter__(self) -> Any:
        host, key = self._host, self.key
        if type(key) is not str or host.s.closed or self._key_lock is not None:
            self._check()
        me = owner()
        try:
            if self.lease is not None:
                await host.locks.aacquire(key, me, self)
                self._value, self._fence = await arun(
                    host.leases.strict_enter_flow(self, key, self.initial, self.ttl, self.lease)
                )
                return self._value
            entry = host.open(self, key, self.initial, me)
            if entry is not None:
                value = self._value = entry.value
                return value
            if self._key_lock is None:
                await host.locks.aacquire(key, me, self)
            self._value = await arun(
                host.enter_flow(self, key, self.initial, self.ttl, self.schema)
            )
            return self._value
        except BaseException:
            lock = self._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self._let_go()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        host = self._host
        if self._key_lock is None:
            return
        failed = exc is not None and not self.commit_on_error
        try:
            if self._fence:
                fence, self._fence = self._fence, 0
                await arun(host.leases.strict_exit_flow(self, failed, fence))
            elif not failed and (done := host.close_clean(self)):
                if done == 2:
                    await arun(host.writer.drain_flow())
            else:
                await arun(host.exit_flow(self, failed))
        finally:
            lock = self._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self._let_go()


class ScopeFlows:
    """The cache's side of a scope: what :class:`Scope` calls, and nothing else."""

    def __init__(
        self,
        state: CacheState,
        reader: Reader,
        writer: Writer,
        journaling: Journaling,
        inval: Invalidations,
        leases: Leases,
    ) -> None:
        self.s = state
        self.mlock = state.mlock
        self.locks = state.locks
        self.reader = reader
        self.writer = writer
        self.journaling = journaling
        self.inval = inval
        self.leases = leases

    def open(self, scope: Scope, key: str, initial: Callable[[], Any], me: Any) -> Entry | None:
        """A scope's hot path, in one memory-lock section: take the key's
        lock if it is free (into ``scope``) and look the entry up.

        Returns the entry on a memory hit: pinned (``scope._entry``) and
        attached; no flow starts at all. None otherwise: the caller waits
        for the lock if ``scope`` did not get it, and runs the flow."""
        with self.s.mlock:
            if not self.s.locks.take_locked(key, me, scope):
                return None
            entry = self.s.peek(key)
            if (
                entry is None
                or (entry.initial is not None and entry.initial is not initial)
                or (entry.expires_at is not None and not self.reader.fresh(entry))
                or (self.s.max_stale is not None and self.reader.stale(entry))
            ):
                return None
            self.s.recent(key)
            self.s.hits += 1
            # The pin and the scope's record of it: stores only, one unit.
            entry.pins += 1
            scope._entry = entry
        root = entry.root
        if root is not None:
            root.detached = False
        return entry

    def close_clean(self, scope: Scope) -> int:
        """A read-only scope's exit: 0 when there is something to write (run
        :meth:`exit_flow`); else unpin and unlock (inline, as
        :meth:`Scope._let_go`), and return 2 when evicted entries wait to
        be drained, 1 otherwise."""
        entry = scope._entry
        if entry is None or (entry.pending is not None and self.s.write_through):
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
        with self.s.mlock:
            self.s.core.writes_avoided += 1
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
                self.inval.drop_outdated(entry)
            self.locks.sweep_if_due_locked()
            drain = 2 if self.s.memory.evicted else 1
        if waiter is not None:
            waiter.wake()
        return drain

    def enter_flow(
        self,
        scope: Scope,
        key: str,
        initial: Callable[[], Any],
        ttl: float | None,
        schema: Schema | None,
    ) -> Flow[Any]:
        """Scope entry, key lock held: find or load, pin (into ``scope``),
        attach; the live value."""
        entry = yield from self.reader.lookup_flow(key, pin=scope)
        if entry is not None and entry.initial is not None and entry.initial is not initial:
            # A virtual entry made by another initial factory: start afresh.
            with self.s.mlock:
                entry.pins -= 1
                scope._entry = None
                self.s.memory.remove(key)
            detach(entry.value)
            entry = None
        if entry is None:
            entry = yield from self.reader.load_flow(key, schema)
            if entry is not None:
                with self.s.mlock:
                    entry.pins += 1
                    scope._entry = entry
        if entry is None:
            # Virtual until changed: a read-only scope on a new key stores
            # nothing, but keeps the value in memory for the next scope.
            entry = Entry(
                key, track(initial(), label=key), ttl=ttl, expires_at=self.s.core.memory_expiry(ttl)
            )
            entry.initial = initial
            entry.schema_version = (schema or self.s.core.schema).version
            entry.touched_at = self.s.now()
            entry.checked_at = self.s.clock.monotonic()
            with self.s.mlock:
                self.s.memory.insert(entry)
                entry.pins = 1
                scope._entry = entry
            return entry.value
        if ttl is not None:
            entry.ttl = ttl
        if entry.pending is None and is_dirty(entry.value):
            # Changed outside any scope through a path interception cannot
            # see (a buffer write): seal it now so rollback starts from here.
            self.writer.seal(entry)
        attach(entry.value)
        return entry.value

    def exit_flow(self, scope: Scope, failed: bool) -> Flow[None]:
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
            elif self.s.shut and is_dirty(value):
                revert(value)
                raise self.s.closed_under(key)
            elif is_dirty(value):
                if self.s.write_through or self.s.wal:
                    undo = _Undo(entry)
                self.writer.seal_or_revert(entry, clean=undo is None)
                entry.initial = None  # changed: a real entry from now on
                entry.conflict = scope.conflict
            else:
                self.s.core.writes_avoided += 1
        finally:
            detach(value)
            if entry is not None:
                with self.s.mlock:
                    entry.pins -= 1
                    scope._entry = None
        if entry is not None and entry.pending is not None and not failed:
            if self.s.write_through:
                # Also retries a write that failed at an earlier exit.
                try:
                    yield from self.writer.write_flow([entry], "exit")
                except TierError as exc:
                    if undo is not None and self.roll_back(entry, value, undo, exc):
                        raise  # not applied, and rolled back
                    # Pending from an earlier scope, or it may have landed:
                    # acknowledged, and retried until it is written.
                    log.warning(
                        "tiercache: writing %r failed (%s); it stays pending and is retried",
                        key,
                        exc,
                    )
                    self.s.ensure_timer(retry=True)
                finally:
                    if undo is not None:
                        mark_clean(value)
            else:
                self.s.ensure_timer()
                if self.s.wal:
                    # Durable before the scope returns; the timer writes it.
                    try:
                        self.journaling.batch([(entry, entry.pending)])
                    except TierError:
                        if undo is not None:
                            # Not journaled, so not acknowledged: not applied.
                            with self.s.mlock:
                                revert(value)
                                undo.restore(entry)
                        raise
                    finally:
                        if undo is not None:
                            mark_clean(value)
        if entry is not None and entry.outdated:
            self.inval.let_go(entry)
        yield from self.writer.drain_flow()

    def roll_back(self, entry: Entry, value: Any, undo: _Undo, exc: TierError) -> bool:
        """A write-through exit's write failed: if it cannot have been
        applied, put memory back to how the scope found it and return True
        (the handler hears the error); if it may have landed, return False
        (it stays pending: acknowledged)."""
        if exc.transient and exc.sent:
            return False
        with self.s.mlock:
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
            self.s.memory.remove(entry.key)
            detach(entry.value)
            entry.pending = None
        return True
