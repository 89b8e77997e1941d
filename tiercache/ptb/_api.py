"""The few cache calls the adapter makes besides scopes, in one place.

Every call the PTB adapter makes to a :class:`~tiercache.TieredCache`
outside ``cache.session(key)`` goes through here, all of it public API.
"""

from __future__ import annotations

from typing import Any

from .. import MISSING, TieredCache

__all__ = ["get_copy", "get_live", "get_many", "keys"]


async def get_live(cache: TieredCache, key: str) -> Any:
    """The cached value of ``key`` read-only (a memory hit copies
    nothing), or ``MISSING``."""
    return await cache.aget(key, MISSING)


async def get_copy(cache: TieredCache, key: str) -> Any:
    """A detached plain deep copy of ``key``'s value, or ``MISSING``."""
    return await cache.aget_copy(key, MISSING)


async def get_many(cache: TieredCache, keys: list[str]) -> dict[str, Any]:
    """Plain copies of the values of those ``keys`` that exist."""
    return await cache.aget_many(keys, copy=True)


async def keys(cache: TieredCache, pattern: str) -> list[str]:
    """The cache's keys matching the Redis-style glob ``pattern``."""
    return await cache.akeys(pattern)
