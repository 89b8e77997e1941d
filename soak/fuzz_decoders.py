"""Coverage-guided fuzzing of every decoder a stored value goes through.

Not part of any test run (pytest collects ``test_*.py`` only) and atheris is
not a tiercache dependency. Install it and run, one process::

    python -m pip install atheris
    mkdir -p /tmp/tc-fuzz && cd /tmp/tc-fuzz       # crash-* files land here
    python /path/to/soak/fuzz_decoders.py -max_total_time=600 -timeout=10 corpus

``corpus`` is a directory (made and seeded with valid encodings if empty);
the other flags are libFuzzer's (``-help=1`` lists them; keep ``-workers``
and ``-jobs`` at 1 on a shared box). The first input byte picks a target,
the rest is its input::

    byte % 7  target                                  allowed outcome
    0         envelope.decode + serializer (raw)      value, or CorruptEntryError
    1         envelope.peek_version                   int, or CorruptEntryError
    2         msgpack payload behind a valid CRC      value, or CorruptEntryError
    3         MsgpackSerializer(types=...).loads      value, or CorruptEntryError
    4         PickleSerializer(secret).loads          CorruptEntryError unless signed
    5         journal record, msgpack                 Record, or CorruptEntryError
    6         journal record, pickle                  Record, or CorruptEntryError

A crash (libFuzzer saves the input as ``crash-<sha1>`` and stops) is any
other exception escaping, code found or run while decoding (an audit hook
watches imports, exec, pickle.find_class, process spawning), a pickle
without our signature loading, or a decoded value that cannot be stored and
tracked again.
Two limits are not crashes: msgpack values nested deeper than 511 (dumps
refuses them) and tracking of values deeper than 400 (``track`` recurses).

Every minute, and at the end, one line reports inputs run and bytes fed.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from time import monotonic
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import atheris

with atheris.instrument_imports(include=["tiercache", "msgpack"]):
    import msgpack

    from tiercache import (
        MISSING,
        CorruptEntryError,
        MsgpackSerializer,
        PickleSerializer,
        Serializer,
        track,
    )
    from tiercache._envelope import Envelope, decode, encode, peek_version
    from tiercache._journal import Record, _decode, _encode

SECRET = b"fuzz-secret" * 3
MSGPACK = MsgpackSerializer()


class Point:
    """A registered plain class: loading must not run its __init__."""

    def __init__(self, x: Any) -> None:
        raise AssertionError("Point.__init__ ran while decoding")


TYPED = MsgpackSerializer(types={"Point": Point})
PICKLE = PickleSerializer(secret=SECRET)

_LOADABLE = (
    type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset,
    datetime, date, time, timedelta, UUID, Decimal, Point,
)  # fmt: skip
_NEST_LIMIT = 511  # what MsgpackSerializer.dumps writes at most
_TRACK_LIMIT = 400  # what track() can adopt without hitting the recursion limit

# -- no code may be found or run while decoding -----------------------------

_CODE_EVENTS = frozenset(
    {
        "exec",
        "compile",
        "import",
        "pickle.find_class",
        "code.__new__",
        "function.__new__",
        "marshal.loads",
        "os.system",
        "os.fork",
        "os.posix_spawn",
        "subprocess.Popen",
        "ctypes.dlopen",
    }
)
_seen: list[str] = []
_watching = False
_main_thread = threading.get_ident()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watching or threading.get_ident() != _main_thread:
        return
    if event in _CODE_EVENTS or event.startswith(("os.exec", "os.spawn")):
        # ZoneInfo looks keys missing from the system database up in the
        # data-only tzdata package.
        if event == "import" and str(args[0]).startswith("tzdata"):
            return
        _seen.append(event)


def _watched(fn: Callable[[], Any]) -> Any:
    """Run a decoder; raise if it found or ran code (the audit hook saw it)."""
    global _watching
    _seen.clear()
    _watching = True
    try:
        return fn()
    finally:
        _watching = False
        if _seen:
            raise AssertionError(f"code ran while decoding: {_seen}")


# -- checks on what decoded ------------------------------------------------


def _depth_and_types(value: Any) -> int:
    """Nesting depth of a decoded value; asserts every node is a loadable type."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if type(v) not in _LOADABLE:
            raise AssertionError(f"decoded a {type(v).__name__}")
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in (*v.keys(), *v.values()))
        elif isinstance(v, list | tuple | set | frozenset):
            stack.extend((x, d + 1) for x in v)
        elif isinstance(v, Point):
            stack.extend((x, d + 1) for x in vars(v).values())
    return deepest


def _check_value(value: Any, serializer: Serializer) -> None:
    """A value a tier handed back must store again and be tracked (cache.get)."""
    depth = _depth_and_types(value)
    if depth <= _NEST_LIMIT:
        serializer.loads(serializer.dumps(value))
    if depth <= _TRACK_LIMIT and type(value) in (dict, list, set, Point):
        # (track() refuses other roots by design, with TypeError.)
        track(value)


def _open(raw: bytes, serializer: Serializer) -> Any:
    """The cache's decode path: envelope, serializer id, payload."""
    env = decode(raw)
    if env.serializer_id != serializer.id:
        raise CorruptEntryError("another serializer's entry")
    return serializer.loads(env.payload)


def _seal(payload: bytes, serializer_id: int = MSGPACK.id) -> bytes:
    return encode(Envelope(serializer_id, 0, 1, 1_000, 2_000, 0, payload))


def _value_or_corrupt(fn: Callable[[], Any], serializer: Serializer) -> None:
    try:
        value = _watched(fn)
    except CorruptEntryError:
        return
    _check_value(value, serializer)


def _record_or_corrupt(raw: bytes, serializer: Serializer) -> None:
    try:
        r = _watched(lambda: _decode(raw, serializer))
    except CorruptEntryError:
        return
    ok = (
        type(r.key) is str
        and type(r.data) is bytes
        and type(r.expected) is int
        and 0 <= r.expected < 2**64
        and (r.base is None or type(r.base) is dict)
        and type(r.maybe) is tuple
        and all(type(m) is bytes for m in r.maybe)
    )
    if not ok:
        raise AssertionError(f"a malformed record decoded: {r!r}"[:300])


def _pickle(raw: bytes) -> None:
    tag, body = raw[:32], raw[32:]
    if hmac.compare_digest(tag, hmac.new(SECRET, body, hashlib.sha256).digest()):
        # A seed, signed with our secret: trusted, so it may find classes.
        PICKLE.loads(raw)
        return
    try:
        _watched(lambda: PICKLE.loads(raw))
    except CorruptEntryError:
        return
    raise AssertionError("a pickle without our signature was loaded")


def _peek(raw: bytes) -> None:
    try:
        peek_version(raw)
    except CorruptEntryError:
        pass


TARGETS: list[tuple[str, Callable[[bytes], None]]] = [
    ("envelope", lambda raw: _value_or_corrupt(lambda: _open(raw, MSGPACK), MSGPACK)),
    ("peek_version", _peek),
    ("msgpack", lambda raw: _value_or_corrupt(lambda: _open(_seal(raw), MSGPACK), MSGPACK)),
    ("msgpack+types", lambda raw: _value_or_corrupt(lambda: TYPED.loads(raw), TYPED)),
    ("pickle", _pickle),
    ("journal/msgpack", lambda raw: _record_or_corrupt(raw, MSGPACK)),
    ("journal/pickle", lambda raw: _record_or_corrupt(raw, PICKLE)),
]

# -- accounting ---------------------------------------------------------------

_runs: Counter[str] = Counter()
_fed = [0]
_started = monotonic()
_next_report = [_started + 60.0]


def report() -> None:
    elapsed = monotonic() - _started
    per = ", ".join(f"{name} {n}" for name, n in sorted(_runs.items()))
    print(
        f"[fuzz_decoders] {sum(_runs.values())} inputs, {_fed[0]} bytes fed, "
        f"{elapsed:.0f} s; per target: {per}",
        file=sys.stderr,
        flush=True,
    )


def test_one_input(data: bytes) -> None:
    if not data:
        return
    name, target = TARGETS[data[0] % len(TARGETS)]
    _runs[name] += 1
    _fed[0] += len(data)
    if not _runs.total() & 0x3FF and monotonic() >= _next_report[0]:
        _next_report[0] += 60.0
        report()
    target(data[1:])


# -- seeds ----------------------------------------------------------------------


def _seed_values() -> list[Any]:
    berlin = ZoneInfo("Europe/Berlin")
    return [
        {},
        {"count": 3, "tags": {"vip", "beta"}, "pos": (1, 2), (0, 1): True},
        {"user": {"name": "Zoë ✓", "id": 2**70, "neg": -(2**65), "f": -0.0, "inf": 1e308}},
        {
            "at": datetime(2024, 3, 31, 2, 30, tzinfo=berlin),
            "utc": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            "ist": datetime(2024, 1, 2, tzinfo=timezone(timedelta(hours=5, minutes=30), "IST")),
            "naive": datetime(2000, 1, 1),
            "day": date(2024, 2, 29),
            "t": time(1, 2, 3, 4),
            "dt": timedelta(days=-1, seconds=5, microseconds=7),
            "id": UUID(int=12345),
            "price": Decimal("-12.50"),
        },
        [[[[[[1]]]]], frozenset({(1, "a"), b"raw"}), b"\x00\xff", None, False],
        {"history": [{"q": "hi", "a": ["x"] * 3}] * 3, "blob": bytes(range(40))},
    ]


def write_seeds(directory: str) -> None:
    values = _seed_values()
    seeds: list[tuple[int, bytes]] = []
    for v in values:
        seeds.append((0, _seal(MSGPACK.dumps(v))))
        seeds.append((1, _seal(MSGPACK.dumps(v))))
        seeds.append((2, MSGPACK.dumps(v)))
        seeds.append((4, PICKLE.dumps(v)))
        record = Record("chat:1", _seal(MSGPACK.dumps(v)), 7, {"count": 1, "gone": MISSING})
        seeds.append((5, _encode(record, MSGPACK)))
        seeds.append((6, _encode(record, PICKLE)))
    seeds.append((3, msgpack.packb([msgpack.ExtType(4, b""), "Point", {"x": [1, 2]}])))
    seeds.append((5, _encode(Record("k", b"", 0, None, (b"a", b"b")), MSGPACK)))
    seeds.append((2, b"\xd7\xff" + bytes(8)))  # msgpack's own timestamp ext
    for i, (target, body) in enumerate(seeds):
        path = os.path.join(directory, f"seed-{i:03d}-{TARGETS[target][0].replace('/', '-')}")
        with open(path, "wb") as f:
            f.write(bytes([target]) + body)


def _warm_up() -> None:
    # Lazy imports of first use, outside the audit hook's watch.
    ZoneInfo("Europe/Berlin")
    try:
        ZoneInfo("Nowhere/Fuzz")
    except ZoneInfoNotFoundError:
        pass
    for _, target in TARGETS:
        for body in (b"", b"\x00" * 60, MSGPACK.dumps(_seed_values())):
            target(body)


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    for directory in corpus[:1]:
        os.makedirs(directory, exist_ok=True)
        if not os.listdir(directory):
            write_seeds(directory)
    _warm_up()
    sys.addaudithook(_audit)
    # libFuzzer ends the process with exit(), which skips Python's atexit;
    # a C-level handler still gets the final line out (glibc only).
    try:
        handler = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: report())
        ctypes.CDLL(None).__cxa_atexit(handler, None, None)
        globals()["_exit_handler"] = handler  # keep it alive
    except (AttributeError, OSError):
        pass
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
