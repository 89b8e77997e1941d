"""Session scopes: ``with cache.session(key)`` and ``async with``.

::

    __enter__ ──> hot path, in one memory-lock section: the key's lock free
                  and a plain memory hit? taken, pinned, attached: no flow
        │ lock busy: wait for it │ miss, expired, stale, strict: the flow
        ▼                         (tiercache._scopeflows: load, lease)
    handler ──> the live tracked value
        ▼
    __exit__ ──> nothing changed: unpin, unlock, inline; no write
             ──> changed: exit_flow (seal once; write now, or leave it to the
                 timer; on failure, roll back to the scope's start)
             ──> body raised: exit_flow rolls the value back, writes nothing

A scope's lock is taken before the load, so two scopes on one key in this
process run one after the other; scopes on different keys run concurrently.
A scope reaches the cache only through its :class:`ScopeFlows` host and the
state it holds. The hot paths are written out flat, once for ``with`` and
once for ``async with``, identical (a test compares them): at ~1 µs a scope,
each Python call saved is ~5%.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ._exceptions import ConfigError, TierCacheError
from ._flow import Flow, arun, run
from ._locks import KeyLock, owner, task_of, thread_loops
from ._policy import Expiry, Lease, Resolver, Schema
from ._scopeflows import ScopeFlows
from ._tiers._memory import Entry
from ._tracking import is_dirty, quick_clean

__all__ = ["Scope", "ScopeFlows", "ScopeOptions", "scope_options"]

_get_running_loop = asyncio._get_running_loop
_get_ident = threading.get_ident


class ScopeOptions:
    """How a scope loads and commits (everything but the key), shared by
    every scope made with the same settings."""

    __slots__ = (
        "at_least",
        "commit_on_error",
        "conflict",
        "fast",
        "initial",
        "lease",
        "schema",
        "ttl",
    )

    def __init__(
        self,
        initial: Callable[[], Any],
        ttl: float | None,
        schema: Schema | None,
        commit_on_error: bool,
        conflict: Resolver | None,
        lease: Lease | None,
        at_least: int | None = None,
    ) -> None:
        self.initial = initial
        self.ttl = ttl
        self.schema = schema
        self.commit_on_error = commit_on_error
        self.conflict = conflict
        self.lease = lease
        self.at_least = at_least
        #: Whether a memory hit may be served by the hot path: no strict
        #: lease to take, no version to catch up to first.
        self.fast = lease is None and at_least is None


def scope_options(
    initial: Callable[[], Any],
    ttl: float | None,
    schema: Schema | None,
    commit_on_error: bool,
    conflict: Resolver | None,
    lease: Lease | None,
    at_least: int | None = None,
) -> ScopeOptions:
    """Checked :class:`ScopeOptions` (ConfigError names a bad setting)."""
    if not callable(initial):
        raise ConfigError(f"initial must be a callable (like dict), got {initial!r}")
    if ttl is not None:
        Expiry(ttl)  # validates: ConfigError names the setting
    return ScopeOptions(initial, ttl, schema, commit_on_error, conflict, lease, at_least)


class _ScopeSettings:
    """What a :class:`Scope` was made with, read-only (its options)."""

    __slots__ = ()
    _opts: ScopeOptions

    @property
    def initial(self) -> Callable[[], Any]:
        return self._opts.initial

    @property
    def ttl(self) -> float | None:
        return self._opts.ttl

    @property
    def schema(self) -> Schema | None:
        return self._opts.schema

    @property
    def commit_on_error(self) -> bool:
        return self._opts.commit_on_error

    @property
    def conflict(self) -> Resolver | None:
        return self._opts.conflict

    @property
    def lease(self) -> Lease | None:
        return self._opts.lease

    @property
    def at_least(self) -> int | None:
        return self._opts.at_least


class Scope(_ScopeSettings):
    """One session scope over a key: ``with`` or ``async with`` (not both).

    Made by :meth:`TieredCache.session`; entering yields the live tracked
    value, leaving commits (or, if the body raised, rolls back). A scope
    may be left in another thread or task than the one that entered it.
    """

    __slots__ = ("_entry", "_fence", "_host", "_key_lock", "_opts", "_value", "_version", "key")

    def __init__(self, host: ScopeFlows, key: str, opts: ScopeOptions) -> None:
        self._host = host
        self.key = key
        self._opts = opts
        #: The key's lock while the scope holds it (set by the lock
        #: registry in the same stores that take it: see tiercache._locks).
        self._key_lock: KeyLock | None = None
        #: The memory entry while the scope pins it (set with the pin).
        self._entry: Entry | None = None
        self._value: Any = None
        #: The strict lease's fencing token while it holds one.
        self._fence = 0
        #: The entry version the scope left (committed or read): 0 before
        #: it ends, and when it committed nothing that is stored.
        self._version = 0

    @property
    def version(self) -> int | None:
        """The version of the entry as this scope left it, once it has
        ended: the one it committed, or, if it changed nothing, the one it
        read. Pass it as ``at_least=`` to a reader (in any process) that
        must see this change. None until the scope first ends, when its
        body raised (nothing was committed), or when nothing is stored."""
        return self._version or None

    # -- with -------------------------------------------------------------------

    def __enter__(self) -> Any:
        host = self._host
        s = host.s
        key = self.key
        if type(key) is not str or s.closed or self._key_lock is not None:
            self._check()
        # owner(), inline where it is cheap: no loop runs in this thread.
        me = _get_ident() if _get_running_loop() is None else owner()
        opts = self._opts
        try:
            if opts.fast and s.plain_hits:
                # The hot path: the key's lock free and a memory hit, fresh,
                # in one memory-lock section, with no call but C ones.
                # Written out flat (twice: __aenter__ is its twin, keep them
                # alike), since each Python call is ~5% of a read-only scope.
                entry = None
                mlock = s.mlock
                # Not ``with``: a third of the cost. The memory lock is an
                # RLock, so a release that finds it not ours (the acquire was
                # interrupted) raises instead of freeing another's hold.
                try:
                    mlock.acquire()
                    lock = s.locks.table.get(key)
                    if lock is not None and lock.owner is None:
                        # LockRegistry.take_locked, inline: stores only, no
                        # call between them, so atomic for signals.
                        lock.owner = me
                        lock.holder = self
                        self._key_lock = lock
                        entry = s.peek(key)
                        if entry is not None and (
                            (entry.initial is not None and entry.initial is not opts.initial)
                            or ((exp := entry.expires_at) is not None and s.now() >= exp)
                            or (
                                (bound := s.max_stale) is not None
                                and s.now() - entry.checked_at > bound
                            )
                        ):
                            entry = None  # the flow decides (expired, stale, ...)
                        if entry is not None:
                            s.recent(key)
                            s.hits += 1
                            entry.pins += 1
                            self._entry = entry
                finally:
                    try:
                        mlock.release()
                    except RuntimeError:
                        pass  # never acquired
                if entry is not None:
                    root = entry.root
                    if root is not None:
                        root.detached = False
                    value = self._value = entry.value
                    return value
            return self._enter(me)
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
        lock = self._key_lock
        if lock is None:
            return
        entry = self._entry
        if exc is None and entry is not None and not self._fence:
            # A read-only exit: nothing changed (a clean root answers from
            # its flag) and nothing pending for this exit to write (under
            # write-through an exit retries a failed earlier write; under
            # write-behind pending bytes are the timer's). Flat, as the hot
            # entry (twice: __aexit__ is its twin, keep them alike).
            s = self._host.s
            try:
                root = entry.root
                if (entry.pending is None or not s.write_through) and (
                    root is None
                    or not (root.dirty or root.backup)
                    or quick_clean(root)
                    or (not root.dirty and not is_dirty(self._value))
                ):
                    if root is not None:
                        root.detached = True
                    waiter = None
                    mlock = s.mlock
                    try:  # as in the entry
                        mlock.acquire()
                        s.writes_avoided += 1
                        self._version = entry.version
                        entry.pins -= 1
                        self._entry = None
                        if lock.holder is self:
                            lock.owner = None
                            lock.holder = None
                        self._key_lock = None
                        if lock.waiters:
                            waiter = lock.waiters[0]
                        if entry.outdated:
                            self._host.inval.drop_outdated(entry)
                        drain = s.evicted
                    finally:
                        try:
                            mlock.release()
                        except RuntimeError:
                            pass  # never acquired
                    self._value = None
                    if waiter is not None:
                        waiter.wake()
                    if not drain:
                        return
                    run(self._host.writer.drain_flow())
                    return
            except BaseException:
                lock.owner = None  # first, and inline: nothing can skip it
                self._let_go()
                raise
        try:
            run(self._exit_flow(exc))
        finally:
            lock = self._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
                self._let_go()
            elif self._entry is not None:
                self._let_go()

    def _enter(self, me: Any) -> Any:
        """Everything but the hot path: a hit the reader must check, a
        lock to wait for, a load, a strict lease."""
        if self._key_lock is None:
            host, key = self._host, self.key
            if self._opts.fast and (entry := host.open(self, key, self._opts.initial, me)):
                value = self._value = entry.value
                return value
            if self._key_lock is None:
                host.s.locks.acquire(key, me, self)
        return run(self._enter_flow())

    # -- async with -------------------------------------------------------------

    async def __aenter__(self) -> Any:
        host = self._host
        s = host.s
        key = self.key
        if type(key) is not str or s.closed or self._key_lock is not None:
            self._check()
        # owner(), inline for the loop last seen running in this thread
        # (asyncio's own lookup makes a system call: see tiercache._locks).
        me = _get_ident()
        loop = thread_loops.get(me)
        me = (task_of(loop) or me) if loop is not None and loop._thread_id == me else owner()
        opts = self._opts
        try:
            if opts.fast and s.plain_hits:
                # The hot path: the key's lock free and a memory hit, fresh,
                # in one memory-lock section, with no call but C ones.
                # Written out flat (twice: __aenter__ is its twin, keep them
                # alike), since each Python call is ~5% of a read-only scope.
                entry = None
                mlock = s.mlock
                # Not ``with``: a third of the cost. The memory lock is an
                # RLock, so a release that finds it not ours (the acquire was
                # interrupted) raises instead of freeing another's hold.
                try:
                    mlock.acquire()
                    lock = s.locks.table.get(key)
                    if lock is not None and lock.owner is None:
                        # LockRegistry.take_locked, inline: stores only, no
                        # call between them, so atomic for signals.
                        lock.owner = me
                        lock.holder = self
                        self._key_lock = lock
                        entry = s.peek(key)
                        if entry is not None and (
                            (entry.initial is not None and entry.initial is not opts.initial)
                            or ((exp := entry.expires_at) is not None and s.now() >= exp)
                            or (
                                (bound := s.max_stale) is not None
                                and s.now() - entry.checked_at > bound
                            )
                        ):
                            entry = None  # the flow decides (expired, stale, ...)
                        if entry is not None:
                            s.recent(key)
                            s.hits += 1
                            entry.pins += 1
                            self._entry = entry
                finally:
                    try:
                        mlock.release()
                    except RuntimeError:
                        pass  # never acquired
                if entry is not None:
                    root = entry.root
                    if root is not None:
                        root.detached = False
                    value = self._value = entry.value
                    return value
            return await self._aenter(me)
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
        lock = self._key_lock
        if lock is None:
            return
        entry = self._entry
        if exc is None and entry is not None and not self._fence:
            # A read-only exit: nothing changed (a clean root answers from
            # its flag) and nothing pending for this exit to write (under
            # write-through an exit retries a failed earlier write; under
            # write-behind pending bytes are the timer's). Flat, as the hot
            # entry (twice: __aexit__ is its twin, keep them alike).
            s = self._host.s
            try:
                root = entry.root
                if (entry.pending is None or not s.write_through) and (
                    root is None
                    or not (root.dirty or root.backup)
                    or quick_clean(root)
                    or (not root.dirty and not is_dirty(self._value))
                ):
                    if root is not None:
                        root.detached = True
                    waiter = None
                    mlock = s.mlock
                    try:  # as in the entry
                        mlock.acquire()
                        s.writes_avoided += 1
                        self._version = entry.version
                        entry.pins -= 1
                        self._entry = None
                        if lock.holder is self:
                            lock.owner = None
                            lock.holder = None
                        self._key_lock = None
                        if lock.waiters:
                            waiter = lock.waiters[0]
                        if entry.outdated:
                            self._host.inval.drop_outdated(entry)
                        drain = s.evicted
                    finally:
                        try:
                            mlock.release()
                        except RuntimeError:
                            pass  # never acquired
                    self._value = None
                    if waiter is not None:
                        waiter.wake()
                    if not drain:
                        return
                    await arun(self._host.writer.drain_flow())
                    return
            except BaseException:
                lock.owner = None  # first, and inline: nothing can skip it
                self._let_go()
                raise
        try:
            await arun(self._exit_flow(exc))
        finally:
            lock = self._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
                self._let_go()
            elif self._entry is not None:
                self._let_go()

    async def _aenter(self, me: Any) -> Any:
        """:meth:`_enter` for ``async with``."""
        if self._key_lock is None:
            host, key = self._host, self.key
            if self._opts.fast and (entry := host.open(self, key, self._opts.initial, me)):
                value = self._value = entry.value
                return value
            if self._key_lock is None:
                await host.s.locks.aacquire(key, me, self)
        return await arun(self._enter_flow())

    # -- the flows, written once for both ---------------------------------------

    def _enter_flow(self) -> Flow[Any]:
        """Entry with the key's lock held: find or load the value, or take
        the strict lease."""
        host, key, opts = self._host, self.key, self._opts
        if opts.at_least is not None:
            yield from host.catchup.reach_flow(key, opts.at_least, locked=True)
        if opts.lease is not None:
            self._value, self._fence = yield from host.leases.strict_enter_flow(
                self, key, opts.initial, opts.ttl, opts.lease
            )
            return self._value
        value = self._value = yield from host.enter_flow(
            self, key, opts.initial, opts.ttl, opts.schema
        )
        return value

    def _exit_flow(self, exc: BaseException | None) -> Flow[None]:
        """Exit of a scope that changed its value, raised, holds a lease or
        has a write to retry (the caller frees the lock after)."""
        host = self._host
        failed = exc is not None and not self._opts.commit_on_error
        entry = self._entry
        if self._fence:
            fence, self._fence = self._fence, 0
            yield from host.leases.strict_exit_flow(self, failed, fence)
        else:
            yield from host.exit_flow(self, failed)
        if not failed and entry is not None and entry.initial is None:
            self._version = entry.version

    # -- checks and letting go --------------------------------------------------

    def _check(self) -> None:
        state, key = self._host.s, self.key
        state.check_key(key)
        state.check_open()
        if self._key_lock is not None:
            raise TierCacheError(f"the scope of {key!r} is already open; make a new one")

    def _let_go(self) -> None:
        """Unpin and unlock, whatever is still held.

        The callers free the lock inline before calling this (a signal's
        exception can land at the start of any call, so this one might not
        run; then the next taker finds the scope abandoned): see
        tiercache._locks."""
        waiter = None
        with self._host.s.mlock:
            entry = self._entry
            if entry is not None:
                entry.pins -= 1
                self._entry = None
            lock = self._key_lock
            if lock is not None:
                if lock.holder is self:
                    lock.owner = None
                    lock.holder = None
                self._key_lock = None
                if lock.waiters:
                    waiter = lock.waiters[0]
        self._value = None
        if waiter is not None:
            waiter.wake()
