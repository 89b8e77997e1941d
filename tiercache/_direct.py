"""Direct writes: set, update, delete and touch, outside any scope.

::

    set(key, value) / update(key, fn) / delete(key) / touch(key)
       └─> locked(key): the key's lock, as a scope would take it (a set of a
           key this very context has a scope open on is an error)
           ├─ set_flow: replace the value whole; write it now (every policy)
           ├─ update_flow: fn on the stored value; compare-and-set; fn again
           │               on theirs when another writer got there first
           ├─ delete_flow: a tombstone at the next version in the shared tier
           │               (versions never start over), local copies removed
           └─ touch_flow: a sliding TTL refreshed, or an absolute one resealed

    Failure rule (as at scope exit): an error means not applied (memory is
    put back); a write that may have landed is acknowledged and retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ._core import TOMBSTONE_SECONDS
from ._envelope import is_tombstone, safe_version
from ._exceptions import ConflictError, TierCacheError, TierError
from ._flow import Call, Flow, arun
from ._invalidation import Invalidations
from ._locks import Hold, owner
from ._merge import MAX_MERGES, backoff, over_rollback, went_back
from ._policy import Expiry
from ._read import Reader
from ._state import CacheState
from ._tiers._memory import Entry
from ._tracking import MISSING, WHOLE, changes, detach, to_plain, track
from ._tracking import _same as same
from ._write import Writer

__all__ = ["DirectWrites"]

log = logging.getLogger("tiercache")
T = TypeVar("T")


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


def _moved(key: str, expected: int, found: int) -> ConflictError:
    return ConflictError(
        f"key {key!r} is no longer at version {expected or 'none'} "
        f"(found {found or 'none'}): not written"
    )


class DirectWrites:
    """set, update, delete and touch of one cache (see the module docstring)."""

    def __init__(
        self, state: CacheState, reader: Reader, writer: Writer, inval: Invalidations
    ) -> None:
        self.s = state
        self.reader = reader
        self.writer = writer
        self.inval = inval

    def begin_write(self, key: str, ttl: float | None) -> Any:
        """Checks before set/delete/touch/update take ``key``'s lock; who
        is asking."""
        self.s.check_key(key)
        self.s.check_open()
        if ttl is not None:
            Expiry(ttl)  # validates: ConfigError names the setting
        me = owner()
        if self.s.locks.held_by(key, me):
            raise TierCacheError(
                f"key {key!r} has a session scope open in this context: change the session "
                "value instead of calling set/delete/touch/update on its key"
            )
        return me

    def locked(
        self, key: str, ttl: float | None, flow: Callable[[], Flow[T]], *, own: bool = False
    ) -> Flow[T]:
        """``flow()`` with ``key``'s lock held (sync callers). ``own``: a
        lock this caller already holds (a flush inside a scope) will do."""
        if own:
            me = owner()
            if self.s.locks.held_by(key, me):
                return (yield from flow())
        else:
            me = self.begin_write(key, ttl)
        hold = Hold()
        try:
            self.s.locks.acquire(key, me, hold)
            return (yield from flow())
        finally:
            lock = hold._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self.s.locks.release(hold)

    async def alocked(
        self, key: str, ttl: float | None, flow: Callable[[], Flow[T]], *, own: bool = False
    ) -> T:
        """``flow()`` with ``key``'s lock held, driven by :func:`arun`."""
        if own:
            me = owner()
            if self.s.locks.held_by(key, me):
                return await arun(flow())
        else:
            me = self.begin_write(key, ttl)
        hold = Hold()
        try:
            await self.s.locks.aacquire(key, me, hold)
            return await arun(flow())
        finally:
            lock = hold._key_lock
            if lock is not None:
                lock.owner = None  # first, and inline: nothing can skip it
            self.s.locks.release(hold)

    def set_flow(self, key: str, value: Any, ttl: float | None) -> Flow[None]:
        entry = Entry(key, track(value, label=key), ttl=ttl)
        entry.schema_version = self.s.core.schema.version
        entry.base = None  # a replacement: it overwrites whatever is stored
        with self.s.mlock:
            old = self.s.memory.lookup(key)
        if old is not None:
            entry.version = old.version
            entry.stored = old.stored
            entry.created_ms = old.created_ms
        self.writer.seal(entry)  # raises before anything changed
        detach(entry.value)
        entry.touched_at = self.s.now()
        with self.s.mlock:
            self.s.memory.remove(key)
            self.s.memory.insert(entry)
        # A replaced value is gone: writes through old references must fail.
        if old is not None and old.value is not entry.value:
            detach(old.value)
        try:
            yield from self.writer.write_flow([entry], "set")
        except TierError as exc:
            if exc.transient and exc.sent:
                # It may have landed: acknowledged, retried until written.
                log.warning("tiercache: set %r failed (%s); it stays pending", key, exc)
                self.s.ensure_timer(retry=True)
            else:
                # Not applied, and never will be: memory goes back too.
                with self.s.mlock:
                    if self.s.memory.peek(key) is entry or self.s.memory.evicted.get(key) is entry:
                        self.s.memory.remove(key)
                        if old is not None:
                            self.s.memory.insert(old)
                detach(entry.value)
                raise
        yield from self.writer.drain_flow()

    def update_flow(
        self,
        key: str,
        fn: Callable[[Any], Any],
        initial: Callable[[], Any],
        ttl: float | None,
        expected: int | None = None,
        replace: bool = False,
    ) -> Flow[Any]:
        """``expected``: the version the stored value must still be at (0:
        absent), else :class:`ConflictError` and nothing written (a
        version-checked set); None: ``fn`` runs again on a newer value.
        ``replace``: what ``fn`` returns is the new value, even ``None``."""
        core = self.s.core
        tiers = core.tiers
        skey = core.skey(key)
        cas = bool(tiers) and tiers[-1].supports_cas
        if key in self.s.journal_keys:
            yield from self.s.replay_flow()  # our journaled changes first
        for attempt in range(MAX_MERGES):
            if attempt:
                yield backoff(attempt)
            floor = 0
            if tiers:
                plain, version = yield from self.s.core.read_stored_flow(key, skey, adopt=True)
                if cas and version:
                    plain, floor = self.over_rollback(key, plain, version)
            else:
                with self.s.mlock:
                    current = self.s.memory.lookup(key)
                if current is None or current.initial is not None:
                    plain, version = MISSING, 0
                else:
                    plain, version = to_plain(current.value), current.version
            if expected is not None and version != expected and (expected or plain is not MISSING):
                raise _moved(key, expected, version)  # 0 is any absence (a tombstone too)
            value = track(initial() if plain is MISSING else plain, label=key)
            result = fn(value)
            if replace or (result is not None and result is not value):
                value = track(result, label=key)
                changed = _changed_fields(plain, value)  # a replacement
            else:
                # What fn changed, against what it was given: the merge base
                # should this write have to be retried.
                changed = changes(value) if plain is not MISSING else _changed_fields(plain, value)
            entry = Entry(key, value, version=version, ttl=ttl)
            entry.version = max(version, floor)  # sealed above both
            entry.schema_version = core.schema.version
            entry.base = None
            entry.checked_at = self.s.clock.monotonic()
            self.writer.seal(entry)
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
                    with self.s.mlock:
                        old = self.s.memory.remove(key)
                        self.s.memory.insert(entry)
                    if old is not None and old.value is not value:
                        detach(old.value)
                    self.s.ensure_timer(retry=True)
                    return value
                if not ok:
                    core.conflicts += 1
                    if expected is not None:
                        raise _moved(key, expected, version)  # another write landed between
                    continue
                yield from core.write_flow([(skey, data, core.ttl_for(ttl))], range(len(tiers) - 1))
                entry.stored = entry.version
                entry.pending = None
                entry.base = {}
                core.flushes["set"] += 1
                yield from self.inval.publish_flow([(key, "set", entry.version)])
            with self.s.mlock:
                old = self.s.memory.remove(key)
                self.s.memory.insert(entry)
            if not cas:
                try:
                    yield from self.writer.write_flow([entry], "set")
                except TierError as exc:
                    if not (exc.transient and exc.sent):
                        with self.s.mlock:  # not applied: memory goes back too
                            self.s.memory.remove(key)
                            if old is not None:
                                self.s.memory.insert(old)
                        raise
                    log.warning("tiercache: update of %r failed (%s); it stays pending", key, exc)
                    self.s.ensure_timer(retry=True)
            if old is not None and old.value is not value:
                detach(old.value)
            yield from self.writer.drain_flow()
            return value
        raise TierError(f"gave up updating {key!r}: {MAX_MERGES} other writers won in a row")

    def versioned_flow(self, key: str) -> Flow[tuple[Any, int]]:
        """``(plain copy or MISSING, version)`` as :meth:`update_flow` would
        see it: fresh from the shared tier (our journaled changes first),
        else from memory when there is no persistent tier."""
        core = self.s.core
        if key in self.s.journal_keys:
            yield from self.s.replay_flow()
        if not core.tiers:
            with self.s.mlock:
                current = self.s.memory.lookup(key)
            if current is None or current.initial is not None:
                return MISSING, 0
            return to_plain(current.value), current.version
        plain, version = yield from core.read_stored_flow(key, core.skey(key))
        if plain is MISSING:
            return MISSING, 0  # absent, deleted or unreadable: expected_version=0 fits
        return to_plain(plain), version

    def over_rollback(self, key: str, plain: Any, version: int) -> tuple[Any, int]:
        """update() read ``version``: when it is below what our memory copy
        was stored at, the store lost acknowledged writes, and fn runs on
        our value written back over it (:func:`over_rollback`); with the
        version to stay above (0: no rollback)."""
        with self.s.mlock:
            current = self.s.memory.peek(key)
        if current is None or current.initial is not None or version >= current.stored:
            return plain, 0
        went_back(self.s.core, key, current.stored, version)
        theirs = to_plain(plain) if plain is not MISSING else {}
        return track(over_rollback(to_plain(current.value), theirs), label=key), current.stored

    def delete_flow(self, key: str, expected: int | None = None) -> Flow[bool]:
        """``expected``: delete only if the shared tier still holds that
        version (0: absent), else :class:`ConflictError`, nothing deleted."""
        if expected is not None:
            yield from self.check_delete_flow(key, expected)
        with self.s.mlock:
            entry = self.s.memory.remove(key)
        if entry is not None:
            detach(entry.value)
        core = self.s.core
        if expected is not None:  # the tombstone is written: the local copies go
            existed = bool(expected)
            if core.tiers:
                yield from core.delete_flow(key, range(len(core.tiers) - 1))
        elif core.tiers and core.tiers[-1].supports_cas:
            known = entry.stored if entry is not None and not entry.outdated else 0
            existed = yield from self.tombstone_flow(key, known)
            existed = (yield from core.delete_flow(key, range(len(core.tiers) - 1))) or existed
        else:
            existed = yield from core.delete_flow(key)
        with self.s.mlock:
            self.s.memory.absent[key] = self.reader.absent_until()
        yield from self.inval.publish_flow([(key, "del", 0)])
        return existed or (entry is not None and entry.initial is None)

    def check_delete_flow(self, key: str, expected: int) -> Flow[None]:
        """For a version-checked delete: write the tombstone over exactly
        ``expected`` now (the rest of :meth:`delete_flow` then finds it
        written), or raise without having changed anything."""
        core = self.s.core
        if key in self.s.journal_keys:
            yield from self.s.replay_flow()
        if not core.tiers:
            with self.s.mlock:
                entry = self.s.memory.lookup(key)
            found = entry.version if entry is not None and entry.initial is None else 0
            if found != expected:
                raise _moved(key, expected, found)
            return
        tier, counters = core.tiers[-1], core.counters[-1]
        if not tier.supports_cas:
            raise TierCacheError(f"a version-checked delete needs compare-and-set of {tier.name}")
        skey = core.skey(key)
        if not expected:
            raw = yield Call(tier, counters, "get", (skey,))
            if raw is not None and not is_tombstone(raw):
                raise _moved(key, 0, safe_version(raw))
            return
        tomb = core.tombstone(core.next_version(expected))
        args = (skey, tomb, TOMBSTONE_SECONDS, expected)
        if not (yield Call(tier, counters, "compare_and_set", args)):
            raw = yield Call(tier, counters, "get", (skey,))
            raise _moved(key, expected, 0 if raw is None else safe_version(raw))

    def tombstone_flow(self, key: str, known: int) -> Flow[bool]:
        """Delete ``key`` from the shared tier by writing its tombstone: the
        next version, marked deleted, kept :data:`TOMBSTONE_SECONDS`. A copy
        from before the delete then never matches a re-created key's
        version (a plain DEL would let versions start over). ``known`` is
        the version this process believes stored (0: unknown, read it).
        Whether a value was there."""
        core = self.s.core
        tier, counters = core.tiers[-1], core.counters[-1]
        skey = core.skey(key)
        expected = known
        for attempt in range(MAX_MERGES):
            if attempt:
                yield backoff(attempt)
            if not expected:
                raw = yield Call(tier, counters, "get", (skey,))
                if raw is None or is_tombstone(raw):
                    return False  # nothing stored: nothing to mark
                expected = safe_version(raw)
            tomb = core.tombstone(core.next_version(expected))
            if (
                yield Call(
                    tier, counters, "compare_and_set", (skey, tomb, TOMBSTONE_SECONDS, expected)
                )
            ):
                return True
            expected = 0  # someone wrote meanwhile: read what is there now
        raise TierError(f"gave up deleting {key!r}: {MAX_MERGES} other writers won in a row")

    def touch_flow(self, key: str, ttl: float | None) -> Flow[bool]:
        with self.s.mlock:
            entry = self.s.memory.lookup(key)
        if entry is None:
            entry = yield from self.reader.load_flow(key, None)
        if entry is None or entry.initial is not None:
            return False
        if ttl is not None:
            entry.ttl = ttl
        entry.expires_at = self.s.core.memory_expiry(entry.ttl)
        if self.s.sliding:
            entry.touched_at = self.s.now()
            yield from self.s.core.touch_flow(key, self.s.core.ttl_for(entry.ttl))
        else:
            self.writer.seal(entry)
            yield from self.writer.write_flow([entry], "set")
        return True
