"""A reference tier: bytes in a dict, expiry from an injected clock.

It is the simplest correct :class:`PersistentTier` and the yardstick the
contract suite measures the real tiers against. It is process-local and
thread-safe; use it in tests where a disk or a server would only add noise.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from .._clock import Clock, SystemClock
from .._envelope import peek_version
from .._exceptions import CorruptEntryError
from .._keys import glob_match
from ._base import PersistentTier, SetItem

__all__ = ["DictTier"]


def _version_or_zero(current: bytes | None) -> int:
    try:
        return 0 if current is None else peek_version(current)
    except CorruptEntryError:
        return 0  # unreadable bytes count as absent (see _base)


class DictTier(PersistentTier):
    """An in-process persistent tier for tests.

    >>> t = DictTier(); t.set("k", b"v"); t.get("k")
    b'v'
    """

    name = "dict"
    supports_cas = True
    supports_lease = True
    async_inline = True

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._lock = threading.Lock()

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, deadline = item
        if deadline is not None and self._clock.time() >= deadline:
            del self._data[key]
            return None
        return value

    def _deadline(self, ttl: float | None) -> float | None:
        return None if ttl is None else self._clock.time() + ttl

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._live(k) for k in keys]

    def keys(self, glob: str) -> list[str]:
        match = glob_match(glob)
        with self._lock:
            return [k for k in list(self._data) if match(k) and self._live(k) is not None]

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._lock:
            self._data[key] = (bytes(value), self._deadline(ttl))

    def set_many(self, items: Sequence[SetItem]) -> None:
        with self._lock:
            for key, value, ttl in items:
                self._data[key] = (bytes(value), self._deadline(ttl))

    def delete(self, key: str) -> bool:
        with self._lock:
            # An expired entry no longer "exists", as in every backend.
            existed = self._live(key) is not None
            self._data.pop(key, None)
            return existed

    def touch(self, key: str, ttl: float | None) -> bool:
        with self._lock:
            value = self._live(key)
            if value is None:
                return False
            self._data[key] = (value, self._deadline(ttl))
            return True

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        with self._lock:
            if _version_or_zero(self._live(key)) != expected:
                return False
            self._data[key] = (bytes(value), self._deadline(ttl))
            return True

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        with self._lock:
            if self._live(key) != bad:
                return False
            del self._data[key]
            if keep > 0:
                self._data[to] = (bytes(bad), self._deadline(keep))
            return True

    def acquire_lease(self, lease: str, fence: str, ttl: float) -> int:
        with self._lock:
            if self._live(lease) is not None:
                return 0
            # As RedisTier: a counter that lives a while past its lease and
            # starts again from the clock (microseconds), never repeating.
            last = self._live(fence)
            token = int(last) + 1 if last else int(self._clock.time() * 1_000_000)
            self._data[fence] = (str(token).encode(), self._deadline(2 * ttl + 60))
            self._data[lease] = (str(token).encode(), self._deadline(ttl))
            return token

    def renew_lease(self, lease: str, token: int, ttl: float) -> bool:
        with self._lock:
            if self._live(lease) != str(token).encode():
                return False
            self._data[lease] = (str(token).encode(), self._deadline(ttl))
            return True

    def release_lease(self, lease: str, token: int) -> bool:
        with self._lock:
            if self._live(lease) != str(token).encode():
                return False
            del self._data[lease]
            return True

    def compare_and_set_fenced(
        self, key: str, value: bytes, ttl: float | None, expected: int, lease: str, token: int
    ) -> int:
        with self._lock:
            if self._live(lease) != str(token).encode():
                return -1
            current = self._live(key)
            if _version_or_zero(current) != expected:
                return 0
            self._data[key] = (bytes(value), self._deadline(ttl))
            return 1

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
