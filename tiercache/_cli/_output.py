"""How the command line shows things: tables on a terminal, JSON with
``--json``, a progress bar on stderr, one-line errors."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import IO, Any

from .._envelope import Envelope

__all__ = ["CliError", "Progress", "dump_json", "envelope_facts", "plain", "table"]


class CliError(Exception):
    """A failure the user caused or can fix: one line on stderr, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def plain(value: Any) -> Any:
    """A stored value as JSON can show it: sets and tuples as lists (sets
    sorted when they can be), bytes as ``{"$bytes": base64}``, datetimes
    as ISO text, non-str dict keys as their repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return int(value) if type(value) is not bool and isinstance(value, int) else value
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else repr(k)): plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [plain(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | decimal.Decimal):
        return str(value)
    return repr(value)


def _ms(ms: int) -> str | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat(
        timespec="milliseconds"
    )


_SERIALIZERS = {1: "msgpack", 2: "pickle"}


def envelope_facts(env: Envelope, size: int) -> dict[str, Any]:
    return {
        "version": env.version,
        "schema": env.schema_version,
        "serializer": _SERIALIZERS.get(env.serializer_id, f"id {env.serializer_id}"),
        "tombstone": env.tombstone,
        "bytes": size,
        "payload_bytes": len(env.payload),
        "created": _ms(env.created_ms),
        "updated": _ms(env.updated_ms),
        "expires": _ms(env.expires_ms),
        "writer": f"{env.writer:016x}",
    }


def dump_json(doc: Any, out: IO[str] | None = None) -> None:
    out = out or sys.stdout
    out.write(json.dumps(doc, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def table(
    rows: Sequence[Sequence[Any]], columns: Sequence[str], out: IO[str] | None = None
) -> None:
    """Columns padded to their widest cell; numbers right-aligned."""
    out = out or sys.stdout
    cells = [[("-" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows) and rows
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[i] else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out.write(line(columns) + "\n")
    for r in cells:
        out.write(line(r) + "\n")


class Progress:
    """A progress bar on stderr when it is a terminal, else a line every
    few seconds (logs stay readable)."""

    def __init__(self, what: str, total: int | None = None, stream: IO[str] | None = None) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._shown = 0.0

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self._shown < (0.1 if self.tty else 5.0):
            return
        self._shown = now
        self._draw(note)

    def _draw(self, note: str) -> None:
        if self.total:
            share = min(1.0, self.done / self.total)
            bar = "#" * int(share * 30)
            text = f"{self.what} [{bar:<30}] {self.done}/{self.total}"
        else:
            text = f"{self.what}: {self.done}"
        if note:
            text += f"  {note}"
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self, note: str = "") -> None:
        self._draw(note)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
