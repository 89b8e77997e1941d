"""The commands of ``tiercache`` (parsing and exit codes: ``__init__``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .._envelope import decode, peek_version
from .._exceptions import CorruptEntryError
from .._fields import Assembled
from .._serializers import MsgpackSerializer
from ._output import CliError, dump_json, envelope_facts, plain, table
from ._store import Store, open_store

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    if args.command == "journal":
        from ._journal import journal

        return journal(args)
    store = open_store(args)
    try:
        if args.command == "top":
            from ._top import top

            return top(store, args)
        if args.command == "convert":
            from ._convert import convert

            return convert(store, args)
        command = {
            "keys": keys,
            "inspect": inspect,
            "delete": delete,
            "quarantine": quarantine,
        }[args.command]
        return command(store, args)
    finally:
        store.close()


def keys(store: Store, args: argparse.Namespace) -> int:
    """One key a line (``--json``: one JSON string a line), as SCAN finds
    them: nothing is held in memory, so any number of keys streams."""
    out = sys.stdout
    n = 0
    for key in store.keys(args.pattern):
        out.write((dump_line(key) if args.json else key) + "\n")
        n += 1
        if args.limit is not None and n >= args.limit:
            break
    out.flush()
    return 0


def dump_line(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def describe(store: Store, key: str, data: bytes) -> dict[str, Any]:
    """What ``inspect`` shows of stored bytes (CorruptEntryError: unreadable)."""
    env = decode(data)
    doc: dict[str, Any] = {"key": key, "namespace": store.namespace, "tier": store.kind}
    layout = store.layout(key)
    if type(data) is Assembled:
        layout = f"fields ({data.blocks} blocks)"
    doc["layout"] = layout
    doc.update(envelope_facts(env, len(data)))
    ttl = store.ttl(key)
    doc["ttl_s"] = None if ttl is None else round(ttl, 3)
    if env.tombstone:
        doc["value"] = None
        return doc
    if env.serializer_id == MsgpackSerializer.id:
        try:
            doc["value"] = plain(MsgpackSerializer().loads(env.payload))
        except Exception as exc:  # a registered class this tool does not know
            doc["value"] = None
            doc["value_error"] = f"{type(exc).__name__}: {exc}"
    else:
        doc["value"] = None
        doc["value_error"] = "only msgpack payloads are decoded here (pickle runs code on load)"
    return doc


def inspect(store: Store, args: argparse.Namespace) -> int:
    data = store.get(args.key)
    if data is None:
        raise CliError(f"no key {args.key!r} in namespace {store.namespace!r}")
    try:
        doc = describe(store, args.key, data)
    except CorruptEntryError as exc:
        raise CliError(
            f"key {args.key!r} is unreadable ({exc}); the cache treats it as a miss and "
            "quarantines it when it reads it"
        ) from None
    if doc["tombstone"]:
        raise CliError(
            f"key {args.key!r} was deleted (a tombstone at version {doc['version']} "
            "keeps its versions from repeating)"
        )
    if args.json:
        dump_json(doc)
        return 0
    value = doc.pop("value")
    table([(k, v) for k, v in doc.items()], ("field", "value"))
    print()
    dump_json(value)
    return 0


def delete(store: Store, args: argparse.Namespace) -> int:
    cache = store.cache()
    try:
        existed = cache.delete(args.key)
    finally:
        cache.close()
    if not existed:
        raise CliError(f"no key {args.key!r} in namespace {store.namespace!r}")
    if args.json:
        dump_json({"key": args.key, "deleted": True})
    else:
        print(f"deleted {args.key!r}")
    return 0


def quarantine(store: Store, args: argparse.Namespace) -> int:
    action = args.action
    if action == "list":
        rows = []
        for key in store.quarantined(args.pattern):
            data = store.get_quarantined(key)
            if data is None:
                continue  # expired since the scan
            rows.append({"key": key, "bytes": len(data), "reason": _reason(data)})
        if args.json:
            dump_json(rows)
        else:
            table([(r["key"], r["bytes"], r["reason"]) for r in rows], ("key", "bytes", "reason"))
        return 0
    if action == "purge":
        names = list(store.quarantined()) if args.all else args.keys
        if not names:
            raise CliError("name the keys to purge, or --all", 2)
        missing = [k for k in names if not store.purge(k)]
        if args.json:
            dump_json({"purged": [k for k in names if k not in missing], "missing": missing})
        else:
            print(f"purged {len(names) - len(missing)} quarantined entr(ies)")
        if missing and not args.all:
            raise CliError(f"nothing quarantined for {', '.join(map(repr, missing))}")
        return 0
    key = args.key
    data = store.get_quarantined(key)
    if data is None:
        raise CliError(f"nothing quarantined for {key!r} in namespace {store.namespace!r}")
    if action == "show":
        doc = {"key": key, "bytes": len(data), "reason": _reason(data), "head": data[:64].hex()}
        try:
            doc.update(describe(store, key, data))
            doc.pop("ttl_s", None)
            doc.pop("layout", None)
        except CorruptEntryError:
            pass
        if args.json:
            dump_json(doc)
        else:
            table([(k, v) for k, v in doc.items() if k != "value"], ("field", "value"))
        return 0
    # restore
    if not store.restore(key, data):
        raise CliError(
            f"key {key!r} has a value (or a tombstone) now; the quarantined bytes are kept"
        )
    store.purge(key)
    if args.json:
        dump_json({"key": key, "restored": True, "version": _version(data)})
    else:
        print(f"restored {key!r} ({len(data)} bytes)")
    return 0


def _reason(data: bytes) -> str:
    try:
        decode(data)
    except CorruptEntryError as exc:
        return str(exc)
    try:
        env = decode(data)
        MsgpackSerializer().loads(env.payload) if env.serializer_id == 1 else None
    except Exception as exc:
        return f"payload: {type(exc).__name__}"
    return "readable now (a serializer or secret changed since?)"


def _version(data: bytes) -> int | None:
    try:
        return peek_version(data)
    except CorruptEntryError:
        return None
