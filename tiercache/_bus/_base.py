"""What the cache needs from a bus (:class:`Bus`), and what both buses share:
settings, health and counters (:class:`_BusBase`).

::

    start() ──> healthy ─── the listener loses the stream ───> unhealthy,
                  ▲         (or Redis is down at start)         unhealthy_since = now
                  └───────── reconnected and caught up ──────────────┘
    a batch read ──> _call_messages(): received += n, on_messages(batch)
    a gap        ──> _call_gap():      gaps += 1,     on_gap()
                     (a callback that raises is logged and counted in
                     ``errors``, never raised into the listener)

While its bus is unhealthy the cache revalidates or bypasses what it holds
in memory; ``on_gap`` tells it that invalidations may have been lost.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError, TierCacheError
from ._message import Invalidation, PublishItem

__all__ = ["Bus", "OnGap", "OnMessages"]

log = logging.getLogger("tiercache.bus")

OnMessages: TypeAlias = Callable[[list[Invalidation]], None]
OnGap: TypeAlias = Callable[[], None]


@runtime_checkable
class Bus(Protocol):
    """What the cache needs from a bus; :class:`RedisBus` and :class:`LocalBus`."""

    @property
    def origin(self) -> str: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def unhealthy_since(self) -> float | None: ...

    def publish(self, items: Sequence[PublishItem]) -> None: ...

    async def apublish(self, items: Sequence[PublishItem]) -> None: ...

    def start(self, on_messages: OnMessages, on_gap: OnGap) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class _BusBase:
    """Settings, health and counters shared by both buses."""

    def __init__(self, namespace: str, origin: str | None, clock: Clock | None) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"namespace must be a non-empty str, got {namespace!r}")
        if origin is None:
            origin = secrets.token_hex(6)
        elif not isinstance(origin, str) or not 0 < len(origin) <= 64:
            raise ConfigError(f"origin must be a str of 1..64 characters, got {origin!r}")
        self._namespace = namespace
        self._origin = origin
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._healthy = False
        self._unhealthy_since: float | None = None
        self._last_id: str | None = None
        self._started = False
        self._closed = False
        self._received = self._published = self._gaps = self._reconnects = self._errors = 0

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def origin(self) -> str:
        """This bus's id on the wire; its own messages are not delivered back."""
        return self._origin

    @property
    def healthy(self) -> bool:
        """True while the listener is connected and caught up (False before start)."""
        return self._healthy

    @property
    def unhealthy_since(self) -> float | None:
        """``clock.monotonic()`` when the listener lost the stream, else None."""
        return self._unhealthy_since

    @property
    def last_id(self) -> str | None:
        """The id of the last stream entry read; None before the first sync."""
        return self._last_id

    @property
    def received(self) -> int:
        """Messages delivered to ``on_messages`` (others' only)."""
        return self._received

    @property
    def published(self) -> int:
        return self._published

    @property
    def gaps(self) -> int:
        """Times ``on_gap`` was called."""
        return self._gaps

    @property
    def reconnects(self) -> int:
        """Recoveries after a lost connection."""
        return self._reconnects

    @property
    def errors(self) -> int:
        """Connection errors, malformed entries and callbacks that raised."""
        return self._errors

    def stats(self) -> dict[str, Any]:
        """A snapshot: health, position and counters, as plain values."""
        return {
            "namespace": self._namespace,
            "origin": self._origin,
            "healthy": self._healthy,
            "unhealthy_since": self._unhealthy_since,
            "last_id": self._last_id,
            "received": self._received,
            "published": self._published,
            "gaps": self._gaps,
            "reconnects": self._reconnects,
            "errors": self._errors,
        }

    def _count_published(self, n: int) -> None:
        with self._lock:  # publish runs on any thread
            self._published += n

    def _mark_unhealthy(self) -> None:
        if self._unhealthy_since is None:
            self._unhealthy_since = self._clock.monotonic()
        self._healthy = False

    def _mark_healthy(self) -> None:
        self._healthy = True
        self._unhealthy_since = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._origin = secrets.token_hex(6)
        self._healthy = False
        self._unhealthy_since = None

    def _claim_start(self) -> None:
        with self._lock:
            if self._closed:
                raise TierCacheError("bus is closed")
            if self._started:
                raise TierCacheError("bus already started")
            self._started = True

    def _call_gap(self, on_gap: OnGap, reason: str) -> None:
        self._gaps += 1
        log.warning("bus %s: invalidation gap (%s); revalidating", self._namespace, reason)
        try:
            on_gap()
        except Exception:
            self._errors += 1
            log.exception("bus %s: on_gap raised", self._namespace)

    def _call_messages(self, on_messages: OnMessages, batch: list[Invalidation]) -> None:
        self._received += len(batch)
        try:
            on_messages(batch)
        except Exception:
            # The entries were read; replaying them would not fix the callback.
            self._errors += 1
            log.exception("bus %s: on_messages raised", self._namespace)
