"""Fault injection: wrappers that make a tier, a bus or a serializer fail on cue.

::

    test ──faults.fail_next(1) / down() / latency(s) / drop_next(n)──> Faults
                                                                      (shared, thread-safe)
                                                                        ▲ asked on every call
    TieredCache ──get/set/...──> FaultyTier ──────(ok)──────> the wrapped PersistentTier
                │                    └─(fault)─> TierError from ConnectionError
                ├──publish──> FaultyBus ──(ok, minus dropped messages)──> the wrapped Bus
                │                    └─(fault)─> TierError from ConnectionError
                └──dumps/loads──> FaultySerializer ──(ok)──> the wrapped Serializer
                                     └─(fault)─> SerializationError / CorruptEntryError

An injected failure is raised exactly as a real backend failure reaches the
cache after a tier wrapped it, so a test exercises the same code paths as a
Redis outage would. One :class:`Faults` may be shared by several wrappers
(a whole "network" going down), or each wrapper may have its own.

Example::

    from tiercache import MemoryTier, TieredCache
    from tiercache.testing import DictTier, Faults, FaultyTier

    faults = Faults()
    cache = TieredCache(MemoryTier(), FaultyTier(DictTier(), faults), namespace="t")
    faults.down()                 # every tier call raises TierError
    faults.up()
    faults.fail_next(1)           # only the next one does
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._bus import Bus, OnGap, OnMessages, PublishItem
from ._exceptions import ConfigError, CorruptEntryError, SerializationError, TierError
from ._serializers import Serializer
from ._tiers._base import CasItem, PersistentTier, SetItem

__all__ = ["Faults", "FaultyBus", "FaultySerializer", "FaultyTier"]

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


class FaultyTier(_Gate, PersistentTier):
    """A :class:`PersistentTier` that fails when its :class:`Faults` say so.

    Every protocol method, sync and async, asks ``faults`` first and then
    delegates to ``tier`` (async methods to the wrapped tier's own async
    methods, so a native async tier stays native). An injected failure is a
    :class:`~tiercache.TierError` whose ``__cause__`` is a
    ``ConnectionError`` (or the ``exc`` given to :meth:`Faults.fail_next`),
    and the wrapped tier is not called. ``name``, ``supports_cas``,
    ``supports_lease`` and ``async_inline`` are the wrapped tier's.

    >>> from tiercache import TierError
    >>> from tiercache.testing import DictTier
    >>> faults = Faults()
    >>> tier = FaultyTier(DictTier(), faults)
    >>> tier.name, tier.supports_cas
    ('dict', True)
    >>> faults.down()
    >>> try:
    ...     tier.set("k", b"v")
    ... except TierError as exc:
    ...     print(exc)
    dict tier: set failed: ConnectionError('injected fault')
    >>> faults.up(); tier.set("k", b"v"); tier.tier.get("k")
    b'v'
    """

    def __init__(self, tier: PersistentTier, faults: Faults | None = None) -> None:
        if not isinstance(tier, PersistentTier):
            raise ConfigError(f"tier must be a PersistentTier, got {tier!r}")
        if faults is not None and not isinstance(faults, Faults):
            raise ConfigError(f"faults must be a Faults or None, got {faults!r}")
        #: The wrapped tier.
        self.tier = tier
        #: The faults this wrapper obeys.
        self.faults = faults if faults is not None else Faults()
        # The cache reads these from the instance (``tier.supports_cas``), so
        # instance attributes shadow the class defaults. Set through
        # ``__dict__``: they are ClassVars on PersistentTier, and mypy rejects
        # assigning a ClassVar on an instance.
        for attr in ("name", "supports_cas", "supports_lease", "async_inline"):
            self.__dict__[attr] = getattr(tier, attr)

    def __repr__(self) -> str:
        return f"FaultyTier({self.tier!r}, {self.faults!r})"

    def _error(self, method: str, cause: BaseException) -> BaseException:
        if isinstance(cause, TierError):
            return cause
        # The same shape as the real tiers' messages ("redis tier: get ... failed").
        err = TierError(f"{self.name} tier: {method} failed: {cause!r}")
        # Injected before the wrapped tier is called: it never ran.
        err.sent = False
        return err

    # -- sync ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        self._enter("get")
        return self.tier.get(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self._enter("get_many")
        return self.tier.get_many(keys)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._enter("set")
        self.tier.set(key, value, ttl)

    def set_many(self, items: Sequence[SetItem]) -> None:
        self._enter("set_many")
        self.tier.set_many(items)

    def delete(self, key: str) -> bool:
        self._enter("delete")
        return self.tier.delete(key)

    def touch(self, key: str, ttl: float | None) -> bool:
        self._enter("touch")
        return self.tier.touch(key, ttl)

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        self._enter("compare_and_set")
        return self.tier.compare_and_set(key, value, ttl, expected)

    def compare_and_set_many(self, items: Sequence[CasItem]) -> list[bool]:
        self._enter("compare_and_set_many")
        return self.tier.compare_and_set_many(items)

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        self._enter("quarantine")
        return self.tier.quarantine(key, bad, to, keep)

    def acquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        self._enter("acquire_lease")
        return self.tier.acquire_lease(lease, fence, ttl)

    def renew_lease(self, lease: str, token: int, ttl: float) -> bool:
        self._enter("renew_lease")
        return self.tier.renew_lease(lease, token, ttl)

    def release_lease(self, lease: str, token: int) -> bool:
        self._enter("release_lease")
        return self.tier.release_lease(lease, token)

    def compare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        self._enter("compare_and_set_fenced")
        return self.tier.compare_and_set_fenced(key, value, ttl, expected, lease, token)

    def close(self) -> None:
        self._enter("close")
        self.tier.close()

    # -- async -----------------------------------------------------------------

    async def aget(self, key: str) -> bytes | None:
        await self._aenter("get")
        return await self.tier.aget(key)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        await self._aenter("get_many")
        return await self.tier.aget_many(keys)

    async def aset(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self._aenter("set")
        await self.tier.aset(key, value, ttl)

    async def aset_many(self, items: Sequence[SetItem]) -> None:
        await self._aenter("set_many")
        await self.tier.aset_many(items)

    async def adelete(self, key: str) -> bool:
        await self._aenter("delete")
        return await self.tier.adelete(key)

    async def atouch(self, key: str, ttl: float | None) -> bool:
        await self._aenter("touch")
        return await self.tier.atouch(key, ttl)

    async def acompare_and_set(
        self, key: str, value: bytes, ttl: float | None, expected: int
    ) -> bool:
        await self._aenter("compare_and_set")
        return await self.tier.acompare_and_set(key, value, ttl, expected)

    async def acompare_and_set_many(self, items: Sequence[CasItem]) -> list[bool]:
        await self._aenter("compare_and_set_many")
        return await self.tier.acompare_and_set_many(items)

    async def aquarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        await self._aenter("quarantine")
        return await self.tier.aquarantine(key, bad, to, keep)

    async def aacquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        await self._aenter("acquire_lease")
        return await self.tier.aacquire_lease(lease, fence, ttl)

    async def arenew_lease(self, lease: str, token: int, ttl: float) -> bool:
        await self._aenter("renew_lease")
        return await self.tier.arenew_lease(lease, token, ttl)

    async def arelease_lease(self, lease: str, token: int) -> bool:
        await self._aenter("release_lease")
        return await self.tier.arelease_lease(lease, token)

    async def acompare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        await self._aenter("compare_and_set_fenced")
        return await self.tier.acompare_and_set_fenced(key, value, ttl, expected, lease, token)

    async def aclose(self) -> None:
        await self._aenter("close")
        await self.tier.aclose()


class FaultyBus(_Gate):
    """A :class:`~tiercache.Bus` whose publishes fail or lose messages on cue.

    ``publish``/``apublish`` ask ``faults`` first: a failure raises
    :class:`~tiercache.TierError` (from a ``ConnectionError``) and publishes
    nothing; otherwise each message may be dropped (:meth:`Faults.drop_next`,
    :meth:`Faults.drop_rate`) and the rest go to the wrapped bus. A publish
    whose messages were all dropped returns normally and delivers nothing,
    like a lost write the publisher never hears of. Everything else
    (``start``, ``close``, health, ``stats``, ``origin``, ``namespace``) is
    the wrapped bus's.

    >>> from tiercache import LocalBus, LocalHub
    >>> hub, got = LocalHub(), []
    >>> LocalBus(hub, namespace="t").start(on_messages=got.extend, on_gap=lambda: None)
    >>> faults = Faults()
    >>> bus = FaultyBus(LocalBus(hub, namespace="t"), faults)
    >>> faults.drop_next(1)
    >>> bus.publish([("a", "set", 1), ("b", "set", 1)]); [m.key for m in got]
    ['b']
    """

    def __init__(self, bus: Bus, faults: Faults | None = None) -> None:
        if not isinstance(bus, Bus):
            raise ConfigError(f"bus must implement Bus (RedisBus, LocalBus), got {bus!r}")
        if faults is not None and not isinstance(faults, Faults):
            raise ConfigError(f"faults must be a Faults or None, got {faults!r}")
        #: The wrapped bus.
        self.bus = bus
        #: The faults this wrapper obeys.
        self.faults = faults if faults is not None else Faults()

    def __repr__(self) -> str:
        return f"FaultyBus({self.bus!r}, {self.faults!r})"

    def _error(self, method: str, cause: BaseException) -> BaseException:
        if isinstance(cause, TierError):
            return cause
        return TierError(f"bus: {method} failed: {cause!r}")

    def _kept(self, items: Sequence[PublishItem]) -> list[PublishItem]:
        return [item for item in items if not self.faults._drop("publish")]

    @property
    def origin(self) -> str:
        return self.bus.origin

    @property
    def namespace(self) -> str:
        # Not part of the Bus protocol, but the cache checks it when present.
        ns: str = self.bus.namespace  # type: ignore[attr-defined]
        return ns

    @property
    def healthy(self) -> bool:
        return self.bus.healthy

    @property
    def unhealthy_since(self) -> float | None:
        return self.bus.unhealthy_since

    def publish(self, items: Sequence[PublishItem]) -> None:
        if not items:
            # Like the real buses: no messages, no I/O, nothing to fail.
            return self.bus.publish(items)
        self._enter("publish")
        kept = self._kept(items)
        if kept:
            self.bus.publish(kept)

    async def apublish(self, items: Sequence[PublishItem]) -> None:
        if not items:
            return await self.bus.apublish(items)
        await self._aenter("publish")
        kept = self._kept(items)
        if kept:
            await self.bus.apublish(kept)

    def start(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        self.bus.start(on_messages, on_gap)

    def close(self) -> None:
        self.bus.close()

    async def aclose(self) -> None:
        await self.bus.aclose()

    def stats(self) -> dict[str, Any]:
        return self.bus.stats()


class FaultySerializer(_Gate):
    """A :class:`~tiercache.Serializer` that fails on cue.

    An injected ``dumps`` failure raises :class:`~tiercache.SerializationError`,
    a ``loads`` failure :class:`~tiercache.CorruptEntryError` (what the cache
    counts as a corrupt entry and treats as a miss); both from a
    ``ValueError`` unless :meth:`Faults.fail_next` names another. ``id`` and
    ``name`` are the wrapped serializer's, so entries stay readable by it.

    >>> from tiercache import CorruptEntryError, MsgpackSerializer
    >>> faults = Faults(methods={"loads"})
    >>> s = FaultySerializer(MsgpackSerializer(), faults)
    >>> data = s.dumps({"a": 1}); faults.fail_next(1)
    >>> try:
    ...     s.loads(data)
    ... except CorruptEntryError as exc:
    ...     print(exc)
    msgpack: loads failed: ValueError('injected fault')
    >>> s.loads(data)
    {'a': 1}
    """

    def __init__(self, serializer: Serializer, faults: Faults | None = None) -> None:
        if not isinstance(serializer, Serializer):
            raise ConfigError(f"serializer must implement Serializer, got {serializer!r}")
        if faults is not None and not isinstance(faults, Faults):
            raise ConfigError(f"faults must be a Faults or None, got {faults!r}")
        #: The wrapped serializer.
        self.serializer = serializer
        #: The faults this wrapper obeys.
        self.faults = faults if faults is not None else Faults()
        self.id: int = serializer.id
        self.name: str = serializer.name

    def __repr__(self) -> str:
        return f"FaultySerializer({self.serializer!r}, {self.faults!r})"

    def _default_cause(self, method: str) -> type[Exception]:
        return ValueError

    def _error(self, method: str, cause: BaseException) -> BaseException:
        kind = SerializationError if method == "dumps" else CorruptEntryError
        if isinstance(cause, kind):
            return cause
        return kind(f"{self.name}: {method} failed: {cause!r}")

    def dumps(self, value: Any) -> bytes:
        self._enter("dumps")
        return self.serializer.dumps(value)

    def loads(self, data: bytes) -> Any:
        self._enter("loads")
        return self.serializer.loads(data)
