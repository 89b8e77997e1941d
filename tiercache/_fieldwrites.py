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
    written ──> stored_as(entry, data, version, as_fields): the entry knows the layout

Parts are trusted for a refresh only once the bytes made from them were
written (or, under write-behind, sealed clean): a scope rolled back after
a failed write leaves them describing changes that are gone, so the next
seal serializes every field again.
"""

from __future__ import annotations

from typing import Any

from ._core import Core
from ._exceptions import TierError
from ._fields import Delta, Parts, head_of
from ._flow import Call, Flow
from ._tiers._base import CasItem
from ._tiers._memory import Entry
from ._tiers._redis_fields import FieldsCasItem

__all__ = ["cas_flow", "cas_item", "forget_parts", "parts_for", "stored_as"]


def fields_min(core: Core) -> int | None:
    """The size from which the shared tier stores a value as fields, or
    None when it (or the serializer) cannot."""
    if not core.tiers or not getattr(core.serializer, "splits_maps", False):
        return None
    last = core.tiers[-1]
    if not getattr(last, "supports_fields", False):
        return None
    limit = getattr(last, "fields_min_bytes", None)
    return limit if isinstance(limit, int) else None


def parts_for(core: Core, entry: Entry, changed: Any, *, clean: bool) -> Parts | None:
    """The parts to seal ``entry`` from, refreshed; None for one string.
    ``changed``: the fields changed since the clean point (None: unknown)."""
    limit = fields_min(core)
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
        parts = Parts.build(value, dumps)
    else:
        parts.refresh(value, changed, dumps)
    entry.parts = parts
    # Trusted again once what is sealed from them is the clean point.
    entry.parts_ok = clean
    return parts


def forget_parts(entry: Entry) -> None:
    entry.parts = None
    entry.parts_data = None
    entry.parts_ok = False


def cas_item(
    core: Core, e: Entry, data: bytes, skey: str, ttl: float | None
) -> CasItem | FieldsCasItem:
    """What the shared tier's compare-and-set of ``e``'s pending ``data`` is."""
    parts = e.parts
    if parts is None or e.parts_data is not data:
        return (skey, data, ttl, e.stored)
    if e.fields_at and e.fields_at == e.stored and e.base:
        put, gone = parts.delta(e.base.keys(), core.serializer.dumps)
        delta = Delta(head_of(data), put, gone, full=False)
    else:
        delta = Delta(head_of(data), parts.all_fields(), [], full=True)
    return (skey, data, ttl, e.stored, delta)


def _cas_method(item: CasItem | FieldsCasItem) -> str:
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
        return [(yield Call(last, counters, _cas_method(items[0]), items[0]))]
    try:
        return list((yield Call(last, counters, "compare_and_set_many", (items,))))
    except TierError as exc:
        if exc.transient:
            raise
    out: list[bool | TierError] = []
    for item in items:
        try:
            out.append((yield Call(last, counters, _cas_method(item), item)))
        except TierError as exc:
            if exc.transient:
                raise
            out.append(exc)
    return out


def stored_as(e: Entry, data: bytes, version: int, as_fields: bool) -> None:
    """``e``'s pending ``data`` is stored at ``version``."""
    e.fields_at = version if as_fields else 0
    if e.parts_data is data:
        e.parts_ok = True
