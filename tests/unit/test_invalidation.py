"""Caches that learn about each other's writes: invalidation through a bus,
gaps, and the ``max_stale`` bound when the bus is down or absent. Two caches
with in-process buses stand for two processes; the real-Redis, real-process
versions are in tests/integration/test_consistency.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache import (
    DiskTier,
    LocalBus,
    LocalHub,
    MemoryTier,
    TieredCache,
    WriteBehind,
)
from tiercache.testing import DictTier, FakeClock


class CountingDict(DictTier):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.gets = 0

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        return super().get(key)


@pytest.fixture
def shared(clock: FakeClock) -> CountingDict:
    return CountingDict(clock)


@pytest.fixture
def hub() -> LocalHub:
    return LocalHub()


@pytest.fixture
def proc(
    shared: CountingDict, namespace: str, clock: FakeClock, hub: LocalHub
) -> Iterator[Callable[..., TieredCache]]:
    made: list[TieredCache] = []

    def factory(*upper: Any, bus: bool = True, **kw: Any) -> TieredCache:
        if bus:
            kw["bus"] = LocalBus(hub, namespace=namespace, clock=clock)
        cache = TieredCache(MemoryTier(), *upper, shared, namespace=namespace, clock=clock, **kw)
        made.append(cache)
        return cache

    yield factory
    for c in made:
        c.close()


def test_a_write_drops_other_processes_copies_lazily(
    proc: Callable[..., TieredCache], shared: CountingDict
) -> None:
    a, b = proc(), proc()
    a.set("k", {"v": 1})
    assert b.get("k") == {"v": 1}
    gets = shared.gets
    with a.session("k") as s:
        s["v"] = 2
    assert shared.gets == gets, "no refresh storm: b reloads only when asked"
    assert b.stats().invalidations == 1
    assert b.get("k") == {"v": 2}
    assert shared.gets == gets + 1
    a.delete("k")
    assert b.get("k") is None


def test_own_writes_do_not_invalidate(proc: Callable[..., TieredCache]) -> None:
    a, _ = proc(), proc()
    a.set("k", {"v": 1})
    with a.session("k") as s:
        s["v"] = 2
    assert a.stats().invalidations == 0


def test_pending_changes_are_not_dropped_but_merged(
    proc: Callable[..., TieredCache],
) -> None:
    a, b = proc(), proc(flush=WriteBehind(3600))
    a.set("k", {"x": 0, "y": 0})
    with b.session("k") as s:
        s["y"] = 1  # pending in b, not yet written
    with a.session("k") as s:
        s["x"] = 1  # b hears of it, but keeps its unwritten change
    assert b.get("k") == {"x": 0, "y": 1}
    b.flush()
    assert proc(bus=False).get("k") == {"x": 1, "y": 1}


def test_a_gap_drops_every_clean_copy(proc: Callable[..., TieredCache]) -> None:
    a, b = proc(), proc()
    a.set("k1", 1)
    a.set("k2", 2)
    assert b.get("k1") == 1 and b.get("k2") == 2
    bus: LocalBus = b._bus  # type: ignore[assignment]
    bus.disconnect()
    a.set("k1", 10)
    bus.reconnect(gap=True)  # the missed message is gone: all copies are suspect
    assert b.stats().bus_gaps == 1
    assert b.get("k1") == 10
    assert b.stats().tier("memory").size == 1


def test_missed_messages_are_replayed(proc: Callable[..., TieredCache]) -> None:
    a, b = proc(), proc()
    a.set("k", 1)
    assert b.get("k") == 1
    bus: LocalBus = b._bus  # type: ignore[assignment]
    bus.disconnect()
    a.set("k", 2)
    assert b.stats().bus_healthy is False
    bus.reconnect()
    assert b.get("k") == 2


def test_max_stale_without_a_bus_rereads_the_shared_tier(
    proc: Callable[..., TieredCache], clock: FakeClock, shared: CountingDict
) -> None:
    a, b = proc(bus=False), proc(bus=False, max_stale=5)
    a.set("k", 1)
    assert b.get("k") == 1
    a.set("k", 2)
    clock.advance(4)
    assert b.get("k") == 1, "within max_stale the memory copy is served"
    clock.advance(2)
    assert b.get("k") == 2, "past max_stale it is re-read"
    gets = shared.gets
    clock.advance(6)
    assert b.get("k") == 2
    assert shared.gets == gets + 1, "a current copy costs one version re-read"
    assert b.stats().revalidations == 2


def test_max_stale_is_a_hard_bound_even_with_a_healthy_bus(
    proc: Callable[..., TieredCache], clock: FakeClock, shared: CountingDict
) -> None:
    """The bus makes invalidation immediate; max_stale still re-checks each
    copy once per period (one version read), because a writer whose
    publish was lost would otherwise leave it stale for good."""
    a, b = proc(), proc(max_stale=5)
    a.set("k", 1)
    assert b.get("k") == 1
    a.set("k", 2)
    assert b.get("k") == 2, "invalidated at once by the bus"
    gets = shared.gets
    for _ in range(3):
        assert b.get("k") == 2  # within max_stale: served from memory
    assert shared.gets == gets
    clock.advance(6)
    assert b.get("k") == 2
    assert shared.gets == gets + 1, "one version re-read per max_stale period"
    bus: LocalBus = b._bus  # type: ignore[assignment]
    bus.disconnect()
    bus.drop_next(1)  # a message lost on the way
    a.set("k", 3)
    clock.advance(6)
    assert b.get("k") == 3, "with the bus down, max_stale forces a re-read"
    assert b.stats().bus_healthy is False


def test_invalidation_drops_the_local_disk_copy(
    proc: Callable[..., TieredCache], tmp_path: Path
) -> None:
    disk = DiskTier(tmp_path / "d")
    a, b = proc(), proc(disk)
    a.set("k", {"v": 1})
    assert b.get("k") == {"v": 1}
    assert disk.get(f"{b.namespace}:k") is not None
    a.set("k", {"v": 2})
    assert disk.get(f"{b.namespace}:k") is None, "the stale local copy is gone"
    assert b.get("k") == {"v": 2}


def test_bus_state_is_in_stats(proc: Callable[..., TieredCache]) -> None:
    b = proc()
    st = b.stats()
    assert st.bus_healthy is True
    assert "bus healthy" in str(st)
    assert st.tier("bus").name == "bus"


def test_an_old_local_copy_is_confirmed_before_it_is_served(
    proc: Callable[..., TieredCache], tmp_path: Path, clock: FakeClock
) -> None:
    """Processes on one host share a disk tier; a copy left there while no
    process was listening is checked against the shared tier first."""
    disk = DiskTier(tmp_path / "d")
    first = proc(disk)
    first.set("k", {"v": 1})  # in disk and in the shared tier
    first.close()
    clock.advance(60)
    other = proc(bus=False)
    other.set("k", {"v": 2})  # nobody on this host heard about it
    clock.advance(1)
    late = proc(disk)  # starts now: its bus cannot vouch for the old disk copy
    assert late.get("k") == {"v": 2}
    assert late.stats().revalidations == 1
    assert disk.get(f"{late.namespace}:k") is not None, "re-promoted, current"
