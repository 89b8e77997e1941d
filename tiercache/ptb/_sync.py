"""Keeping PTB's in-RAM dicts and the cache in step, one key at a time.

::

    get_*()      ──> load: a plain copy for PTB, another kept as the baseline
    update_*(d)  ──> diff(baseline, d): nothing? no I/O at all
                     else, in cache.session(key) (s: the stored value)
                         rebase(baseline, d, s): our changes onto theirs
                         apply them to s  ─ the scope writes only those paths
                     baseline = d (what PTB holds, not what was stored)
    refresh_*(d) ──> stored value (a memory hit) equals the baseline? done
                     else d becomes rebase(baseline, d, stored), in place:
                     their changes pulled in, our unwritten ones kept;
                     baseline = stored

PTB hands back whole dicts, changed or not: the baseline is what turns
them into changes. The invariant: PTB's dict minus the baseline is
exactly this process's changes not yet stored (so after a write merged
with another process's change, the baseline is the hand-back, and the
next refresh pulls their part in). A path both sides changed goes to the cache's conflict
resolver (``cache.conflict``); Counters add both deltas. With the default
resolver (``raise_conflict``) the stored value is kept, the dropped local
value is logged on the ``tiercache.ptb`` logger (and counted), and the
next ``refresh_*`` puts the stored value into PTB's dict: never a silent
overwrite. A write that loses a race to another process's write of the
same path inside the scope (the scope's own compare-and-set merge raises
ConflictError) writes nothing and stays pending: the next ``refresh_*``
settles the paths through the resolver, and the next hand-back (or
``flush()``) writes what remains.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import reprlib
import weakref
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .. import MISSING, ConflictError, FieldPath, Resolver, TieredCache, TierError, to_plain
from . import _api
from ._diff import Conflict, apply, diff, rebase, same

__all__ = ["DictSync"]

log = logging.getLogger("tiercache.ptb")

#: Values in log lines are shortened: user data is not for logs.
_short = reprlib.Repr()  # keywords need Python 3.12
_short.maxstring = _short.maxother = 40
_short.maxlist = _short.maxdict = _short.maxset = 4
_short.maxlevel = 2

#: Conflicts remembered for inspection (:attr:`DictSync.recent_conflicts`).
RECENT = 100


@dataclass
class _Known:
    """What this process knows of one key. The invariant: PTB's dict minus
    ``base`` is exactly this process's changes not yet stored."""

    #: A plain copy of the value PTB's dict was equal to when this process
    #: last loaded it, refreshed it or wrote it (as PTB handed it back).
    base: Any
    #: A hand-back not written yet (a lost race, a tier error), or after a
    #: refresh PTB's dict itself: written by :meth:`DictSync.retry`.
    pending: Any = MISSING


def _equal(a: Any, b: Any) -> bool:
    """Plain ``==`` (C speed: refresh runs before every handler). Looser
    than :func:`same` (``1 == True``), which is safe here: a change it
    misses is one PTB's dict does not see until the next change, and every
    write still diffs and merges type-strictly."""
    try:
        return bool(a == b)
    except Exception:  # an __eq__ that raises: compare the slow way
        return same(a, b)


class DictSync:
    """The baselines of one adapter, and the writes and refreshes driven
    by them (see the module docstring). ``max_concurrency`` bounds the
    cache calls in flight at once: PTB gathers one write per user and chat.
    """

    def __init__(self, cache: TieredCache, max_concurrency: int) -> None:
        self.cache = cache
        self._max = max_concurrency
        self._known: dict[str, _Known] = {}
        self._pending: set[str] = set()  # candidates: see pending_keys()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._sem: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        #: Local values dropped for a stored one (the resolver refused).
        self.conflicts = 0
        #: The last :data:`RECENT` of them, newest last: ``(key, Conflict)``.
        self.recent_conflicts: deque[tuple[str, Conflict]] = deque(maxlen=RECENT)
        #: Writes skipped because the hand-back equalled the baseline.
        self.unchanged = 0
        #: Conflict resolvers of particular keys (else the cache's).
        self.resolvers: dict[str, Resolver] = {}

    # -- plumbing ------------------------------------------------------------------------

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of ``max_concurrency`` places for a call to the cache."""
        loop = asyncio.get_running_loop()
        if self._sem is None or self._sem[0] is not loop:
            self._sem = (loop, asyncio.Semaphore(self._max))
        async with self._sem[1]:
            yield

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def loaded(self, key: str, value: Any) -> None:
        """Remember ``value`` (a plain copy PTB will not get) as the baseline."""
        self._known[key] = _Known(copy.deepcopy(value))

    def forget(self, key: str) -> None:
        self._known.pop(key, None)

    def pending_keys(self) -> list[str]:
        """Keys with a hand-back not written yet (checked every interval:
        a set of candidates, not a scan of every key known)."""
        live = [
            k
            for k in self._pending
            if (known := self._known.get(k)) is not None and known.pending is not MISSING
        ]
        self._pending = set(live)
        return live

    def _resolver(self, key: str) -> Any:
        resolve = self.resolvers.get(key, self.cache.conflict)
        return lambda fld, base, ours, theirs: resolve(key, fld, base, ours, theirs)

    def _dropped(self, key: str, conflicts: list[Conflict]) -> None:
        for c in conflicts:
            self.conflicts += 1
            self.recent_conflicts.append((key, c))
            log.warning(
                "tiercache.ptb: %r: %r was changed here (%s -> %s) and by another "
                "process (-> %s); the stored value is kept and this process's change "
                "dropped (%s). Use tiercache.Counter for counters, or pass the cache "
                "conflict=keep_ours / keep_theirs / a resolver.",
                key,
                list(c.path),
                _short.repr(c.base),
                _short.repr(c.ours),
                _short.repr(c.theirs),
                c.error,
            )

    # -- writing -------------------------------------------------------------------------

    async def write(self, key: str, data: Any) -> None:
        """Store what changed in PTB's hand-back ``data`` (ours to keep)."""
        known = self._known.get(key)
        if not isinstance(data, dict):
            await self._write_whole(key, data, known)
            return
        base = {} if known is None else known.base
        if not diff(base, data) and (known is None or known.pending is MISSING):
            self.unchanged += 1
            return
        async with self.slot(), self._lock(key):
            await self._commit(key, data)

    async def _commit(self, key: str, data: Any) -> None:
        known = self._known.setdefault(key, _Known({}))
        known.pending = MISSING
        base = known.base
        try:
            # A key with a resolver of its own uses it in the scope's
            # merge too (a compare-and-set lost to a stale copy).
            async with self.cache.session(key, conflict=self.resolvers.get(key)) as s:
                theirs = to_plain(s)
                changes, conflicts = rebase(base, data, theirs, self._resolver(key))
                # Copies: the scope adopts what it is given into tracked values.
                apply(s, copy.deepcopy(changes))
        except ConflictError as exc:
            # Another process wrote one of these paths while the scope was
            # open: nothing was written. The next refresh settles it.
            known.pending = data
            self._pending.add(key)
            log.info("tiercache.ptb: %r: write deferred to the next refresh: %s", key, exc)
            return
        except BaseException:
            known.pending = data
            self._pending.add(key)
            raise
        # Not what was stored (theirs merged with ours): what PTB's dict
        # holds. The next refresh pulls the difference, theirs, into it.
        known.base = data
        self._dropped(key, conflicts)

    async def _write_whole(self, key: str, data: Any, known: _Known | None) -> None:
        # Not a dict (a custom context type): one unit, written only over
        # the version it was read at; a change by another process since
        # goes to the resolver as a conflict on the whole value.
        base = MISSING if known is None else known.base
        if same(base, data) and (known is None or known.pending is MISSING):
            self.unchanged += 1
            return
        async with self.slot(), self._lock(key):
            theirs, version = await self.cache.aget_versioned(key, MISSING)
            value = data
            if not same(theirs, base):
                try:
                    value = self.cache.conflict(key, FieldPath(()), base, data, theirs)
                except ConflictError as exc:
                    # Theirs stays stored; PTB's object keeps ours (a custom
                    # type cannot be refreshed in place) and is not written
                    # again unless it changes, which conflicts again.
                    self._dropped(key, [Conflict((), base, data, theirs, exc)])
                    self._known[key] = _Known(data)
                    return
            try:
                await self.cache.aset(key, value, expected_version=version)
            except ConflictError as exc:
                self._known.setdefault(key, _Known(base)).pending = data
                self._pending.add(key)
                log.info("tiercache.ptb: %r: write deferred: %s", key, exc)
                return
        self._known[key] = _Known(copy.deepcopy(data))

    async def retry(self) -> None:
        """Write every pending hand-back again (after lost races or errors)."""
        for key in self.pending_keys():
            known = self._known[key]
            # A copy: the pending value may be PTB's own dict.
            data, known.pending = copy.deepcopy(known.pending), MISSING
            await self.write(key, data)

    # -- refreshing ----------------------------------------------------------------------

    async def refresh(self, key: str, live: Any) -> None:
        """Pull other processes' changes into PTB's ``live`` dict, in place,
        keeping its unwritten changes."""
        if not isinstance(live, dict):
            return
        try:
            stored = await _api.get_live(self.cache, key)
        except TierError as exc:
            # The shared tier is down and no local tier has the key: PTB's
            # dict is the best there is; the next refresh tries again.
            log.warning("tiercache.ptb: %r: not refreshed: %s", key, exc)
            return
        known = self._known.get(key)
        if known is None:
            if stored is MISSING:
                return  # nothing stored, nothing known: PTB's dict is all there is
            known = self._known[key] = _Known({})
        elif _equal(known.base, {} if stored is MISSING else stored):
            return  # the common case: nothing changed elsewhere (a memory hit)
        async with self._lock(key):
            try:
                stored = await _api.get_copy(self.cache, key)
            except TierError as exc:
                log.warning("tiercache.ptb: %r: not refreshed: %s", key, exc)
                return
            theirs = {} if stored is MISSING or not isinstance(stored, dict) else stored
            changes, conflicts = rebase(known.base, live, theirs, self._resolver(key))
            merged = apply(copy.deepcopy(theirs), changes)
            apply(live, diff(live, merged))
            known.base = theirs
            if known.pending is not MISSING:
                # The unwritten hand-back was relative to the old base; PTB's
                # dict now holds what is left of it, relative to the new one.
                known.pending = live
            self._dropped(key, conflicts)  # live holds theirs there now
