"""Merging: what a write that lost a compare-and-set race does.

::

    write_flow: compare_and_set(expected=v) ──lost──> merge_flow(entry)
        read what is stored now (theirs, version w, raw bytes)
            ├─ raw is our own pending bytes ──> it landed after all: done
            ├─ raw is one of our uncertain writes ──> rebase: ours is the base
            └─ core.merge(base, ours, theirs, resolver) ──> merged
                   (fields only we changed: ours; only they: theirs; both,
                    whatever the values: the resolver, ConflictError by default)
        seal merged at next_version(w); compare_and_set(expected=w)
            └─ lost again? back off and repeat (up to MAX_MERGES)
"""

from __future__ import annotations

import logging
import random
from typing import Any, cast

from ._envelope import decode as _envelope_decode
from ._exceptions import ConflictError, TierError
from ._fieldwrites import cas_item, cas_method, forget_parts, merged_parts
from ._flow import Call, Flow, Pause
from ._mergeable import Counter
from ._state import CacheState
from ._tiers._memory import Entry
from ._tracking import MISSING, detach, mark_clean, root_of, to_plain, track
from ._tracking import _same as same

__all__ = ["MAX_MERGES", "UNDECODED", "Merger", "backoff", "over_rollback", "went_back"]

log = logging.getLogger("tiercache")

#: Merge-and-retry rounds before a write gives up with TierError. Between
#: rounds a lost writer backs off (jittered, doubling from 1 ms up to 50 ms):
#: without it, optimistic writers on one hot key starve each other.
MAX_MERGES = 64

#: A value not decoded yet: journal replays decode one only to merge it.
UNDECODED: Any = object()


def backoff(attempt: int) -> Pause:
    """The wait before compare-and-set retry ``attempt``."""
    return Pause(random.uniform(0.5, 1.0) * min(0.05, 0.001 * 2**attempt))


def went_back(core: Any, key: str, known: int, version: int) -> None:
    """Count and log a stored version found below ``known``."""
    core.versions_backwards += 1
    log.warning(
        "tiercache: %r went back from version %d to %d in the %s tier: it lost "
        "acknowledged writes (a failover?); writing this process's value back over it",
        key,
        known,
        version,
        core.tiers[-1].name,
    )


def over_rollback(ours: Any, theirs: Any) -> Any:
    """Our value written back over a store that went back to an older one:
    each top-level field we hold is ours (what we acknowledged is newer
    than what the store kept); a field only the store holds stays (we
    cannot tell a deletion it lost from a field another process added, and
    keeping it loses nothing). Not two dicts: ours, whole.

    >>> over_rollback({"n": 4}, {"n": 1, "tag": "x"})
    {'n': 4, 'tag': 'x'}
    """
    if type(ours) is dict and type(theirs) is dict:
        return {**theirs, **ours}
    return ours


class Merger:
    """The merge layer of one cache (see the module docstring)."""

    def __init__(self, state: CacheState) -> None:
        self.s = state

    def merge_flow(self, e: Entry, skey: str, ttl: float | None) -> Flow[bytes]:
        core = self.s.core
        tier, counters = core.tiers[-1], core.counters[-1]
        resolver = e.conflict or self.s.conflict
        if e.value is UNDECODED:  # a journal replay's stand-in entry
            data = cast(bytes, e.pending)
            e.value = track(core.serializer.loads(_envelope_decode(data).payload), label=e.key)
            e.root = root_of(e.value, label=e.key)
        #: Our lost-reply writes, decoded once, when first needed: decoding
        #: them between each read and write (a replayed journal holds
        #: hundreds) widened the window another writer lands in until this
        #: one always lost.
        own: list[dict[Any, Any]] | None = None
        for attempt in range(MAX_MERGES):
            if attempt:
                yield backoff(attempt)
            theirs, version, raw = yield from self.s.core.read_raw_flow(e.key, skey, check=True)
            if raw is not None and raw == e.pending:
                # Our write did land: its reply said otherwise (the client
                # retried a command whose first reply was lost, and the
                # retry found its own version). Never merge with ourselves.
                return e.pending
            floor = self.rolled_back(e, theirs, version, raw)
            if e.uncertain is not None and raw in e.uncertain:
                if e.base is not None and type(theirs) is dict:
                    # A write whose reply we lost did land: the stored value
                    # is our own, so what we changed since is relative to it.
                    e.base = {f: theirs.get(f, MISSING) for f in e.base}
                e.uncertain = None
            elif (
                e.uncertain
                and e.base
                and type(theirs) is dict
                and any(not same(theirs.get(f, MISSING), was) for f, was in e.base.items())
            ):
                # It may have landed and been written over by others since:
                # a field whose stored value is exactly what one of our
                # lost-reply writes set is our own change, not a conflict.
                # (Only asked when a field we changed moved: the common
                # disjoint race decodes nothing.)
                if own is None:
                    own = self.own_writes(e.uncertain)
                self.rebase_on_own_writes(e, theirs, own)
            try:
                merged = core.merge(e.key, e.base, to_plain(e.value), theirs, resolver)
            except ConflictError:
                # Keep theirs in memory so the next scope starts from it.
                self.replace_value(
                    e, track({} if theirs is MISSING else theirs, label=e.key), version
                )
                e.merged = True
                e.pending = None
                e.base = {}
                raise
            self.replace_value(e, track(merged, label=e.key), version)
            e.merged = True
            if e.base is not None:
                # If this write loses again, theirs is the new common base.
                e.base = {
                    f: (theirs.get(f, MISSING) if type(theirs) is dict else theirs) for f in e.base
                }
            # Above every version this key is known to have had, also one a
            # rollback discarded: a version is never handed out twice.
            e.version = core.next_version(max(version, floor))
            # Stored as fields: the merged value goes back as fields too,
            # sending only those we changed (theirs are stored already).
            parts = merged_parts(core, e, raw)
            data = core.seal(
                e.key,
                e.value,
                version=e.version,
                created_ms=e.created_ms,
                ttl=e.ttl,
                schema_version=e.schema_version,
                parts=parts,
            )
            e.pending = data
            e.parts_data = data if parts is not None else None
            item = cas_item(core, e, data, skey, ttl, expected=version, over=raw)
            # A reply lost, or an interrupt mid-write or before the caller's
            # bookkeeping: if these bytes turn up stored, they are our own.
            e.sending(data)
            try:
                ok = yield Call(tier, counters, cas_method(item), item)
            except TierError as exc:
                if not exc.sent:
                    e.not_sent(data)
                raise
            if ok:
                core.merges += 1
                return data
            e.not_sent(data)
        raise TierError(f"gave up writing {e.key!r}: {MAX_MERGES} other writers won in a row")

    def rolled_back(self, e: Entry, theirs: Any, version: int, raw: bytes | None) -> int:
        """When the stored version is lower than the one this process
        stored or saw (``e.stored``), the store lost acknowledged writes (a
        failover discarded them, a backup was restored): count it, log it,
        and make the merge re-apply our value (see :func:`over_rollback`).
        Returns the version to stay above (0: not rolled back).

        An absent key is not a rollback: an expiry looks the same.
        """
        known = e.stored
        if raw is None or not known or version >= known:
            return 0
        went_back(self.s.core, e.key, known, version)
        ours = to_plain(e.value)
        if e.base is not None and type(theirs) is dict and type(ours) is dict:
            for f, mine in ours.items():
                if not same(mine, theirs.get(f, MISSING)):
                    e.base[f] = theirs.get(f, MISSING)  # ours, changed since theirs
        return known

    def own_writes(self, blobs: set[bytes]) -> list[dict[Any, Any]]:
        """The values of our own lost-reply writes that decode to a dict."""
        loads = self.s.core.serializer.loads
        out: list[dict[Any, Any]] = []
        for blob in blobs:
            try:
                ours = loads(_envelope_decode(blob).payload)
            except Exception:
                continue
            if type(ours) is dict:
                out.append(ours)
        return out

    def rebase_on_own_writes(
        self, e: Entry, theirs: dict[Any, Any], own: list[dict[Any, Any]]
    ) -> None:
        base = cast(dict[Any, Any], e.base)
        for ours in own:
            for field in base:
                mine = ours.get(field, MISSING)
                if type(mine) is Counter:
                    # A count says nothing about who made it: others'
                    # increments reach the number ours set as often as ours
                    # does, and taking theirs for ours drops our delta.
                    # Counters merge by deltas instead (possibly twice, if
                    # ours did land: counted over, never lost).
                    continue
                if mine is not MISSING and same(theirs.get(field, MISSING), mine):
                    base[field] = mine

    def replace_value(self, e: Entry, value: Any, stored: int) -> None:
        """Swap the entry's live value (key lock held); handles to the old
        one go stale and raise on mutation."""
        old = e.value
        mark_clean(value)
        detach(value)
        forget_parts(e)
        e.value = value
        e.root = root_of(value, label=e.key)
        e.stored = e.version = stored
        if old is not value:
            detach(old)
