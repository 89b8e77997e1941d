"""The core: how values move between tiers, written once and doing no I/O.

::

    load_flow(key)                         write_flow(items)
      for each persistent tier, in order:    for each persistent tier, shared
        get ─> None? next tier               (last) first, so a local tier is
        open envelope ─> corrupt? count,     never newer than the shared one:
                         log, next tier        set / set_many
        expired? next tier
      deserialize, migrate, adopt (track)
      promote the bytes into every tier
      above the hit, with the remaining TTL

Flows are generators of :class:`~tiercache._flow.Call`; the sync and async
shells in ``_cache`` drive them. Nothing here imports redis, diskcache or
asyncio.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from . import _envelope
from ._clock import Clock
from ._envelope import safe_version
from ._exceptions import (
    CorruptEntryError,
    SchemaError,
    TierError,
)
from ._fields import Assembled, fields_min_of
from ._flow import Call, Flow
from ._keys import KeyNames
from ._policy import Expiry, Quarantine, Resolver, Schema
from ._sealing import Sealing
from ._serializers import Serializer
from ._stats import TierCounters
from ._threeway import Merge3
from ._tiers._base import PersistentTier, SetItem
from ._tracking import MISSING

__all__ = ["Core", "Loaded"]

log = logging.getLogger("tiercache")

FLUSH_REASONS = (
    "exit",
    "set",
    "evict",
    "timer",
    "close",
    "explicit",
    "migrate",
    "replay",
    "repair",
)

#: How long a delete's tombstone stays in the shared tier. Past it a
#: re-created key still starts above every version it had (versions of new
#: keys come from the clock, see :meth:`Core.next_version`); the tombstone
#: covers clocks that disagree by less than this.
TOMBSTONE_SECONDS = 3600.0


@dataclass(slots=True)
class Loaded:
    """What a load found: the adopted value and its envelope's facts."""

    value: Any
    version: int
    #: On the monotonic clock (see :meth:`Core.memory_expiry`).
    expires_at: float | None
    created_ms: int
    schema_version: int
    size: int
    #: Set when migrations changed the value: it must be written once.
    migrated: bool
    #: Which persistent tier had it (0 = first) and when it was written
    #: (epoch ms): a copy from a local tier may be older than the shared one.
    tier_index: int = 0
    updated_ms: int = 0
    #: Read from the shared tier's fields layout, as stored (not migrated):
    #: in how many blocks (0: not).
    fields: int = 0


class Core(Sealing):
    """Tier order, the flows between tiers, and the cache-wide counters
    (sealing and opening bytes: :class:`~tiercache._sealing.Sealing`)."""

    def __init__(
        self,
        tiers: list[PersistentTier],
        *,
        namespace: str,
        serializer: Serializer,
        clock: Clock,
        expiry: Expiry | None,
        schema: Schema,
        max_value_bytes: int | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self.tiers = tiers
        self.quarantine = quarantine or Quarantine()
        self.counters = [TierCounters(t.name) for t in tiers]
        self.namespace = namespace
        self.names = KeyNames(namespace)
        self.prefix = self.names.prefix
        self.serializer = serializer
        #: Values this large go to the shared tier as fields (None: never).
        self.fields_min = fields_min_of(tiers[-1] if tiers else None, serializer)
        self.clock = clock
        self.expiry = expiry
        self.schema = schema
        self.max_value_bytes = max_value_bytes
        # Cache-wide counters; bumped under the cache's memory lock or, for
        # flows, by one flow at a time per key, so plain ints suffice.
        self.loads = 0
        self.promotions = 0
        self.corrupt = 0
        self.quarantined = 0
        self.conflicts = 0
        self.merges = 0
        self.conflicts_lost = 0
        self.versions_backwards = 0
        self.flushes = dict.fromkeys(FLUSH_REASONS, 0)
        self._corrupt_logged: set[tuple[str, str]] = set()
        #: Per tier: when (epoch ms) a write or delete to it last failed.
        #: A local copy written before that may be older than the shared
        #: tier's (the write that should have replaced it did not land), so
        #: it is confirmed before it is served. 0: never failed.
        self.suspect_before = [0] * len(tiers)
        #: Per tier: failing now (its failure was logged, once).
        self.failing = [False] * len(tiers)
        self.new_writer()

    # -- pure helpers ---------------------------------------------------------

    def skey(self, key: str) -> str:
        return self.prefix + key

    def quarantine_key(self, key: str) -> str:
        """Where a tier keeps the unreadable bytes of ``key``: beside the
        namespace's values (an ACL pattern on the namespace covers it),
        under a name no user key can take (see :mod:`tiercache._keys`)."""
        return self.names.quarantine(key)

    def quarantine_flow(self, key: str, index: int, data: bytes, reason: str) -> Flow[bool]:
        """Bad bytes were read from tier ``index``: move them aside (see
        :class:`~tiercache.Quarantine`), log once per key and tier; whether
        they moved (the key is absent there now)."""
        tier, counters = self.tiers[index], self.counters[index]
        skey = self.skey(key)
        keep = self.quarantine.keep
        moved, trouble = False, ""
        try:
            moved = bool(
                (
                    yield Call(
                        tier, counters, "quarantine", (skey, data, self.quarantine_key(key), keep)
                    )
                )
            )
        except TierError as exc:
            trouble = f": moving it failed ({exc})"
        if moved:
            self.quarantined += 1
            fate = (
                f"moved to {self.quarantine_key(key)!r} for {keep:g} s" if keep > 0 else "deleted"
            )
        else:
            fate = "left in place" + (trouble or " (changed meanwhile, or the tier cannot move it)")
        # Once per key and tier: a bad entry read in a hot loop must not
        # flood the log. The value itself is never logged.
        if (key, tier.name) not in self._corrupt_logged:
            if len(self._corrupt_logged) < 10_000:
                self._corrupt_logged.add((key, tier.name))
            log.warning(
                "tiercache: unreadable entry %r in the %s tier (%s); treated as a miss, %s",
                skey,
                tier.name,
                reason,
                fate,
            )
        return moved

    # -- local tiers are caches ------------------------------------------------

    def tier_flow(
        self, index: int, method: str, args: tuple[Any, ...], default: Any = None
    ) -> Flow[Any]:
        """Call tier ``index``. The shared (last) tier's failure is the
        caller's; a local tier's (a full disk, a broken file) is counted,
        logged once, and bypassed: ``default`` comes back instead, and if it
        was a write the tier's older copies are confirmed before use."""
        tier, counters = self.tiers[index], self.counters[index]
        if index == len(self.tiers) - 1:
            return (yield Call(tier, counters, method, args))
        try:
            result = yield Call(tier, counters, method, args)
        except TierError as exc:
            self.local_failed(index, method, exc)
            return default
        if self.failing[index]:
            self.failing[index] = False
            log.warning("tiercache: the %s tier works again", tier.name)
        return result

    def local_failed(self, index: int, method: str, exc: BaseException) -> None:
        """A local tier's call failed (the call is already counted)."""
        if method != "get":
            self.suspect_before[index] = int(self.clock.time() * 1000)
        if not self.failing[index]:
            self.failing[index] = True
            log.warning(
                "tiercache: the %s tier failed (%s); it is bypassed, and the %s tier "
                "serves, until it works again",
                self.tiers[index].name,
                exc,
                self.tiers[-1].name,
            )

    # -- flows ----------------------------------------------------------------

    def load_flow(self, key: str, schema: Schema | None = None) -> Flow[Loaded | None]:
        """Read through the persistent tiers; promote a hit upwards."""
        schema = schema or self.schema
        skey = self.skey(key)
        for index in range(len(self.tiers)):
            data = yield from self.tier_flow(index, "get", (skey,))
            if data is None:
                continue
            fields = data.blocks if type(data) is Assembled else 0
            if fields:
                data = bytes(data)  # promoted as plain bytes
            now = self.clock.time()
            try:
                opened = self.read(key, data, schema, now)
                if opened is None:
                    continue
                plain, env, migrated = opened
                value = self.adopt(plain)  # before promotion: bad bytes stay put
            except CorruptEntryError as exc:
                yield from self.quarantine_flow(key, index, data, str(exc))
                continue
            if env.expires_ms:
                remaining: float | None = env.expires_ms / 1000.0 - now
            else:
                remaining = self.expiry.seconds if self.sliding and self.expiry else None
            # The stored expiry is wall-clock time (every process reads it);
            # the memory copy counts down on the monotonic clock from here.
            expires_at = None if remaining is None else self.clock.monotonic() + remaining
            for upper in range(index):
                yield from self.tier_flow(upper, "set", (skey, data, remaining))
                self.promotions += 1
            self.loads += 1
            return Loaded(
                value=value,
                version=env.version,
                expires_at=expires_at,
                created_ms=env.created_ms,
                schema_version=schema.version,
                size=len(env.payload),
                migrated=migrated,
                tier_index=index,
                updated_ms=env.updated_ms,
                fields=0 if migrated or index != len(self.tiers) - 1 else fields,
            )
        return None

    def read(
        self, key: str, data: bytes, schema: Schema, now: float
    ) -> tuple[Any, _envelope.Envelope, bool] | None:
        """Open stored bytes: ``(plain value, envelope, migrated)``, or None
        for an expired entry or a delete's tombstone. Unreadable bytes raise
        (and count) :class:`CorruptEntryError`, whose message says why
        without quoting them; a newer schema raises :class:`SchemaError`."""
        env = self._open(data)
        if env.flags:
            if env.tombstone:
                return None
            raise self._unreadable(f"unknown envelope flags {env.flags:#x}")
        if env.expires_ms and env.expires_ms / 1000.0 <= now:
            return None
        if env.schema_version > schema.version:
            raise SchemaError(
                f"key {key!r} was stored with schema version {env.schema_version}, newer "
                f"than this code's {schema.version}; the stored value is left as it is"
            )
        try:
            plain = self.serializer.loads(env.payload)
        except Exception as first:
            # Bad bytes fail to decode every time. An exception that came
            # from elsewhere (a signal handler's, raised in the middle of the
            # decoder) does not come back: decoding again tells them apart,
            # so good data is never quarantined for it.
            try:
                plain = self.serializer.loads(env.payload)
            except Exception:
                # The type only: decoder messages can quote the stored bytes.
                raise self._unreadable(f"unreadable payload ({type(first).__name__})") from None
        migrated = env.schema_version < schema.version
        if migrated:
            plain = schema.migrate(plain, env.schema_version)
        return plain, env, migrated

    def read_stored_flow(
        self, key: str, skey: str, *, adopt: bool = False
    ) -> Flow[tuple[Any, int]]:
        """The value and version in the authoritative (last) tier, fresh:
        ``(MISSING, version)`` when it is absent or unreadable. ``adopt``:
        the value comes back tracked (else plain, or only checked)."""
        value, version, _ = yield from self.read_raw_flow(key, skey, adopt=adopt)
        return value, version

    def read_raw_flow(
        self, key: str, skey: str, *, adopt: bool = False, check: bool = False
    ) -> Flow[tuple[Any, int, bytes | None]]:
        """:meth:`read_stored_flow` plus the stored bytes themselves;
        ``check``: a plain value the tracker would refuse is unreadable."""
        tier = self.tiers[-1]
        raw = yield Call(tier, self.counters[-1], "get", (skey,))
        if raw is None:
            return MISSING, 0, None
        try:
            opened = self.read(key, raw, self.schema, self.clock.time())
            if opened is not None and (adopt or check):
                tracked = self.adopt(opened[0])
                if adopt:
                    opened = (tracked, *opened[1:])
        except CorruptEntryError as exc:
            if (yield from self.quarantine_flow(key, len(self.tiers) - 1, raw, str(exc))):
                return MISSING, 0, None  # moved aside: the key is absent now
            return MISSING, safe_version(raw), raw
        if opened is None:  # expired, or a delete's tombstone
            return MISSING, safe_version(raw), raw
        return opened[0], opened[1].version, raw

    def merge(
        self, key: str, base: dict[Any, Any] | None, ours: Any, theirs: Any, resolver: Resolver
    ) -> Any:
        """Three-way merge of a value this process changed (``ours``, plain)
        with the newer stored one (``theirs``, plain; ``MISSING`` if gone).

        ``base`` maps each top-level field this process changed to its value
        at the version both sides share. Paths only we changed take ours;
        paths only they changed keep theirs; nested dicts both changed merge
        key by key; a leaf both changed merges by its type (``Counter``) or
        goes to ``resolver``, *whatever the values* (see
        :mod:`tiercache._threeway`). A field we changed and changed back is
        not ours to write. ``base is None`` (``cache.set``) replaces theirs
        whole.
        """
        if base is None or theirs is MISSING:
            # A replace (cache.set), or nothing stored any more (deleted, or
            # a store that lost its data): there is nothing of theirs to keep.
            return ours
        merge = Merge3(key, resolver)
        try:
            return merge.fields(base, ours, theirs)
        finally:
            self.conflicts += merge.conflicts

    def write_flow(self, items: list[SetItem], tiers: range | None = None) -> Flow[None]:
        """Write sealed envelopes to every persistent tier (or those of
        ``tiers``), shared one first, so a local one is never newer."""
        for index in reversed(tiers if tiers is not None else range(len(self.tiers))):
            if len(items) == 1:
                yield from self.tier_flow(index, "set", items[0])
            elif items:
                yield from self.tier_flow(index, "set_many", (items,))

    def delete_flow(self, key: str, tiers: range | None = None) -> Flow[bool]:
        existed = False
        skey = self.skey(key)
        for index in reversed(tiers if tiers is not None else range(len(self.tiers))):
            existed = bool((yield from self.tier_flow(index, "delete", (skey,), False))) or existed
        return existed

    def touch_flow(self, key: str, ttl: float | None) -> Flow[bool]:
        existed = False
        skey = self.skey(key)
        for index in reversed(range(len(self.tiers))):
            existed = (
                bool((yield from self.tier_flow(index, "touch", (skey, ttl), False))) or existed
            )
        return existed
