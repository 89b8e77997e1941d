"""The fault plan: :class:`Faults`, what to inject, and :class:`_Gate`, how a
wrapper asks it.

::

    test ──fail_next, fail_rate, down, up, latency, drop_next, drop_rate, heal──>
        Faults: settings and counters, under one lock
    a wrapper's call ──> _Gate._enter(method), or await _Gate._aenter(method)
        faults._delay(method) ──> time.sleep, or await asyncio.sleep
        faults._fault(method) ──fail──> raise wrapper._error(method, cause) from cause
                              └─pass──> the wrapper delegates
    FaultyBus.publish ──> faults._drop("publish"), once per message: lose it?

The wrappers are in :mod:`tiercache._faulty`; :mod:`tiercache._faults`
re-exports both modules.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Iterable

from ._exceptions import ConfigError

__all__ = ["Faults"]

#: Every method name a wrapper asks :class:`Faults` about (sync names; the
#: async twin of each is governed by the same name).
_TIER_METHODS = frozenset(
    {
        "get",
        "get_many",
        "set",
        "set_many",
        "delete",
        "touch",
        "compare_and_set",
        "compare_and_set_many",
        "quarantine",
        "acquire_lease",
        "renew_lease",
        "release_lease",
        "compare_and_set_fenced",
        "close",
    }
)
_KNOWN_METHODS = _TIER_METHODS | {"publish", "dumps", "loads"}

#: What an injected failure looks like underneath, when the test names no
#: exception: a lost connection for tiers and buses, a bad value for serializers.
_INJECTED = "injected fault"

ExcSpec = BaseException | type[BaseException] | None


def _check_count(setting: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"{setting} must be an int >= 0, got {n!r}")
    return n


def _check_probability(setting: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ConfigError(f"{setting} must be a number in 0..1, got {p!r}")
    return float(p)


def _check_exc(exc: ExcSpec) -> ExcSpec:
    if exc is None or isinstance(exc, BaseException):
        return exc
    if isinstance(exc, type) and issubclass(exc, BaseException):
        return exc
    raise ConfigError(f"exc must be an exception instance, class or None, got {exc!r}")


class Faults:
    """What to inject, shared by the ``Faulty*`` wrappers; thread-safe.

    Every call of an affected method (``methods``, sync names: ``"set"``
    also governs ``aset``; default: every method) first sleeps for the
    :meth:`latency`, then fails if the faults are :meth:`down`, else if a
    :meth:`fail_next` count remains, else with the :meth:`fail_rate`
    probability. :meth:`drop_next` / :meth:`drop_rate` lose bus messages
    instead: the publish succeeds but delivers nothing of them.

    Settings replace the previous one of their kind (``fail_next(2)`` then
    ``fail_next(1)`` fails once); :meth:`heal` clears them all. The counters
    :attr:`calls`, :attr:`failures` and :attr:`dropped` keep counting
    across ``heal``.

    >>> from tiercache import TierError
    >>> from tiercache.testing import DictTier, FaultyTier
    >>> faults = Faults(methods={"get"})
    >>> tier = FaultyTier(DictTier(), faults)
    >>> faults.fail_next(1)
    >>> try:
    ...     tier.get("k")
    ... except TierError as exc:
    ...     print(exc, "| cause:", type(exc.__cause__).__name__)
    dict tier: get failed: ConnectionError('injected fault') | cause: ConnectionError
    >>> tier.get("k") is None, faults.calls, faults.failures
    (True, 2, 1)
    """

    def __init__(self, *, methods: Iterable[str] | None = None) -> None:
        if methods is not None:
            if isinstance(methods, str):
                # A bare "set" would silently become {"s", "e", "t"}.
                raise ConfigError(f"methods must be a collection of names, got {methods!r}")
            names = frozenset(methods)
            unknown = sorted(n for n in names if n not in _KNOWN_METHODS)
            if unknown:
                raise ConfigError(
                    f"methods must name sync methods (no 'a' prefix) out of "
                    f"{sorted(_KNOWN_METHODS)}, got {unknown}"
                )
            self._methods: frozenset[str] | None = names
        else:
            self._methods = None
        self._lock = threading.Lock()
        self._calls = self._failures = self._dropped = 0
        self._clear()

    def _clear(self) -> None:
        self._down = False
        self._fail_next = 0
        self._fail_next_exc: ExcSpec = None
        self._fail_p = 0.0
        self._fail_rng: random.Random | None = None
        self._drop_next = 0
        self._drop_p = 0.0
        self._drop_rng: random.Random | None = None
        self._latency = 0.0

    def __repr__(self) -> str:
        with self._lock:
            parts = [
                f"methods={sorted(self._methods)!r}" if self._methods is not None else "",
                "down" if self._down else "",
                f"fail_next={self._fail_next}" if self._fail_next else "",
                f"fail_rate={self._fail_p}" if self._fail_p else "",
                f"drop_next={self._drop_next}" if self._drop_next else "",
                f"drop_rate={self._drop_p}" if self._drop_p else "",
                f"latency={self._latency}" if self._latency else "",
                f"calls={self._calls}, failures={self._failures}, dropped={self._dropped}",
            ]
        return f"Faults({', '.join(p for p in parts if p)})"

    # -- settings --------------------------------------------------------------

    @property
    def methods(self) -> frozenset[str] | None:
        """The affected method names; ``None`` means every method."""
        return self._methods

    def fail_next(self, n: int, exc: ExcSpec = None) -> None:
        """The next ``n`` affected calls fail (``0`` cancels).

        ``exc`` is the backend error underneath (an instance, or a class
        made with the message ``"injected fault"``); by default a
        ``ConnectionError`` for tiers and buses, a ``ValueError`` for
        serializers. The wrapper raises its own error from it, as a real
        tier would; an ``exc`` that already is that error is raised as it is.
        """
        n = _check_count("n", n)
        exc = _check_exc(exc)
        with self._lock:
            self._fail_next, self._fail_next_exc = n, exc

    def fail_rate(self, p: float, seed: int | None = None) -> None:
        """Each affected call fails with probability ``p`` (``0`` cancels).

        With a ``seed`` the sequence of failures is the same on every run
        (a private ``random.Random``; the global one is never touched).
        """
        p = _check_probability("p", p)
        with self._lock:
            self._fail_p, self._fail_rng = p, random.Random(seed)

    def drop_next(self, n: int) -> None:
        """Lose the next ``n`` published bus messages silently (``0`` cancels)."""
        n = _check_count("n", n)
        with self._lock:
            self._drop_next = n

    def drop_rate(self, p: float, seed: int | None = None) -> None:
        """Lose each published bus message with probability ``p`` (``0`` cancels)."""
        p = _check_probability("p", p)
        with self._lock:
            self._drop_p, self._drop_rng = p, random.Random(seed)

    def latency(self, seconds: float) -> None:
        """Each affected call waits ``seconds`` first (``time.sleep`` in sync
        calls, ``await asyncio.sleep`` in async ones); ``0`` cancels."""
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise ConfigError(f"seconds must be a finite number >= 0, got {seconds!r}")
        with self._lock:
            self._latency = float(seconds)

    def down(self) -> None:
        """Every affected call fails until :meth:`up` (or :meth:`heal`)."""
        with self._lock:
            self._down = True

    def up(self) -> None:
        """Undo :meth:`down`; the other settings stay."""
        with self._lock:
            self._down = False

    def heal(self) -> None:
        """Clear every setting (the counters stay)."""
        with self._lock:
            self._clear()

    # -- observations ----------------------------------------------------------

    @property
    def is_down(self) -> bool:
        return self._down

    @property
    def calls(self) -> int:
        """Calls of affected methods seen so far (failed ones included)."""
        return self._calls

    @property
    def failures(self) -> int:
        """Calls that were made to fail."""
        return self._failures

    @property
    def dropped(self) -> int:
        """Bus messages lost on purpose."""
        return self._dropped

    def affects(self, method: str) -> bool:
        """Whether calls of ``method`` (sync name) are subject to these faults."""
        return self._methods is None or method in self._methods

    # -- for the wrappers ------------------------------------------------------

    def _delay(self, method: str) -> float:
        if not self.affects(method):
            return 0.0
        return self._latency

    def _fault(self, method: str) -> tuple[bool, ExcSpec]:
        """Count a call and decide, after its latency, whether it fails.

        Decided after the wait, not before, so a call cancelled while it
        waits consumes no ``fail_next``.
        """
        if not self.affects(method):
            return False, None
        with self._lock:
            self._calls += 1
            exc: ExcSpec = None
            if self._down:
                fail = True
            elif self._fail_next:
                self._fail_next -= 1
                fail, exc = True, self._fail_next_exc
            else:
                # The generator is consulted only here, so a seeded rate
                # gives the same pattern whatever fail_next did before.
                rng = self._fail_rng
                fail = rng is not None and self._fail_p > 0 and rng.random() < self._fail_p
            if fail:
                self._failures += 1
        return fail, exc

    def _drop(self, method: str) -> bool:
        """Whether one message of an affected publish is lost."""
        if not self.affects(method):
            return False
        with self._lock:
            if self._drop_next:
                self._drop_next -= 1
            elif not (
                self._drop_rng is not None
                and self._drop_p > 0
                and self._drop_rng.random() < self._drop_p
            ):
                return False
            self._dropped += 1
            return True


def _cause(exc: ExcSpec, default: type[Exception]) -> BaseException:
    if exc is None:
        return default(_INJECTED)
    if isinstance(exc, type):
        return exc(_INJECTED)
    return exc


class _Gate:
    """The wait-then-maybe-fail step every wrapper runs before delegating."""

    faults: Faults

    def _error(self, method: str, cause: BaseException) -> BaseException:
        raise NotImplementedError

    def _raise(self, method: str, exc: ExcSpec) -> None:
        cause = _cause(exc, self._default_cause(method))
        err = self._error(method, cause)
        if err is cause:
            raise err
        raise err from cause

    def _default_cause(self, method: str) -> type[Exception]:
        return ConnectionError

    def _enter(self, method: str) -> None:
        delay = self.faults._delay(method)
        if delay:
            time.sleep(delay)
        fail, exc = self.faults._fault(method)
        if fail:
            self._raise(method, exc)

    async def _aenter(self, method: str) -> None:
        delay = self.faults._delay(method)
        if delay:
            # Never time.sleep here: a slow backend must not block the loop.
            await asyncio.sleep(delay)
        fail, exc = self.faults._fault(method)
        if fail:
            self._raise(method, exc)
