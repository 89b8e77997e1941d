"""The protocol every persistent tier implements.

A persistent tier stores opaque envelope bytes under string keys. The cache
above it has already namespaced the key, serialized the value and sealed it
in an envelope (see ``tiercache._envelope``); a tier only moves bytes.

To add a tier of your own (SQL, S3, ...), subclass :class:`PersistentTier`
and implement the four abstract sync methods. Everything else has a correct
default: ``get_many``/``set_many`` loop, and the ``a``-prefixed async methods
run the sync ones in a worker thread (override them with native async I/O
where the backend has it, as :class:`RedisTier` does).

Contract (``tests/contract`` checks it for every tier, sync and async):

* ``get`` returns the exact bytes last ``set`` under the key, or ``None``.
* ``set(key, value, ttl)`` stores ``value``; ``ttl`` is seconds from now, or
  ``None`` for no expiry; a ``ttl <= 0`` means already expired (the key
  reads as absent). The cache also checks expiry itself (the envelope
  carries it), so a backend TTL is a garbage-collection hint and may be
  coarse, but it must never expire an entry *early*.
* ``delete`` returns whether the key existed.
* ``touch(key, ttl)`` changes only the expiry and returns whether the key
  existed; it never rewrites the value.
* Errors from the backend are raised as :class:`~tiercache.TierError` with
  the original as ``__cause__``.

Optional: ``quarantine(key, bad, to, keep)`` moves unreadable bytes aside
only if the key still holds exactly them (the default does nothing).

Optional: a tier whose backend can do it atomically sets
``supports_cas = True`` and implements ``compare_and_set`` (write only if the
stored entry version is ``expected``; ``0`` means "only if absent", and
stored bytes that are not an envelope count as absent, so the cache's
repair write can replace them). The
entry version sits at a fixed offset of the envelope
(``tiercache._envelope.VERSION_OFFSET``, unsigned 64-bit little-endian).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import ClassVar

from .._exceptions import TierError

__all__ = ["CasItem", "PersistentTier", "SetItem"]

#: One write of a batch: key, envelope bytes, ttl in seconds or None.
SetItem = tuple[str, bytes, float | None]
#: One compare-and-set of a batch: a SetItem plus the expected version.
CasItem = tuple[str, bytes, float | None, int]


class PersistentTier(abc.ABC):
    """Base class of tiers that store bytes (disk, Redis, your own).

    >>> class DictTier(PersistentTier):
    ...     name = "dict"
    ...     def __init__(self): self.d = {}
    ...     def get(self, key): return self.d.get(key)
    ...     def set(self, key, value, ttl=None): self.d[key] = value
    ...     def delete(self, key): return self.d.pop(key, None) is not None
    ...     def touch(self, key, ttl): return key in self.d
    >>> t = DictTier(); t.set("k", b"v"); t.get_many(["k", "x"])
    [b'v', None]
    """

    #: Short name used in stats and log lines ("disk", "redis", ...).
    name: ClassVar[str] = "tier"
    #: True when ``compare_and_set`` is implemented atomically.
    supports_cas: ClassVar[bool] = False
    #: True when the lease methods are implemented (strict mode).
    supports_lease: ClassVar[bool] = False
    #: True when the async methods may be called straight from the event
    #: loop without a thread hop (the sync call is fast and local).
    async_inline: ClassVar[bool] = False
    #: The largest envelope (bytes) the tier takes, once known; None: no
    #: known limit. The cache refuses bigger values at scope exit.
    max_value_size: int | None = None
    #: True when :meth:`keys` lists only live entries (no tombstones, nothing
    #: expired), so the cache need not read them to be sure.
    lists_live: ClassVar[bool] = False

    # -- sync ---------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None:
        """The stored bytes, or ``None`` when the key is absent."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """``get`` for each key, in order."""
        return [self.get(key) for key in keys]

    @abc.abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; ``ttl`` seconds from now, ``None`` for no expiry."""

    def set_many(self, items: Sequence[SetItem]) -> None:
        """``set`` for each item; tiers with batching override this."""
        for key, value, ttl in items:
            self.set(key, value, ttl)

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the key; whether it existed."""

    @abc.abstractmethod
    def touch(self, key: str, ttl: float | None) -> bool:
        """Change only the expiry; whether the key existed."""

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        """Store only if the stored entry version is ``expected`` (0: absent)."""
        raise NotImplementedError(f"{type(self).__name__} does not support compare-and-set")

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        """Move the value of ``key`` to the key ``to``, kept ``keep`` seconds
        (``0``: not kept), but only if it still is exactly ``bad``; whether
        it moved. A tier that cannot check and move in one atomic step
        returns False and changes nothing (this default): the cache then
        leaves the bad entry for the next write to replace."""
        return False

    # -- optional: leases for strict mode --------------------------------------
    #
    # A lease is a key (``lease``) holding a fencing token, a number from a
    # per-key counter (``fence``) that never hands out a token twice (the
    # counter may expire, but a new one starts above every old token); the
    # lease expires after ``ttl`` seconds, so a crashed holder blocks the key
    # only until then.

    def acquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        """Take the lease if it is free: the new fencing token, else 0."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def renew_lease(self, lease: str, token: int, ttl: float) -> bool:
        """Extend the lease if ``token`` still holds it."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def release_lease(self, lease: str, token: int) -> bool:
        """Free the lease if ``token`` still holds it."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def compare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        """``compare_and_set`` that also requires ``token`` to hold ``lease``:
        1 written, 0 version mismatch, -1 the lease is no longer ours."""
        raise NotImplementedError(f"{type(self).__name__} has no leases")

    def compare_and_set_many(self, items: Sequence[CasItem]) -> list[bool | TierError]:
        """``compare_and_set`` for each item, in order; batching tiers
        override this (one round trip for a timer flush). An item that
        failed on its own (on a cluster, its node's outage) is its own
        TierError; one that fails the whole batch raises."""
        return [self.compare_and_set(*item) for item in items]

    def keys(self, glob: str) -> list[str]:
        """The stored names (as given to :meth:`set`) matching ``glob``, a
        Redis-style glob (:func:`tiercache._keys.glob_match` says what it
        matches). Optional: :meth:`TieredCache.keys` needs it of the last
        tier. A tier may list expired entries and deletes' tombstones (the
        cache reads and skips them) unless it sets ``lists_live``."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its keys")

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Release connections and files."""

    # -- async: default to the sync methods in a worker thread ------------------

    async def aget(self, key: str) -> bytes | None:
        if self.async_inline:
            return self.get(key)
        return await asyncio.to_thread(self.get, key)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if self.async_inline:
            return self.get_many(keys)
        return await asyncio.to_thread(self.get_many, keys)

    async def aset(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if self.async_inline:
            return self.set(key, value, ttl)
        return await asyncio.to_thread(self.set, key, value, ttl)

    async def aset_many(self, items: Sequence[SetItem]) -> None:
        if self.async_inline:
            return self.set_many(items)
        return await asyncio.to_thread(self.set_many, items)

    async def adelete(self, key: str) -> bool:
        if self.async_inline:
            return self.delete(key)
        return await asyncio.to_thread(self.delete, key)

    async def atouch(self, key: str, ttl: float | None) -> bool:
        if self.async_inline:
            return self.touch(key, ttl)
        return await asyncio.to_thread(self.touch, key, ttl)

    async def acompare_and_set(
        self, key: str, value: bytes, ttl: float | None, expected: int
    ) -> bool:
        if self.async_inline:
            return self.compare_and_set(key, value, ttl, expected)
        return await asyncio.to_thread(self.compare_and_set, key, value, ttl, expected)

    async def aquarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        if self.async_inline:
            return self.quarantine(key, bad, to, keep)
        return await asyncio.to_thread(self.quarantine, key, bad, to, keep)

    async def acompare_and_set_many(self, items: Sequence[CasItem]) -> list[bool | TierError]:
        if self.async_inline:
            return self.compare_and_set_many(items)
        return await asyncio.to_thread(self.compare_and_set_many, items)

    async def aacquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        return await asyncio.to_thread(self.acquire_lease, lease, fence, ttl)

    async def arenew_lease(self, lease: str, token: int, ttl: float) -> bool:
        return await asyncio.to_thread(self.renew_lease, lease, token, ttl)

    async def arelease_lease(self, lease: str, token: int) -> bool:
        return await asyncio.to_thread(self.release_lease, lease, token)

    async def acompare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        return await asyncio.to_thread(
            self.compare_and_set_fenced, key, value, ttl, expected, lease, token
        )

    async def akeys(self, glob: str) -> list[str]:
        if self.async_inline:
            return self.keys(glob)
        return await asyncio.to_thread(self.keys, glob)

    async def aclose(self) -> None:
        self.close()
