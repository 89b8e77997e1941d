"""``tiercache convert``: a namespace's Redis entries into the fields layout
(a hash of blocks, :mod:`tiercache._fields`) or back (``--to string``).

::

    SCAN MATCH <prefix><ns>:* from --cursor ──> per batch: TYPE + PTTL (one pipeline)
        string ──> GET ──> a format-2 envelope of a map, >= --min-bytes?
            ──> the same envelope with its fields in block order (same header,
                version and value; a new CRC) ──> FIELDS_CAS on the version read
        hash (--to string) ──> the assembled envelope ──> CAS on the version read
        a lost compare-and-set (someone wrote meanwhile): left as it is, counted
    after each batch: the cursor to resume from (printed when interrupted)

Converting keeps the entry's version and value, so no other process's
copy becomes stale and nothing is invalidated; a writer that gets there
first wins, and a rerun (or its next write) settles that key. Entries
already in the target layout are skipped, so a rerun from cursor 0 is
also a resume.
"""

from __future__ import annotations

import argparse
import sys
import zlib
from typing import Any

from .._envelope import FORMAT_VERSION, HEADER_SIZE, decode
from .._exceptions import CorruptEntryError
from .._fields import (
    FIELDS_MIN_BYTES,
    Delta,
    block_count,
    block_name,
    head_of,
    join_fields,
    split_payload,
)
from .._serializers import MsgpackSerializer
from ._output import CliError, Progress, dump_json
from ._store import RedisStore, Store

__all__ = ["as_fields", "convert"]


def as_fields(data: bytes) -> tuple[bytes, Delta] | None:
    """The envelope ``data`` laid out as fields and the write that stores
    it, or None when it cannot be (not a format-2 envelope of a msgpack
    map, or a tombstone). CorruptEntryError for unreadable bytes."""
    env = decode(data)
    if data[2] != FORMAT_VERSION or env.flags or env.serializer_id != MsgpackSerializer.id:
        return None
    try:
        items = split_payload(env.payload)
    except CorruptEntryError:
        return None  # not a map: stored whole
    blocks = block_count(sum(len(n) + len(v) for n, v in items.items()))
    payload = join_fields(items, blocks)
    body = data[:HEADER_SIZE] + payload
    new = body + zlib.crc32(body).to_bytes(4, "little")
    decode(new)  # the same header, a payload of the same length: checks out
    members: list[list[bytes]] = [[] for _ in range(blocks)]
    for name in items:
        members[zlib.crc32(name) & (blocks - 1)].append(name)
    put: list[bytes] = []
    for index, names in enumerate(members):
        put.append(block_name(index))
        put.append(b"".join(n + items[n] for n in sorted(names)))
    return new, Delta(head_of(new), put, [], full=True)


def convert(store: Store, args: argparse.Namespace) -> int:
    if not isinstance(store, RedisStore):
        raise CliError("convert changes the Redis tier's layout: use --redis", 2)
    to_fields = args.to == "fields"
    min_bytes = FIELDS_MIN_BYTES if args.min_bytes is None else args.min_bytes
    counts = dict.fromkeys(("converted", "already", "small", "skipped", "changed", "unreadable"), 0)
    tier = store.tier
    client: Any = store._client
    progress = Progress("converting" if not args.dry_run else "checking")
    cursor = args.cursor
    try:
        for next_cursor, keys in store.scan_from(args.cursor):
            names = [store.names.value(k) for k in keys]
            with client.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.type(store._name(name))
                    pipe.pttl(store._name(name))
                replies = pipe.execute()
            for i, name in enumerate(names):
                kind, ms = replies[2 * i], replies[2 * i + 1]
                ttl = None if ms < 0 else max(ms, 1) / 1000.0
                outcome = _one(tier, name, kind, ttl, to_fields, min_bytes, args.dry_run)
                counts[outcome] += 1
            cursor = next_cursor
            progress.advance(len(names), f"converted {counts['converted']}, cursor {cursor}")
    except KeyboardInterrupt:
        progress.finish(f"converted {counts['converted']}")
        print(f"tiercache: interrupted; resume with --cursor {cursor}", file=sys.stderr)
        return 130
    progress.finish(f"converted {counts['converted']}")
    counts_doc = {**counts, "dry_run": args.dry_run, "to": args.to}
    if args.json:
        dump_json(counts_doc)
    else:
        verb = "would convert" if args.dry_run else "converted"
        print(
            f"{verb} {counts['converted']} entr(ies) to {args.to}; {counts['already']} already "
            f"were, {counts['small']} under {min_bytes} bytes, {counts['skipped']} not "
            f"convertible, {counts['changed']} written by someone else meanwhile, "
            f"{counts['unreadable']} unreadable"
        )
    return 0


def _one(
    tier: Any, name: str, kind: bytes, ttl: float | None, to_fields: bool, min_bytes: int, dry: bool
) -> str:
    if kind == b"none":
        return "changed"  # gone since the scan
    if kind not in (b"string", b"hash"):
        return "skipped"  # a foreign key under the namespace: not ours to touch
    if (kind == b"hash") == to_fields:
        return "already"
    data = tier.get(name)
    if data is None:
        return "changed"
    try:
        env = decode(data)
    except CorruptEntryError:
        return "unreadable"
    if not to_fields:
        if dry:
            return "converted"
        ok = tier.compare_and_set(name, bytes(data), ttl, env.version)
        return "converted" if ok else "changed"
    if len(data) < min_bytes:
        return "small"
    laid = as_fields(data)
    if laid is None:
        return "skipped"
    if dry:
        return "converted"
    new, delta = laid
    ok = tier.compare_and_set_fields(name, new, ttl, env.version, delta)
    return "converted" if ok else "changed"
