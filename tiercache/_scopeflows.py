"""The cache's side of a session scope: loading into it, committing or
rolling back out of it.

::

    Scope._enter ──> open(): lock + hit check by the reader, one section
                 ──> enter_flow(): lookup ─ miss ─> load ─ none ─> initial()
                                    (pinned into the scope, attached)
    Scope._exit  ──> exit_flow(): body raised ─> revert, no write
                                  changed ──> seal (undo kept) ─> write-through:
                                      write; refused ─> roll_back, raise
                                  write-behind: timer (journal first, if any)

:class:`ScopeFlows` is the narrow interface a :class:`~tiercache._scope.Scope`
talks to; it reaches the rest of the cache through its layers (reader,
writer, journaling, invalidations, leases) and the shared state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ._atleast import CatchUp
from ._exceptions import TierCacheError, TierError
from ._flow import Flow
from ._invalidation import Invalidations
from ._journaling import Journaling
from ._leases import Leases
from ._policy import Schema
from ._read import Reader
from ._state import CacheState, OpenScope
from ._tiers._memory import Entry
from ._tracking import attach, changes, detach, is_dirty, mark_clean, revert, track
from ._write import Writer

__all__ = ["ScopeFlows"]

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
        self.reader = reader
        self.writer = writer
        self.catchup = CatchUp(state, writer, reader)
        self.journaling = journaling
        self.inval = inval
        self.leases = leases

    def open(self, scope: OpenScope, key: str, initial: Callable[[], Any], me: Any) -> Entry | None:
        """A scope's hot path, in one memory-lock section: take the key's
        lock if it is free (into ``scope``) and look the entry up.

        Returns the entry on a memory hit: pinned (``scope._entry``) and
        attached; no flow starts at all. None otherwise: the caller waits
        for the lock if ``scope`` did not get it, and runs the flow."""
        s = self.s
        mlock = s.mlock
        # Not ``with``: half the cost here. The memory lock is an RLock, so
        # a release that finds it not ours (the acquire was interrupted
        # while it waited) raises instead of freeing another thread's hold.
        try:
            mlock.acquire()
            if not s.locks.take_locked(key, me, scope):
                return None
            entry = s.peek(key)
            if entry is None or (entry.initial is not None and entry.initial is not initial):
                return None
            if s.plain_hits:
                exp = entry.expires_at
                if exp is not None and s.now() >= exp:
                    return None
            elif not self.reader.hit_ok(entry):
                return None
            s.recent(key)
            s.hits += 1
            # The pin and the scope's record of it: stores only, one unit.
            entry.pins += 1
            scope._entry = entry
        finally:
            try:
                mlock.release()
            except RuntimeError:
                pass  # never acquired
        root = entry.root
        if root is not None:
            root.detached = False
        return entry

    def enter_flow(
        self,
        scope: OpenScope,
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
        offline = False
        if entry is None:
            try:
                entry = yield from self.reader.load_flow(key, schema)
            except TierError as exc:
                journal = self.s.journal
                if not (exc.transient and journal is not None and journal.new_keys):
                    raise
                # Opt-in (Journal(new_keys=True)): start from initial(); a
                # change is journaled, and merged at replay with initial()
                # as the base. Dropped from memory once the tier answers.
                offline = True
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
                if offline:  # dropped (or merged, if changed) on recovery
                    self.s.unconfirmed.add(key)
                    self.s.served_unconfirmed += 1
            return entry.value
        if ttl is not None:
            entry.ttl = ttl
        if entry.pending is None and is_dirty(entry.value):
            # Changed outside any scope through a path interception cannot
            # see (a buffer write): seal it now so rollback starts from here.
            self.writer.seal(entry)
        attach(entry.value)
        return entry.value

    def exit_flow(self, scope: OpenScope, failed: bool) -> Flow[None]:
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
            elif not (was := changes(value)):  # one comparison, reused below
                self.s.writes_avoided += 1
            elif self.s.shut:
                revert(value)
                raise self.s.closed_under(key)
            else:
                if self.s.write_through or self.s.wal:
                    undo = _Undo(entry)
                    self.writer.seal_or_revert(entry, clean=False, was=was)
                elif not self.writer.seal_later(entry, was):
                    self.writer.seal_or_revert(entry, was=was)
                entry.initial = None  # changed: a real entry from now on
                entry.conflict = scope.conflict
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
