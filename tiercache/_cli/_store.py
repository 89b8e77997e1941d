"""What the command line reads and changes: one namespace in one tier.

::

    --redis URL ──> RedisStore: a RedisTier (reads either layout, writes
                    compare-and-set) + SCAN MATCH/COUNT for listings
    --disk DIR ───> DiskStore: a DiskTier + diskcache's key iteration

Both list user keys (never internal names), read stored envelope bytes,
and hand out a :class:`~tiercache.TieredCache` over the tier for the
changes that must behave as the library's own (a delete leaves a
tombstone and tells other processes). Stored names are parsed by
:class:`tiercache._keys.KeyNames` only.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import time
from collections.abc import Iterator
from typing import Any, cast

from .._cache import TieredCache
from .._envelope import is_tombstone
from .._exceptions import ConfigError
from .._keys import KeyNames
from .._tiers._base import PersistentTier
from .._tiers._disk import DiskTier
from .._tiers._memory import MemoryTier
from .._tiers._redis import RedisTier
from ._output import CliError

__all__ = ["DiskStore", "RedisStore", "Store", "open_store"]

#: Names asked for per SCAN call, and per pipeline of checks.
SCAN_COUNT = 1000


class Store:
    """One namespace of one tier, as the commands see it."""

    tier: PersistentTier
    kind = ""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.names = KeyNames(namespace)

    def where(self) -> str:
        raise NotImplementedError

    def keys(self, pattern: str = "*") -> Iterator[str]:
        """User keys matching ``pattern`` (a glob), streamed; deleted keys'
        tombstones are not listed."""
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The stored envelope bytes of ``key`` (either layout)."""
        return self.tier.get(self.names.value(key))

    def layout(self, key: str) -> str:
        return self.kind

    def ttl(self, key: str) -> float | None:
        """Seconds the tier keeps ``key`` (None: no expiry), or -1 absent."""
        raise NotImplementedError

    def quarantined(self, pattern: str = "*") -> Iterator[str]:
        raise NotImplementedError

    def get_quarantined(self, key: str) -> bytes | None:
        return self.tier.get(self.names.quarantine(key))

    def restore(self, key: str, data: bytes) -> bool:
        """Put quarantined bytes back, only if ``key`` has no value now."""
        raise NotImplementedError

    def purge(self, key: str) -> bool:
        return self.tier.delete(self.names.quarantine(key))

    def snapshots(self) -> list[dict[str, Any]]:
        """The stats snapshots processes published (publish_stats)."""
        raise NotImplementedError

    def fresh_tier(self) -> PersistentTier:
        """Another tier object on the same store (for a cache to own)."""
        raise NotImplementedError

    def cache(self) -> TieredCache:
        """A cache over this tier alone, for library-made changes (with a
        Redis tier, its default bus tells other processes)."""
        return TieredCache(MemoryTier(maxsize=16), self.fresh_tier(), namespace=self.namespace)

    def close(self) -> None:
        self.tier.close()


def _snapshot(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1:
        return None
    # A snapshot older than three intervals is a process that is gone (a
    # tier whose expiry is coarse may still hold it).
    if time.time() - float(doc.get("at", 0)) > 3 * float(doc.get("every", 5)):
        return None
    return doc


class RedisStore(Store):
    kind = "redis"

    def __init__(self, url: str, namespace: str, *, prefix: str, password: str | None) -> None:
        super().__init__(namespace)
        self.url = url
        self.prefix = prefix
        self.password = password
        if password is not None:
            import redis

            client = redis.Redis.from_url(url, password=password)
            self.tier = RedisTier(client, prefix=prefix)
            self._client: Any = client
        else:
            self.tier = RedisTier(url, prefix=prefix)
            self._client = self.tier._client()

    def where(self) -> str:
        return repr(self.tier)

    @property
    def _redis(self) -> RedisTier:
        return cast(RedisTier, self.tier)

    def _name(self, name: str) -> str:
        """The stored name of an internal one (prefix, and a cluster's slot tag)."""
        return self._redis._key(name)

    def _scan(self, glob: str) -> Iterator[list[str]]:
        """Batches of stored names (prefix and slot tag removed) matching
        ``glob``. ``scan_iter`` walks every node of a cluster client too."""
        # On a cluster every name has a slot tag after the prefix: {8 hex}.
        tag = "{????????}" if self._redis.cluster else ""
        match = _redis_glob(self.prefix) + tag + glob
        cut = len(self.prefix) + len(tag)
        batch: list[str] = []
        for name in self._client.scan_iter(match=match, count=SCAN_COUNT):
            batch.append(name.decode("utf-8", "surrogateescape")[cut:])
            if len(batch) >= SCAN_COUNT:
                yield batch
                batch = []
        if batch:
            yield batch

    def scan_from(self, cursor: int, pattern: str = "*") -> Iterator[tuple[int, list[str]]]:
        """(next cursor, user keys) per SCAN step from ``cursor``: a
        conversion can stop and resume where it was (one server's cursor:
        a cluster resumes by skipping converted entries instead)."""
        if self._redis.cluster:
            # Each node has its own cursor: start over and skip what is done.
            for batch in self._scan(self.names.value_glob(pattern)):
                keys = [self.names.key_of(n) for n in batch]
                yield 0, [k for k in keys if k is not None]
            return
        match = _redis_glob(self.prefix) + self.names.value_glob(pattern)
        while True:
            cursor, names = self._client.scan(cursor, match=match, count=SCAN_COUNT)
            keys = [self.names.key_of(n.decode()[len(self.prefix) :]) for n in names]
            yield int(cursor), [k for k in keys if k is not None]
            if not cursor:
                return

    def keys(self, pattern: str = "*") -> Iterator[str]:
        # Deleted keys keep a tombstone for an hour: the tier's listing
        # leaves them out (the first bytes of each, one pipeline a batch).
        for batch in self._redis.live_batches(self.names.value_glob(pattern), self._client):
            for name in batch:
                key = self.names.key_of(name)
                if key is not None:
                    yield key

    def layout(self, key: str) -> str:
        kind = self._client.type(self._name(self.names.value(key)))
        return "fields" if kind == b"hash" else "string"

    def ttl(self, key: str) -> float | None:
        ms = self._client.pttl(self._name(self.names.value(key)))
        if ms == -2:
            return -1.0
        return None if ms < 0 else ms / 1000.0

    def quarantined(self, pattern: str = "*") -> Iterator[str]:
        for batch in self._scan(self.names.quarantine_glob(pattern)):
            for name in batch:
                key = self.names.quarantined_key_of(name)
                if key is not None:
                    yield key

    def restore(self, key: str, data: bytes) -> bool:
        name = self._name(self.names.value(key))
        # SET NX: never over a value written since (nor over a tombstone).
        return bool(self._client.set(name, data, nx=True))

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        for batch in self._scan(self.names.stats_glob()):
            # One slot a name on a cluster: not one MGET there.
            mget = self._client.mget_nonatomic if self._redis.cluster else self._client.mget
            for data in mget([self._name(n) for n in batch]):
                doc = _snapshot(data)
                if doc is not None:
                    out.append(doc)
        return out

    def fresh_tier(self) -> PersistentTier:
        if self.password is not None:
            import redis

            client = redis.Redis.from_url(self.url, password=self.password)
            return RedisTier(client, prefix=self.prefix)
        return RedisTier(self.url, prefix=self.prefix)

    def close(self) -> None:
        self.tier.close()
        if self.password is not None:
            self._client.close()


def _redis_glob(text: str) -> str:
    from .._keys import glob_escape

    return glob_escape(text)


class DiskStore(Store):
    kind = "disk"

    def __init__(self, directory: str, namespace: str) -> None:
        super().__init__(namespace)
        self.directory = directory
        self.disk = DiskTier(directory)
        self.tier = self.disk

    def where(self) -> str:
        return repr(self.tier)

    def _names(self, lead: str) -> Iterator[str]:
        # diskcache reads its index in chunks: streaming, whatever its size.
        for name in self.disk.cache.iterkeys():
            if isinstance(name, str) and name.startswith(lead):
                yield name

    def keys(self, pattern: str = "*") -> Iterator[str]:
        for name in self._names(self.names.prefix):
            key = self.names.key_of(name)
            if key is None or not fnmatch.fnmatchcase(key, pattern):
                continue
            data = self.tier.get(name)  # None once expired
            if data is not None and not is_tombstone(data):
                yield key

    def ttl(self, key: str) -> float | None:
        found = self.disk.cache.get(self.names.value(key), default=None, expire_time=True)
        if not isinstance(found, tuple) or found[0] is None:
            return -1.0
        expire = found[1]
        return None if expire is None else max(0.0, expire - time.time())

    def quarantined(self, pattern: str = "*") -> Iterator[str]:
        for name in self._names(self.names.internal + "quarantine\x00"):
            key = self.names.quarantined_key_of(name)
            if key is not None and fnmatch.fnmatchcase(key, pattern):
                yield key

    def restore(self, key: str, data: bytes) -> bool:
        # Cache.add stores only if the name is absent, in one transaction.
        return bool(self.disk.cache.add(self.names.value(key), data))

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        for name in self._names(self.names.internal + "stats\x00"):
            doc = _snapshot(self.tier.get(name))
            if doc is not None:
                out.append(doc)
        return out

    def fresh_tier(self) -> PersistentTier:
        return DiskTier(self.directory)


def open_store(args: argparse.Namespace) -> Store:
    if not (args.redis or args.disk):
        raise CliError("say where the namespace is stored: --redis URL or --disk DIR", 2)
    if not args.namespace:
        raise CliError("--namespace is required for this command", 2)
    if args.redis:
        try:
            return RedisStore(
                args.redis, args.namespace, prefix=args.prefix, password=args.password
            )
        except ConfigError as exc:
            raise CliError(str(exc), 2) from None
    if not os.path.isdir(args.disk):
        raise CliError(f"no directory {args.disk!r}", 1)
    return DiskStore(args.disk, args.namespace)
