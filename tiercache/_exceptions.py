"""The exceptions tiercache raises.

Every error tiercache raises derives from one root, so ``except
TierCacheError`` catches them all; errors from a backend (diskcache, redis)
are wrapped with ``raise ... from exc`` so the original stays on
``__cause__``::

    TierCacheError
    ├── ConfigError (also ValueError)   a bad setting, raised at construction
    ├── InvalidKeyError (also TypeError) a key of the wrong type or length
    ├── DetachedError                   a mutation of a value whose root was detached
    ├── SerializationError              a value the serializer cannot store
    │   └── ValueTooLargeError          a value over the cache's byte budget
    ├── CorruptEntryError               stored bytes that cannot be decoded
    │   └── SignatureError              an HMAC that does not match
    ├── SchemaError                     stored schema newer than the code knows
    ├── TierError                       a tier's backend failed (wraps the cause)
    │   └── JournalFullError            the outage journal has no room left
    └── ConflictError                   a same-field write conflict (policy "raise")
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "CorruptEntryError",
    "DetachedError",
    "InvalidKeyError",
    "JournalFullError",
    "SchemaError",
    "SerializationError",
    "SignatureError",
    "TierCacheError",
    "TierError",
    "ValueTooLargeError",
]


class TierCacheError(Exception):
    """The root of every error tiercache raises."""


class ConfigError(TierCacheError, ValueError):
    """A setting is out of range or of the wrong kind.

    Raised when a cache, tier or policy is constructed, never later; the
    message names the setting and what is allowed.
    """


class InvalidKeyError(TierCacheError, TypeError):
    """A key is not a ``str`` or is longer than the cache allows."""


class DetachedError(TierCacheError):
    """A tracked value was mutated after its root was detached.

    Sessions detach their values when the scope ends, or when the cache
    entry is evicted or rolled back, so a write through a stale reference
    fails loudly instead of being silently lost.
    """


class SerializationError(TierCacheError):
    """A value cannot be serialized; the message names the key and the path."""


class ValueTooLargeError(SerializationError):
    """A value serializes to more bytes than the cache's ``max_value_bytes``;
    the message names the key and its largest top-level fields."""


class CorruptEntryError(TierCacheError):
    """Stored bytes are truncated, foreign or fail their checksum.

    The cache turns this into a counted miss; it reaches callers only of the
    low-level envelope API.
    """


class SignatureError(CorruptEntryError):
    """A signed payload's HMAC does not match (wrong secret or tampering)."""


class SchemaError(TierCacheError):
    """A stored value has a schema version newer than the code knows."""


class TierError(TierCacheError):
    """A tier's backend failed; the backend's exception is ``__cause__``.

    :attr:`transient` tells an outage (refused, reset, timed out, the
    server loading or out of memory: worth a retry, a journal entry and the
    circuit breaker's attention) from a refusal by a server that answered
    (a missing ACL permission, a key of the wrong type): that one goes to
    the caller at once, is never journaled and leaves the circuit closed.
    """

    #: False when the backend answered and refused the command.
    transient: bool = True
    #: False when the command was never sent (the circuit was open), so it
    #: cannot have landed either.
    sent: bool = True
    #: True when the command waited for a connection of this process's own
    #: pool and got none in time (a burst over ``max_connections``): Redis
    #: was not asked, so the circuit breaker neither opens nor closes on it.
    #: Still :attr:`transient` (it may heal); :attr:`sent` only if an
    #: earlier attempt of the same call may have landed.
    saturated: bool = False


class JournalFullError(TierError):
    """The shared tier is down and the local journal is full: the change was
    not acknowledged (it stays pending in memory)."""


class ConflictError(TierCacheError):
    """Two writers changed the same field and the policy says to raise."""


class VersionNotReachedError(TierCacheError):
    """``at_least=`` asked for a version of a key the shared tier did not
    reach in time (:data:`tiercache._atleast.AT_LEAST_WAIT` seconds): the
    write that made it has not landed (write-behind not flushed yet, or it
    failed). Nothing older was served."""

    def __init__(self, key: str, wanted: int, found: int) -> None:
        super().__init__(
            f"key {key!r} is at version {found or 'none'} in the shared tier, "
            f"not yet at the {wanted} asked for (at_least=)"
        )
        self.key = key
        self.wanted = wanted
        self.found = found

    def __reduce__(self) -> tuple[type[VersionNotReachedError], tuple[str, int, int]]:
        return type(self), (self.key, self.wanted, self.found)
