"""Small frozen policy objects: when to write, when entries expire, schemas.

They are validated when constructed (:class:`ConfigError` names the
setting) and never change afterwards, so one can be shared by many caches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._exceptions import ConfigError, ConflictError

__all__ = [
    "Expiry",
    "FlushPolicy",
    "Lease",
    "Quarantine",
    "Resolver",
    "Schema",
    "WriteBehind",
    "WriteThrough",
    "keep_ours",
    "keep_theirs",
    "raise_conflict",
]


#: The longest duration a setting takes: 100 years. Past it a stored
#: expiry would not fit the envelope's 64-bit milliseconds (nor Redis's).
MAX_SECONDS = 100 * 365.25 * 86400


def _positive(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_SECONDS
    ):
        allowed = "None or a number" if allow_none else "a number"
        raise ConfigError(
            f"{name} must be {allowed} of seconds > 0 and <= {MAX_SECONDS:.0f} (100 years), "
            f"got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When dirty values are written to the persistent tiers.

    Eviction of a dirty value, :meth:`TieredCache.flush` and
    :meth:`TieredCache.close` (and interpreter exit) always write; the
    subclasses choose what happens when a scope that changed something ends.
    """

    #: Seconds between background flushes; ``None`` writes at scope exit.
    interval: float | None = None


@dataclass(frozen=True, slots=True)
class WriteThrough(FlushPolicy):
    """Write at scope exit, before the scope returns (the default).

    A change is durable once ``with cache.session(...)`` returns; a failed
    write raises there, and the change stays pending for the next flush.

    >>> WriteThrough().interval is None
    True
    """


@dataclass(frozen=True, slots=True)
class WriteBehind(FlushPolicy):
    """Seal at scope exit, write on a background timer every ``interval`` s.

    Scopes return at memory speed and many changes of one key between two
    ticks become one write. A crash loses at most the last ``interval``
    seconds of changes; other processes see them up to ``interval`` late.

    >>> WriteBehind(0.5).interval
    0.5
    """

    interval: float | None = 1.0

    def __post_init__(self) -> None:
        _positive("WriteBehind interval", self.interval)


@dataclass(frozen=True, slots=True)
class Expiry:
    """A time to live: ``seconds`` after the last write, or after the last
    read too when ``sliding`` is true.

    Sliding expiry refreshes the persistent tiers' TTL (Redis ``PEXPIRE``,
    diskcache ``touch``) without rewriting the value, at most once per
    ``touch_every`` seconds per key (default: a tenth of ``seconds``).

    >>> Expiry(3600, sliding=True).touch_interval
    360.0
    """

    seconds: float
    sliding: bool = False
    touch_every: float | None = None

    def __post_init__(self) -> None:
        _positive("Expiry seconds", self.seconds)
        _positive("Expiry touch_every", self.touch_every, allow_none=True)

    @property
    def touch_interval(self) -> float:
        return self.touch_every if self.touch_every is not None else self.seconds / 10


Migration = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Schema:
    """The schema version of stored values and how to migrate old ones.

    ``migrations[v]`` turns a value stored at version ``v`` into version
    ``v + 1`` (it may change the value in place and return it, or return a
    new one). On load they run in order up to ``version``; a migrated value
    is written back once. A stored version newer than ``version`` raises
    :class:`SchemaError` and the stored data is left alone.

    >>> s = Schema(2, {0: lambda v: {**v, "a": 1}, 1: lambda v: {**v, "b": 2}})
    >>> s.migrate({}, 0)
    {'a': 1, 'b': 2}
    """

    version: int = 0
    migrations: Mapping[int, Migration] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not (0 <= self.version <= 0xFFFF)
        ):
            raise ConfigError(f"Schema version must be an int in 0..65535, got {self.version!r}")
        missing = [v for v in range(self.version) if v not in self.migrations]
        extra = [v for v in self.migrations if not (isinstance(v, int) and 0 <= v < self.version)]
        if extra:
            raise ConfigError(f"Schema migrations has keys {extra!r} outside 0..{self.version - 1}")
        if missing and self.migrations:
            raise ConfigError(f"Schema migrations lacks a step from version(s) {missing!r}")
        for v, fn in self.migrations.items():
            if not callable(fn):
                raise ConfigError(f"Schema migrations[{v}] must be callable, got {fn!r}")

    def migrate(self, value: Any, stored: int) -> Any:
        """Run the migrations from ``stored`` up to ``version``."""
        for v in range(stored, self.version):
            step = self.migrations.get(v)
            if step is not None:
                value = step(value)
        return value


@dataclass(frozen=True, slots=True)
class Lease:
    """Strict mode: a scope holds a lease on its key across processes.

    The lease is taken (waiting up to ``wait`` seconds) before the value is
    read from the shared tier, renewed while the scope runs, and checked by
    the write (a fencing token), so read-modify-write of one field (a
    counter) never loses an update. A crashed holder blocks the key for at
    most ``seconds``. Costs three extra round trips per scope.

    >>> Lease(5).seconds
    5
    """

    seconds: float = 10.0
    wait: float = 30.0

    def __post_init__(self) -> None:
        _positive("Lease seconds", self.seconds)
        _positive("Lease wait", self.wait)


@dataclass(frozen=True, slots=True)
class Quarantine:
    """What happens to stored bytes the cache cannot read.

    Truncated, foreign or damaged bytes, another serializer's, an envelope
    format this code does not know, a payload the serializer refuses, a
    signature (HMAC) that does not match: each read of such an entry is a
    miss, counted in ``stats().corrupt_entries`` and logged once per key
    (never the bytes). The bad bytes are then moved out of the way, in the
    same tier, to ``<namespace>:\x00quarantine\x00<key>``, kept for ``keep``
    seconds (``0``: deleted at once), so the key reads as absent from then
    on and the bytes stay there to inspect or restore. The move happens only
    if the entry still holds exactly those bytes (a writer that repaired it
    meanwhile wins), and only in tiers that can do it atomically (Redis,
    disk); any other tier leaves the entry alone, and the next write
    replaces it.

    >>> Quarantine().keep / 86400
    7.0
    """

    keep: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.keep, bool)
            or not isinstance(self.keep, int | float)
            or not math.isfinite(self.keep)
            or self.keep < 0
        ):
            raise ConfigError(
                f"Quarantine keep must be a number of seconds >= 0, got {self.keep!r}"
            )


#: How a same-field write conflict is settled: called with the key, the
#: top-level field, and the field's value at the last common version
#: (``base``), in this process (``ours``) and in the store (``theirs``);
#: returns the value to keep (``tiercache._tracking.MISSING`` deletes the
#: field) or raises :class:`ConflictError`.
Resolver = Callable[[str, Any, Any, Any, Any], Any]


def raise_conflict(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
    """The default: refuse to guess. The scope that wrote last gets a
    :class:`ConflictError`; the stored value (theirs) is kept."""
    raise ConflictError(
        f"key {key!r}: field {field!r} was changed here and by another writer since "
        "version this process last saw; pass conflict=keep_ours, keep_theirs or a "
        "resolver function to settle it"
    )


def keep_ours(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
    """Last writer wins, per field: this process's value replaces theirs."""
    return ours


def keep_theirs(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
    """First writer wins, per field: the stored value stays."""
    return theirs
