"""``tiercache journal DIR show | replay``: a Journal directory's records.

``show`` reads the segments without taking the directory (the owning
process may be running). ``replay`` says, key by key, what a replay would
do against the tier named by ``--redis``/``--disk``; with ``--apply`` it
opens the journal as its owner (refused while another process owns it)
and replays it as a restarted process would: one merging compare-and-set
per key.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._envelope import safe_version
from .._exceptions import ConfigError, CorruptEntryError
from .._journal import _SEGMENT, Journal, Record, _chained, _decode, _read_frames
from .._serializers import MsgpackSerializer
from ._output import CliError, Progress, dump_json, table
from ._store import Store, open_store

__all__ = ["journal"]


def read_records(directory: str) -> tuple[list[tuple[str, Record]], int]:
    """Every record of the directory's segments, oldest first, with its
    segment's name; and how many bytes could not be read."""
    if not os.path.isdir(directory):
        raise CliError(f"no journal directory {directory!r}")
    serializer = MsgpackSerializer()
    names = sorted(n for n in os.listdir(directory) if _SEGMENT.match(n))
    out: list[tuple[str, Record]] = []
    last: dict[str, bytes] = {}
    bad = 0
    for name in names:
        frames, tail = _read_frames(os.path.join(directory, name))
        bad += len(tail)
        for payload in frames:
            try:
                out.append((name, _chained(_decode(payload, serializer), last)))
            except CorruptEntryError:
                bad += len(payload)
    return out, bad


def journal(args: argparse.Namespace) -> int:
    records, bad = read_records(args.directory)
    if args.action == "show":
        rows = [
            {
                "segment": seg,
                "key": r.key,
                "expected": r.expected,
                "version": safe_version(r.data),
                "bytes": len(r.data),
            }
            for seg, r in records
        ]
        if args.json:
            dump_json({"records": rows, "unreadable_bytes": bad})
        else:
            table(
                [tuple(r.values()) for r in rows],
                ("segment", "key", "expected", "version", "bytes"),
            )
            print(f"{len(rows)} record(s), {len({r['key'] for r in rows})} key(s)", end="")
            print(f", {bad} unreadable byte(s)" if bad else "")
        return 0
    return _replay(args, records)


def _replay(args: argparse.Namespace, records: list[tuple[str, Record]]) -> int:
    store = open_store(args)
    try:
        first: dict[str, Record] = {}
        for _, r in records:
            first.setdefault(r.key, r)
        plan: list[dict[str, Any]] = []
        progress = Progress("checking", len(first))
        for key, r in first.items():
            stored = store.get(key)
            now = 0 if stored is None else safe_version(stored)
            plan.append(
                {
                    "key": key,
                    "records": sum(1 for _, x in records if x.key == key),
                    "stored": now,
                    "action": "write" if now == r.expected else "merge",
                }
            )
            progress.advance()
        progress.finish(f"{len(plan)} key(s)")
        done = 0
        if args.apply and plan:
            done = _apply(store, args.directory)
        if args.json:
            dump_json({"keys": plan, "applied": args.apply, "replayed": done})
        else:
            table(
                [(p["key"], p["records"], p["stored"], p["action"]) for p in plan],
                ("key", "records", "stored version", "would" if not args.apply else "did"),
            )
            if args.apply:
                print(f"replayed {done} record(s) of {len(plan)} key(s)")
            else:
                print("dry run: nothing written (--apply replays)")
        return 0
    finally:
        store.close()


def _apply(store: Store, directory: str) -> int:
    from .._cache import TieredCache
    from .._tiers._memory import MemoryTier

    try:
        j = Journal(directory)
    except ConfigError as exc:
        raise CliError(f"cannot take the journal: {exc}") from None
    before = j.depth
    progress = Progress("replaying", before)
    # Opening a cache with a journal replays it, as a restarted process does.
    cache = TieredCache(
        MemoryTier(maxsize=16), store.fresh_tier(), namespace=store.namespace, journal=j
    )
    try:
        cache.flush()
        left = j.depth
    finally:
        cache.close()
    progress.advance(before - left)
    progress.finish()
    if left:
        raise CliError(f"{left} record(s) could not be replayed; they stay in the journal")
    return before
