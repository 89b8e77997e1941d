"""The defaults that make the short configuration the safe one for several
processes (issue #11).

::

    TieredCache(MemoryTier(), RedisTier(url), namespace="bot")
        bus=AUTO ──> a RedisTier is the shared tier? a RedisBus on the same
                     server (its URL or clients, its pool size), this
                     namespace, owned and closed by the cache. bus=None: no
                     bus (one process only)
        max_stale=AUTO ──> any persistent tier? DEFAULT_MAX_STALE seconds:
                     no copy is served older than that, even if the bus
                     silently stops. max_stale=None: no bound
        the bus is on the tier's server ──> tier.publish_into(...): every
                     compare-and-set adds its invalidation to the bus's
                     stream in the same script (one round trip, atomic);
                     not on a cluster (the stream is in another slot): the
                     cache publishes after the write (bus.publish)

Each is opted out of explicitly, so a default is told from a choice.

    TieredCache.from_url("redis://...", namespace=...) ──> tiers_from_url():
        memory + RedisTier (+ the defaults above); "file:///dir": memory +
        DiskTier, the embedded default (no server, one host)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from ._bus import Bus, RedisBus
from ._clock import Clock
from ._exceptions import ConfigError
from ._redisclient import same_connection
from ._tiers._base import PersistentTier
from ._tiers._disk import DiskTier
from ._tiers._memory import MemoryTier
from ._tiers._redis import RedisTier

__all__ = [
    "AUTO",
    "DEFAULT_MAX_STALE",
    "default_bus",
    "default_max_stale",
    "publish_in_tier",
    "tiers_from_url",
]

#: How old (seconds) a memory copy may be served, by default, when the cache
#: has a persistent tier: the bound that holds even if invalidations stop
#: arriving (a bus that silently stops, a writer that does not publish). A
#: copy is confirmed at most once per this interval, with one version read.
DEFAULT_MAX_STALE: Final = 10.0


class _Auto:
    """The type of :data:`AUTO`."""

    _instance: _Auto | None = None

    def __new__(cls) -> _Auto:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "AUTO"

    def __reduce__(self) -> str:
        return "AUTO"


#: "Choose the safe default" for ``bus=`` and ``max_stale=``.
AUTO: Final = _Auto()


def default_bus(persistent: list[PersistentTier], namespace: str, clock: Clock) -> Bus | None:
    """A :class:`RedisBus` on the shared tier's server, when that is a
    :class:`RedisTier`; else None (nothing to share invalidations through).

    It connects as the tier does: the same URL (so TLS and credentials), or
    the same clients, and pools of the same size. The bus opens pools of
    its own for a URL: the tier's retry policy is not the bus's.
    """
    shared = persistent[-1] if persistent else None
    if not isinstance(shared, RedisTier):
        return None
    return RedisBus(
        shared.connection,
        namespace=namespace,
        clock=clock,
        async_client=shared.async_connection,
        max_connections=shared.max_connections,
        pool_timeout=shared.pool_timeout,
    )


def default_max_stale(persistent: list[PersistentTier]) -> float | None:
    return DEFAULT_MAX_STALE if persistent else None


def publish_in_tier(tier: Any, bus: Bus | None, prefix: str) -> bool:
    """Have ``tier`` publish ``bus``'s invalidations inside its writes when
    both are on one Redis server (the same URL, or clients on one pool);
    whether it does. Called again after a fork: the bus has a new origin.

    Never on a Redis Cluster: a script may only touch keys of one slot, and
    the key written and its stream are in different ones (``CROSSSLOT``).
    The cache then publishes with ``bus.publish`` after the write is
    acknowledged, as for a bus on another server: one more round trip.
    """
    if not (isinstance(tier, RedisTier) and isinstance(bus, RedisBus)):
        return False
    if tier.cluster or bus.cluster:
        return False
    if not same_connection(tier.connection, bus.connection):
        return False
    tier.publish_into(prefix, bus.stream, bus.origin, bus.maxlen)
    return True


def tiers_from_url(
    url: str, memory: MemoryTier | None, options: dict[str, Any], settings: Collection[str]
) -> tuple[list[MemoryTier | PersistentTier], dict[str, Any]]:
    """:meth:`TieredCache.from_url`: the tiers a URL names, and the options
    left for the cache (those in ``settings``; the rest go to the tier)."""
    if not isinstance(url, str):
        raise ConfigError(f"from_url needs a URL string, got {type(url).__name__}")
    if memory is not None and not isinstance(memory, MemoryTier):
        raise ConfigError(f"memory must be a MemoryTier, got {memory!r}")
    cache_options = {k: v for k, v in options.items() if k in settings}
    tier_options = {k: v for k, v in options.items() if k not in settings}
    scheme = urlsplit(url).scheme.lower()
    shared: PersistentTier
    try:
        if scheme in ("redis", "rediss", "unix") or scheme.partition("+")[0] in ("redis", "rediss"):
            # redis+cluster://, redis+sentinel://: the tier says which it takes.
            shared = RedisTier(url, **tier_options)
        elif scheme == "file":
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost") or not parts.path:
                raise ConfigError(f"a file URL names a local directory (file:///dir), got {url!r}")
            shared = DiskTier(unquote(parts.path), **tier_options)
        else:
            raise ConfigError(
                "from_url takes redis://, rediss://, unix://, redis+cluster://, "
                "redis+sentinel:// or "
                f"file:///dir, got {url!r}"
            )
    except TypeError as exc:  # an option neither the cache nor the tier takes
        raise ConfigError(f"from_url({url!r}): {exc}") from None
    return [memory or MemoryTier(), shared], cache_options
