"""The memory tier: live, change-tracked values in a cachetools cache.

The memory tier does no I/O and knows nothing of serialization. It holds
one :class:`Entry` per key, bounded by count (and optionally by the bytes
the values took when last serialized). An entry the cache policy pushes out
goes to ``evicted`` if it still has something to write or is in use by an
open scope, so nothing unwritten is dropped; the cache drains that area.

::

    get ──> LRU ──hit──> Entry.value (live, tracked)
             │
             └─evict──> dirty / pinned? ──yes──> evicted area (still readable)
                                        └─no──> detached and dropped
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import cachetools

from .._exceptions import ConfigError
from .._tracking import root_of

__all__ = ["UNSEALED", "Entry", "MemoryTier"]


class _Unsealed(bytes):
    """The type of :data:`UNSEALED`."""


#: ``Entry.pending`` of a write-behind change not serialized yet: the timer
#: seals it once per flush (tiercache._write), however many scopes changed
#: it meanwhile. Never written anywhere: every writer seals first.
UNSEALED: bytes = _Unsealed()


class Entry:
    """One key's state in memory.

    ``value`` is the live tracked root. ``version`` is the entry version the
    value was loaded or last written at. ``pending`` holds sealed envelope
    bytes that are not yet written to every persistent tier, and
    ``pending_since`` when they were produced (monotonic).
    """

    __slots__ = (
        "base",
        "checked_at",
        "conflict",
        "created_ms",
        "expires_at",
        "fields_at",
        "fields_blocks",
        "initial",
        "journaled",
        "key",
        "merged",
        "outdated",
        "parts",
        "parts_data",
        "parts_ok",
        "pending",
        "pending_since",
        "pins",
        "root",
        "schema_version",
        "size",
        "stored",
        "touched_at",
        "ttl",
        "uncertain",
        "value",
        "version",
    )

    def __init__(
        self,
        key: str,
        value: Any,
        *,
        version: int = 0,
        expires_at: float | None = None,
        ttl: float | None = None,
        created_ms: int = 0,
        schema_version: int = 0,
        size: int = 0,
    ) -> None:
        self.key = key
        self.value = value
        #: The value's tracking bookkeeping (None for an immutable value):
        #: scopes flip ``root.detached`` directly on their hot path.
        self.root = root_of(value, label=key)
        self.version = version
        self.expires_at = expires_at
        self.ttl = ttl
        self.created_ms = created_ms
        self.schema_version = schema_version
        self.size = size
        self.pending: bytes | None = None
        self.pending_since = 0.0
        self.pins = 0
        self.touched_at = 0.0
        #: Set on a *virtual* entry: a key no tier has, holding the unchanged
        #: ``initial()`` value a read-only scope got, so the next scope on it
        #: is a memory hit too. ``get`` treats it as a miss; the first real
        #: change makes it an ordinary entry (``initial`` back to None).
        self.initial: Callable[[], Any] | None = None
        #: The entry version the authoritative (last) tier is known to hold:
        #: the ``expected`` of the next compare-and-set write.
        self.stored = version
        #: For each top-level field changed since ``stored``: its plain value
        #: then (the merge base when a compare-and-set write loses). ``None``
        #: means "replace the whole value" (``cache.set``).
        self.base: dict[Any, Any] | None = {}
        #: The conflict resolver of the scope that last changed the entry.
        self.conflict: Callable[..., Any] | None = None
        #: When (monotonic) the value was last known to match the shared
        #: tier: loaded, written or revalidated. ``max_stale`` bounds its age.
        self.checked_at = 0.0
        #: Bytes whose write failed in a way that may still have landed (the
        #: connection died before the reply): if the shared tier holds exactly
        #: one of these, that version is our own, not another writer's.
        self.uncertain: set[bytes] | None = None
        #: Changes of this entry wait in the journal: the memory copy is
        #: newer than the store and must not be dropped for a stale one.
        self.journaled = False
        #: Another writer's newer version exists (an invalidation, a merge
        #: at replay) but the copy could not be dropped then: it was in use,
        #: or held changes of ours. Dropped when the last scope lets go of it
        #: unless a write of ours (which merges) replaced it first.
        self.outdated = False
        #: A write of this entry found another writer's version and merged
        #: with it (or kept it, on a conflict): what it wrote is not what it
        #: was sealed with.
        self.merged = False
        #: The version the shared tier holds as a hash of fields (see
        #: tiercache._fields), 0 if not known to: a write may send only
        #: the changed fields when it expects exactly that version.
        self.fields_at = 0
        #: In how many blocks it is stored there (tiercache._fields).
        self.fields_blocks = 0
        #: The value's top-level fields as serialized at the last seal that
        #: used them, and the bytes that seal made (``parts_data``): the
        #: pending bytes can be written as fields when they are those.
        self.parts: Any = None
        self.parts_data: bytes | None = None
        #: Whether ``parts`` describe the value's clean point (a seal may
        #: refresh just the fields changed since).
        self.parts_ok = False

    def __repr__(self) -> str:
        return f"<Entry {self.key!r} v{self.version} pending={self.pending is not None}>"

    def sending(self, data: bytes) -> None:
        """``data`` is about to be sent: until its outcome is handled it may
        land unseen (an interrupt, a lost reply), so it counts as possibly
        our own from now on."""
        if self.uncertain is None:
            self.uncertain = {data}
        else:
            self.uncertain.add(data)

    def not_sent(self, data: bytes) -> None:
        """``data`` surely did not land (refused, lost the race, never left)."""
        if self.uncertain is not None:
            self.uncertain.discard(data)
            if not self.uncertain:
                self.uncertain = None


def _entry_size(entry: Entry) -> int:
    # cachetools rejects a zero-size bound cleanly only when sizes are
    # positive; an entry always costs at least one unit.
    return max(1, entry.size)


def _no_op(key: str) -> None:
    return None


class MemoryTier:
    """The in-process tier of live values (cachetools).

    ``maxsize`` bounds the number of entries; ``max_bytes`` optionally also
    bounds their serialized size. ``policy`` is a cachetools cache class
    (``LRUCache`` by default; ``LFUCache``, ``FIFOCache`` and ``RRCache`` work
    too).

    >>> MemoryTier(maxsize=2).maxsize
    2
    """

    name = "memory"

    def __init__(
        self,
        maxsize: int = 10_000,
        *,
        max_bytes: int | None = None,
        policy: type[cachetools.Cache[str, Entry]] = cachetools.LRUCache,
    ) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ConfigError(f"MemoryTier maxsize must be an int >= 1, got {maxsize!r}")
        if max_bytes is not None and (
            not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
        ):
            raise ConfigError(
                f"MemoryTier max_bytes must be None or an int >= 1, got {max_bytes!r}"
            )
        if not (isinstance(policy, type) and issubclass(policy, cachetools.Cache)):
            raise ConfigError(f"MemoryTier policy must be a cachetools.Cache class, got {policy!r}")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        # An RLock, not a Lock: the hot paths release it explicitly, and an
        # RLock refuses a release by a thread that does not hold it.
        self.lock = threading.RLock()
        #: Entries pushed out that still have to be written or are in use.
        self.evicted: dict[str, Entry] = {}
        #: Keys every tier missed, with when that knowledge expires: a
        #: read-only handler on a key that does not exist must not pay a
        #: round trip to each tier on every request.
        self.absent: cachetools.LRUCache[str, float | None] = cachetools.LRUCache(maxsize)
        self.evictions = 0
        self.on_drop: Callable[[Entry], None] = lambda entry: None
        tier = self

        class _Policy(policy):  # type: ignore[valid-type,misc]
            def popitem(self) -> tuple[str, Entry]:
                key, entry = super().popitem()
                tier._evicted(key, entry)
                return key, entry

        if max_bytes is None:
            self.data: cachetools.Cache[str, Entry] = _Policy(maxsize)
        else:
            self.data = _Policy(max_bytes, getsizeof=_entry_size)
        # The memory-hit path is the hottest line of the library. For the
        # default LRU policy it reads cachetools' own dict and order map
        # directly (a C ``dict.get`` and ``move_to_end``), saving the two
        # Python-level frames of ``LRUCache.__getitem__``; any other policy,
        # or a cachetools whose internals moved, goes through ``data.get``.
        index = getattr(self.data, "_Cache__data", None)
        order = getattr(self.data, "_LRUCache__order", None)
        if policy is cachetools.LRUCache and isinstance(index, dict) and order is not None:
            self.peek: Callable[[str], Entry | None] = index.get
            self.recent: Callable[[str], Any] = order.move_to_end
        else:
            # data.get already tells the policy about the hit.
            self.peek = self.data.get
            self.recent = _no_op

    def _after_fork(self) -> None:
        """In a forked child: a new lock, and nothing in memory (what the
        parent had pending is the parent's to write)."""
        # An RLock, not a Lock: the hot paths release it explicitly, and an
        # RLock refuses a release by a thread that does not hold it.
        self.lock = threading.RLock()
        entries = [*self.data.values(), *self.evicted.values()]
        self.evicted.clear()
        self.absent.clear()
        for entry in entries:
            entry.pins = 0
            entry.pending = None
            entry.journaled = False
        self.data.clear()  # each entry goes through on_drop (detached)
        self.evicted.clear()
        self.evictions = 0

    # Every method below expects ``self.lock`` to be held by the caller: the
    # cache takes it once around a whole lookup-or-insert.

    def _evicted(self, key: str, entry: Entry) -> None:
        self.evictions += 1
        if entry.pending is not None or entry.pins or entry.journaled:
            self.evicted[key] = entry
        else:
            self.on_drop(entry)

    def lookup(self, key: str) -> Entry | None:
        """The entry for ``key``, from the cache or the evicted area."""
        try:
            return self.data[key]
        except KeyError:
            entry = self.evicted.pop(key, None)
            if entry is not None:
                # Back into the cache: one live object per key, always.
                self.insert(entry)
            return entry

    def insert(self, entry: Entry) -> None:
        """Insert or replace; may push other entries out."""
        if entry.size > (self.max_bytes or entry.size):
            raise ConfigError(
                f"value for {entry.key!r} is {entry.size} bytes, over MemoryTier max_bytes"
                f" ({self.max_bytes})"
            )
        self.absent.pop(entry.key, None)
        self.data[entry.key] = entry
        # A count bound on top of a byte bound: cachetools holds one bound.
        while self.max_bytes is not None and len(self.data) > self.maxsize:
            self.data.popitem()

    def known_absent(self, key: str, now: float) -> bool:
        """Whether ``key`` is remembered as missing from every tier."""
        until = self.absent.get(key, False)
        if until is False:
            return False
        if until is not None and until <= now:
            del self.absent[key]
            return False
        return True

    def remove(self, key: str) -> Entry | None:
        """Take the entry out of memory (cache and evicted area)."""
        entry = self.data.pop(key, None)
        other = self.evicted.pop(key, None)
        return entry if entry is not None else other

    def __len__(self) -> int:
        return len(self.data)

    def entries(self) -> Iterator[Entry]:
        """Every entry, cached or evicted (a snapshot)."""
        yield from list(self.data.values())
        yield from list(self.evicted.values())
