"""What the write path sends the shared tier: compare-and-set items (plain,
or of the fields layout, tiercache._fields) and the call that sends them.

::

    Writer.seal(entry) ──> parts_for(core, entry, changed)
        not a dict root / tier or serializer cannot / small ──> None (one string)
        parts known and trusted ──> refresh only the changed fields
        else ──────────────────────> every field serialized (Parts.build)
    Writer.write_flow ──> cas_item(core, entry, data)
        the pending bytes are the parts' ──> a Delta: the changed fields (the
            hash is stored at the version expected) or all of them (replace)
        else ──────────────────────────────> a plain compare-and-set item
    ──> cas_flow(core, items): one call, or one pipelined batch
    a merge ──> merged_parts: fields again when it merged with a hash
    written ──> stored_as(entry, data, version): the entry knows the layout

Parts are trusted for a refresh only once the bytes made from them were
written (or, under write-behind, sealed clean): a scope rolled back after
a failed write leaves them describing changes that are gone, so the next
seal serializes every field again.
"""

from __future__ import annotations

from typing import Any

from ._core import Core
from ._exceptions import TierError
from ._fields import Assembled, Delta, Parts, head_of
from ._flow import Call, Flow
from ._tiers._base import CasItem
from ._tiers._memory import Entry
from ._tiers._redis_fields import FieldsCasItem

__all__ = [
    "cas_flow",
    "cas_item",
    "cas_method",
    "forget_parts",
    "merged_parts",
    "parts_for",
    "stored_as",
]


def parts_for(core: Core, entry: Entry, changed: Any, *, clean: bool) -> Parts | None:
    """The parts to seal ``entry`` from, refreshed; None for one string.
    ``changed``: the fields changed since the clean point (None: unknown)."""
    limit = core.fields_min
    root = entry.root
    if limit is None or root is None or root.kind != "d":
        forget_parts(entry)
        return None
    parts: Parts | None = entry.parts
    if parts is None and entry.size < limit:
        return None
    dumps = core.serializer.dumps
    value = entry.value
    if parts is None or not entry.parts_ok or changed is None or entry.base is None:
        # In the stored hash's blocks, so a write can still be a delta.
        parts = Parts.build(value, dumps, entry.fields_blocks)
    else:
        # Changed since the clean point, and since the stored version: a
        # write-behind exit moves the clean point without sealing
        # (Writer.seal_later), and records its fields in the base only.
        parts.refresh(value, {*changed, *entry.base}, dumps)
    entry.parts = parts
    # Trusted again once what is sealed from them is the clean point.
    entry.parts_ok = clean
    return parts


def forget_parts(entry: Entry) -> None:
    entry.parts = None
    entry.parts_data = None
    entry.parts_ok = False


def merged_parts(core: Core, e: Entry, raw: bytes | None) -> Parts | None:
    """The parts of a merged value when what it merged with (``raw``) is
    stored as fields, else None (forgotten: the value is new)."""
    forget_parts(e)
    root = e.root
    if type(raw) is not Assembled or core.fields_min is None or root is None or root.kind != "d":
        return None
    parts = Parts.build(e.value, core.serializer.dumps, raw.blocks)
    e.parts = parts
    return parts


def cas_item(
    core: Core,
    e: Entry,
    data: bytes,
    skey: str,
    ttl: float | None,
    *,
    expected: int | None = None,
    over: bytes | None = None,
) -> CasItem | FieldsCasItem:
    """What the shared tier's compare-and-set of ``e``'s pending ``data`` is:
    on the version ``e`` believes stored, or (a merge) on ``expected``, the
    version of ``over``, the bytes read."""
    parts = e.parts
    if parts is None or e.parts_data is not data:
        return (skey, data, ttl, e.stored if expected is None else expected)
    if expected is None:
        expected = e.stored
        delta_ok = bool(e.fields_at) and e.fields_at == e.stored
        delta_ok = delta_ok and e.fields_blocks == parts.blocks
    else:
        delta_ok = type(over) is Assembled and over.blocks == parts.blocks
    if delta_ok and e.base:
        put, gone = parts.delta(e.base.keys(), core.serializer.dumps)
        delta = Delta(head_of(data), put, gone, full=False)
    else:
        delta = Delta(head_of(data), parts.all_fields(), [], full=True)
    return (skey, data, ttl, expected, delta)


def cas_method(item: CasItem | FieldsCasItem) -> str:
    return "compare_and_set_fields" if len(item) == 5 else "compare_and_set"


def cas_flow(core: Core, items: list[CasItem | FieldsCasItem]) -> Flow[list[bool | TierError]]:
    """Compare-and-set ``items`` on the shared tier: one call, or one
    pipelined batch. A batch the server refused (an error that is not
    an outage) is retried one item at a time, so the items it took are
    written and only the one it refuses carries the error. An outage
    raises."""
    last, counters = core.tiers[-1], core.counters[-1]
    if not items:
        return []
    if len(items) == 1:
        return [(yield Call(last, counters, cas_method(items[0]), items[0]))]
    try:
        return list((yield Call(last, counters, "compare_and_set_many", (items,))))
    except TierError as exc:
        if exc.transient:
            raise
    out: list[bool | TierError] = []
    for item in items:
        try:
            out.append((yield Call(last, counters, cas_method(item), item)))
        except TierError as exc:
            if exc.transient:
                raise
            out.append(exc)
    return out


def stored_as(e: Entry, data: bytes, version: int) -> None:
    """``e``'s pending ``data`` is stored at ``version`` (as fields when it
    was sealed from its parts: cas_item sends those as fields)."""
    if e.parts_data is data:
        e.fields_at = version
        e.fields_blocks = e.parts.blocks
        e.parts_ok = True
    else:
        # Stored from other bytes: the parts may not know what changed.
        e.fields_at = 0
        e.parts_ok = False
