"""The local journal: a write-ahead log of changes the shared tier has not got yet.

::

    scope exit ──X shared tier down (or WriteBehind: every change)
        └─> journal.write(frames)        one write(2) of CRC-framed records to the
                                         current segment file: on disk for any
                                         later reader once it returns, so a process
                                         crash (SIGKILL) loses none of it; with
                                         fsync=True, power loss neither
    shared tier back / timer tick / flush / restart
        └─> journal.take()               seals the current segment; every record
                                         of the sealed ones, oldest first
            ──> one compare-and-set per key, merging like a live write
            └─> journal.done(taken)      deletes the replayed segments

Files in the directory::

    LOCK                     flock()ed by the owning process: one journal, one owner
    00000000000000000001.tcj segments, replayed in the order of their numbers

A frame is ``b"TJ"``, a format byte (1), a reserved byte, the payload length
(u32) and the payload's CRC-32 (u32), all little-endian, then the payload.
A frame that does not check out (a write torn by a crash in the middle of
it, or a damaged disk) ends what is read of its segment: the rest is kept
beside it as ``<segment>.damaged`` for inspection, and counted.

A record holds the sealed envelope bytes, the version the shared tier held
when they were sealed (the compare-and-set's expected version) and the
merge base of the changed fields, so a replay that finds a newer value
merges exactly as a live write would. A value kept as fields
(tiercache._fields) is journaled whole once per chain; its later records
hold only the fields that changed since the one before and the new head,
whose CRC covers the whole value they are put back together into (by
take(), in order): a chain starts again after every take(), so a replay
always has its first record.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._exceptions import ConfigError, CorruptEntryError, JournalFullError, TierError
from ._fields import JournalDelta, apply_journal_delta, head_of
from ._serializers import Serializer
from ._tracking import MISSING

try:  # POSIX; elsewhere a journal directory is not guarded against a second owner
    import fcntl
except ImportError:  # pragma: no cover - not on the machines CI runs
    fcntl = None  # type: ignore[assignment]

__all__ = ["Frames", "Journal", "Record", "Taken"]

#: What :meth:`Journal.encode` makes of a record: its key, its whole frame,
#: and its delta's frame (None: it has none).
Frames = tuple[str, bytes, "bytes | None"]

log = logging.getLogger("tiercache")

_FRAME = struct.Struct("<2sBBII")
_MAGIC = b"TJ"
_FORMAT = 1
_SEGMENT = re.compile(r"^(\d{20})\.tcj$")


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    data: bytes
    expected: int
    #: field -> value at ``expected`` (MISSING: absent); None: replace whole.
    base: dict[Any, Any] | None
    #: Earlier writes of this key whose reply was lost: any may be stored.
    maybe: tuple[bytes, ...] = ()
    #: What changed since the key's previous record (tiercache._fields):
    #: the journal stores just that when it holds that record, else ``data``.
    delta: JournalDelta | None = None


@dataclass(frozen=True, slots=True)
class Taken:
    """What :meth:`Journal.take` handed out: its records, oldest first, and
    the sealed segments they came from (deleted by :meth:`Journal.done`)."""

    records: list[Record]
    segments: tuple[tuple[str, int], ...]


class Journal:
    """A bounded write-ahead log of unacknowledged writes, in a directory.

    Give each process its own directory (beside its disk tier): records are
    replayed by the process that wrote them, after a restart too, and a
    second owner is refused with :class:`ConfigError` while the first is
    alive. ``max_entries`` bounds the records waiting; a write past it
    raises :class:`JournalFullError`. ``fsync=True`` makes every
    acknowledged change survive power loss as well as a crash, at the price
    of an ``fsync`` per write (tens of microseconds to milliseconds,
    depending on the disk; about 200 µs on the dev box), made in the
    caller's thread, so on the event loop for an async scope.

    >>> import tempfile
    >>> j = Journal(tempfile.mkdtemp(), max_entries=100)
    >>> j.depth
    0
    >>> j.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_entries: int = 10_000,
        fsync: bool = False,
        new_keys: bool = False,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"Journal max_entries must be an int >= 1, got {max_entries!r}")
        if not isinstance(fsync, bool):
            raise ConfigError(f"Journal fsync must be True or False, got {fsync!r}")
        if not isinstance(new_keys, bool):
            raise ConfigError(f"Journal new_keys must be True or False, got {new_keys!r}")
        self.directory = os.fspath(directory)
        self.max_entries = max_entries
        self.fsync = fsync
        #: Opt-in: while the shared tier is down, a scope on a key this
        #: process cannot load starts from ``initial()``; its change is
        #: journaled and, at replay, merged into whatever the shared tier
        #: holds then, three-way with ``initial()`` as the base.
        self.new_keys = new_keys
        #: Bytes of segments that could not be read (see the module docstring).
        self.damaged_bytes = 0
        self._undecodable: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._fd: int | None = None  # the segment being written, opened lazily
        self._path = ""
        self._count = 0  # records in that segment
        self._offset = 0  # its length: a failed write is cut back to it
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lockfd = os.open(
                os.path.join(self.directory, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError as exc:
            raise ConfigError(f"cannot open the journal in {self.directory!r}: {exc}") from exc
        if fcntl is not None:
            try:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._lockfd)
                raise ConfigError(
                    f"the journal in {self.directory!r} is in use by another process or "
                    "cache: give each one its own journal directory"
                ) from exc
        #: (path, records) of segments no longer written to, oldest first.
        self._sealed: list[tuple[str, int]] = []
        #: Keys with a whole record in the journal since the last take():
        #: a record of one may be stored as its delta.
        self._chains: set[str] = set()
        seqs = []
        for name in os.listdir(self.directory):
            m = _SEGMENT.match(name)
            if m:
                seqs.append(int(m.group(1)))
        for seq in sorted(seqs):
            path = self._segment(seq)
            if not os.path.isfile(path):
                os.close(self._lockfd)
                raise ConfigError(
                    f"{path!r} is named like a journal segment but is not a file; move it out "
                    "of the journal directory"
                )
            count = self._check_segment(path)
            if count:
                self._sealed.append((path, count))
            else:
                os.unlink(path)
        self._seq = max(seqs, default=0) + 1
        self.depth = sum(n for _, n in self._sealed)
        #: The process that opened it: the only one that may write or replay.
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"Journal({self.directory!r}, depth={self.depth}, max_entries={self.max_entries})"

    def _segment(self, seq: int) -> str:
        return os.path.join(self.directory, f"{seq:020d}.tcj")

    # -- writing -------------------------------------------------------------

    @staticmethod
    def encode(records: Sequence[Record], serializer: Serializer) -> list[Frames]:
        """The frames of ``records`` (no I/O; may raise SerializationError):
        for each, its key, its whole frame, and the frame of its delta when
        it has one (:meth:`write` picks)."""
        out: list[Frames] = []
        for r in records:
            full = _frame(_encode(r, serializer))
            delta = None if r.delta is None else _frame(_encode(r, serializer, delta=True))
            out.append((r.key, full, delta))
        return out

    def _after_fork(self) -> None:
        """In a forked child: nothing waits here for this process (the
        records are the parent's, to replay); writing is refused."""
        self._lock = threading.Lock()
        self.depth = 0
        self._sealed = []
        self._fd = None  # the parent's descriptor: never ours to write or close
        self._lockfd = -1
        self._chains = set()

    def _check_owner(self) -> None:
        if os.getpid() != self._pid:
            err = TierError(
                f"the journal in {self.directory!r} belongs to process {self._pid}: this "
                "cache was made before os.fork(), and a journal cannot be shared. Make the "
                "cache, with a Journal directory of its own, in each process after the fork "
                "(gunicorn: in post_fork, or without --preload)"
            )
            err.transient = False
            err.sent = False
            raise err

    def write(self, frames: Sequence[Frames]) -> None:
        """Append ``frames`` with one ``write(2)``, all or none: once this
        returns they survive a crash of this process. JournalFullError when
        the journal would grow past ``max_entries``; TierError when the disk
        refuses (the segment is cut back, nothing half-written stays), or
        when this is a forked child of the process that opened it."""
        if not frames:
            return
        self._check_owner()
        with self._lock:
            # A delta only after a whole record of its key that a replay
            # takes together with it (take() starts every chain afresh).
            chosen = [d if d is not None and key in self._chains else f for key, f, d in frames]
            if self.depth + len(frames) > self.max_entries:
                raise JournalFullError(
                    f"the journal in {self.directory!r} is full ({self.depth} of "
                    f"{self.max_entries} entries): the shared tier has been unreachable too "
                    "long; the change was not acknowledged and stays pending"
                )
            blob = b"".join(chosen)
            try:
                if self._fd is None:
                    self._path = self._segment(self._seq)
                    self._seq += 1
                    self._fd = os.open(
                        self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600
                    )
                    self._count = self._offset = 0
                    if self.fsync:
                        _fsync_dir(self.directory)
                view = memoryview(blob)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:
                if self._fd is not None:
                    try:
                        os.ftruncate(self._fd, self._offset)
                    except OSError:  # pragma: no cover - the disk is gone entirely
                        pass
                raise TierError(f"journal write failed: {exc!r}") from exc
            self._offset += len(blob)
            self._count += len(frames)
            self.depth += len(frames)
            self._chains.update(key for key, _, _ in frames)

    def sync(self) -> None:
        """With ``fsync=True``: make what was written survive power loss."""
        if not self.fsync:
            return
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    raise TierError(f"journal fsync failed: {exc!r}") from exc

    def append(self, records: Sequence[Record], serializer: Serializer) -> None:
        """:meth:`encode`, :meth:`write` and :meth:`sync` in one call."""
        self.write(self.encode(records, serializer))
        self.sync()

    # -- replaying -------------------------------------------------------------

    def take(self, serializer: Serializer) -> Taken:
        """Seal the segment being written and return every record of the
        sealed segments, oldest first; writes after this go to a new segment."""
        self._check_owner()
        with self._lock:
            self._seal()
            segments = tuple(self._sealed)
            self._chains.clear()
        records: list[Record] = []
        #: Each key's whole bytes as of its last record, for the next delta.
        last: dict[str, bytes] = {}
        for path, _ in segments:
            for i, payload in enumerate(_read_frames(path)[0]):
                try:
                    records.append(_chained(_decode(payload, serializer), last))
                except CorruptEntryError as exc:
                    # Intact on disk but not a record this code can read (a
                    # serializer changed between runs): once per record.
                    if (path, i) not in self._undecodable:
                        self._undecodable.add((path, i))
                        self._damaged(path, payload, f"record {i} cannot be decoded ({exc})")
        return Taken(records, segments)

    def done(self, taken: Taken) -> None:
        """Forget the records of ``taken``: they are in the shared tier now."""
        with self._lock:
            for segment in taken.segments:
                if segment in self._sealed:
                    self._sealed.remove(segment)
                    self.depth -= segment[1]
                    try:
                        os.unlink(segment[0])
                    except FileNotFoundError:
                        pass
            if self.fsync:
                _fsync_dir(self.directory)

    def snapshot(self, serializer: Serializer) -> list[Record]:
        """Every record waiting, oldest first (for inspection and tests)."""
        with self._lock:
            paths = [p for p, _ in self._sealed] + ([self._path] if self._fd is not None else [])
            frames = [payload for p in paths for payload in _read_frames(p)[0]]
        records = []
        last: dict[str, bytes] = {}
        for payload in frames:
            try:
                records.append(_chained(_decode(payload, serializer), last))
            except CorruptEntryError:
                continue  # reported (once) by take()
        return records

    def _seal(self) -> None:
        # Under the lock.
        if self._fd is None:
            return
        if self.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._count:
            self._sealed.append((self._path, self._count))
        else:
            os.unlink(self._path)

    def _check_segment(self, path: str) -> int:
        """Opening a directory: how many good records a segment left by an
        earlier owner holds. Bad frames and records that cannot be decoded
        are moved to ``<segment>.damaged`` (logged, counted) and the segment
        is rewritten without them, so replays never meet them."""
        frames, tail = _read_frames(path)
        if tail:
            self._damaged(path, tail, f"{len(tail)} bytes after {len(frames)} good records")
            with open(path, "r+b") as f:
                f.truncate(sum(_FRAME.size + len(p) for p in frames))
                f.flush()
                os.fsync(f.fileno())
        return len(frames)

    def _damaged(self, path: str, data: bytes, what: str) -> None:
        self.damaged_bytes += len(data)
        keep = path + ".damaged"
        try:
            with open(keep, "ab") as f:
                f.write(data)
        except OSError:  # pragma: no cover - best effort; the log line says what happened
            pass
        log.error(
            "tiercache: journal segment %s is damaged: %s, kept in %s and skipped (a write "
            "torn by a crash was never acknowledged: it loses nothing that was)",
            path,
            what,
            keep,
        )

    def close(self) -> None:
        """Close the segment and release the directory (records stay for
        the next owner). In a forked child, nothing: they are the parent's."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._seal()
            if self._lockfd >= 0:
                os.close(self._lockfd)  # releases the flock
                self._lockfd = -1


def _read_frames(path: str) -> tuple[list[bytes], bytes]:
    """The payloads of a segment's good frames, up to the first bad one,
    and the bytes from there on (empty when the whole file checks out)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise TierError(f"journal segment {path!r} cannot be read: {exc!r}") from exc
    out = []
    pos = 0
    while len(data) - pos >= _FRAME.size:
        magic, fmt, _, n, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + n
        if magic != _MAGIC or fmt != _FORMAT or end > len(data):
            break
        payload = data[pos + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        pos = end
    return out, data[pos:]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(_MAGIC, _FORMAT, 0, len(payload), zlib.crc32(payload)) + payload


def _encode(r: Record, serializer: Serializer, *, delta: bool = False) -> bytes:
    base = (
        None
        if r.base is None
        else [(f, v is not MISSING, None if v is MISSING else v) for f, v in r.base.items()]
    )
    if not delta or r.delta is None:
        return serializer.dumps((r.key, r.data, r.expected, base, list(r.maybe)))
    blocks, put, gone = r.delta
    # No whole bytes: the head (its CRC covers them) and what changed.
    change = [head_of(r.data), blocks, [list(p) for p in put], list(gone)]
    return serializer.dumps((r.key, b"", r.expected, base, list(r.maybe), change))


def _chained(rec: Record, last: dict[str, bytes]) -> Record:
    """``rec`` whole: a delta record put together with its key's previous
    record (``last``: each key's whole bytes so far, updated)."""
    if rec.delta is not None:
        previous = last.get(rec.key)
        if previous is None:
            raise CorruptEntryError("journal record: a change of a key with no record before it")
        data = apply_journal_delta(previous, rec.data, rec.delta)
        rec = Record(rec.key, data, rec.expected, rec.base, rec.maybe)
    last[rec.key] = rec.data
    return rec


def _decode(item: Any, serializer: Serializer) -> Record:
    """The record :func:`_encode` stored; anything else raises CorruptEntryError.

    Every field is checked: the bytes come back from disk, and unchecked,
    ``bytes()`` of an int (a zeroed buffer that long) or ``int()`` of a str
    would make up a record, and a wrong shape would leak TypeError.
    """
    blob = bytes | bytearray | memoryview
    if not isinstance(item, blob):
        raise CorruptEntryError(f"journal record: expected bytes, got {type(item).__name__}")
    fields = serializer.loads(bytes(item))
    if not (type(fields) in (tuple, list) and len(fields) in (5, 6)):
        raise CorruptEntryError("journal record: not a 5- or 6-field record")
    key, data, expected, base, maybe = fields[:5]
    change = _decode_change(fields[5]) if len(fields) == 6 else None
    if not (
        type(key) is str
        and isinstance(data, blob)
        and type(expected) is int
        and 0 <= expected < 2**64
        and (base is None or type(base) in (tuple, list))
        and type(maybe) in (tuple, list)
        and all(isinstance(m, blob) for m in maybe)
        and (
            base is None
            or all(type(t) in (tuple, list) and len(t) == 3 and type(t[1]) is bool for t in base)
        )
    ):
        raise CorruptEntryError("journal record: a field of the wrong type")
    try:
        merge_base = None if base is None else {f: (v if p else MISSING) for f, p, v in base}
    except TypeError as exc:  # an unhashable field name
        raise CorruptEntryError("journal record: an unhashable field name") from exc
    if change is not None:
        head, delta = change
        # Until _whole puts it together, ``data`` holds the delta's head.
        return Record(key, head, expected, merge_base, tuple(bytes(m) for m in maybe), delta)
    return Record(
        key=key,
        data=bytes(data),
        expected=expected,
        base=merge_base,
        maybe=tuple(bytes(m) for m in maybe),
    )


def _decode_change(change: Any) -> tuple[bytes, JournalDelta]:
    blob = bytes | bytearray | memoryview
    if not (type(change) in (tuple, list) and len(change) == 4):
        raise CorruptEntryError("journal record: a change of the wrong shape")
    head, blocks, put, gone = change
    if not (
        isinstance(head, blob)
        and type(blocks) is int
        and type(put) in (tuple, list)
        and type(gone) in (tuple, list)
        and all(
            type(p) in (tuple, list)
            and len(p) == 2
            and isinstance(p[0], blob)
            and isinstance(p[1], blob)
            for p in put
        )
        and all(isinstance(g, blob) for g in gone)
    ):
        raise CorruptEntryError("journal record: a change of the wrong type")
    pairs = tuple((bytes(n), bytes(v)) for n, v in put)
    return bytes(head), (blocks, pairs, tuple(bytes(g) for g in gone))
