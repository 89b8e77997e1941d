"""The wrappers that fail on cue: :class:`FaultyTier`, :class:`FaultyBus` and
:class:`FaultySerializer`.

::

    FaultyTier.get, aget, ... ──_Gate──(ok)──> the wrapped tier's own method
                                  └─(fault)─> TierError, sent = False
    FaultyBus.publish, apublish ──_Gate──(ok)──> the messages not dropped ──> the bus
                                    └─(fault)─> TierError, nothing published
    FaultySerializer.dumps, loads ──_Gate──(ok)──> the wrapped serializer
                                      └─(fault)─> SerializationError, CorruptEntryError

Each obeys a :class:`Faults` (its own, or one shared with other wrappers),
and raises the error a real tier, bus or serializer would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._bus import Bus, OnGap, OnMessages, PublishItem
from ._exceptions import ConfigError, CorruptEntryError, SerializationError, TierError
from ._faultplan import Faults, _Gate
from ._serializers import Serializer
from ._tiers._base import CasItem, PersistentTier, SetItem

__all__ = ["FaultyBus", "FaultySerializer", "FaultyTier"]


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

    def compare_and_set_many(self, items: Sequence[CasItem]) -> list[bool | TierError]:
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

    async def acompare_and_set_many(self, items: Sequence[CasItem]) -> list[bool | TierError]:
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
