"""The disk tier: envelope bytes in a local :mod:`diskcache` directory.

::

    DiskTier.get ──> Cache.get ──> SQLite row (value < 32 KiB, stored as a BLOB)
                                └─> file in the directory (larger values)

A directory can be shared by every process on one host: diskcache keeps its
index in SQLite (WAL mode), whose locks serialise writers across processes
while readers never wait for them. Values go in and come out as raw bytes
(diskcache's ``MODE_RAW``/``MODE_BINARY``), never pickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import diskcache

from .._envelope import peek_version
from .._exceptions import ConfigError, CorruptEntryError, TierError
from .._keys import glob_match
from ._base import PersistentTier, SetItem

__all__ = ["DiskTier"]

#: The errors a diskcache call can raise for reasons outside our control:
#: a lock held too long (``Timeout``), a broken or full database, a file
#: gone or unreadable.
_BACKEND_ERRORS = (diskcache.Timeout, sqlite3.Error, OSError)


def _error(op: str, key: str | None, exc: BaseException) -> TierError:
    where = f" {key!r}" if key is not None else ""
    err = TierError(f"disk tier: {op}{where} failed: {exc!r}")
    # Every diskcache write is one SQLite transaction: one that failed was
    # rolled back, so nothing of it landed.
    err.sent = False
    return err


@contextlib.contextmanager
def _wrapped(op: str, key: str | None = None) -> Iterator[None]:
    """Re-raise backend failures as TierError, keeping the cause."""
    try:
        yield
    except _BACKEND_ERRORS as exc:
        raise _error(op, key, exc) from exc


#: What ``get`` returns for a value someone else stored in the directory
#: that is not bytes: never an envelope, so the cache counts it unreadable.
FOREIGN = b"\x00tiercache: a value that is not bytes"


def _raw(value: bytes) -> bytes:
    # diskcache stores exactly ``bytes`` raw and pickles everything else,
    # including bytearray, memoryview and bytes subclasses; hand it bytes.
    # (Reads then return what was stored as is; a foreign non-bytes value
    # someone else put in a shared directory fails envelope decoding, which
    # the cache counts as a miss.)
    return value if type(value) is bytes else bytes(value)


class DiskTier(PersistentTier):
    """A persistent tier in a local directory, shared by processes on one host.

    ``directory`` is a path (created if missing) or an open
    :class:`diskcache.Cache`; a cache passed in stays the caller's and
    :meth:`close` leaves it open. ``size_limit`` bounds the directory in
    bytes (diskcache evicts the least recently *stored* entries beyond it;
    that policy keeps reads free of writes). ``timeout`` is how long a write
    waits for another writer's SQLite lock before failing with
    :class:`~tiercache.TierError`. ``settings`` go to :class:`diskcache.Cache`
    as they are (``sqlite_mmap_size``, ``disk_min_file_size``, ...).

    >>> import tempfile
    >>> tier = DiskTier(tempfile.mkdtemp())
    >>> tier.set("mybot:chat:42", b"\\x00envelope", ttl=60)
    >>> tier.get("mybot:chat:42"), tier.get("nope")
    (b'\\x00envelope', None)
    >>> tier.close()

    **Async.** Reads run inline on the event loop; writes hop to a worker
    thread. Measured on the dev box (2 vCPU, Python 3.11, diskcache 5.6.3,
    ``benchmarks/bench_tiers.py``), per call, medians:

    ========================  ==========  ====================
    operation                 inline      ``asyncio.to_thread``
    ========================  ==========  ====================
    get, hit (150 B)          ~9 us       ~110 us
    set (150 B)               ~68 us      ~235 us
    ========================  ==========  ====================

    A read in WAL mode never waits for a lock, so inlining it costs the loop
    ~9 us where the thread hop would cost ~110 us; a batch read of more
    than 64 keys still hops. A write is
    both slower and can wait up to ``timeout`` for another process's lock,
    so it must not run on the loop; the hop is the price of that bound.
    """

    name = "disk"
    supports_cas = True
    # Reads are inlined by the overrides below, writes are not; the flag
    # stays False so the base class's defaults (used for writes) thread.
    async_inline = False

    def __init__(
        self,
        directory: str | os.PathLike[str] | diskcache.Cache,
        *,
        size_limit: int = 2**30,
        timeout: float = 5.0,
        **settings: Any,
    ) -> None:
        if isinstance(directory, diskcache.Cache):
            # A custom Disk (JSONDisk, a compressing one) would not keep our
            # bytes as they are, and the envelope's checksum would then fail.
            if type(directory.disk) is not diskcache.Disk:
                raise ConfigError(
                    "DiskTier needs a diskcache.Cache with the default diskcache.Disk, "
                    f"got disk={type(directory.disk).__name__}"
                )
            if settings or size_limit != 2**30 or timeout != 5.0:
                raise ConfigError(
                    "size_limit, timeout and settings apply only when DiskTier opens the "
                    "directory itself; configure the diskcache.Cache you pass instead"
                )
            self._cache = directory
            self._owned = False
            return
        if not isinstance(directory, str | os.PathLike):
            raise ConfigError(
                "DiskTier directory must be a path or a diskcache.Cache, "
                f"got {type(directory).__name__}"
            )
        if isinstance(size_limit, bool) or not isinstance(size_limit, int) or size_limit <= 0:
            raise ConfigError(f"size_limit must be a positive int (bytes), got {size_limit!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if "disk" in settings:
            raise ConfigError("DiskTier always uses diskcache.Disk; do not pass disk=")
        with _wrapped("open"):
            try:
                self._cache = diskcache.Cache(
                    os.fspath(directory), timeout=timeout, size_limit=size_limit, **settings
                )
            except (TypeError, ValueError, KeyError) as exc:
                raise ConfigError(f"bad diskcache setting: {exc}") from exc
        self._owned = True

    @property
    def cache(self) -> diskcache.Cache:
        """The underlying :class:`diskcache.Cache` (for inspection and tests)."""
        return self._cache

    @property
    def directory(self) -> str:
        return str(self._cache.directory)

    def __repr__(self) -> str:
        return f"DiskTier({self.directory!r})"

    # -- sync ------------------------------------------------------------------

    # get and set use a plain try rather than _wrapped(): on a ~9 us read
    # the context manager alone cost 2 us.

    def get(self, key: str) -> bytes | None:
        try:
            value = self._cache.get(key)
        except _BACKEND_ERRORS as exc:
            raise _error("get", key, exc) from exc
        # We only put bytes in (see _raw); anything else was put there by
        # someone else sharing the directory.
        return value if value is None or type(value) is bytes else FOREIGN

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        get = self._cache.get
        try:
            values = [get(key) for key in keys]
        except _BACKEND_ERRORS as exc:
            raise _error("get_many", None, exc) from exc
        return [v if v is None or type(v) is bytes else FOREIGN for v in values]

    def keys(self, glob: str) -> list[str]:
        # diskcache reads its index in chunks: streaming, whatever its size.
        match = glob_match(glob)
        try:
            return [k for k in self._cache.iterkeys() if type(k) is str and match(k)]
        except _BACKEND_ERRORS as exc:
            raise _error("keys", None, exc) from exc

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        try:
            self._set(key, value, ttl)
        except _BACKEND_ERRORS as exc:
            raise _error("set", key, exc) from exc

    def _set(self, key: str, value: bytes, ttl: float | None) -> None:
        if ttl is not None and ttl <= 0:
            # Already expired: store nothing (diskcache would keep a dead row
            # until its next cull).
            self._cache.delete(key)
        else:
            self._cache.set(key, _raw(value), expire=ttl)

    def set_many(self, items: Sequence[SetItem]) -> None:
        if not items:
            return
        # One SQLite transaction for the batch: one lock, one commit (one
        # WAL append) instead of one per item, and all-or-nothing.
        with _wrapped("set_many"), self._cache.transact():
            for key, value, ttl in items:
                self._set(key, value, ttl)

    def delete(self, key: str) -> bool:
        with _wrapped("delete", key):
            return bool(self._cache.delete(key))

    def touch(self, key: str, ttl: float | None) -> bool:
        # Cache.touch rewrites only the row's expire_time, never the value.
        with _wrapped("touch", key):
            return bool(self._cache.touch(key, expire=ttl))

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        # BEGIN IMMEDIATE takes the write lock before the read, so no other
        # process can write between our compare and our set.
        with _wrapped("compare_and_set", key), self._cache.transact():
            current = self._cache.get(key)
            if _version(current) != expected:
                return False
            self._set(key, value, ttl)
            return True

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        # One write transaction: no other process writes between the check
        # and the move.
        with _wrapped("quarantine", key), self._cache.transact():
            current = self._cache.get(key)
            foreign = current is not None and type(current) is not bytes
            if current != bad and not (foreign and bad == FOREIGN):
                return False
            self._cache.delete(key)
            if keep > 0:
                # A foreign object is kept as diskcache stored it (pickled).
                self._cache.set(to, current, expire=keep)
            return True

    def close(self) -> None:
        """Close this thread's SQLite connection if the tier opened the cache.

        diskcache keeps one connection per thread; those of worker threads
        close when their thread ends.
        """
        if self._owned:
            self._cache.close()

    # -- async: reads inline (see the class docstring), writes threaded ----------

    async def aget(self, key: str) -> bytes | None:
        return self.get(key)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if len(keys) > 64:
            # A big batch is a big read; keep the loop free for it.
            return await asyncio.to_thread(self.get_many, keys)
        return self.get_many(keys)


def _version(current: bytes | None) -> int:
    """The stored entry version; 0 for absent or unreadable bytes."""
    if current is None:
        return 0
    try:
        return peek_version(current)
    except CorruptEntryError:
        # Unreadable bytes are a miss to the cache, which then writes with
        # expected=0; treating them as absent lets that write repair the key.
        return 0
