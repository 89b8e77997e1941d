"""Checking a cache's settings, once, before anything is built.

::

    TieredCache(*tiers, namespace=..., ...) ──> check_settings() ──> Settings
        each setting checked against its type and range: a ConfigError
        names the setting and what it got; defaults filled in (msgpack,
        WriteThrough, Expiry(ttl), and the safe defaults of
        tiercache._defaults: a bus on the shared Redis, max_stale)

Kept apart from the facade so the constructor reads as what it builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._bus import Bus
from ._clock import Clock
from ._defaults import _Auto, default_bus, default_max_stale
from ._exceptions import ConfigError
from ._journal import Journal
from ._keys import check_namespace
from ._policy import Expiry, FlushPolicy, Lease, Quarantine, WriteThrough
from ._serializers import MsgpackSerializer, Serializer
from ._tiers._base import PersistentTier
from ._tiers._memory import MemoryTier

__all__ = ["Settings", "check_settings"]


@dataclass(frozen=True)
class Settings:
    """What :func:`check_settings` fills in: the memory tier, the
    persistent tiers (in order), the serializer, the flush policy, the
    expiry, the bus and the staleness bound."""

    memory: MemoryTier
    persistent: list[PersistentTier]
    serializer: Serializer
    flush: FlushPolicy
    expiry: Expiry | None
    #: The bus and the staleness bound, defaults chosen (tiercache._defaults).
    bus: Bus | None
    max_stale: float | None


def check_settings(
    tiers: tuple[Any, ...],
    *,
    namespace: str,
    serializer: Serializer | None,
    flush: FlushPolicy | None,
    ttl: float | Expiry | None,
    conflict: Any,
    lease: Lease | None,
    bus: Bus | _Auto | None,
    max_stale: float | _Auto | None,
    clock: Clock,
    max_value_bytes: int | None,
    journal: Journal | None,
    max_key_length: int,
    corrupt: Quarantine | None,
) -> Settings:
    """Check every :class:`~tiercache.TieredCache` setting (ConfigError
    names the first bad one) and fill in the defaults."""
    if not tiers or not isinstance(tiers[0], MemoryTier):
        raise ConfigError("the first tier must be a MemoryTier (tiers run fastest first)")
    persistent: list[PersistentTier] = []
    for t in tiers[1:]:
        if not isinstance(t, PersistentTier):
            raise ConfigError(f"tiers after the first must be PersistentTier instances, got {t!r}")
        persistent.append(t)
    check_namespace(namespace)
    if isinstance(max_stale, _Auto):
        max_stale = default_max_stale(persistent)
    if serializer is None:
        serializer = MsgpackSerializer()
    elif not isinstance(serializer, Serializer):
        raise ConfigError(f"serializer must implement Serializer, got {serializer!r}")
    flush = flush if flush is not None else WriteThrough()
    if not isinstance(flush, FlushPolicy):
        raise ConfigError(f"flush must be WriteThrough() or WriteBehind(...), got {flush!r}")
    if ttl is None or isinstance(ttl, Expiry):
        expiry = ttl
    else:
        expiry = Expiry(ttl)
    if (
        isinstance(max_key_length, bool)
        or not isinstance(max_key_length, int)
        or not (1 <= max_key_length <= 65536)
    ):
        raise ConfigError(f"max_key_length must be an int in 1..65536, got {max_key_length!r}")

    if not callable(conflict):
        raise ConfigError(f"conflict must be a resolver function, got {conflict!r}")
    if corrupt is not None and not isinstance(corrupt, Quarantine):
        raise ConfigError(f"corrupt must be a Quarantine(keep=seconds) or None, got {corrupt!r}")
    if max_value_bytes is not None and (
        isinstance(max_value_bytes, bool)
        or not isinstance(max_value_bytes, int)
        or max_value_bytes < 1
    ):
        raise ConfigError(f"max_value_bytes must be None or an int >= 1, got {max_value_bytes!r}")
    if lease is not None and not isinstance(lease, Lease):
        raise ConfigError(f"lease must be a Lease(...) or None, got {lease!r}")
    if max_stale is not None:
        Expiry(max_stale)  # validates: a number > 0
    if bus is not None and not isinstance(bus, _Auto):
        if not isinstance(bus, Bus):
            raise ConfigError(f"bus must implement Bus (RedisBus, LocalBus), got {bus!r}")
        if getattr(bus, "namespace", namespace) != namespace:
            raise ConfigError(
                f"the bus is for namespace {bus.namespace!r}, the cache for {namespace!r}"  # type: ignore[attr-defined]
            )
    if journal is not None and not isinstance(journal, Journal):
        raise ConfigError(f"journal must be a Journal(directory) or None, got {journal!r}")
    if journal is not None and not persistent:
        raise ConfigError("a journal needs a persistent tier to replay into")
    if isinstance(bus, _Auto):  # last: every check above has passed
        bus = default_bus(persistent, namespace, clock)
    return Settings(tiers[0], persistent, serializer, flush, expiry, bus, max_stale)
