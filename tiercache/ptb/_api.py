"""The few cache calls the adapter makes besides scopes, in one place.

Every call the PTB adapter makes to a :class:`~tiercache.TieredCache`
outside ``cache.session(key)`` goes through here, so the adapter reads
as plain public API.
"""

from __future__ import annotations

from typing import Any

from .. import MISSING, TieredCache, to_plain

__all__ = ["get_copy", "get_live", "get_many", "keys"]


async def get_live(cache: TieredCache, key: str) -> Any:
    """The cached value of ``key`` read-only (a memory hit copies
    nothing), or ``MISSING``."""
    return await cache.aget(key, MISSING)


async def get_copy(cache: TieredCache, key: str) -> Any:
    """A detached plain deep copy of ``key``'s value, or ``MISSING``."""
    value = await cache.aget(key, MISSING)
    return MISSING if value is MISSING else to_plain(value)


async def get_many(cache: TieredCache, keys: list[str]) -> dict[str, Any]:
    """Plain copies of the values of those ``keys`` that exist."""
    found: dict[str, Any] = {}
    for key in keys:
        value = await cache.aget(key, MISSING)
        if value is not MISSING:
            found[key] = to_plain(value)
    return found


async def keys(cache: TieredCache, pattern: str) -> list[str]:
    """The cache's keys matching the Redis-style glob ``pattern``."""
    listing = getattr(cache, "akeys", None)
    if listing is None:  # pragma: no cover - until the core has cache.akeys
        return []
    found: list[str] = await listing(pattern)
    return found
