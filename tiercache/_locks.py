"""Per-key locks shared by threads and asyncio tasks, forgotten when unused.

::

    take(key, me)  ── under the guard ──> free?  owner = me        (taken)
                                          mine?  NestedScopeError  (would deadlock)
                                          busy:  queue a waiter, wait outside
    release(lock)  ── under the guard ──> owner = None, wake the first waiter;
                                          it takes the lock if it is still free

One :class:`KeyLock` per key that some scope holds or waits for; the
registry forgets locks nobody holds or waits for once it holds more than
:attr:`LockRegistry.SWEEP_AT`, so 100,000 distinct keys leave no 100,000
locks behind. A lock is not a ``threading.Lock`` but an *owner* field set
under the guard (the cache's memory lock): threads and tasks exclude each
other alike, the owner can be compared (a nested scope on a held key is an
error, not a deadlock; a flush inside a scope writes its own key), and a
scope may end in another task or thread than the one that opened it.

Interrupt safety. A ``KeyboardInterrupt`` (or any exception a signal
handler raises) can land at any call, including the very start of a
Python function, but never inside a run of plain attribute stores. So:

* every take is ``with guard:`` (the guard's ``__enter__`` is C, and
  ``with`` releases it whatever happens) around stores only: the owner and
  the taker's record of the lock are set together;
* every release frees the lock inline, in the ``finally`` of its taker,
  with :func:`free` spelled out as stores (a call to a helper could be
  skipped), before the bookkeeping that may be skipped: clearing the
  record, waking a waiter;
* a holder dropped while still holding (its release never ran) is found
  out by whoever wants the lock next: the lock is then the only thing that
  still refers to it (:func:`abandoned`), and it is freed;
* a wake-up lost to an interrupt costs a waiter at most :data:`POLL`
  seconds: waiters re-check on their own.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from sys import getrefcount
from typing import Any

from ._exceptions import TierCacheError

__all__ = ["POLL", "Hold", "KeyLock", "LockRegistry", "NestedScopeError", "abandoned", "owner"]

#: How often (seconds) a waiter re-checks a lock on its own, in case the
#: wake-up it was due was lost (the releaser was interrupted).
POLL = 0.05

_get_running_loop = asyncio._get_running_loop
_get_ident = threading.get_ident


def _pick_current_task() -> Any:
    """``asyncio.current_task(loop)``, or the dict lookup it is when it is
    the pure-Python function over ``asyncio.tasks._current_tasks`` (3.11):
    one call fewer per scope."""
    fn = asyncio.tasks.current_task
    code = getattr(fn, "__code__", None)
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if (
        fn is asyncio.current_task
        and code is not None
        and "_current_tasks" in code.co_names
        and type(table) is dict
    ):
        return table.get
    return asyncio.current_task


#: ``asyncio.current_task(loop)``.
task_of = _pick_current_task()

#: thread ident -> the asyncio loop last seen running in that thread.
#: ``asyncio._get_running_loop()`` checks ``getpid()`` (a system call, for
#: fork safety) each time a loop runs; a loop's own ``_thread_id`` says the
#: same for free: it is the thread running it, and None once it stops. Only
#: loops that have one are kept (uvloop's is not visible: it is asked each
#: time). Cleared in a forked child (:func:`after_fork`).
thread_loops: dict[int, Any] = {}


def owner() -> Any:
    """Who is asking: the running task, or else the thread.

    A sync scope opened inside a coroutine belongs to that task too, so a
    nested scope on one key is recognised whichever of ``with`` and ``async
    with`` each uses.
    """
    ident = _get_ident()
    loop = thread_loops.get(ident)
    if loop is None or loop._thread_id != ident:
        if loop is not None:
            del thread_loops[ident]  # it stopped: ask asyncio
        loop = _get_running_loop()
        if loop is None:
            return ident
        if getattr(loop, "_thread_id", None) == ident:
            thread_loops[ident] = loop
    task = task_of(loop)
    return ident if task is None else task


def after_fork() -> None:
    """In a forked child: no loop runs in it until one is started there."""
    thread_loops.clear()


class NestedScopeError(TierCacheError):
    """A key's lock was asked for by the context that holds it."""


class _Waiter:
    """One thread or task waiting for a lock."""

    __slots__ = ("future", "loop", "sem")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        if loop is None:
            self.sem: threading.Lock | None = threading.Lock()
            self.sem.acquire()
            self.future: asyncio.Future[None] | None = None
        else:
            self.sem = None
            self.future = loop.create_future()

    def wake(self) -> None:
        if self.sem is not None:
            try:
                self.sem.release()
            except RuntimeError:
                pass  # already woken
            return
        loop, fut = self.loop, self.future
        if loop is not None and fut is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(_set_if_pending, fut)
            except RuntimeError:
                pass  # the loop closed meanwhile


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class KeyLock:
    """The lock of one key: who holds it, and who waits."""

    __slots__ = ("holder", "owner", "waiters")

    def __init__(self) -> None:
        #: The context holding it (see :func:`owner`), or None when free.
        self.owner: Any = None
        #: The object that recorded it (a scope, a Hold): only that one's
        #: release frees it, whichever thread or task runs it.
        self.holder: Any = None
        self.waiters: deque[_Waiter] = deque()

    def __repr__(self) -> str:
        return f"<KeyLock owner={self.owner!r} waiters={len(self.waiters)}>"


def _let_go_of(lock: KeyLock) -> None:
    """Free a lock whose holder was abandoned, and the entry it pinned."""
    holder = lock.holder
    entry = getattr(holder, "_entry", None)
    if entry is not None:
        entry.pins -= 1
        holder._entry = None
    holder._key_lock = None
    lock.owner = None
    lock.holder = None


def abandoned(lock: KeyLock) -> bool:
    """Whether ``lock`` is held by a holder nothing else refers to any more
    (its release never ran: an interrupt landed on the very call, or a
    scope was entered by hand and dropped): nobody can ever release it.

    The holder a live taker holds is referred to by its frame, at least
    (CPython's reference counts; the argument is one of the two counted
    here, the lock the other)."""
    holder = lock.holder
    return holder is not None and getrefcount(holder) <= 3


class Hold:
    """Where a taker records the lock it holds (a scope is one too): the
    registry sets ``_key_lock`` in the same run of stores that makes it the
    owner, so an interrupt can never leave a lock taken and unrecorded."""

    __slots__ = ("_key_lock",)

    def __init__(self) -> None:
        self._key_lock: KeyLock | None = None


class LockRegistry:
    """Hands out the :class:`KeyLock` of a key and forgets unused ones.

    Every take records the lock in a holder (anything with a ``_key_lock``
    attribute: a :class:`Hold`, a scope); :meth:`release` takes the holder
    and does nothing when it holds nothing, so a caller writes::

        hold = Hold()
        try:
            registry.acquire(key, owner(), hold)
            ...
        finally:
            registry.release(hold)

    >>> import threading
    >>> r, hold = LockRegistry(threading.Lock()), Hold()
    >>> r.acquire("k", "me", hold); hold._key_lock.owner
    'me'
    >>> r.release(hold); hold._key_lock is None
    True
    >>> r.sweep_locked(); len(r)
    0
    """

    #: Locks of unused keys are swept once the registry holds more than
    #: this many (or twice the keys in use): a hot key keeps its lock
    #: between scopes, and 100,000 distinct keys leave at most this many.
    SWEEP_AT = 1024

    def __init__(self, guard: threading.Lock | threading.RLock) -> None:
        self._locks: dict[str, KeyLock] = {}
        #: The key -> lock map itself, for the one reader outside: a scope's
        #: hot path takes a free existing lock inline (see Scope.__enter__),
        #: exactly as :meth:`take_locked` would; anything else comes here.
        self.table = self._locks
        #: The cache passes its memory lock, so a scope's hot path takes a
        #: key's lock and looks its entry up in one critical section.
        self.guard = guard
        self._sweep_at = self.SWEEP_AT

    # -- under the guard (the caller holds it) ---------------------------------

    def take_locked(self, key: str, me: Any, holder: Any) -> bool:
        """Make ``me`` the owner of ``key``'s lock and record it in
        ``holder._key_lock``; False when another holds it. NestedScopeError when
        ``me`` holds it already."""
        lock = self._locks.get(key)
        if lock is None:
            if len(self._locks) >= self._sweep_at:
                self.sweep_locked()
            lock = KeyLock()
            self._locks[key] = lock
        held = lock.owner
        if held is not None and abandoned(lock):
            _let_go_of(lock)
            held = None
        if held is None:
            # Stores only, no call between them: atomic for signals.
            lock.owner = me
            lock.holder = holder
            holder._key_lock = lock
            return True
        if held is me or held == me:
            raise NestedScopeError(
                f"a session scope of {key!r} is already open in this context; nested scopes "
                "on one key would deadlock: use the outer session value"
            )
        return False

    def held_by(self, key: str, me: Any) -> bool:
        """Whether ``me`` holds ``key``'s lock (a plain read: only the
        holder itself can make the answer true, so no guard is needed)."""
        lock = self._locks.get(key)
        if lock is None:
            return False
        held = lock.owner
        return held is not None and (held is me or held == me)

    def release_locked(self, holder: Any) -> _Waiter | None:
        """Free the lock ``holder`` records (none: nothing to do); the
        waiter to wake, outside the guard, if any."""
        lock: KeyLock | None = holder._key_lock
        if lock is None:
            return None
        if lock.holder is holder:
            lock.owner = None
            lock.holder = None
        holder._key_lock = None
        return lock.waiters[0] if lock.waiters else None

    def sweep_locked(self) -> None:
        """Forget every lock nobody holds or waits for. Run when a new lock
        would grow the registry past its bound: the only time it grows."""
        locks = self._locks
        for key in [k for k, lock in locks.items() if lock.owner is None and not lock.waiters]:
            del locks[key]
        self._sweep_at = max(self.SWEEP_AT, 2 * len(locks))

    # -- taking and releasing --------------------------------------------------

    def try_acquire(self, key: str, me: Any, holder: Any) -> bool:
        with self.guard:
            return self.take_locked(key, me, holder)

    def acquire(self, key: str, me: Any, holder: Any) -> None:
        """Take the lock of ``key`` for ``me`` into ``holder``, waiting for
        it (threads).

        Inside a running event loop, waiting would block every task on it,
        and hang for good if the holder is one of them: that is an error
        (use ``async with``)."""
        with self.guard:
            if self.take_locked(key, me, holder):
                return
        if _get_running_loop() is not None:
            raise TierCacheError(
                f"key {key!r} is held by another task or thread, and a sync scope (or sync "
                "set/delete/update/flush) inside a coroutine would block the event loop "
                "waiting for it (for good, if a task on this loop holds it): use "
                "'async with cache.session(...)' and the a-prefixed methods in async code"
            )
        waiter = _Waiter(None)
        sem = waiter.sem
        assert sem is not None
        try:
            with self.guard:
                if self.take_locked(key, me, holder):
                    return
                self._locks[key].waiters.append(waiter)
            while True:
                sem.acquire(timeout=POLL)
                with self.guard:
                    if self.take_locked(key, me, holder):
                        return
        finally:
            self._leave(key, waiter)

    async def aacquire(self, key: str, me: Any, holder: Any) -> None:
        """:meth:`acquire` for tasks: waits without blocking the loop."""
        with self.guard:
            if self.take_locked(key, me, holder):
                return
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop)
        try:
            with self.guard:
                if self.take_locked(key, me, holder):
                    return
                self._locks[key].waiters.append(waiter)
            while True:
                fut = waiter.future
                assert fut is not None
                try:
                    await asyncio.wait_for(asyncio.shield(fut), POLL)
                except TimeoutError:
                    pass
                with self.guard:
                    if self.take_locked(key, me, holder):
                        return
                    if fut.done():
                        waiter.future = loop.create_future()
        finally:
            self._leave(key, waiter)

    def _leave(self, key: str, waiter: _Waiter) -> None:
        """A waiter is done (it took the lock, or gave up: cancelled,
        interrupted): take it off the queue; if the lock is free, wake the
        next one, so a wake-up this waiter swallowed is passed on."""
        nxt = None
        with self.guard:
            lock = self._locks.get(key)
            if lock is not None:
                try:
                    lock.waiters.remove(waiter)
                except ValueError:
                    pass
                if lock.owner is None and lock.waiters:
                    nxt = lock.waiters[0]
        if nxt is not None:
            nxt.wake()

    def release(self, holder: Any) -> None:
        """Free what ``holder`` holds, if anything, and wake a waiter."""
        with self.guard:
            waiter = self.release_locked(holder)
        if waiter is not None:
            waiter.wake()

    def held_by_others_locked(self, me: Any) -> bool:
        """Whether any key's lock is held by another context than ``me``."""
        return any(
            lock.owner is not None
            and lock.owner is not me
            and lock.owner != me
            and not abandoned(lock)
            for lock in self._locks.values()
        )

    def unused(self) -> int:
        """How many registered locks nobody holds or waits for."""
        return sum(1 for lock in self._locks.values() if lock.owner is None and not lock.waiters)

    def __len__(self) -> int:
        return len(self._locks)
