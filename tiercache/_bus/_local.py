"""The bus within one process, for tests: :class:`LocalBus` instances that
share a :class:`LocalHub`, with fault hooks.

::

    a.publish(items) ──> hub._publish(): numbered 1, 2, ... in one global order
                           └──> every other started bus of the namespace, in a's
                                thread, before publish returns: _offer()
                                  ├─ connected ──> on_messages(batch)
                                  │   (drop_next(n): the next n are lost silently)
                                  └─ disconnect()ed ──> held until reconnect():
                                       replayed, or with gap=True dropped + on_gap()

It is the same interface as :class:`~tiercache.RedisBus` (the same item
checks, health and counters), so a test needs no Redis and no waiting.
Example::

    hub = LocalHub()
    a, b = LocalBus(hub, namespace="bot"), LocalBus(hub, namespace="bot")
    b.start(on_messages=print, on_gap=lambda: print("gap"))
    a.publish([("chat:42", "set", 7)])
    # prints [Invalidation(origin='…', key='chat:42', action='set', version=7)]
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .._clock import Clock
from .._exceptions import ConfigError, TierCacheError
from ._base import OnGap, OnMessages, _BusBase
from ._message import Invalidation, PublishItem, _fields

__all__ = ["LocalBus", "LocalHub"]


class LocalHub:
    """The shared medium of :class:`LocalBus` instances: a stand-in for Redis.

    Delivery is synchronous: ``publish`` on one bus calls every other started
    bus's ``on_messages`` (same namespace, other origin) in the publisher's
    thread before it returns, under the hub's re-entrant lock, so every bus
    sees messages in one global order and a test needs no waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._buses: list[LocalBus] = []
        self._seq = 0

    def _attach(self, bus: LocalBus) -> None:
        with self._lock:
            self._buses.append(bus)

    def _detach(self, bus: LocalBus) -> None:
        with self._lock:
            if bus in self._buses:
                self._buses.remove(bus)

    def _publish(self, sender: LocalBus, entries: list[Invalidation]) -> None:
        with self._lock:
            first = self._seq + 1
            self._seq += len(entries)
            for bus in list(self._buses):
                if bus.namespace == sender.namespace:
                    bus._offer(first, entries)


class LocalBus(_BusBase):
    """The bus interface within one process, for unit tests (see :class:`LocalHub`).

    Fault hooks simulate what Redis can do to a listener:

    * :meth:`drop_next` — lose the next ``n`` messages silently (what a
      stream prevents; useful to prove what revalidation covers);
    * :meth:`disconnect` — the listener loses its connection: unhealthy,
      messages are held (publishing still works, as with Redis, where the
      publisher has its own connection);
    * :meth:`reconnect` — recover, replaying what was held, or with
      ``gap=True`` dropping it and calling ``on_gap``.

    >>> hub = LocalHub()
    >>> a, b = LocalBus(hub, namespace="t"), LocalBus(hub, namespace="t")
    >>> got = []
    >>> b.start(on_messages=got.extend, on_gap=lambda: None)
    >>> a.publish([("k", "del", 3)]); [(m.key, m.action, m.version) for m in got]
    [('k', 'del', 3)]
    """

    def __init__(
        self,
        hub: LocalHub,
        *,
        namespace: str,
        origin: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(namespace, origin, clock)
        if not isinstance(hub, LocalHub):
            raise ConfigError(f"hub must be a LocalHub, got {type(hub).__name__}")
        self._hub = hub
        self._on_messages: OnMessages | None = None
        self._on_gap: OnGap | None = None
        self._connected = True
        self._held: list[tuple[int, Invalidation]] = []
        self._drop = 0

    def __repr__(self) -> str:
        return f"LocalBus(namespace={self._namespace!r}, origin={self._origin!r})"

    def publish(self, items: Sequence[PublishItem]) -> None:
        """Deliver to the hub's other buses now, in this thread."""
        if not items:
            return
        if self._closed:
            raise TierCacheError("bus is closed")
        for item in items:
            _fields(self._origin, item)  # the same validation as RedisBus
        entries = [Invalidation(self._origin, *item) for item in items]
        self._hub._publish(self, entries)
        self._count_published(len(entries))

    async def apublish(self, items: Sequence[PublishItem]) -> None:
        self.publish(items)

    def start(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        self._claim_start()
        self._on_messages, self._on_gap = on_messages, on_gap
        self._last_id = f"{self._hub._seq}-0"
        self._mark_healthy()
        self._hub._attach(self)

    def _offer(self, first: int, entries: list[Invalidation]) -> None:
        numbered = [(first + i, m) for i, m in enumerate(entries) if m.origin != self._origin]
        if not numbered:
            self._last_id = f"{first + len(entries) - 1}-0"
            return
        if not self._connected:
            self._held.extend(numbered)
            return
        self._deliver(numbered)

    def _deliver(self, numbered: list[tuple[int, Invalidation]]) -> None:
        if self._drop:
            lost, numbered = numbered[: self._drop], numbered[self._drop :]
            self._drop -= len(lost)
        if not numbered:
            return
        self._last_id = f"{numbered[-1][0]}-0"
        assert self._on_messages is not None
        self._call_messages(self._on_messages, [m for _, m in numbered])

    def drop_next(self, n: int) -> None:
        """Lose the next ``n`` messages addressed to this bus, without a gap."""
        with self._hub._lock:
            self._drop += n

    def disconnect(self) -> None:
        """Simulate a lost listener connection: unhealthy, messages held."""
        with self._hub._lock:
            self._connected = False
            self._errors += 1
            self._mark_unhealthy()

    def reconnect(self, gap: bool = False) -> None:
        """Recover: replay held messages, or drop them and call ``on_gap``."""
        with self._hub._lock:
            held, self._held = self._held, []
            self._connected = True
            if self._unhealthy_since is not None:
                self._reconnects += 1
            if gap:
                self._last_id = f"{self._hub._seq}-0"
                assert self._on_gap is not None
                self._call_gap(self._on_gap, "simulated")
            elif held:
                self._deliver(held)
            self._mark_healthy()

    def close(self) -> None:
        """Leave the hub; idempotent."""
        with self._lock:
            self._closed = True
        self._hub._detach(self)
        self._healthy = False

    async def aclose(self) -> None:
        self.close()
