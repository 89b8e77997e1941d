"""The write path: sealing a changed value and writing it to every tier.

::

    scope exit / set / evict / timer / flush / close
       └─> seal(entry): serialize once into envelope bytes at the next
           version ──> entry.pending
           (a write-behind exit: seal_later(entry) checks the changed fields
            alone ──> entry.pending = UNSEALED; write_flow seals it, once
            per flush however many scopes changed it)
           └─> write_flow(entries, reason)
                 journal not empty? replay it first (or join it: outage)
                 shared tier: compare_and_set each on the version it last saw
                   ├─ written ──────────────> the local tiers get the same bytes
                   ├─ lost the race ────────> merge (tiercache._merge), write again
                   ├─ refused (one entry) ──> that entry's own error; the rest go on
                   └─ unreachable ──────────> journaled (with a journal) or raised
                 pending cleared, versions recorded, invalidations published
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, cast

from ._envelope import peek_version
from ._exceptions import ConflictError, TierCacheError, TierError
from ._fieldwrites import cas_flow, cas_item, forget_parts, parts_for, stored_as
from ._flow import Flow, traced
from ._invalidation import Invalidations
from ._journal import Journal
from ._journaling import Journaling
from ._locks import Hold, owner
from ._merge import Merger
from ._state import CacheState
from ._tiers._base import SetItem
from ._tiers._memory import UNSEALED, Entry
from ._tracking import MISSING, changes, is_dirty, mark_clean, revert

__all__ = ["Writer"]

log = logging.getLogger("tiercache")


class Writer:
    """The write path of one cache (see the module docstring)."""

    def __init__(
        self,
        state: CacheState,
        inval: Invalidations,
        journaling: Journaling,
        merger: Merger,
    ) -> None:
        self.s = state
        self.inval = inval
        self.journaling = journaling
        self.merger = merger

    def seal(
        self,
        entry: Entry,
        *,
        clean: bool = True,
        was: dict[Any, Any] | None = None,
        bump: bool = True,
    ) -> None:
        """Serialize the entry's value once into ``entry.pending`` and mark it
        clean; raises SerializationError and then changes nothing.
        ``bump=False``: at the version a deferred exit gave it already.

        ``clean=False`` keeps the value's clean point where it was (the
        scope's start), so a write that then fails can still be rolled
        back in place (:meth:`ScopeFlows.roll_back`); the caller marks it clean once
        the write succeeded. ``was``: :func:`changes` of the value, if the
        caller has it already."""
        if (
            not self.s.core.tiers
            and self.s.memory.max_bytes is None
            and self.s.core.max_value_bytes is None
        ):
            # Memory only: nothing to write and no byte budget to measure.
            mark_clean(entry.value)
            entry.version += 1
            entry.expires_at = self.s.core.memory_expiry(entry.ttl)
            return
        base = entry.base
        if base is not None and entry.root is not None:
            if was is None:
                was = changes(entry.value)
            # First change of a field since the stored version: remember
            # what it was then, the base of a merge if our write loses.
            for field, old in was.items():
                base.setdefault(field, old)
        version = self.s.core.next_version(entry.version) if bump else entry.version
        try:
            parts = parts_for(self.s.core, entry, was, clean=clean)
            data = self.s.core.seal(
                entry.key,
                entry.value,
                version=version,
                created_ms=entry.created_ms,
                ttl=entry.ttl,
                schema_version=entry.schema_version,
                parts=parts,
            )
        except BaseException:
            forget_parts(entry)  # they may hold a change that is not kept
            raise
        entry.parts_data = data if parts is not None else None
        if clean:
            mark_clean(entry.value)
        entry.version = version
        if entry.pending is None:
            entry.pending_since = self.s.clock.monotonic()
        entry.pending = data
        entry.size = len(data)
        entry.expires_at = self.s.core.memory_expiry(entry.ttl)
        if not entry.created_ms:
            entry.created_ms = int(self.s.clock.time() * 1000)

    def seal_later(self, entry: Entry, was: dict[Any, Any]) -> bool:
        """A write-behind exit without a journal: move the clean point and
        leave the serializing to the flush (``entry.pending = UNSEALED``),
        so a big session changed by many scopes is serialized once per
        flush, not at every exit. Returns False, having changed nothing,
        when the value must be sealed now (:meth:`seal`) instead.

        The changed fields are serialized here, once each, so a value that
        cannot be stored is still refused at the exit that made it (the
        unchanged ones were stored or loaded as bytes already), and their
        sizes bound the whole value's: it is sealed now whenever the bound
        comes near a size limit, so a too-large value is refused here too.
        Only dict roots that have bytes behind them qualify: a new key's
        ``initial()`` fields were never serialized. ``was``: :func:`changes`
        of the value.
        """
        s = self.s
        core = s.core
        root = entry.root
        if (
            s.write_through
            or s.wal
            or root is None
            or root.kind != "d"
            or entry.initial is not None
            or entry.size <= 0
            or not core.tiers
        ):
            return False
        value = entry.value
        dumps = core.serializer.dumps
        grown = 8  # a map header grows by 4 bytes at most; a margin
        try:
            for field in was:
                cur = dict.get(value, field, MISSING)
                if cur is not MISSING:
                    grown += len(dumps(field)) + len(dumps(cur))
        except Exception:
            return False  # the full seal names the field and the problem
        bound = entry.size + grown
        if not core.surely_fits(bound):
            return False
        base = entry.base
        if base is not None:
            for field, old in was.items():
                base.setdefault(field, old)
        mark_clean(value)
        # The version committed now (Scope.version); seal_deferred seals at it.
        entry.version = core.next_version(entry.version)
        if entry.pending is None:
            entry.pending_since = s.clock.monotonic()
        entry.pending = UNSEALED
        entry.size = bound
        entry.expires_at = core.memory_expiry(entry.ttl)
        return True

    def seal_deferred(self, entry: Entry) -> None:
        """Seal an entry :meth:`seal_later` left unsealed (its key lock
        held). A flush inside the scope that holds the key seals what
        earlier scopes committed, not the open scope's changes."""
        committed = _committed(entry)
        if committed is not None:
            data = self.s.core.seal(
                entry.key,
                committed,
                version=entry.version,  # given by the exit that deferred
                created_ms=entry.created_ms,
                ttl=entry.ttl,
                schema_version=entry.schema_version,
            )
            entry.pending = data
            entry.size = len(data)
            return
        self.seal(entry, bump=False)

    def seal_or_revert(
        self, entry: Entry, *, clean: bool = True, was: dict[Any, Any] | None = None
    ) -> None:
        try:
            self.seal(entry, clean=clean, was=was)
        except BaseException:
            # Nothing was stored; memory goes back to the scope's start too.
            revert(entry.value)
            raise

    def write_flow(
        self, entries: Iterable[Entry], reason: str, *, journal: bool = True
    ) -> Flow[None]:
        """:meth:`_write_flow`, in a span when the cache is traced."""
        tracer = self.s.tracer
        if tracer is None:
            return (yield from self._write_flow(entries, reason, journal=journal))
        entries = list(entries)
        attrs = {
            "tiercache.namespace": self.s.namespace,
            "tiercache.flush.reason": reason,
            "tiercache.entries": len(entries),
        }
        flow = self._write_flow(entries, reason, journal=journal)
        return (yield from traced(tracer, "tiercache.flush", attrs, flow))

    def _write_flow(
        self, entries: Iterable[Entry], reason: str, *, journal: bool = True
    ) -> Flow[None]:
        """Write the pending bytes of ``entries`` (caller holds their key locks).

        When the last (shared, authoritative) tier can compare-and-set, each
        entry is written there only if it still holds the version this
        process last saw; a lost race is merged (:meth:`Merger.merge_flow`) and
        retried. The tiers above get the same bytes once it succeeded.
        Without compare-and-set the batch is written as is (last writer
        wins).
        """
        entries = list(entries)
        #: Entries whose deferred seal failed (see :meth:`seal_later`: only
        #: a serializer that takes each field but not the whole can do it).
        unsealable: list[tuple[Entry, TierCacheError]] = []
        for e in entries:
            if e.pending is UNSEALED:
                try:
                    self.seal_deferred(e)
                except TierCacheError as exc:
                    unsealable.append((e, exc))
        batch = [(e, e.pending) for e in entries if e.pending is not None]
        batch = [(e, data) for e, data in batch if data is not UNSEALED]
        if not batch:
            if unsealable:
                raise unsealable[0][1]
            return
        core = self.s.core
        tiers = core.tiers
        journaling = journal and self.s.journal is not None
        if (
            journaling
            and cast(Journal, self.s.journal).depth
            and (not self.s.wal or any(e.key in self.s.journal_keys for e, _ in batch))
        ):
            # Older acknowledged changes first: they go to the shared tier
            # in the order they were made, or this batch joins them. (As a
            # write-ahead log the journal always holds something; only the
            # records of these keys must go first, and the timer sends them.)
            try:
                yield from self.s.replay_flow()
            except TierError as exc:
                if not exc.transient:
                    raise  # refused, not unreachable: journaling cannot help
                self.journaling.or_raise(batch, sent=False)  # the batch never went out
                return
        written: list[tuple[Entry, bytes]] = []
        #: Entries that could not be written, each with its own error: one
        #: of them never holds the rest of a batch back.
        failures: list[tuple[Entry, TierCacheError]] = unsealable
        if tiers and tiers[-1].supports_cas:
            # An outdated entry's idea of the stored version cannot be
            # trusted (the store moved on, or a replay merged what it
            # believed): a compare-and-set on it could match a version that
            # now holds other content. It merges with what is stored instead.
            trusted = [(e, data) for e, data in batch if not e.outdated]
            items = [
                cas_item(core, e, data, core.skey(e.key), core.ttl_for(e.ttl))
                for e, data in trusted
            ]
            # From here until its outcome is handled below, a write may land
            # unseen (the connection died after the server applied it, an
            # interrupt between the reply and the bookkeeping): if these
            # bytes turn up stored, they are our own.
            for e, data in trusted:
                e.sending(data)
            try:
                results = yield from cas_flow(self.s.core, items)
            except TierError as exc:
                if not exc.sent:
                    for e, data in trusted:
                        e.not_sent(data)
                if not journaling or not exc.transient:
                    # Refused by a server that answered (a permission, a
                    # wrong type): the handler hears it; a journal entry
                    # could never be replayed.
                    raise
                self.journaling.or_raise(batch, sent=exc.sent)
                return
            by_entry = {id(e): ok for (e, _), ok in zip(trusted, results, strict=True)}
            unreached: list[Entry] = []
            for e, data in batch:
                ok = by_entry.get(id(e), False)
                if ok is True:
                    written.append((e, data))
                    continue
                if isinstance(ok, TierError):
                    if not ok.sent:
                        e.not_sent(data)
                    if journaling and ok.transient:
                        unreached.append(e)  # its own node is down (a cluster)
                    else:
                        failures.append((e, ok))  # refused: this entry's own error
                    continue
                if id(e) in by_entry:
                    e.not_sent(data)  # lost the race: not stored
                # What this entry believed stored is not: until a merge
                # succeeds, no compare-and-set may be made on that belief.
                e.outdated = True
                if reason == "migrate":
                    # Someone wrote since we loaded: forget our migrated
                    # copy; the next access loads (and migrates) theirs.
                    with self.s.mlock:
                        self.s.memory.remove(e.key)
                        e.pending = None
                    continue
                try:
                    merged = yield from self.merger.merge_flow(
                        e, core.skey(e.key), core.ttl_for(e.ttl)
                    )
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
                self.journaling.or_raise(
                    [(e, cast(bytes, e.pending)) for e in unreached], sent=True
                )
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
        with self.s.mlock:
            mono = self.s.clock.monotonic()
            for (e, data), (_, _, version) in zip(written, published, strict=True):
                if e.pending is data:
                    e.pending = None
                    e.uncertain = None
                    e.touched_at = e.checked_at = mono
                    e.stored = version
                    stored_as(e, data, version)
                    # Written by compare-and-set (or merged): current now.
                    e.outdated = False
                    e.journaled = e.key in self.s.journal_keys
                    if e.base is None or e.base:
                        e.base = {}
            self.s.core.flushes[reason] += len(written)
            self.inval.drop_evicted()
        yield from self.inval.publish_flow(published)
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

    def drain_flow(self) -> Flow[None]:
        """Write entries the memory policy pushed out (write-through only;
        under write-behind they stay readable until the next tick)."""
        if not self.s.memory.evicted:
            return
        with self.s.mlock:
            self.inval.drop_evicted()
            waiting = [e for e in self.s.memory.evicted.values() if e.pending is not None]
        if waiting and self.s.write_through:
            try:
                yield from self.locked_write_flow(waiting, "evict")
            except (TierError, ConflictError) as exc:
                # Other keys' writes: never this caller's error (its own
                # change, if any, is already settled). They stay in the
                # evicted area, readable, for the next drain or tick.
                log.warning("tiercache: writing evicted entries failed: %s", exc)
                self.s.ensure_timer(retry=True)

    def locked_write_flow(self, entries: list[Entry], reason: str) -> Flow[None]:
        """Write the entries whose key lock is free now (or is this
        caller's own: a flush inside a scope writes its key). A busy key's
        holder writes it at its scope exit (or the next flush), so an older
        pending write can never land after a newer one."""
        me = owner()
        holds: list[Hold] = []
        chosen: list[Entry] = []
        try:
            with self.s.mlock:
                for e in entries:
                    if self.s.locks.held_by(e.key, me):
                        chosen.append(e)
                        continue
                    hold = Hold()
                    holds.append(hold)
                    if self.s.locks.take_locked(e.key, me, hold):
                        chosen.append(e)
            yield from self.write_flow(chosen, reason)
        finally:
            for hold in holds:
                lock = hold._key_lock
                if lock is not None:
                    lock.owner = None  # first, and inline: nothing can skip it
            for hold in holds:
                self.s.locks.release(hold)


def _committed(entry: Entry) -> dict[Any, Any] | None:
    """What the scopes that exited left in ``entry``'s value (the open
    scope's changes taken back), or None when no scope holds changes."""
    root = entry.root
    if root is None or root.detached or not is_dirty(entry.value):
        return None
    committed = dict(entry.value)
    for field, old in changes(entry.value).items():
        if old is MISSING:
            committed.pop(field, None)
        else:
            committed[field] = old
    return committed
