"""Versions never repeat, and a stored version going backwards (a store
that lost acknowledged writes: a failover, a restore) is detected, counted,
logged, and repaired from what this process still holds."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from tiercache import MemoryTier, TieredCache
from tiercache._envelope import decode
from tiercache._sealing import _TIME_SHIFT
from tiercache.testing import DictTier, FakeClock


def raw(shared: DictTier, cache: TieredCache, key: str) -> bytes:
    data = shared.get(f"{cache.namespace}:{key}")
    assert data is not None
    return data


def version(shared: DictTier, cache: TieredCache, key: str) -> int:
    return decode(raw(shared, cache, key)).version


def test_versions_rise_and_start_from_the_clock_after_the_store_went_back(
    proc: Callable[..., TieredCache], shared: DictTier, clock: FakeClock
) -> None:
    cache = proc()
    core = cache._core
    first = core.next_version(0)
    assert first == int(clock.time() * 1000) << _TIME_SHIFT
    # Strictly increasing, by one while the clock stands still ...
    assert core.next_version(first) == first + 1
    # ... and never below the clock: a store that went back to an old
    # version does not make this write reuse the versions after it.
    clock.advance(2.0)
    assert core.next_version(first) == int(clock.time() * 1000) << _TIME_SHIFT
    far = (int(clock.time() * 1000) + 10_000) << _TIME_SHIFT  # a peer whose clock is ahead
    assert core.next_version(far) == far + 1


def rolled_back(shared: DictTier, cache: TieredCache, key: str, old: bytes) -> None:
    """What a failover that lost the last writes does: the older bytes back."""
    shared.set(f"{cache.namespace}:{key}", old)


def bump(s: dict[str, int]) -> None:
    s["n"] = s.get("n", 0) + 1


def test_a_write_over_a_rolled_back_key_restores_what_this_process_acknowledged(
    proc: Callable[..., TieredCache],
    shared: DictTier,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = proc()
    a.update("c", bump)
    old = raw(shared, a, "c")
    for _ in range(2):
        a.update("c", bump)  # n=3 acknowledged at version v3
    v3 = version(shared, a, "c")
    rolled_back(shared, a, "c", old)  # the store is back at n=1
    with caplog.at_level(logging.WARNING, logger="tiercache"):
        a.update("c", bump)
    # Without the detection, the merge would see n changed by both sides
    # (3 -> 4 here, 3 -> 1 there): a conflict, or n=2 with a resolver.
    assert proc().get("c") == {"n": 4}
    assert version(shared, a, "c") > v3, "never a version handed out before"
    assert a.stats().versions_backwards == 1
    assert "versions backwards 1" in str(a.stats())
    assert "'c' went back from version" in caplog.text


def test_a_field_only_the_rolled_back_store_holds_is_kept(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    a = proc()
    a.set("s", {"mine": 1, "old": True})
    old = raw(shared, a, "s")
    with a.session("s") as s:
        s["mine"] = 2
        del s["old"]
    rolled_back(shared, a, "s", old)
    with a.session("s") as s:
        s["more"] = True
    # Ours wins where we hold a field; "old", which only the store holds,
    # stays: a deletion it lost looks like a field another process added,
    # and keeping it loses nothing.
    assert proc().get("s") == {"mine": 2, "old": True, "more": True}
    assert a.stats().versions_backwards == 1


def test_revalidation_finds_a_rollback_and_writes_the_memory_copy_back(
    proc: Callable[..., TieredCache], shared: DictTier, clock: FakeClock
) -> None:
    a = proc(max_stale=1.0)
    a.set("k", {"v": 1})
    old = raw(shared, a, "k")
    with a.session("k") as s:
        s["v"] = 2
    acked = version(shared, a, "k")
    rolled_back(shared, a, "k", old)
    clock.advance(1.5)  # past max_stale: the next read revalidates
    assert a.get("k") == {"v": 2}, "what this process acknowledged is served"
    assert a.stats().versions_backwards == 1
    assert version(shared, a, "k") > acked
    assert proc().get("k") == {"v": 2}, "and it is stored again"
    assert a.stats().flushes["repair"] == 1


def test_an_absent_key_is_not_a_rollback(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    a = proc()
    a.update("c", bump)
    shared.delete(f"{a.namespace}:c")  # expired, or evicted: indistinguishable
    a.update("c", bump)
    assert a.stats().versions_backwards == 0


def test_a_cache_that_never_held_the_lost_version_is_not_alarmed(
    shared: DictTier, namespace: str, clock: FakeClock
) -> None:
    a = TieredCache(MemoryTier(), shared, namespace=namespace, clock=clock)
    a.update("c", bump)
    old = raw(shared, a, "c")
    a.update("c", bump)
    rolled_back(shared, a, "c", old)
    fresh = TieredCache(MemoryTier(), shared, namespace=namespace, clock=clock)
    fresh.update("c", bump)
    assert fresh.get("c") == {"n": 2} and fresh.stats().versions_backwards == 0
