"""Closing caches when the process is told to stop (SIGTERM, SIGINT).

::

    close_on_signals(*caches) ── main thread only ──> one handler per signal:
        no running loop: signal.signal       a running loop: loop.add_signal_handler
          │ the first signal stops the program the way it would have stopped
          │ without us, the caches still open:
          │   a Python handler installed before ──> called (it decides)
          │   else SystemExit(128 + signum) (SIGINT: KeyboardInterrupt), raised
          │   in the main thread between two bytecodes, or out of the event
          │   loop between two callbacks (asyncio.run then cancels every task)
          ▼
        the program unwinds: an open scope rolls back (it was never
        acknowledged), ``finally`` blocks run, other tasks are cancelled
          ▼
        the end of the ``with`` / ``async with`` block (else interpreter exit):
        close() / aclose() every cache, waiting ``wait`` s for other threads'
        and tasks' scopes: everything acknowledged is written; then the
        handlers of before are put back
        (a signal meanwhile is ignored: it never interrupts the flush)

Why the caches are not closed inside the handler: a signal handler runs
between two bytecodes of whatever the main thread was doing, perhaps inside
the cache with its memory lock or a Redis connection pool's lock held. A
close from there could deadlock, or write a value half-way through a change.
Unwinding first releases all of it, along the path ``KeyboardInterrupt``
takes (tested at random moments).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

from ._cache import TieredCache
from ._exceptions import ConfigError, TierCacheError
from ._lifecycle import aclose_all, close_all

__all__ = ["ShutdownSignals", "close_on_signals"]

log = logging.getLogger("tiercache")

#: A handler as ``signal.getsignal`` reports it: a function, ``SIG_DFL``,
#: ``SIG_IGN``, or None (installed by C code).
Previous = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

#: The signals a container runtime, systemd or a terminal sends to stop a
#: process.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def close_on_signals(
    *caches: TieredCache,
    signals: Iterable[int] = STOP_SIGNALS,
    wait: float = 5.0,
) -> ShutdownSignals:
    """Close (flush) ``caches`` when the process gets one of ``signals``.

    Without it, SIGTERM (what ``docker stop``, systemd and Kubernetes send)
    kills a Python process on the spot: no ``finally``, no ``atexit``, and
    every change a ``WriteBehind`` cache held is lost. With it, the first
    signal stops the program the way the signal would have, but as an
    exception: ``SystemExit(128 + signum)`` (exit status 143 for SIGTERM,
    the status a shell reports for a process SIGTERM killed), and for
    SIGINT Python's own ``KeyboardInterrupt``. A Python handler that was
    installed before is called instead, and decides. The program unwinds
    (a scope it interrupts rolls back: it was never acknowledged), then
    every cache is closed: at the end of the ``with`` / ``async with``
    block (however it ends), or at interpreter exit. ``close`` waits up to
    ``wait`` real seconds for scopes other threads or tasks have open, so
    what they change is written too (5 s: well inside the 10 s ``docker
    stop`` grants before its SIGKILL). Signals that arrive after the first one, while
    the program unwinds and the caches close, are ignored: nothing can
    interrupt the flush (SIGKILL still stops the process); one that
    arrives while a block's end closes the caches is delivered after.

    Call it in the main thread (Python runs signal handlers only there).
    A plain script::

        cache = TieredCache(MemoryTier(), RedisTier(url), namespace="bot",
                            flush=WriteBehind(5.0))
        with close_on_signals(cache):
            serve_forever()

    In an asyncio program, call it inside the running loop: it uses
    ``loop.add_signal_handler``, so the signal is handled between two
    callbacks, and ``async with`` awaits ``aclose()``::

        async def main() -> None:
            async with close_on_signals(cache):
                await serve()

    Without a block it works the same and closes the caches (sync) at
    interpreter exit. A signal that was ignored (``SIG_IGN``, as a shell
    does with SIGINT for background jobs) stays ignored. Frameworks that
    handle signals themselves (aiohttp's ``run_app``, aiogram's polling)
    have shutdown hooks: close the cache there instead.

    Raises :class:`TierCacheError` outside the main thread and
    :class:`ConfigError` for a bad argument (no cache, a signal that
    cannot be caught, a negative ``wait``).
    """
    return ShutdownSignals(caches, signals, wait)


class ShutdownSignals:
    """The handlers :func:`close_on_signals` installed.

    ``signal`` is the first signal received (None until then);
    :meth:`uninstall` puts the handlers of before back, leaving the caches
    open. As a context manager (``with`` in a plain script, ``async with``
    in a running loop) its end closes the caches, then uninstalls.
    """

    def __init__(
        self, caches: tuple[TieredCache, ...], signals: Iterable[int], wait: float
    ) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise TierCacheError(
                "close_on_signals() must be called in the main thread: "
                "Python runs signal handlers only there"
            )
        if not caches or not all(isinstance(c, TieredCache) for c in caches):
            raise ConfigError(f"close_on_signals() takes one or more TieredCache, got {caches!r}")
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or not (math.isfinite(wait) and wait >= 0)
        ):
            raise ConfigError(f"wait must be a number of seconds >= 0, got {wait!r}")
        self.caches = caches
        self.wait = float(wait)
        #: The first signal received, or None.
        self.signal: int | None = None
        self._signals = _check_signals(signals)
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._previous: dict[int, Previous] = {}
        #: The caches are being closed: a signal now is only noted.
        self._closing = False
        #: A signal that arrived while a block's end closed the caches.
        self._deferred: int | None = None
        # One bound method, so uninstall() can tell whether it is still ours.
        self._handler = self._on_signal
        self._install()

    # -- installing -------------------------------------------------------------------

    def _install(self) -> None:
        loop = self._loop
        try:
            for sig in self._signals:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN:
                    continue  # ignored by choice (nohup, a background job): it stays so
                if loop is not None:
                    loop.add_signal_handler(sig, self._on_loop_signal, sig)
                else:
                    signal.signal(sig, self._handler)
                self._previous[sig] = previous
        except BaseException:
            self._restore()
            raise
        atexit.register(self._at_exit)

    def uninstall(self) -> None:
        """Put back the handlers there were before; idempotent. The caches
        are left as they are."""
        atexit.unregister(self._at_exit)
        self._restore()

    def _restore(self) -> None:
        loop = self._loop
        while self._previous:
            sig, previous = self._previous.popitem()
            if loop is not None:
                if loop.is_closed():
                    continue  # closing the loop put the defaults back
                loop.remove_signal_handler(sig)
            elif signal.getsignal(sig) != self._handler:
                continue  # someone installed theirs over ours: theirs stays
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    # -- the signal ---------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The handler for plain scripts: runs in the main thread, between
        two bytecodes of whatever it was doing."""
        if self.signal is not None:
            return  # stopping already: nothing may interrupt the unwinding or the flush
        self.signal = signum
        if self._closing:
            self._deferred = signum  # the block is closing the caches: after that
            return
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)  # chained: it decides how the program stops
            return
        raise _exit_for(signum)

    def _on_loop_signal(self, signum: int) -> None:
        """The handler for a running loop: a callback of the loop. Raising
        SystemExit or KeyboardInterrupt here ends ``run_forever``;
        ``asyncio.run`` then cancels every task."""
        self._on_signal(signum, None)

    # -- closing ------------------------------------------------------------------------

    def _close_all(self) -> None:
        self._closing = True
        if self.signal is not None:
            log.info("tiercache: %s: closing %d cache(s)", _name(self.signal), len(self.caches))
        try:  # every cache, even if one fails; then the first failure
            close_all([functools.partial(cache.close, self.wait) for cache in self.caches])
        finally:
            self.uninstall()

    async def _aclose_all(self) -> None:
        self._closing = True
        if self.signal is not None:
            log.info("tiercache: %s: closing %d cache(s)", _name(self.signal), len(self.caches))
        try:
            await aclose_all([functools.partial(cache.aclose, self.wait) for cache in self.caches])
        finally:
            self.uninstall()

    def _redeliver(self) -> None:
        """A signal that came while the block's end closed the caches goes
        to the handler of before, now back in place."""
        signum, self._deferred = self._deferred, None
        if signum is not None:
            signal.raise_signal(signum)

    def _at_exit(self) -> None:
        try:
            self._close_all()
        except Exception:
            log.exception("tiercache: closing the caches at interpreter exit failed")

    def __enter__(self) -> ShutdownSignals:
        if self._loop is not None:
            raise TierCacheError(
                "close_on_signals() was called in a running event loop: use `async with`"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_all()
        self._redeliver()

    async def __aenter__(self) -> ShutdownSignals:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._aclose_all()
        self._redeliver()


def _check_signals(signals: Iterable[int]) -> tuple[signal.Signals, ...]:
    try:
        checked = tuple(signal.Signals(s) for s in signals)
    except (TypeError, ValueError):
        raise ConfigError(f"signals must be signal numbers, got {signals!r}") from None
    if not checked:
        raise ConfigError("signals must name at least one signal")
    for s in checked:
        if s in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"signals: {s.name} cannot be caught")
    return tuple(dict.fromkeys(checked))


def _exit_for(signum: int) -> BaseException:
    """How the signal stops the program: as Python does for SIGINT, else
    the exit status a shell reports for a process the signal killed."""
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return SystemExit(128 + signum)


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
