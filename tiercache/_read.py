"""The read path: memory first, then the persistent tiers, one load per key.

::

    get(key) ──memory hit──> live value (the facade answers before any flow starts)
       │
       └─miss──> lookup_flow: expired? stale (max_stale)? ──> revalidate by version
                   └─ not in memory ──> single flight (one load per key; threads
                      and tasks that ask meanwhile share it)
                        └─> load_flow: journal first (our own changes), then
                            core.load_flow (tier by tier, promoting a hit upwards);
                            a local copy that may be stale is confirmed against
                            the shared tier; a migrated value is written once
                        └─> install: one live object per key in memory; a miss
                            is remembered (never longer than max_stale)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import Any, cast

from ._core import Loaded
from ._exceptions import ConflictError, TierError
from ._flow import Flow, arun, run, traced
from ._locks import POLL, Hold, owner
from ._policy import Schema
from ._state import CacheState, Flight, Pinner
from ._tiers._memory import Entry
from ._tracking import detach
from ._write import Writer

__all__ = ["Reader"]

log = logging.getLogger("tiercache")


class Reader:
    """The read path of one cache (see the module docstring)."""

    def __init__(self, state: CacheState, writer: Writer) -> None:
        self.s = state
        self.writer = writer

    def get_slow(self, key: str, default: Any) -> Any:
        entry = run(self.lookup_flow(key))
        if entry is None:
            entry = self.load_shared(key)
        return default if entry is None or entry.initial is not None else entry.value

    async def aget_slow(self, key: str, default: Any) -> Any:
        entry = await arun(self.lookup_flow(key))
        if entry is None:
            entry = await self.aload_shared(key)
        return default if entry is None or entry.initial is not None else entry.value

    def hit_ok(self, entry: Entry) -> bool:
        """Under the memory lock, for caches with sliding expiry or
        ``max_stale``: whether a hit can be served without a flow."""
        return (entry.expires_at is None or self.fresh(entry)) and (
            self.s.max_stale is None or not self.stale(entry)
        )

    def fresh(self, entry: Entry) -> bool:
        """Under the memory lock: true when a hit needs no flow (not expired,
        no persistent touch due); extends a sliding expiry."""
        now = self.s.now()
        if now >= cast(float, entry.expires_at):
            return False
        if self.s.sliding:
            if now - entry.touched_at >= self.s.touch_interval:
                return False
            entry.expires_at = now + (entry.ttl or self.s.ttl_seconds)
        return True

    def stale(self, entry: Entry) -> bool:
        """Under the memory lock: true when the entry must be re-read before
        it is served: it was last confirmed more than ``max_stale`` ago."""
        # A hard bound, whatever the bus says: a healthy bus delivers
        # invalidations in well under a millisecond, but a writer whose
        # publish failed would leave a copy stale forever without it.
        if self.s.clock.monotonic() - entry.checked_at <= cast(float, self.s.max_stale):
            return False
        return entry.pins == 0 and entry.pending is None

    def lookup_flow(self, key: str, *, pin: Pinner | None = None) -> Flow[Entry | None]:
        """The memory entry (cache or evicted area) after expiry and sliding
        refresh; ``None`` when it must be loaded. Counts the hit or miss."""
        self.s.check_key(key)
        self.s.check_open()
        now = self.s.now()
        with self.s.mlock:
            entry = self.s.memory.lookup(key)
            if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
                self.expire(entry)
                entry = None
            if entry is None:
                self.s.misses += 1
                return None
            stale = self.s.max_stale is not None and self.stale(entry)
            if not stale:
                self.s.hits += 1
                if pin is not None:
                    entry.pins += 1
                    pin._entry = entry
                due = self.slide(entry, now)
        if stale:
            return (yield from self.revalidate_flow(entry, pin))
        if due:
            yield from self.s.core.touch_flow(key, self.s.core.ttl_for(entry.ttl))
        return entry

    def revalidate_flow(self, entry: Entry, pin: Pinner | None) -> Flow[Entry | None]:
        """Re-read a stale entry's version from the shared tier: keep the
        memory copy if it is current, else drop it (the caller loads)."""
        self.s.revalidations += 1
        if not self.s.core.tiers:
            entry.checked_at = self.s.clock.monotonic()
            return entry
        if entry.journaled:
            # Our own changes wait in the journal: write them (merging what
            # others wrote), which brings the memory copy up to date;
            # TierError if the store is still out of reach, rather than
            # serve a copy older than max_stale.
            yield from self.s.replay_flow()
            with self.s.mlock:
                if (
                    self.s.memory.peek(entry.key) is entry
                    and not entry.journaled
                    and not entry.outdated
                ):
                    self.s.hits += 1
                    if pin is not None:
                        entry.pins += 1
                        pin._entry = entry
                    return entry
                self.s.misses += 1
            return None
        _, version = yield from self.s.core.read_stored_flow(entry.key, self.s.core.skey(entry.key))
        if self.s.core.tiers[-1].supports_cas and 0 < version < entry.stored:
            # Lower than what we stored: the store lost acknowledged writes.
            # Ours goes back (merged), and our copy is what is current.
            yield from self.repair_flow(entry)
            with self.s.mlock:
                entry.checked_at = self.s.clock.monotonic()
                self.s.hits += 1
                if pin is not None:
                    entry.pins += 1
                    pin._entry = entry
            return entry
        with self.s.mlock:
            if version == entry.stored and not entry.outdated:
                entry.checked_at = self.s.clock.monotonic()
                self.s.hits += 1
                if pin is not None:
                    entry.pins += 1
                    pin._entry = entry
                return entry
            if not entry.pins and entry.pending is None:
                self.s.memory.remove(entry.key)
                detach(entry.value)
            self.s.misses += 1
        return None

    def repair_flow(self, entry: Entry) -> Flow[None]:
        """A read found the shared tier's version of ``entry`` below what
        this process stored (it lost acknowledged writes): write the memory
        value back, as a merge over what is stored (see
        :meth:`~tiercache._merge.Merger.rolled_back`), if the key lock is free or ours. A
        holder of the lock writes it at its own exit instead (the entry is
        outdated, so that write merges too). A failure is logged: the entry
        stays pending, and the timer retries."""
        me = owner()
        hold = Hold()
        with self.s.mlock:
            mine = self.s.locks.held_by(entry.key, me)
            entry.outdated = True
            if not mine and not self.s.locks.take_locked(entry.key, me, hold):
                return
        try:
            if entry.pending is None:
                self.writer.seal(entry)
            yield from self.writer.write_flow([entry], "repair")
        except (TierError, ConflictError) as exc:
            log.warning("tiercache: writing %r back failed: %s", entry.key, exc)
            self.s.ensure_timer(retry=True)
        finally:
            if not mine:
                lock = hold._key_lock
                if lock is not None:
                    lock.owner = None
                self.s.locks.release(hold)

    def slide(self, entry: Entry, now: float) -> bool:
        """Extend a sliding expiry; whether the persistent tiers are due a touch."""
        if not self.s.sliding:
            return False
        entry.expires_at = now + (entry.ttl or self.s.ttl_seconds)
        if now - entry.touched_at >= self.s.touch_interval and self.s.core.tiers:
            entry.touched_at = now
            return True
        return False

    def expire(self, entry: Entry) -> None:
        # Under the memory lock. An expired value is gone, pending or not,
        # unless a scope is using it: then it waits in the evicted area, so
        # what that scope commits is still written.
        self.s.memory.remove(entry.key)
        if entry.pins:
            self.s.memory.evicted[entry.key] = entry
        else:
            detach(entry.value)

    def load_shared(self, key: str) -> Entry | None:
        """One load per key at a time: threads that ask meanwhile wait for
        it and share its result."""
        mine = False
        flight: Flight | None = None
        try:
            with self.s.flight_lock:
                flight = self.s.flights.get(key)
                if flight is None or flight.done:
                    flight = Flight()
                    # Registered and ``mine`` in one run of stores: an
                    # interrupt after it still reaches the finally below.
                    self.s.flights[key] = flight
                    mine = True
                else:
                    # The owner marks the flight done before it reads the
                    # event under this lock, so an event made here is set.
                    flight.event = flight.event or threading.Event()
            if not mine:
                return self.wait_for_flight(key, flight)
            flight.entry = run(self.load_flow(key, None))
            return flight.entry
        except BaseException as exc:
            if mine and flight is not None:
                flight.error = exc
            raise
        finally:
            if mine and flight is not None:
                flight.done = True
                with self.s.flight_lock:
                    if self.s.flights.get(key) is flight:
                        del self.s.flights[key]
                    event = flight.event
                if event is not None:
                    event.set()

    def wait_for_flight(self, key: str, flight: Flight) -> Entry | None:
        event = flight.event
        assert event is not None
        # Polled: a wake-up the loader could not send (it was interrupted
        # on its way out) costs POLL seconds, never a hang.
        while not event.wait(POLL) and not flight.done:
            pass
        if flight.error is not None or not flight.done:
            if not isinstance(flight.error, Exception):
                # The loading thread was interrupted (KeyboardInterrupt,
                # SystemExit): that is its own business, not a failure of
                # the load. Load again.
                return self.load_shared(key)
            raise flight.error
        return flight.entry

    async def aload_shared(self, key: str) -> Entry | None:
        """One load per key and event loop at a time, shared by every task
        that asks meanwhile. The load runs as a task of its own, so a
        caller cancelled while waiting cancels only its own wait: the
        others still get the value (and the load still installs it)."""
        loop = asyncio.get_running_loop()
        task = self.s.aflights.get(key)
        if task is None or task.get_loop() is not loop or task.done():
            task = loop.create_task(arun(self.load_flow(key, None)))
            self.s.aflights[key] = task
            task.add_done_callback(functools.partial(self.aflight_done, key))
        return await asyncio.shield(task)

    def aflight_done(self, key: str, task: asyncio.Task[Entry | None]) -> None:
        if self.s.aflights.get(key) is task:
            del self.s.aflights[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    def load_flow(self, key: str, schema: Schema | None) -> Flow[Entry | None]:
        tracer = self.s.tracer
        if tracer is None:
            return (yield from self._load_flow(key, schema))
        attrs = {"tiercache.namespace": self.s.namespace, "tiercache.key": key}
        return (yield from traced(tracer, "tiercache.load", attrs, self._load_flow(key, schema)))

    def _load_flow(self, key: str, schema: Schema | None) -> Flow[Entry | None]:
        with self.s.mlock:
            if self.s.memory.known_absent(key, self.s.now()):
                return None
        if key in self.s.journal_keys:
            # The shared tier must have our acknowledged changes before we
            # read it: loading an older value past an unreplayed journal
            # would hand the handler a session without its own changes.
            yield from self.s.replay_flow()
        corrupt_before = self.s.core.corrupt
        loaded = yield from self.s.core.load_flow(key, schema)
        if loaded is None and self.s.core.corrupt != corrupt_before:
            # Unreadable, not absent: do not remember it as a miss (the
            # failure may pass; a write replaces the bad bytes anyway).
            with self.s.mlock:
                return self.s.memory.lookup(key)
        if loaded is not None and self.local_copy_suspect(loaded):
            loaded = yield from self.confirm_flow(key, loaded, schema)
        entry = self.install(key, loaded)
        if (
            loaded is not None
            and loaded.migrated
            and entry is not None
            and entry.value is loaded.value
        ):
            # Migrations changed what was stored: write the new form once.
            self.writer.seal(entry)
            yield from self.writer.write_flow([entry], "migrate")
        yield from self.writer.drain_flow()
        return entry

    def local_copy_suspect(self, loaded: Loaded) -> bool:
        """Whether a copy found in a local tier (disk) must be checked
        against the shared tier before it is served: it was written before
        the bus started listening (no invalidation could have removed it),
        or longer ago than ``max_stale``."""
        tiers = self.s.core.tiers
        if loaded.tier_index >= len(tiers) - 1:
            return False
        if loaded.updated_ms <= self.s.core.suspect_before[loaded.tier_index]:
            return True  # a write to that tier failed since: it may be stale
        age = self.s.clock.time() - loaded.updated_ms / 1000.0
        if self.s.max_stale is not None and age > self.s.max_stale:
            return True
        if self.s.bus is None:
            return False
        listening_for = self.s.clock.monotonic() - self.s.trusted_since
        return age > listening_for

    def confirm_flow(self, key: str, loaded: Loaded, schema: Schema | None) -> Flow[Loaded | None]:
        """Compare a local copy's version with the shared tier's; when they
        differ, drop the local copies and load from the shared tier.

        When the shared tier cannot be reached, the local copy is served
        anyway if it is within ``max_stale`` (always, without one): that is
        what the disk tier is for during an outage. It is counted, and
        dropped from memory once the shared tier answers again, so it is
        confirmed then.
        """
        core = self.s.core
        self.s.revalidations += 1
        skey = core.skey(key)
        try:
            _, version = yield from self.s.core.read_stored_flow(key, skey)
        except TierError as exc:
            age = self.s.clock.time() - loaded.updated_ms / 1000.0
            if not exc.transient or (self.s.max_stale is not None and age > self.s.max_stale):
                raise
            with self.s.mlock:
                self.s.unconfirmed.add(key)
                self.s.served_unconfirmed += 1
            return loaded
        if version == loaded.version:
            loaded.updated_ms = int(self.s.clock.time() * 1000)  # confirmed now
            return loaded
        yield from core.delete_flow(key, range(len(core.tiers) - 1))
        return (yield from core.load_flow(key, schema))

    def absent_until(self) -> float | None:
        """How long "no tier has this key" is believed: the cache TTL, and
        never longer than ``max_stale`` (another process may create it)."""
        until = self.s.core.memory_expiry(None)
        if self.s.max_stale is None:
            return until
        bound = self.s.now() + self.s.max_stale
        return bound if until is None else min(until, bound)

    def install(self, key: str, loaded: Loaded | None) -> Entry | None:
        """Insert a loaded value unless another caller already did."""
        with self.s.mlock:
            existing = self.s.memory.lookup(key)
            if existing is None and loaded is None:
                self.s.memory.absent[key] = self.absent_until()
            if existing is not None or loaded is None:
                return existing
            entry = Entry(
                key,
                loaded.value,
                version=loaded.version,
                expires_at=loaded.expires_at,
                created_ms=loaded.created_ms,
                schema_version=loaded.schema_version,
                size=loaded.size,
            )
            entry.touched_at = entry.checked_at = self.s.now()
            if loaded.fields:
                entry.fields_at = loaded.version
                entry.fields_blocks = loaded.fields
            if loaded.tier_index < len(self.s.core.tiers) - 1:
                # A local copy: only as current as when it was written.
                age = max(0.0, self.s.clock.time() - loaded.updated_ms / 1000.0)
                entry.checked_at -= age
            detach(entry.value)
            self.s.memory.insert(entry)
            return entry
