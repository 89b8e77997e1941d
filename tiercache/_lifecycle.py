"""Lifecycle: the background flusher, flushes, closing, and forks.

::

    ensure_timer() ──> one daemon thread per cache ──every interval──> tick()
                          (WriteBehind's interval; 1 s for a write-through
                          cache retrying a journal or a write that may have
                          landed)
    tick / flush / close ──> flush_all: the journal's records first, then one
                          batch of every pending entry whose key is free, then
                          the busy ones one at a time (waiting for their scopes)
    close() ──> refuse new work ──> wait for other contexts' scopes ──> stop the
                timer ──> flush_all("close") ──> shut (nothing more is written)
                ──> close the journal, the bus and the tiers
    os.fork() ──> after_fork() in the child (tiercache._fork)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from ._defaults import publish_in_tier
from ._exceptions import TierError
from ._flow import arun, run
from ._leases import Leases
from ._locks import POLL, LockRegistry, owner
from ._state import CacheState
from ._tiers._redis import RedisTier
from ._write import Writer

__all__ = ["Lifecycle", "flush_at_exit"]

log = logging.getLogger("tiercache")

#: Seconds between retries of a write-through cache's journal or of a write
#: whose reply was lost.
JOURNAL_RETRY = 1.0


class Lifecycle:
    """The background and closing machinery of one cache."""

    def __init__(
        self,
        state: CacheState,
        writer: Writer,
        leases: Leases,
        locked: Callable[..., Any],
        alocked: Callable[..., Any],
    ) -> None:
        self.s = state
        self.writer = writer
        self.leases = leases
        # DirectWrites.locked / alocked: a key's lock around a flow.
        self._locked = locked
        self._alocked = alocked
        self.timer: threading.Thread | None = None
        self.stop = threading.Event()
        self.timer_lock = threading.Lock()

    # -- the background flusher ----------------------------------------------------

    def ensure_timer(self, *, retry: bool = False) -> None:
        """Start the background flusher: the WriteBehind timer, or, for a
        write-through cache that journaled changes or holds a write that
        may have landed (``retry``), the retrier."""
        s = self.s
        if self.timer is not None or s.closed:
            return
        if s.write_through and s.journal is None and not retry:
            return
        interval = s.flush_policy.interval or JOURNAL_RETRY
        with self.timer_lock:
            if self.timer is None:
                t = threading.Thread(
                    target=_timer_loop,
                    args=(weakref.ref(self), self.stop, interval),
                    name=f"tiercache-flush-{s.namespace}",
                    daemon=True,
                )
                t.start()
                # Recorded once running: a timer interrupted before it
                # started is simply made again by the next caller.
                self.timer = t

    def tick(self) -> None:
        """One timer flush: the journal's records, then pending entries
        whose lock is free, batched."""
        s = self.s
        if s.journal is not None and s.journal.depth:
            run(s.replay_flow("timer" if s.wal else "replay"))
        entries = s.pending_entries()
        if entries:
            run(self.writer.locked_write_flow(entries, "timer"))

    def stop_timer(self) -> None:
        self.stop.set()
        t = self.timer
        if t is not None and t is not threading.current_thread():
            t.join(timeout=30)

    # -- flushing --------------------------------------------------------------------

    def flush_all(self, reason: str) -> int:
        s = self.s
        if s.journal is not None and s.journal.depth:
            try:
                run(s.replay_flow(reason if s.wal else "replay"))
            except TierError:
                if reason != "close":
                    raise
                # The records stay in the journal for the next start.
                log.warning("tiercache: closing with %d journaled change(s)", s.journal.depth)
        # One batch for every key whose lock is free; then, one at a time,
        # the keys an open scope holds (waiting for it), so an older pending
        # write can never land after a newer one.
        entries = s.pending_entries()
        run(self.writer.locked_write_flow(entries, reason))
        for e in entries:
            if e.pending is not None:
                run(self._locked(e.key, None, _write_one(self.writer, e, reason), own=True))
        return len(entries)

    async def aflush_all(self, reason: str) -> int:
        s = self.s
        if s.journal is not None and s.journal.depth:
            try:
                await arun(s.replay_flow(reason if s.wal else "replay"))
            except TierError:
                if reason != "close":
                    raise
                log.warning("tiercache: closing with %d journaled change(s)", s.journal.depth)
        entries = s.pending_entries()
        await arun(self.writer.locked_write_flow(entries, reason))
        for e in entries:
            if e.pending is not None:
                await self._alocked(e.key, None, _write_one(self.writer, e, reason), own=True)
        return len(entries)

    # -- closing ----------------------------------------------------------------------

    def close(self, wait: float) -> bool:
        """The flushing half of :meth:`TieredCache.close`; False when it was
        closed already. Closing the parts follows (the caller's)."""
        s = self.s
        if s.shut:
            return False
        s.closed = True
        try:
            # Real time: the other scopes run on it, whatever the cache's clock.
            deadline = time.monotonic() + wait
            if asyncio._get_running_loop() is not None:
                deadline = 0.0  # this loop's tasks cannot run while we wait
            me = owner()
            while s.others_in_scopes(me) and time.monotonic() < deadline:
                time.sleep(POLL)
            self.stop_timer()
            self.flush_all("close")
        except BaseException:
            self.reopen()
            raise
        self.shut_down()
        return True

    async def aclose(self, wait: float) -> bool:
        """:meth:`close` for async callers: waits without blocking the loop."""
        s = self.s
        if s.shut:
            return False
        s.closed = True
        try:
            deadline = time.monotonic() + wait
            me = owner()
            # Polled: the scopes may be other threads', with nothing to await.
            while s.others_in_scopes(me) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(POLL)
            self.stop_timer()
            await self.aflush_all("close")
        except BaseException:
            self.reopen()
            raise
        self.shut_down()
        return True

    def reopen(self) -> None:
        """close() failed: the cache stays usable, its timer running again."""
        self.s.closed = False
        self.stop = threading.Event()
        self.timer = None
        self.ensure_timer(retry=bool(self.s.pending_entries()))

    def shut_down(self) -> None:
        """Past the last flush: a scope still open can no longer write."""
        with self.s.mlock:
            self.s.shut = True

    # -- os.fork() ---------------------------------------------------------------------

    def stop_publishing(self) -> None:
        s = self.s
        if s.tier_publishes and isinstance(s.shared, RedisTier):
            s.shared.stop_publishing(s.core.prefix)
        s.tier_publishes = False

    def close_parts(self) -> None:
        """After :meth:`close`: the journal, the bus, then every tier, each
        closed even if another fails (the first failure is raised)."""
        s = self.s
        self.stop_publishing()
        closers: list[Callable[[], None]] = [t.close for t in s.core.tiers]
        if s.bus is not None:
            closers.insert(0, s.bus.close)
        if s.journal is not None:
            closers.insert(0, s.journal.close)
        close_all(closers)

    async def aclose_parts(self) -> None:
        """:meth:`close_parts` after :meth:`aclose`."""
        s = self.s
        self.stop_publishing()
        closers: list[Callable[[], Awaitable[None]]] = [t.aclose for t in s.core.tiers]
        if s.bus is not None:
            closers.insert(0, s.bus.aclose)
        try:
            await aclose_all(closers)
        finally:
            if s.journal is not None:
                s.journal.close()

    def after_fork(self) -> None:
        """In a forked child (see :mod:`tiercache._fork`): new locks and
        threads, an empty memory, a new writer tag and bus origin; the
        parent's journal refused."""
        s = self.s
        memory = s.memory
        memory._after_fork()
        s.mlock = memory.lock
        s.locks = LockRegistry(s.mlock)
        s.flights = {}
        s.aflights = {}
        s.flight_lock = threading.Lock()
        s.replaying = False
        self.timer = None
        self.stop = threading.Event()
        self.timer_lock = threading.Lock()
        self.leases.renew_afresh()
        s.unconfirmed = set()
        s.journal_keys = {}
        s.journal_rebase = set()
        core = s.core
        core.new_writer()
        for counters in (*core.counters, s.bus_counters):
            counters.lock = threading.Lock()
        for tier in core.tiers:
            hook = getattr(tier, "_after_fork", None)
            if hook is not None:
                hook()
        if s.journal is not None:
            s.journal._after_fork()
        s.trusted_since = s.clock.monotonic()
        hook = getattr(s.bus, "_after_fork", None)
        if hook is not None:
            hook()
        if s.tier_publishes:  # the bus has a new origin
            s.tier_publishes = publish_in_tier(s.shared, s.bus, s.core.prefix)


def _write_one(writer: Writer, entry: Any, reason: str) -> Callable[[], Any]:
    return lambda: writer.write_flow([entry], reason)


def close_all(closers: list[Callable[[], None]]) -> None:
    """Call every closer even if one fails; re-raise the first failure."""
    first: BaseException | None = None
    for close in closers:
        try:
            close()
        except Exception as exc:
            first = first or exc
    if first is not None:
        raise first


async def aclose_all(closers: list[Callable[[], Awaitable[None]]]) -> None:
    """:func:`close_all` for async closers."""
    first: BaseException | None = None
    for aclose in closers:
        try:
            await aclose()
        except Exception as exc:  # close the others all the same
            first = first or exc
    if first is not None:
        raise first


def _timer_loop(ref: weakref.ref[Lifecycle], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        life = ref()
        if life is None:
            return
        try:
            life.tick()
        except TierError as exc:
            # The entries stay pending (or journaled) and the next tick
            # retries them. An outage is logged once, by the breaker, not
            # once per tick.
            log.debug("tiercache: background flush of %r failed: %s", life.s.namespace, exc)
        except Exception:
            log.exception("tiercache: background flush of %r failed", life.s.namespace)
        del life


def flush_at_exit(ref: weakref.ref[Any]) -> None:
    """At interpreter exit: close (so flush) a cache still open."""
    cache = ref()
    if cache is None or cache._s.closed:
        return
    try:
        cache.close()
    except Exception:
        log.exception("tiercache: flush at interpreter exit failed for %r", cache.namespace)
