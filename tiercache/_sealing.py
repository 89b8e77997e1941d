"""Sealing values into envelope bytes and opening them again: the bytes side
of the core, with no tier in sight.

::

    seal(key, value, version) ──> serializer.dumps ──> size limits (the
        cache's max_value_bytes, each tier's max_value_size) ──> envelope
        (header: version, writer tag, times, serializer id; CRC) ──> bytes
    _open(bytes) ──> envelope checked ──> serializer id ours? ──> Envelope
    adopt(plain) ──> track(); a value the tracker refuses is unreadable

:class:`Sealing` is the base of :class:`~tiercache._core.Core`, which sets
the attributes it reads.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any

from . import _envelope
from ._clock import Clock
from ._exceptions import CorruptEntryError, SerializationError, ValueTooLargeError
from ._fields import Parts
from ._policy import Expiry
from ._serializers import Serializer
from ._tiers._base import PersistentTier
from ._tracking import track

__all__ = ["Sealing"]

#: Versions are at least ``ms since the epoch << 20``: above every version a
#: key of that name had before (a delete, an expiry, a quarantine, a lost
#: store, a failover that discarded writes), with room for 2**20 writes a
#: millisecond, until the year 2248.
_TIME_SHIFT = 20
_U64 = 2**64 - 1


class Sealing:
    """Versions, envelopes, size limits and expiry arithmetic."""

    tiers: list[PersistentTier]
    serializer: Serializer
    clock: Clock
    expiry: Expiry | None
    max_value_bytes: int | None
    #: Values read that could not be (counted here, reported in stats).
    corrupt: int
    _writer_base: int
    _writes: Iterator[int]

    def new_writer(self) -> None:
        """A fresh writer tag series (also after a fork: a child must never
        seal bytes its parent could have sealed)."""
        self._writer_base = secrets.randbits(64)
        self._writes = itertools.count(1)

    def next_version(self, version: int) -> int:
        """The version a write over ``version`` gets: above it, and at least
        the clock's (ms << 20).

        Versions of a key are strictly increasing, and they never repeat,
        also after a store lost writes (a failover that discarded
        acknowledged ones, a restore): a write after that starts from the
        clock, above every version handed out before now, instead of from
        the older version the store went back to, which would hand out
        versions once used for other content. Clock skew between processes
        only matters for that case: a process whose clock is behind by more
        than the time since the lost write was made counts on from the
        version the store went back to (``+ 1``), and may repeat one. A
        process that saw the lost version itself stays above it (see
        :meth:`~tiercache._merge.Merger.rolled_back`).
        """
        clock = max(1, int(self.clock.time() * 1000)) << _TIME_SHIFT
        return max(version + 1, clock)

    def ttl_for(self, ttl: float | None) -> float | None:
        """The TTL in seconds for a key: its own, else the cache default."""
        if ttl is not None:
            return ttl
        return self.expiry.seconds if self.expiry is not None else None

    @property
    def sliding(self) -> bool:
        return self.expiry is not None and self.expiry.sliding

    def surely_fits(self, payload_bound: int) -> bool:
        """Whether a payload of at most ``payload_bound`` bytes is under every
        size limit :meth:`seal` checks. For a serializer whose sizes do not
        add up field by field (``sizes_add_up``), the bound is doubled."""
        size = payload_bound
        if not getattr(self.serializer, "sizes_add_up", False):
            size = 2 * size + 4096
        if self.max_value_bytes is not None and size > self.max_value_bytes:
            return False
        size += _envelope.HEADER_SIZE + 4
        for tier in self.tiers:
            limit = tier.max_value_size
            if limit is not None and size > limit:
                return False
        return True

    def memory_expiry(self, ttl: float | None) -> float | None:
        """When a memory copy written now expires, on the monotonic clock:
        a wall clock stepped back must not make a copy outlive its TTL."""
        seconds = self.ttl_for(ttl)
        return None if seconds is None else self.clock.monotonic() + seconds

    def seal(
        self,
        key: str,
        value: Any,
        *,
        version: int,
        created_ms: int,
        ttl: float | None,
        schema_version: int,
        parts: Parts | None = None,
    ) -> bytes:
        """Serialize ``value`` once into envelope bytes at ``version``;
        ``parts``: its fields, already serialized (the fields layout)."""
        if version > _envelope.MAX_VERSION:
            raise SerializationError(
                f"cannot store key {key!r}: its version would pass {_envelope.MAX_VERSION}"
            )
        try:
            payload = self.serializer.dumps(value) if parts is None else parts.payload()
        except SerializationError as exc:
            raise SerializationError(f"cannot store key {key!r}: {exc}") from exc
        except Exception as exc:  # a user serializer's own error type
            raise SerializationError(
                f"cannot store key {key!r}: {type(exc).__name__}: {exc}"
            ) from exc
        if self.max_value_bytes is not None and len(payload) > self.max_value_bytes:
            raise ValueTooLargeError(
                f"cannot store key {key!r}: {len(payload)} bytes, over max_value_bytes "
                f"({self.max_value_bytes}); largest fields: {self._largest_fields(value)}"
            )
        size = len(payload) + _envelope.HEADER_SIZE + 4
        for tier in self.tiers:
            # What a tier is known to refuse (Redis: its proto-max-bulk-len)
            # is refused here, under every flush policy: a write-behind
            # change is acknowledged at scope exit, so it must be one the
            # tier will take.
            limit = tier.max_value_size
            if limit is not None and size > limit:
                raise ValueTooLargeError(
                    f"cannot store key {key!r}: {size} bytes, over what the {tier.name} tier "
                    f"takes ({limit}); largest fields: {self._largest_fields(value)}"
                )
        now_ms = int(self.clock.time() * 1000)
        seconds = self.ttl_for(ttl)
        # Sliding expiry lives in the backends' TTL (touch refreshes it
        # without a rewrite); absolute expiry is sealed into the envelope.
        expires_ms = 0 if seconds is None or self.sliding else now_ms + int(seconds * 1000)
        return _envelope.encode(
            _envelope.Envelope(
                serializer_id=self.serializer.id,
                schema_version=schema_version,
                version=version,
                created_ms=created_ms or now_ms,
                updated_ms=now_ms,
                expires_ms=expires_ms,
                payload=payload,
                writer=(self._writer_base + next(self._writes)) & _U64,
            )
        )

    def tombstone(self, version: int) -> bytes:
        """The bytes a delete leaves in the shared tier at ``version``."""
        now_ms = int(self.clock.time() * 1000)
        return _envelope.encode(
            _envelope.Envelope(
                serializer_id=self.serializer.id,
                schema_version=0,
                version=version,
                created_ms=now_ms,
                updated_ms=now_ms,
                expires_ms=0,
                payload=b"",
                flags=_envelope.TOMBSTONE,
                writer=(self._writer_base + next(self._writes)) & _U64,
            )
        )

    def _largest_fields(self, value: Any) -> str:
        """Error path only: the three top-level fields that serialize
        largest, as ``value['name'] (bytes)``."""
        if isinstance(value, dict):
            items = list(value.items())
        elif hasattr(value, "__dict__"):
            items = [(k, v) for k, v in vars(value).items() if not k.startswith("_tc_")]
        else:
            return "(the value is not a mapping)"
        sizes = []
        for k, v in items:
            try:
                sizes.append((len(self.serializer.dumps(v)), k))
            except Exception:
                continue
        sizes.sort(key=lambda item: item[0], reverse=True)
        return ", ".join(f"value[{k!r}] ({n} bytes)" for n, k in sizes[:3]) or "(none)"

    def _unreadable(self, reason: str) -> CorruptEntryError:
        self.corrupt += 1
        return CorruptEntryError(reason)

    def _open(self, data: bytes) -> _envelope.Envelope:
        try:
            env = _envelope.decode(data)
        except CorruptEntryError as exc:
            raise self._unreadable(str(exc)) from None
        if env.serializer_id != self.serializer.id and not env.tombstone:
            raise self._unreadable(
                f"written by serializer id {env.serializer_id}, this cache reads "
                f"{self.serializer.id} ({self.serializer.name})"
            )
        return env

    def adopt(self, plain: Any) -> Any:
        """:func:`track` a value read from a tier; a value the tracker
        refuses (a tuple holding a list, which tiercache never writes;
        nesting deeper than it can walk) is unreadable like corrupt bytes:
        CorruptEntryError, counted."""
        try:
            return track(plain)
        except (TypeError, ValueError, RecursionError, SerializationError) as exc:
            raise self._unreadable(
                f"a value that cannot be tracked ({type(exc).__name__})"
            ) from None
