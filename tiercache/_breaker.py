"""The circuit breaker in front of the shared tier.

::

    call ──closed──> tier ──ok──> result
      │               ├─TierError──> open: fail fast for 0.1 s, doubling to 5 s
      │               └─TierError.saturated (no free pooled connection) ──> no change
      │
      └─open──> TierError at once ("circuit open, <method> not sent")
                 backoff over ──> the next call is the probe:
                    the last failure was fast (refused, reset) ──> inline
                    it was slow (a hung server, a timeout) ──> a background
                        probe thread; callers keep failing fast meanwhile
                 probe ok ──> closed (on_recovered() runs once)

A dead server that refuses connections costs a probe nothing, so the call
after the backoff simply goes through. A hung one costs every probe its
full socket timeout, which no handler should wait for: after a slow
failure the probing moves to a thread of its own.

A call that found this process's connection pool full and waited in vain
(``saturated``) says nothing about the server: it opens no circuit (a burst
that merely queues must not take the tier down for everyone), and closes
none either (Redis did not answer). A pool full because the server hangs
still opens it, through the timeouts of the calls that hold the connections.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from ._clock import Clock
from ._exceptions import TierError
from ._tiers._base import PersistentTier

__all__ = ["Breaker"]

log = logging.getLogger("tiercache")

#: A failure that took longer than this (real seconds) was a timeout, not
#: a refusal: probe in the background from then on.
SLOW_FAILURE = 0.25


class Breaker:
    """The shared tier behind a circuit breaker (a transparent proxy).

    Every method of the wrapped tier is passed through; a :class:`TierError`
    opens the circuit for a backoff that doubles from 0.1 s to 5 s, during
    which calls fail fast. ``stats()`` reads :attr:`degraded` and
    :attr:`down_since`. ``on_recovered`` runs once when a call succeeds
    after failures.
    """

    _PASS = frozenset({"close", "aclose"})

    def __init__(
        self,
        tier: PersistentTier,
        clock: Clock,
        on_recovered: Callable[[], None],
        probe_key: str,
    ) -> None:
        self._tier = tier
        #: What a background probe reads (absent; any answer will do): a key
        #: of the cache's namespace, so an ACL that grants those allows it.
        self._probe_key = probe_key
        self._clock = clock
        self._on_recovered = on_recovered
        self.name = tier.name
        self.supports_cas = tier.supports_cas
        self.supports_lease = tier.supports_lease
        self.async_inline = tier.async_inline
        self.failures = 0
        self.open_until = 0.0
        self.down_since: float | None = None
        #: The failure that opened the circuit: the cause of fast failures.
        self.last_error: BaseException | None = None
        #: The last failure was slow (a timeout): probes run in a thread.
        self.slow = False
        self._probe: threading.Thread | None = None
        self._lock = threading.Lock()

    def _after_fork(self) -> None:
        """In a forked child: a closed circuit, a new lock, no probe."""
        self._lock = threading.Lock()
        self.failures = 0
        self.open_until = 0.0
        self.down_since = None
        self.last_error = None
        self.slow = False
        self._probe = None
        hook = getattr(self._tier, "_after_fork", None)
        if hook is not None:
            hook()

    @property
    def degraded(self) -> bool:
        return self.down_since is not None

    def check(self, what: str) -> None:
        """Raise the fast TierError now if a call would not be sent (the
        circuit is open): lets a caller skip work that leads to one, such
        as reading the whole journal to replay it."""
        self._before(what)

    def _before(self, method: str) -> None:
        if not self.failures:
            return
        now = self._clock.monotonic()
        if now >= self.open_until and not self.slow:
            return  # the probe: this call goes through
        if now >= self.open_until:
            self._probe_in_background()
        down = now - cast(float, self.down_since)
        err = TierError(
            f"the {self.name} tier is unreachable (failing for {down:.1f} s; "
            f"circuit open, {method} not sent): {self.last_error}"
        )
        err.sent = False
        raise err from self.last_error

    def _failed(self, exc: BaseException, took: float) -> None:
        with self._lock:
            now = self._clock.monotonic()
            self.last_error = exc.__cause__ or exc
            self.failures += 1
            self.slow = took > SLOW_FAILURE
            if self.down_since is None:
                self.down_since = now
                log.warning("tiercache: the %s tier is unreachable: %s", self.name, exc)
            self.open_until = now + min(5.0, 0.1 * 2 ** (self.failures - 1))

    def _ok(self) -> None:
        if not self.failures:
            return
        with self._lock:
            if not self.failures:
                return
            down = self._clock.monotonic() - cast(float, self.down_since)
            self.failures = 0
            self.down_since = None
            self.slow = False
        log.warning("tiercache: the %s tier is reachable again after %.1f s", self.name, down)
        self._on_recovered()

    def _settle(self, exc: TierError, start: float) -> None:
        if exc.saturated:
            return  # a local queue overflowed: neither a failure nor an answer
        if exc.transient:
            self._failed(exc, time.monotonic() - start)
        else:
            self._ok()  # it answered: reachable, it only refused the command

    def _probe_in_background(self) -> None:
        with self._lock:
            if self._probe is not None and self._probe.is_alive():
                return
            # Not due again until this probe has answered (or timed out).
            self.open_until = float("inf")
            self._probe = threading.Thread(
                target=self._run_probe, name=f"tiercache-probe-{self.name}", daemon=True
            )
            self._probe.start()

    def _run_probe(self) -> None:
        start = time.monotonic()
        try:
            self._tier.get(self._probe_key)
        except Exception as exc:  # any failure keeps the circuit open
            self._failed(exc, time.monotonic() - start)
            return
        self._ok()

    def wait_for_probe(self, timeout: float | None = None) -> None:
        """Wait for a background probe in flight (tests, shutdown)."""
        probe = self._probe
        if probe is not None:
            probe.join(timeout)

    @property
    def max_value_size(self) -> int | None:
        """The wrapped tier's (read at every seal: no __getattr__ detour)."""
        return self._tier.max_value_size

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._tier, name)
        if name.startswith("_") or name in self._PASS or not callable(attr):
            return attr
        wrapped = self._wrap(name, attr)
        # Cached on the instance: __getattr__ runs only for the first call.
        setattr(self, name, wrapped)
        return wrapped

    def _wrap(self, name: str, attr: Any) -> Any:
        if asyncio.iscoroutinefunction(attr):

            async def acall(*args: Any) -> Any:
                self._before(name)
                start = time.monotonic()
                try:
                    result = await attr(*args)
                except TierError as exc:
                    self._settle(exc, start)
                    raise
                self._ok()
                return result

            return acall

        def call(*args: Any) -> Any:
            self._before(name)
            start = time.monotonic()
            try:
                result = attr(*args)
            except TierError as exc:
                self._settle(exc, start)
                raise
            self._ok()
            return result

        return call
