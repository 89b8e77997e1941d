"""Per-key locks shared by threads and asyncio tasks, forgotten when unused.

One :class:`KeyLock` per key that some scope holds or waits for; the
registry drops it when the last user lets go, so 100,000 distinct keys
leave no 100,000 locks behind. A KeyLock wraps a ``threading.Lock`` so a
thread and a task on the same key exclude each other: threads block on it,
tasks try it without blocking and otherwise wait on a future that the
releaser wakes (from any thread, via ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque

__all__ = ["KeyLock", "LockRegistry", "held"]

#: The (cache id, key) pairs whose scope this thread or task holds. A nested
#: scope, or a set/delete, on a held key would deadlock, so it raises
#: instead; a flush writes a held key without taking its lock again.
held: contextvars.ContextVar[tuple[tuple[int, str], ...]] = contextvars.ContextVar(
    "tiercache_held", default=()
)


class KeyLock:
    __slots__ = ("_lock", "_waiters", "acquire", "users")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: Scopes holding or waiting for this lock (guarded by the registry).
        self.users = 0
        # Bound once: the sync paths call the C lock with no Python frame.
        self.acquire = self._lock.acquire

    def try_acquire(self) -> bool:
        return self._lock.acquire(blocking=False)

    async def aacquire(self) -> None:
        if self._lock.acquire(blocking=False):
            return
        loop = asyncio.get_running_loop()
        while True:
            # Register before retrying, so a release between the failed try
            # and the await cannot be missed.
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            if self._lock.acquire(blocking=False):
                self._discard(fut)
                return
            try:
                await fut
            except BaseException:
                self._discard(fut)
                if fut.done() and not fut.cancelled():
                    # We were woken and then cancelled: pass the wake-up on.
                    self._wake_one()
                raise
            if self._lock.acquire(blocking=False):
                return

    def _discard(self, fut: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(fut)
        except ValueError:
            pass

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if fut.done():
                continue
            loop = fut.get_loop()
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(_set_if_pending, fut)
            return

    def release(self) -> None:
        self._lock.release()
        if self._waiters:
            self._wake_one()

    def locked(self) -> bool:
        return self._lock.locked()


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class LockRegistry:
    """Hands out the :class:`KeyLock` of a key and forgets unused ones.

    >>> r = LockRegistry(); lock = r.checkout("k"); lock.acquire()
    >>> lock.release(); r.checkin("k", lock); r.unused()
    1
    >>> r.sweep_locked(); len(r)
    0
    """

    #: Locks of unused keys are swept once the registry holds more than
    #: this many (or twice the keys in use): a hot key keeps its lock
    #: between scopes, and 100,000 distinct keys leave at most this many.
    SWEEP_AT = 1024

    def __init__(self, guard: threading.Lock | None = None) -> None:
        self._locks: dict[str, KeyLock] = {}
        #: The cache passes its memory lock, so a scope's hot path checks a
        #: lock out and looks its entry up in one critical section.
        self.guard = guard or threading.Lock()
        self._sweep_at = self.SWEEP_AT

    def checkout(self, key: str) -> KeyLock:
        """The lock of ``key``, counted as in use until :meth:`checkin`."""
        guard = self.guard
        guard.acquire()
        lock = self.checkout_locked(key)
        guard.release()
        return lock

    def checkout_locked(self, key: str) -> KeyLock:
        """:meth:`checkout` for a caller that holds :attr:`guard`."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = KeyLock()
        lock.users += 1
        return lock

    def checkin(self, key: str, lock: KeyLock) -> None:
        guard = self.guard
        guard.acquire()
        lock.users -= 1
        if len(self._locks) > self._sweep_at:
            self.sweep_locked()
        guard.release()

    def sweep_locked(self) -> None:
        """Forget every lock nobody holds or waits for (guard held)."""
        locks = self._locks
        for key in [k for k, lock in locks.items() if not lock.users]:
            del locks[key]
        self._sweep_at = max(self.SWEEP_AT, 2 * len(locks))

    def unused(self) -> int:
        """How many registered locks nobody holds or waits for."""
        return sum(1 for lock in self._locks.values() if not lock.users)

    def __len__(self) -> int:
        return len(self._locks)
