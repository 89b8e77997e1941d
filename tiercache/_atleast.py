"""Read-your-writes across processes: ``at_least=version``.

::

    scope exits ──> scope.version: the version it committed (or read)
    another process: get(key, at_least=v) / session(key, at_least=v)
        memory copy at >= v? ──> served as usual (no extra round trip)
        else ──> our own unwritten change below v? write it first (merges)
             ──> the shared tier's version >= v? drop the older local
                 copies (as an invalidation would) ──> the usual load
             ──> not yet: poll (2 ms, doubling to 50 ms) until AT_LEAST_WAIT
                 seconds have passed, then VersionNotReachedError

This is how a bot hands a Mini App a link that must show the change it just
made, even if the bus is a few milliseconds behind, or the writer's
write-behind timer has not fired yet (the poll covers a short delay).
"""

from __future__ import annotations

from typing import Any, Final

from ._bus import Invalidation
from ._exceptions import ConfigError, VersionNotReachedError
from ._flow import Flow, Pause
from ._read import Reader
from ._state import CacheState
from ._tiers._memory import Entry
from ._tracking import MISSING
from ._write import Writer

__all__ = ["AT_LEAST_WAIT", "CatchUp", "check_at_least"]

#: How long (seconds) ``at_least=`` waits for the shared tier to reach the
#: version before it raises :class:`VersionNotReachedError`.
AT_LEAST_WAIT: Final = 5.0

_FIRST_POLL = 0.002
_LAST_POLL = 0.05


def check_at_least(version: object) -> int:
    """``at_least=``: a version a scope reported (an int >= 1)."""
    if type(version) is not int or version < 1:
        raise ConfigError(
            f"at_least must be a version a scope reported (an int >= 1), got {version!r}"
        )
    return version


def check_version(version: object) -> int:
    """``expected_version=``: a stored version (an int >= 0; 0: absent)."""
    if type(version) is not int or version < 0:
        raise ConfigError(
            f"expected_version must be a stored version (an int >= 0; 0: absent), got {version!r}"
        )
    return version


class CatchUp:
    """Brings a key's memory copy up to a version before it is served."""

    def __init__(self, state: CacheState, writer: Writer, reader: Reader) -> None:
        self.s = state
        self.writer = writer
        self.reader = reader

    def get_flow(self, key: str, default: Any, at_least: int) -> Flow[Any]:
        """``get(key, at_least=...)``: catch up, then read as usual."""
        s = self.s
        s.check_key(key)
        s.check_open()
        wanted = check_at_least(at_least)
        read, value = yield from self.reach_flow(key, wanted, locked=False)
        if read:
            return default if value is MISSING else value
        entry = yield from self.reader.lookup_flow(key)
        if entry is None:
            entry = yield from self.reader.load_flow(key, None)
        return default if entry is None or entry.initial is not None else entry.value

    def have(self, key: str) -> tuple[int, Entry | None]:
        """The version of the key's memory copy (0: none, or not stored)
        and the copy itself when it holds changes of ours not yet written
        (pending, or journaled)."""
        memory = self.s.memory
        with self.s.mlock:
            entry = memory.peek(key) or memory.evicted.get(key)
            if entry is None or entry.initial is not None:
                return 0, None
            ours = entry.pending is not None or entry.journaled
            return entry.version, entry if ours else None

    def reach_flow(self, key: str, wanted: int, *, locked: bool) -> Flow[tuple[bool, Any]]:
        """Return ``(False, None)`` once the memory copy of ``key`` is at
        ``wanted`` or newer, or is gone so the next load reads one that is;
        ``(True, value)`` when a copy in use cannot be dropped: the newer
        value read from the shared tier (plain; MISSING: deleted).
        VersionNotReachedError if the shared tier does not reach ``wanted``
        in time. ``locked``: the caller holds the key's lock (a scope)."""
        s = self.s
        core = s.core
        deadline = s.clock.monotonic() + AT_LEAST_WAIT
        delay = _FIRST_POLL
        skey = core.skey(key)
        while True:
            version, ours = self.have(key)
            if version >= wanted:
                return False, None
            if not core.tiers:
                raise VersionNotReachedError(key, wanted, version)
            if ours is not None:
                # Ours, below the version asked for: another process wrote
                # after we last read. Writing ours merges theirs in.
                if ours.journaled:
                    yield from s.replay_flow()
                elif locked:
                    yield from self.writer.write_flow([ours], "explicit")
                else:
                    yield from self.writer.locked_write_flow([ours], "explicit")
                if self.have(key) != (version, ours):
                    continue
            value, stored = yield from core.read_stored_flow(key, skey)
            if stored >= wanted:
                # As an invalidation would: older local copies go (or, in
                # use, are marked outdated), and the usual load reads it.
                self.writer.inval.on_messages([Invalidation("", key, "set", stored)])
                now_at = self.have(key)[0]
                if now_at >= wanted or not now_at:
                    return False, None
                return True, value  # a copy in use elsewhere stays: serve this
            if s.clock.monotonic() >= deadline:
                raise VersionNotReachedError(key, wanted, stored)
            yield Pause(delay)
            delay = min(delay * 2, _LAST_POLL)
