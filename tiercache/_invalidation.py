"""Invalidation: what other processes' writes do to this one's copies, and
what this process's writes tell them.

::

    a write acknowledged ──> publish_flow ──> bus (key, version; never the value)

    bus listener thread ──> on_messages ──> drop_or_mark each older copy
                                             ├─ unused and written: dropped (reloads lazily)
                                             └─ in a scope, or changes of ours pending:
                                                marked outdated (its write merges; the
                                                scope that lets go of it drops it)
                       ──> on_gap ──────> every clean copy dropped, misses forgotten
    breaker: shared tier back ──> on_recovered ──> copies served unconfirmed dropped
"""

from __future__ import annotations

import logging

from ._bus import Invalidation
from ._envelope import safe_version
from ._exceptions import TierError
from ._flow import Call, Flow
from ._state import CacheState
from ._tiers._memory import Entry
from ._tracking import detach

__all__ = ["Invalidations"]

log = logging.getLogger("tiercache")

#: Above every entry version (u64): an invalidation that drops any copy.
_ALL_VERSIONS = 2**64


def _lag_s(last_id: str | None, now: float) -> float | None:
    """How long ago the server added stream entry ``last_id`` (Redis ids
    start with the server's clock in ms); None for ids that do not (the
    local bus counts)."""
    if not last_id:
        return None
    ms = last_id.partition("-")[0]
    if not ms.isdigit() or int(ms) < 10**12:
        return None
    return max(0.0, now - int(ms) / 1000.0)


class Invalidations:
    """The invalidation layer of one cache (see the module docstring)."""

    def __init__(self, state: CacheState) -> None:
        self.s = state

    def drop_or_mark(self, entry: Entry, *, count: bool = True) -> None:
        """Under the memory lock: a newer version of this memory copy exists
        elsewhere. Drop it (the next access loads), unless a scope uses it
        or it holds changes of ours still to be written (pending, or
        journaled: newer than the store); then mark it outdated, so its
        write merges and the last scope to let go of it drops it."""
        if not entry.pins and entry.pending is None and not entry.journaled:
            self.s.memory.remove(entry.key)
            detach(entry.value)
            if count:
                self.s.invalidated += 1
        else:
            entry.outdated = True

    def drop_outdated(self, entry: Entry) -> None:
        """Under the memory lock, when a scope let go of an outdated entry
        that is still the key's memory copy: see :meth:`drop_or_mark`."""
        memory = self.s.memory
        if entry.outdated and (
            memory.peek(entry.key) is entry or memory.evicted.get(entry.key) is entry
        ):
            self.drop_or_mark(entry)

    def let_go(self, entry: Entry) -> None:
        with self.s.mlock:
            self.drop_outdated(entry)

    def drop_evicted(self) -> None:
        # Under the memory lock: evicted entries that are written and unused go.
        ev = self.s.memory.evicted
        for key in [
            k for k, e in ev.items() if e.pending is None and not e.pins and not e.journaled
        ]:
            detach(ev.pop(key).value)

    def publish_flow(self, items: list[tuple[str, str, int]]) -> Flow[None]:
        """Tell other processes, after the write was acknowledged. A failed
        publish does not undo the write: it is logged, and readers elsewhere
        stay within ``max_stale`` through revalidation."""
        if self.s.bus is None or not items:
            return
        if self.s.tier_publishes:
            # Published by the write's own script, which succeeded.
            self.s.invalidations_sent += len(items)
            return
        try:
            yield Call(self.s.bus, self.s.bus_counters, "publish", (items,))
            self.s.invalidations_sent += len(items)
        except TierError as exc:
            log.warning("tiercache: publishing %d invalidation(s) failed: %s", len(items), exc)

    def on_messages(self, batch: list[Invalidation]) -> None:
        """Listener thread: drop memory copies older than what another
        process wrote (and the local tiers' copies); they reload lazily on
        next access, so there is no refresh storm. A copy in use by a scope,
        or with changes of ours not yet written, stays, marked outdated: its
        write-back is a compare-and-set and merges, and a scope that wrote
        nothing drops it as it ends."""
        newest: dict[str, int] = {}
        lag = _lag_s(getattr(self.s.bus, "last_id", None), self.s.clock.time())
        with self.s.mlock:
            self.s.invalidations_received += len(batch)
            if lag is not None:
                self.s.bus_lag_s = lag
            memory = self.s.memory
            for inv in batch:
                key = inv.key
                memory.absent.pop(key, None)
                entry = memory.peek(key) or memory.evicted.get(key)
                if entry is not None and (inv.action == "del" or entry.stored < inv.version):
                    self.drop_or_mark(entry)
                # A delete drops every local copy, whatever its version.
                version = inv.version if inv.action != "del" else _ALL_VERSIONS
                newest[key] = max(newest.get(key, 0), version)
        core = self.s.core
        for index, tier in enumerate(core.tiers[:-1]):
            for key, version in newest.items():
                skey = core.skey(key)
                try:
                    # A copy as new as the message stays: on a disk shared by
                    # the processes of a host it is often the writer's own.
                    # (Local copies only ever hold versions the shared tier
                    # stored, so a version names one content.)
                    raw = tier.get(skey)
                    if raw is not None and safe_version(raw) < version:
                        tier.delete(skey)
                except Exception as exc:
                    # The stale copy may still be there: it is confirmed
                    # before it is ever served.
                    core.local_failed(index, "delete", exc)

    def on_gap(self) -> None:
        """Listener thread: invalidations were lost and cannot be replayed
        (server restart, stream trimmed). Every clean memory copy is dropped
        and the remembered misses forgotten; loads go to the shared tier."""
        with self.s.mlock:
            self.s.gaps += 1
            self.s.trusted_since = self.s.clock.monotonic()
            memory = self.s.memory
            memory.absent.clear()
            for entry in list(memory.data.values()):
                self.drop_or_mark(entry)

    def on_recovered(self) -> None:
        """The shared tier answers again after failing: local copies served
        meanwhile without confirmation are dropped from memory (or marked
        outdated while in use), so the next access confirms them."""
        with self.s.mlock:
            keys, self.s.unconfirmed = self.s.unconfirmed, set()
            memory = self.s.memory
            for key in keys:
                entry = memory.peek(key) or memory.evicted.get(key)
                if entry is not None:
                    self.drop_or_mark(entry, count=False)
