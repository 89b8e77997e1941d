"""tiercache.ptb under random interleavings of two "processes" (two caches
over one shared tier, a bus that may drop messages), driven the way PTB
drives a persistence: ``refresh_user_data`` before each handler, the
handler changing PTB's own dict, ``update_user_data`` with a deep copy
every so often. Whatever the order, no change is lost: Counters end at
the sum of every increment, keys only one process sets hold its last
value, and a plain int ends at its increments minus those reported as
dropped (with the values), never fewer."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import MISSING, Counter, LocalBus, LocalHub, MemoryTier, TieredCache
from tiercache.ptb import TierCachePersistence
from tiercache.testing import DictTier

KEY = "ptb:user:1"

steps = st.lists(
    st.tuples(
        st.integers(0, 1),  # which process
        st.sampled_from(["inc", "inc_nested", "int", "set", "persist", "drop_bus"]),
        st.integers(0, 2),  # which field
    ),
    max_size=30,
)


async def play(script: list[tuple[int, str, int]]) -> int:
    """Run ``script``; the merges the caches made (lost compare-and-sets)."""
    shared, hub = DictTier(), LocalHub()
    caches = [
        TieredCache(MemoryTier(), shared, namespace="sim", bus=LocalBus(hub, namespace="sim"))
        for _ in range(2)
    ]
    persistence = [TierCachePersistence(c) for c in caches]
    live: list[dict[Any, Any]] = [{}, {}]
    counts: dict[str, int] = {}
    last: dict[str, int] = {}
    try:
        for n, (who, op, field) in enumerate(script):
            p, data = persistence[who], live[who]
            if op == "persist":
                await p.update_user_data(1, copy.deepcopy(data))
                continue
            if op == "drop_bus":
                bus = caches[1 - who]._bus  # the other process misses what this one writes
                assert isinstance(bus, LocalBus)
                bus.drop_next(1)
                continue
            await p.refresh_user_data(1, data)  # PTB, before the handler
            if op == "inc":
                name = f"c{field}"
                data[name] = data.get(name, Counter()) + 1
                counts[name] = counts.get(name, 0) + 1
            elif op == "int":  # a plain int: a race is a conflict, reported
                name = f"i{field}"
                data[name] = data.get(name, 0) + 1
                counts[name] = counts.get(name, 0) + 1
            elif op == "inc_nested":
                name = f"n{field}"
                box = data.setdefault("deep", {})
                box[name] = box.get(name, Counter()) + 1
                counts["deep." + name] = counts.get("deep." + name, 0) + 1
            else:  # a key only this process sets
                name = f"p{who}.{field}"
                data.setdefault("own", {})[name] = n
                last[name] = n
        for who in (0, 1):  # what Application.stop() does
            await persistence[who].update_user_data(1, copy.deepcopy(live[who]))
            await persistence[who].flush()
        reader = TieredCache(MemoryTier(), shared, namespace="sim", bus=None)
        stored = reader.get_copy(KEY, {})
        reader.close()
        got = {k: v for k, v in stored.items() if k.startswith(("c", "i"))}
        got.update({f"deep.{k}": v for k, v in stored.get("deep", {}).items()})
        # A plain int loses the increments of a conflict, each one logged
        # and reported with the values: stored + reported == counted.
        for p in persistence:
            for _, c in p.recent_conflicts:
                assert len(c.path) == 1 and c.path[0].startswith("i"), c
                base = 0 if c.base is MISSING else c.base
                got[c.path[0]] = got.get(c.path[0], 0) + c.ours - base
        assert got == counts
        assert stored.get("own", {}) == last
        return sum(c.stats().merges for c in caches)
    finally:
        for c in caches:
            await c.aclose()


@settings(max_examples=60, deadline=None)
@given(steps)
def test_two_processes_lose_nothing_whatever_the_order(script: list[tuple[int, str, int]]) -> None:
    asyncio.run(play(script))
