"""Replay: writing what the journal holds into the shared tier.

::

    shared tier back / timer tick / flush / a restarted process
       └─> replay_flow ──> journal.take(): every record, oldest first
             one stand-in entry per key (all its records as one write: the
             first record's expected version, the last one's bytes, every
             record's bytes known as our own), migrated to today's schema
             ──> Writer.write_flow (compare-and-set, merging like a live write)
             ──> journal.done(); after_replay: memory copies made current
"""

from __future__ import annotations

from typing import Any

from ._envelope import decode as _envelope_decode
from ._envelope import peek_version
from ._exceptions import TierError
from ._flow import Flow, Pause
from ._invalidation import Invalidations
from ._journal import Record
from ._journaling import Journaling
from ._merge import UNDECODED, Merger
from ._state import CacheState
from ._tiers._memory import Entry
from ._tracking import MISSING, root_of, track
from ._tracking import _same as same
from ._write import Writer

__all__ = ["Replayer"]

#: Polls (1 ms apart) a caller waits for another thread's journal replay.
_REPLAY_WAIT = 30_000


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


class Replayer:
    """The replay layer of one cache (see the module docstring)."""

    def __init__(
        self,
        state: CacheState,
        writer: Writer,
        merger: Merger,
        journaling: Journaling,
        inval: Invalidations,
    ) -> None:
        self.s = state
        self.writer = writer
        self.merger = merger
        self.journaling = journaling
        self.inval = inval

    def replay_flow(self, reason: str = "replay") -> Flow[int]:
        """Write the journal's records to the shared tier, one
        compare-and-set per key that merges like a live write, as one
        batch; then forget them and bring the memory copies up to date.

        One replay at a time per cache; a caller that finds one running
        waits for it (its records must be in the store before it reads or
        writes them). A TierError stops it with the records still in the
        journal: replaying a key again is harmless, since finding its own
        bytes stored it merges to the same value.
        """
        journal = self.s.journal
        if journal is None or not journal.depth:
            return 0
        if self.s.breaker is not None:
            # While the circuit is open the replay would fail anyway: do not
            # read (and re-read, at every scope exit) a growing journal.
            self.s.breaker.check("journal replay")
        waited = 0
        mine = False
        try:
            while True:
                # A flag set under a lock, not a lock held across the replay:
                # the flag and ``mine`` are set together (see _locks), so an
                # interrupt can never leave the replay taken and not given back.
                with self.s.flight_lock:
                    if not self.s.replaying:
                        self.s.replaying = True
                        mine = True
                if mine:
                    break
                if waited >= _REPLAY_WAIT:
                    raise TierError(
                        f"the journal of {self.s.namespace!r} is being replayed; try again"
                    )
                waited += 1
                yield Pause(0.001)
            if not journal.depth:  # the replay we waited for did it all
                return 0
            core = self.s.core
            taken = journal.take(core.serializer)
            # One write per key: all of this process's journaled changes of
            # it since the version the first record expected. Replaying a
            # chain record by record would make a merged record look, to
            # the next one, like another writer's change of the same field.
            groups: dict[str, list[Record]] = {}
            for rec in taken.records:
                groups.setdefault(rec.key, []).append(rec)
            replays = [self.replay_entry(key, recs) for key, recs in groups.items()]
            try:
                yield from self.writer.write_flow(replays, reason, journal=False)
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
                    self.journaling.append(extra)
                raise
            journal.done(taken)
            self.after_replay(groups, replays)
            return len(taken.records)
        finally:
            if mine:
                self.s.replaying = False

    def replay_entry(self, key: str, recs: list[Record]) -> Entry:
        """A stand-in entry that writes a key's journaled records as one."""
        env = _envelope_decode(recs[-1].data)
        # The value is decoded only if a merge needs it (see _merge_flow).
        e = Entry(key, None, version=env.version)
        e.value = UNDECODED
        e.stored, e.base, e.pending = recs[0].expected, _group_base(recs), recs[-1].data
        # Any of them may have landed before its reply was lost.
        e.uncertain = {rec.data for rec in recs}.union(*(rec.maybe for rec in recs))
        e.schema_version, e.created_ms = env.schema_version, env.created_ms
        e.outdated = key in self.s.journal_rebase
        if env.expires_ms:
            e.ttl = max(0.001, env.expires_ms / 1000.0 - self.s.clock.time())
        if env.schema_version < self.s.core.schema.version:
            self.migrate_replay(e, env.payload, env.schema_version)
        return e

    def migrate_replay(self, e: Entry, payload: bytes, stored_schema: int) -> None:
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
        core = self.s.core
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

    def after_replay(self, groups: dict[str, list[Record]], replays: list[Entry]) -> None:
        """Replayed keys: count their records off and make each memory copy
        what the store now holds.

        A group written as journaled confirms what the memory copy (and any
        later record of the key) believes is stored. A group that merged
        with another writer's version does not: the memory copy takes the
        merged value when no scope uses it, else it is marked outdated, and
        later records of the key are marked to merge at their replay; either
        way no compare-and-set is ever made on the broken belief.
        """
        mono = self.s.clock.monotonic()
        with self.s.mlock:
            memory = self.s.memory
            for e in replays:
                key = e.key
                merged = e.merged or e.pending is not None
                left = self.s.journal_keys.get(key, 0) - len(groups[key])
                if left > 0:
                    self.s.journal_keys[key] = left
                else:
                    self.s.journal_keys.pop(key, None)
                if merged and left > 0:
                    self.s.journal_rebase.add(key)
                else:
                    self.s.journal_rebase.discard(key)
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
                    self.merger.replace_value(entry, e.value, e.stored)
                    entry.base = {}
                    entry.outdated = False
                    entry.checked_at = mono
            self.inval.drop_evicted()
