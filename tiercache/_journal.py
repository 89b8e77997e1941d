"""The local journal: changes acknowledged while the shared tier is down.

::

    scope exit ──write to Redis──X (down)──> journal.append(record)  ── acked
                                                  │  (a diskcache Deque: SQLite,
                                                  │   survives a process crash)
    Redis back / flush / restart ──> replay in order: compare-and-set,
                                     merge on conflict ──> drop replayed records

A record holds the sealed envelope bytes, the version the shared tier held
when they were sealed (the compare-and-set's expected version) and the
merge base of the changed fields, so a replay that finds a newer value
merges exactly as a live write would.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import diskcache

from ._exceptions import ConfigError, JournalFullError, TierError
from ._serializers import Serializer
from ._tracking import MISSING

__all__ = ["Journal", "Record"]


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    data: bytes
    expected: int
    #: field -> value at ``expected`` (MISSING: absent); None: replace whole.
    base: dict[Any, Any] | None
    #: Earlier writes of this key whose reply was lost: any may be stored.
    maybe: tuple[bytes, ...] = ()


class Journal:
    """A bounded, crash-safe queue of unacknowledged writes, in a directory.

    Give each process its own directory (beside its disk tier): records are
    replayed by the process that wrote them, after a restart too.

    >>> import tempfile
    >>> j = Journal(tempfile.mkdtemp(), max_entries=100)
    >>> j.depth
    0
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_entries: int = 10_000) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"Journal max_entries must be an int >= 1, got {max_entries!r}")
        self.directory = os.fspath(directory)
        self.max_entries = max_entries
        try:
            self._deque = diskcache.Deque(directory=self.directory)
        except Exception as exc:
            raise ConfigError(f"cannot open the journal in {self.directory!r}: {exc}") from exc
        self._lock = threading.Lock()
        self.depth = len(self._deque)

    def append(self, records: list[Record], serializer: Serializer) -> None:
        """Store ``records`` durably, all or none; JournalFullError when the
        journal would grow past ``max_entries``."""
        if not records:
            return
        encoded = [_encode(r, serializer) for r in records]
        with self._lock:
            if self.depth + len(encoded) > self.max_entries:
                raise JournalFullError(
                    f"the journal in {self.directory!r} is full ({self.depth} of "
                    f"{self.max_entries} entries): the shared tier has been unreachable too "
                    f"long; {records[0].key!r} was not acknowledged and stays pending"
                )
            try:
                with self._deque.transact():
                    self._deque.extend(encoded)
            except Exception as exc:
                raise TierError(f"journal append failed: {exc!r}") from exc
            self.depth += len(encoded)

    def snapshot(self, serializer: Serializer) -> list[Record]:
        """Every record, oldest first."""
        with self._lock:
            raw = list(self._deque)
        return [_decode(item, serializer) for item in raw]

    def drop(self, n: int) -> None:
        """Forget the ``n`` oldest records (they were replayed)."""
        with self._lock:
            with self._deque.transact():
                for _ in range(min(n, len(self._deque))):
                    self._deque.popleft()
            self.depth = len(self._deque)

    def close(self) -> None:
        self._deque.cache.close()


def _encode(r: Record, serializer: Serializer) -> bytes:
    base = (
        None
        if r.base is None
        else [(f, v is not MISSING, None if v is MISSING else v) for f, v in r.base.items()]
    )
    return serializer.dumps((r.key, r.data, r.expected, base, list(r.maybe)))


def _decode(item: Any, serializer: Serializer) -> Record:
    key, data, expected, base, maybe = serializer.loads(bytes(item))
    return Record(
        key=key,
        data=bytes(data),
        expected=int(expected),
        base=None if base is None else {f: (v if present else MISSING) for f, present, v in base},
        maybe=tuple(bytes(m) for m in maybe),
    )
