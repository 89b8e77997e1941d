"""What adapters and jobs ask of a cache besides one key's live value.

::

    current(key) ──────────> the value of the scope this task/thread has
                             open on key (the lock's holder): no contextvar
    get_copy(key) ─────────> get() + to_plain: detached, freely mutable
    get_many(keys) ────────> get() per key, found keys only (async: a few
                             loads at once, bounded by MANY_AT_ONCE)
    keys(pattern) ─────────> memory-resident keys + the shared (last)
                             tier's listing (PersistentTier.keys), matched
                             with one glob dialect everywhere (_keys.glob_match)
    get_versioned(key) ────> (copy, version) fresh from the shared tier
    set(..., expected_version=v) ──> _direct.DirectWrites.update_flow(expected=v)

A mixin of :class:`~tiercache.TieredCache` (it keeps the facade under its
size limit); every method here is public API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._atleast import check_version
from ._envelope import decode
from ._exceptions import ConfigError
from ._flow import Flow, arun, run
from ._keys import KeyNames, glob_match
from ._locks import owner
from ._tiers._base import PersistentTier
from ._tracking import MISSING, to_plain

if TYPE_CHECKING:
    from ._direct import DirectWrites
    from ._state import CacheState

__all__ = ["MANY_AT_ONCE", "Queries"]

#: Loads an async :meth:`Queries.aget_many` runs at once (each may be a
#: round trip; more would only queue for the connection pool).
MANY_AT_ONCE = 16

#: Stored names checked per batch when a tier's listing must be confirmed.
_CHECK_BATCH = 500


class Queries:
    """The read-side helpers of :class:`~tiercache.TieredCache`."""

    _s: CacheState
    _direct: DirectWrites

    def get(self, key: str, default: Any = None, *, at_least: int | None = None) -> Any:
        raise NotImplementedError  # TieredCache's

    async def aget(self, key: str, default: Any = None, *, at_least: int | None = None) -> Any:
        raise NotImplementedError  # TieredCache's

    # -- the open scope -------------------------------------------------------------

    def current(self, key: str, default: Any = None) -> Any:
        """The live value of the session scope this task (or, outside a
        coroutine, this thread) has open on ``key``; ``default`` when it has
        none. Changes made to it are the scope's own: written when the
        scope ends, rolled back when its body raises.

        For code that runs inside a scope but was not handed its value
        (an FSM storage called by the framework, a helper deep in a call
        chain). A task the scope's task started is another task: it sees
        ``default`` (the scope's lock is not its own either).
        """
        self._s.check_key(key)
        lock = self._s.locks.table.get(key)
        if lock is None or lock.owner is None or lock.owner != owner():
            return default
        holder = lock.holder
        value = getattr(holder, "_value", None)
        if value is None or getattr(holder, "_entry", None) is None:
            return default  # a direct write's hold, or a scope not entered yet
        return value

    # -- detached copies --------------------------------------------------------------

    def get_copy(self, key: str, default: Any = None) -> Any:
        """:meth:`get`, as a plain deep copy: a ``dict``/``list``/``set`` the
        caller may change freely (nested values too); changing it changes
        nothing stored. ``default`` itself is returned on a miss."""
        value = self.get(key, MISSING)
        return default if value is MISSING else to_plain(value)

    async def aget_copy(self, key: str, default: Any = None) -> Any:
        """Async :meth:`get_copy`."""
        value = await self.aget(key, MISSING)
        return default if value is MISSING else to_plain(value)

    # -- batches ------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str], *, copy: bool = False) -> dict[str, Any]:
        """``{key: value}`` for the keys found (a miss is left out), each as
        :meth:`get` returns it, or detached copies with ``copy=True``."""
        out: dict[str, Any] = {}
        for key in _distinct(keys):
            value = self.get(key, MISSING)
            if value is not MISSING:
                out[key] = to_plain(value) if copy else value
        return out

    async def aget_many(self, keys: Iterable[str], *, copy: bool = False) -> dict[str, Any]:
        """Async :meth:`get_many`: up to :data:`MANY_AT_ONCE` loads at once."""
        wanted = _distinct(keys)
        gate = asyncio.Semaphore(MANY_AT_ONCE)

        async def one(key: str) -> Any:
            async with gate:
                return await self.aget(key, MISSING)

        values = await asyncio.gather(*(one(k) for k in wanted))
        return {
            k: to_plain(v) if copy else v
            for k, v in zip(wanted, values, strict=True)
            if v is not MISSING
        }

    # -- listing --------------------------------------------------------------------------

    def keys(self, pattern: str = "*") -> list[str]:
        """The keys of this namespace matching ``pattern``, sorted.

        ``pattern`` is a glob in Redis's dialect, the same on every tier:
        ``*``, ``?``, ``[abc]``, ``[a-z]``, ``[^a]`` and ``\\`` to escape.
        Keys in memory (including changes not yet written) and keys in the
        shared (last) tier are listed; deleted and expired ones are not.
        The shared tier lists by scanning (Redis ``SCAN``, every master of
        a cluster; diskcache's index): it costs one pass over the tier, so
        call it for listings, not per request. A custom
        :class:`PersistentTier` needs :meth:`PersistentTier.keys`
        (ConfigError otherwise)."""
        return run(self._keys_flow(pattern))

    async def akeys(self, pattern: str = "*") -> list[str]:
        """Async :meth:`keys`."""
        return await arun(self._keys_flow(pattern))

    def _keys_flow(self, pattern: str) -> Flow[list[str]]:
        match, names, tier = self._listing(pattern)
        found = self._resident(match)
        if tier is not None:
            core = self._s.core
            glob = names.value_glob(pattern)
            stored = yield from core.tier_flow(len(core.tiers) - 1, "keys", (glob,))
            listed = _user_keys(names, stored, match, found)
            if not getattr(tier, "lists_live", False):
                listed = yield from self._confirm_flow(listed)
            found.update(listed)
        return sorted(found)

    def _listing(self, pattern: str) -> tuple[Any, KeyNames, PersistentTier | None]:
        if not isinstance(pattern, str):
            raise ConfigError(f"keys: pattern must be a str glob, got {type(pattern).__name__}")
        s = self._s
        s.check_open()
        tiers = s.core.tiers
        tier = tiers[-1] if tiers else None
        if tier is not None and not _can_list(tier):
            raise ConfigError(
                f"keys: {type(tier).__name__} cannot list its keys "
                "(implement PersistentTier.keys and akeys)"
            )
        return glob_match(pattern), s.core.names, tier

    def _resident(self, match: Any) -> set[str]:
        s = self._s
        now = s.now()
        with s.mlock:
            return {
                e.key
                for e in list(s.memory.entries())
                if e.initial is None
                and (e.expires_at is None or now < e.expires_at)
                and match(e.key)
            }

    def _confirm_flow(self, keys: list[str]) -> Flow[list[str]]:
        """The listed keys whose stored bytes are a live entry (a tier that
        cannot tell lists deletes' tombstones and expired entries too)."""
        core = self._s.core
        live: list[str] = []
        for start in range(0, len(keys), _CHECK_BATCH):
            batch = keys[start : start + _CHECK_BATCH]
            skeys = [core.skey(k) for k in batch]
            raws = yield from core.tier_flow(len(core.tiers) - 1, "get_many", (skeys,))
            now = core.clock.time()
            for key, raw in zip(batch, raws, strict=True):
                if raw is not None and _is_live(raw, now):
                    live.append(key)
        return live

    # -- a version-checked write ------------------------------------------------------------

    @staticmethod
    def _checked(expected: int | None) -> int | None:
        return None if expected is None else check_version(expected)

    def _set_flow(
        self, key: str, value: Any, ttl: float | None, expected: int | None
    ) -> Callable[[], Flow[Any]]:
        """What :meth:`TieredCache.set` runs under the key's lock."""
        d = self._direct
        if expected is None:
            return lambda: d.set_flow(key, value, ttl)
        v = check_version(expected)
        return lambda: d.update_flow(key, lambda _: value, dict, ttl, v, True)

    def get_versioned(self, key: str, default: Any = None) -> tuple[Any, int]:
        """``(copy, version)`` of ``key`` read fresh from the shared (last)
        tier: a plain copy (``default`` when absent) and the stored version
        (0 when absent). Pass the version to ``set(key, value,
        expected_version=...)`` to write only if nobody wrote since."""
        d = self._direct
        value, version = run(d.locked(key, None, lambda: d.versioned_flow(key)))
        return (default if value is MISSING else value), version

    async def aget_versioned(self, key: str, default: Any = None) -> tuple[Any, int]:
        """Async :meth:`get_versioned`."""
        d = self._direct
        value, version = await d.alocked(key, None, lambda: d.versioned_flow(key))
        return (default if value is MISSING else value), version


def _is_live(data: bytes, now: float) -> bool:
    """Whether stored bytes are an entry :meth:`Queries.get` would find:
    readable, not a delete's tombstone, not expired."""
    try:
        env = decode(bytes(data))
    except Exception:
        return False
    return not env.flags and not (env.expires_ms and env.expires_ms / 1000.0 <= now)


def _distinct(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, str):
        raise ConfigError("get_many takes an iterable of keys, not one str key")
    return list(dict.fromkeys(keys))


def _can_list(tier: PersistentTier) -> bool:
    inner = getattr(tier, "_tier", tier)  # the shared tier's circuit breaker
    return type(inner).keys is not PersistentTier.keys


def _user_keys(names: KeyNames, stored: Iterable[str], match: Any, known: set[str]) -> list[str]:
    out: list[str] = []
    for name in stored:
        key = names.key_of(name)
        if key is not None and key not in known and match(key):
            out.append(key)
    return out
