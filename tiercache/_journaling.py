"""Journaling: acknowledging changes into the local journal.

::

    a write the shared tier cannot take (it is down), or every change of a
    WriteBehind cache with a journal (the write-ahead log)
        └─> batch(entries) ──> append(records) ──> Journal.write (one write(2))
                                   │ and, in the same memory-lock section:
                                   └─> count the records per key, mark the
                                       entries journaled (the journal owns
                                       their write now)

Replaying what is journaled is :mod:`tiercache._replay`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from ._envelope import peek_version
from ._exceptions import JournalFullError
from ._invalidation import Invalidations
from ._journal import Journal, Record
from ._state import CacheState
from ._tiers._memory import Entry

__all__ = ["Journaling"]


class Journaling:
    """The journaling layer of one cache (see the module docstring)."""

    def __init__(self, state: CacheState, inval: Invalidations) -> None:
        self.s = state
        self.inval = inval

    def or_raise(self, batch: list[tuple[Entry, bytes]], *, sent: bool) -> None:
        """:meth:`batch` for writes the shared tier could not take;
        a full journal says, as the failed write did (``sent``), whether the
        change may have landed all the same."""
        try:
            self.batch(batch)
        except JournalFullError as full:
            full.sent = sent
            raise

    def batch(self, batch: list[tuple[Entry, bytes]]) -> None:
        """Acknowledge ``batch`` by appending it to the journal (durable once
        this returns), to be replayed in order into the shared tier: when
        the tier is down, or on every change when the journal is the
        write-ahead log of :class:`WriteBehind`. JournalFullError when there
        is no room: then nothing is acknowledged and the entries stay
        pending."""
        dumps = self.s.core.serializer.dumps
        records = [
            Record(
                e.key,
                data,
                e.stored,
                None if e.base is None else dict(e.base),
                # The record's own bytes are known as ours at replay anyway.
                tuple(u for u in (e.uncertain or ()) if u is not data),
                # Sealed from fields: what changed since its last record.
                e.parts.journal_delta(dumps) if e.parts_data is data else None,
            )
            for e, data in batch
        ]

        def acknowledge() -> None:
            for e, data in batch:
                if e.parts is not None:
                    # Its record (whole or delta) is these parts now, and
                    # acknowledged: they are the clean point the scope
                    # moves to. A record from other bytes leaves them
                    # unrelated.
                    ours = e.parts_data is data
                    e.parts.since_journal = set() if ours else None
                    e.parts_ok = ours
                if e.outdated:
                    # Sealed on a belief about the store that is wrong: its
                    # replay must merge, not compare-and-set on that belief.
                    self.s.journal_rebase.add(e.key)
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
            self.s.journaled += len(batch)
            self.inval.drop_evicted()

        self.append(records, acknowledge)
        self.s.ensure_timer()

    def append(self, records: list[Record], then: Callable[[], None] | None = None) -> None:
        """Write ``records`` to the journal and count them per key, in one
        memory-lock section with ``then`` (so a replay sees a record, its
        key's count and the entry's state together, or none of them);
        durable (fsync=True: synced, outside the lock) when this returns."""
        journal = cast(Journal, self.s.journal)
        frames = journal.encode(records, self.s.core.serializer)
        with self.s.mlock:
            journal.write(frames)
            keys = self.s.journal_keys
            for rec in records:
                keys[rec.key] = keys.get(rec.key, 0) + 1
            if then is not None:
                then()
        journal.sync()
