"""Strict mode: a scope that holds a lease on its key across processes.

::

    enter: local key lock ──> acquire_lease (a fencing token; wait with backoff)
             ──> journal first ──> read the value fresh from the shared tier
             ──> the renewer thread extends the lease every third of its time
    exit:  compare_and_set_fenced(token): written only if the lease is still
           ours and the version unchanged ──> release_lease

A crashed holder blocks the key for at most the lease's seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

from ._exceptions import ConfigError, TierError
from ._flow import Call, Flow
from ._invalidation import Invalidations
from ._merge import backoff
from ._policy import Lease
from ._state import CacheState, OpenScope
from ._tiers._base import PersistentTier
from ._tiers._memory import Entry
from ._tracking import MISSING, detach, is_dirty, revert, track
from ._write import Writer

__all__ = ["Leases"]

log = logging.getLogger("tiercache")


class _Renewer:
    """Renews the leases this cache holds, from one daemon thread.

    A lease is renewed every third of its duration while its scope runs;
    a renewal that finds the lease gone is logged (the scope's write will
    then be refused by the fencing check).
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[PersistentTier, int, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, tier: PersistentTier, lease: str, token: int, seconds: float) -> None:
        with self._lock:
            self._held[lease] = (tier, token, seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tiercache-leases", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def drop(self, lease: str) -> None:
        with self._lock:
            self._held.pop(lease, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._thread = None
                    return
            period = min(seconds for _, _, seconds in held.values()) / 3
            self._wake.clear()
            self._wake.wait(period)
            for lease, (tier, token, seconds) in held.items():
                with self._lock:
                    if self._held.get(lease, (None, None))[1] != token:
                        continue
                try:
                    if not tier.renew_lease(lease, token, seconds):
                        log.warning("tiercache: a lease was lost before its scope ended")
                except Exception:
                    log.warning("tiercache: renewing a lease failed", exc_info=True)


class Leases:
    """The strict mode of one cache (see the module docstring)."""

    def __init__(self, state: CacheState, writer: Writer, inval: Invalidations) -> None:
        self.s = state
        self.writer = writer
        self.inval = inval
        self.renewer = _Renewer()

    def renew_afresh(self) -> None:
        """In a forked child: the parent's leases are not ours to renew."""
        self.renewer = _Renewer()

    def lease_keys(self, key: str) -> tuple[str, str]:
        names = self.s.core.names
        return names.lease(key), names.fence(key)

    def strict_enter_flow(
        self,
        scope: OpenScope,
        key: str,
        initial: Callable[[], Any],
        ttl: float | None,
        lease: Lease,
    ) -> Flow[tuple[Any, int]]:
        """Strict scope entry, local key lock held: take the lease, then read
        the value fresh from the authoritative tier (memory may be stale)."""
        core = self.s.core
        if not core.tiers or not core.tiers[-1].supports_lease:
            raise ConfigError("strict mode (lease=...) needs a last tier with leases (RedisTier)")
        tier, counters = core.tiers[-1], core.counters[-1]
        skey = core.skey(key)
        lkey, fkey = self.lease_keys(key)
        deadline = self.s.clock.monotonic() + lease.wait
        attempt = 0
        while True:
            token = yield Call(tier, counters, "acquire_lease", (lkey, fkey, lease.seconds))
            if token:
                break
            if self.s.clock.monotonic() > deadline:
                raise TierError(f"the lease of {key!r} stayed busy for {lease.wait} s")
            attempt += 1
            yield backoff(min(attempt, 6))
        try:
            if key in self.s.journal_keys:
                yield from self.s.replay_flow()  # our journaled changes first
            plain, version = yield from self.s.core.read_stored_flow(key, skey, adopt=True)
        except BaseException:
            yield Call(tier, counters, "release_lease", (lkey, token))
            raise
        value = track(initial() if plain is MISSING else plain, label=key)
        entry = Entry(key, value, version=version, ttl=ttl, expires_at=core.memory_expiry(ttl))
        entry.schema_version = core.schema.version
        entry.touched_at = self.s.now()
        entry.checked_at = self.s.clock.monotonic()
        if plain is MISSING:
            entry.initial = initial
        with self.s.mlock:
            old = self.s.memory.remove(key)
            self.s.memory.insert(entry)
            entry.pins = 1
            scope._entry = entry
        if old is not None:
            detach(old.value)
        self.renewer.hold(tier, lkey, token, lease.seconds)
        return value, token

    def strict_exit_flow(self, scope: OpenScope, failed: bool, token: int) -> Flow[None]:
        """Strict scope exit: write with the fencing token, release the lease."""
        key, entry, value = scope.key, cast(Entry, scope._entry), scope._value
        core = self.s.core
        tier, counters = core.tiers[-1], core.counters[-1]
        skey = core.skey(key)
        lkey, _ = self.lease_keys(key)
        self.renewer.drop(lkey)
        try:
            if failed:
                revert(value)
            elif self.s.shut and is_dirty(value):
                revert(value)
                raise self.s.closed_under(key)
            elif is_dirty(value):
                self.writer.seal_or_revert(entry)
                entry.initial = None
                data = cast(bytes, entry.pending)
                ttl = core.ttl_for(entry.ttl)
                args = (skey, data, ttl, entry.stored, lkey, token)
                try:
                    written = yield Call(tier, counters, "compare_and_set_fenced", args)
                except TierError as exc:
                    if not (exc.transient and exc.sent):
                        with self.s.mlock:  # not applied: strict scopes re-read anyway
                            self.s.memory.remove(key)
                        raise
                    # It may have landed: acknowledged; retried (merging)
                    # until it is written, recognised if it did land.
                    entry.uncertain = {data}
                    log.warning("tiercache: strict write of %r failed (%s); retried", key, exc)
                    self.s.ensure_timer(retry=True)
                    return
                if written != 1:
                    with self.s.mlock:
                        self.s.memory.remove(key)
                    refused = TierError(
                        f"strict write of {key!r} refused: "
                        + (
                            "the lease expired and another process holds it"
                            if written == -1
                            else "the stored version changed under the lease"
                        )
                        + "; nothing was written"
                    )
                    refused.transient = refused.sent = False
                    raise refused
                yield from core.write_flow([(skey, data, ttl)], range(len(core.tiers) - 1))
                with self.s.mlock:
                    entry.pending = None
                    entry.stored = entry.version
                    entry.base = {}
                    entry.checked_at = self.s.clock.monotonic()
                    core.flushes["exit"] += 1
                yield from self.inval.publish_flow([(key, "set", entry.version)])
            else:
                self.s.writes_avoided += 1
        finally:
            detach(value)
            with self.s.mlock:
                entry.pins -= 1
                scope._entry = None
                if entry.outdated:
                    self.inval.drop_outdated(entry)
            try:
                yield Call(tier, counters, "release_lease", (lkey, token))
            except TierError as exc:
                # The lease expires by itself; what the scope did is settled.
                log.warning("tiercache: releasing the lease of %r failed: %s", key, exc)
        yield from self.writer.drain_flow()
