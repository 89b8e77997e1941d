"""TieredCache over in-process tiers: read-through, promotion, single-flight,
write-back triggers, envelopes, TTL and stats. Redis and disk versions of
the I/O-sensitive cases live in tests/integration."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache import (
    MISSING,
    ConfigError,
    DetachedError,
    Expiry,
    InvalidKeyError,
    Journal,
    MemoryTier,
    PersistentTier,
    Quarantine,
    SerializationError,
    TierCacheError,
    TieredCache,
    WriteBehind,
)
from tiercache._envelope import decode
from tiercache.testing import DictTier, FakeClock


class CountingTier(DictTier):
    """A DictTier that counts calls and can be slowed down or broken."""

    def __init__(self, *, clock: FakeClock | None = None, delay: float = 0.0) -> None:
        super().__init__(clock=clock)
        self.delay = delay
        self.calls: dict[str, int] = {}
        self.fail = False
        self.fail_writes = False
        self._count_lock = threading.Lock()

    def _hit(self, name: str) -> None:
        with self._count_lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        if self.fail or (self.fail_writes and name.startswith("set")):
            raise ConnectionError("tier is down")
        if self.delay:
            time.sleep(self.delay)

    def get(self, key: str) -> bytes | None:
        self._hit("get")
        return super().get(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._hit("set")
        super().set(key, value, ttl)

    def set_many(self, items: Any) -> None:
        self._hit("set_many")
        super().set_many(items)

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        self._hit("set_cas")
        return super().compare_and_set(key, value, ttl, expected)

    def writes(self) -> int:
        return sum(n for name, n in self.calls.items() if name.startswith("set"))


@pytest.fixture
def tiers(clock: FakeClock) -> tuple[CountingTier, CountingTier]:
    return CountingTier(clock=clock), CountingTier(clock=clock)


@pytest.fixture
def make(clock: FakeClock, namespace: str) -> Iterator[Callable[..., TieredCache]]:
    made: list[TieredCache] = []

    def factory(*tiers: Any, **kw: Any) -> TieredCache:
        kw.setdefault("namespace", namespace)
        kw.setdefault("clock", clock)
        cache = TieredCache(*tiers, **kw)
        made.append(cache)
        return cache

    yield factory
    for c in made:
        c.close()


# -- reading ---------------------------------------------------------------------


def test_set_get_round_trip_and_missing_sentinel(make: Callable[..., TieredCache]) -> None:
    cache = make(MemoryTier())
    cache.set("none", None)
    assert cache.get("none", MISSING) is None
    assert cache.get("absent", MISSING) is MISSING
    assert cache.get("absent") is None
    assert cache.get("absent", 5) == 5
    cache.set("v", {"a": [1, 2], "s": {1}, "t": (1, 2)})
    assert cache.get("v") == {"a": [1, 2], "s": {1}, "t": (1, 2)}


def test_read_through_promotes_with_remaining_ttl(
    make: Callable[..., TieredCache], clock: FakeClock, tiers: tuple[CountingTier, CountingTier]
) -> None:
    upper, lower = tiers
    writer = make(MemoryTier(), lower, ttl=100)
    writer.set("k", {"x": 1})
    clock.advance(40)
    reader = make(MemoryTier(), upper, lower, ttl=100)
    assert reader.get("k") == {"x": 1}
    stored = upper.get(f"{reader.namespace}:k")
    assert stored is not None, "the hit below was promoted into the tier above"
    assert stored == lower.get(f"{reader.namespace}:k"), "promotion copies the same bytes"
    # The promoted copy keeps the *remaining* 60 s, not a fresh 100 s.
    clock.advance(59)
    assert upper.get(f"{reader.namespace}:k") is not None
    clock.advance(2)
    assert upper.get(f"{reader.namespace}:k") is None
    assert reader.stats().promotions == 1


def test_expired_entry_is_a_miss_everywhere(
    make: Callable[..., TieredCache], clock: FakeClock, tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), tiers[0], ttl=10)
    cache.set("k", 1)
    clock.advance(9.9)
    assert cache.get("k") == 1
    clock.advance(0.2)
    assert cache.get("k", MISSING) is MISSING


def test_sliding_expiry_refreshes_without_rewriting(
    make: Callable[..., TieredCache], clock: FakeClock, tiers: tuple[CountingTier, CountingTier]
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(), tier, ttl=Expiry(10, sliding=True, touch_every=2))
    cache.set("k", {"n": 1})
    writes = tier.writes()
    for _ in range(10):  # 30 s in all, each read inside the 10 s window
        clock.advance(3)
        assert cache.get("k") == {"n": 1}
    assert tier.writes() == writes, "a touch never rewrites the value"
    assert cache.stats().tier("dict").touches >= 5
    # The persistent copy is still alive although 30 s > ttl passed.
    assert tier.get(f"{cache.namespace}:k") is not None


def test_single_flight_threads(make: Callable[..., TieredCache], clock: FakeClock) -> None:
    slow = CountingTier(clock=clock, delay=0.05)
    make(MemoryTier(), slow).set("k", {"v": 1})
    slow.calls.clear()
    cache = make(MemoryTier(), slow)
    results: list[Any] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(cache.get("k"))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [{"v": 1}] * 16
    assert slow.calls["get"] == 1
    assert len({id(r) for r in results}) == 1, "one live object per key"


async def test_single_flight_tasks(make: Callable[..., TieredCache], clock: FakeClock) -> None:
    slow = CountingTier(clock=clock, delay=0.02)
    slow.async_inline = False  # type: ignore[misc]  # go through a thread, truly concurrent
    make(MemoryTier(), slow).set("k", {"v": 1})
    slow.calls.clear()
    cache = make(MemoryTier(), slow)
    results = await asyncio.gather(*(cache.aget("k") for _ in range(20)))
    assert results == [{"v": 1}] * 20
    assert slow.calls["get"] == 1


def test_get_hands_out_live_value_that_refuses_mutation(make: Callable[..., TieredCache]) -> None:
    cache = make(MemoryTier())
    cache.set("k", {"a": {"b": 1}})
    v = cache.get("k")
    assert v is cache.get("k")
    with pytest.raises(DetachedError):
        v["x"] = 1
    with pytest.raises(DetachedError):
        v["a"]["b"] = 2
    assert cache.get("k") == {"a": {"b": 1}}


# -- writing -----------------------------------------------------------------------


def test_read_only_scope_writes_nothing(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), *tiers)
    with cache.session("k") as s:
        s["n"] = 1
    before = [t.writes() for t in tiers]
    for _ in range(10):
        with cache.session("k") as s:
            assert s["n"] == 1
            _ = list(s.items()), len(s), "n" in s
    assert [t.writes() for t in tiers] == before
    assert cache.stats().writes_avoided == 10


def test_missing_key_read_only_scope_stores_nothing(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), *tiers)
    with cache.session("new", initial=lambda: {"count": 0}) as s:
        assert s == {"count": 0}
    assert [t.writes() for t in tiers] == [0, 0]
    assert cache.get("new", MISSING) is MISSING


def test_flush_serializes_once_and_writes_same_bytes_everywhere(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), *tiers)
    with cache.session("k") as s:
        s["a"] = [1, 2, 3]
    a = tiers[0].get(f"{cache.namespace}:k")
    b = tiers[1].get(f"{cache.namespace}:k")
    assert a is not None and a == b
    env = decode(a)
    assert env.version == cache._core.next_version(0), "a new key's first version"
    with cache.session("k") as s:
        s["a"].append(4)
    assert decode(tiers[1].get(f"{cache.namespace}:k") or b"").version == env.version + 1


def test_evicted_dirty_value_is_written_and_rereadable(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(maxsize=2), tier, flush=WriteBehind(3600))
    for i in range(5):
        with cache.session(f"k{i}") as s:
            s["i"] = i
    # Two fit in memory; the others were pushed out while still pending.
    assert tier.writes() == 0
    for i in range(5):
        assert cache.get(f"k{i}") == {"i": i}, "a pending value stays readable"
    cache.flush()
    assert cache.stats().flushes["explicit"] >= 3
    fresh = make(MemoryTier(), tier)
    for i in range(5):
        assert fresh.get(f"k{i}") == {"i": i}


def test_evicted_dirty_value_write_through_mode(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(maxsize=1), tier)
    with cache.session("a") as s:
        s["v"] = 1
    tier.fail_writes = True
    with cache.session("b") as s:
        # The write fails in a way that may have landed (a plain
        # ConnectionError from the tier): acknowledged, b stays pending.
        s["v"] = 2
    assert cache.stats().dirty == 1
    tier.fail_writes = False
    with cache.session("c") as s:  # pushes b out: it is written on eviction
        s["v"] = 3
    assert cache.stats().flushes["evict"] == 1
    assert make(MemoryTier(), tier).get("b") == {"v": 2}


def test_timer_coalesces_writes(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(), tier, flush=WriteBehind(0.05))
    for i in range(200):
        with cache.session("hot") as s:
            s["n"] = i
    assert tier.writes() <= 1, "scopes return at memory speed"
    deadline = time.monotonic() + 5
    while cache.stats().dirty and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.stats().dirty == 0
    assert tier.writes() <= 2, "200 changes of one key between ticks become one or two writes"
    assert make(MemoryTier(), tier).get("hot") == {"n": 199}


def test_close_flushes_pending(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(), tier, flush=WriteBehind(3600))
    with cache.session("k") as s:
        s["v"] = 1
    assert tier.writes() == 0
    cache.close()
    assert tier.writes() == 1
    assert cache.stats().flushes["close"] == 1


@pytest.mark.parametrize(
    "first, second",
    [("close", "close"), ("aclose", "close"), ("close", "aclose"), ("aclose", "aclose")],
)
def test_close_is_idempotent_in_any_mix_of_sync_and_async(
    make: Callable[..., TieredCache],
    tiers: tuple[CountingTier, CountingTier],
    first: str,
    second: str,
) -> None:
    """What a signal helper, an ``atexit`` hook and a framework's shutdown
    hook may all do to one cache: the first close flushes, the rest do
    nothing and raise nothing."""
    tier = tiers[0]
    cache = make(MemoryTier(), tier, flush=WriteBehind(3600))
    with cache.session("k") as s:
        s["v"] = 1

    def close(how: str) -> None:
        if how == "close":
            cache.close()
        else:
            asyncio.run(cache.aclose())

    close(first)
    assert tier.writes() == 1
    close(second)
    assert tier.writes() == 1, "nothing more to write"
    assert cache.stats().flushes["close"] == 1
    assert make(MemoryTier(), tier).get("k") == {"v": 1}
    with pytest.raises(TierCacheError, match="closed"), cache.session("k"):
        pass


#: Bad values must fail in the handler, at scope exit, under every policy:
#: never only later, in a background flush nobody sees.
POLICIES = {
    "write-through": lambda tmp: {},
    "write-behind": lambda tmp: {"flush": WriteBehind(3600)},
    "write-behind-journal": lambda tmp: {"flush": WriteBehind(3600), "journal": Journal(tmp)},
}


@pytest.mark.parametrize("policy", POLICIES)
def test_unserializable_value_raises_and_stores_nothing(
    make: Callable[..., TieredCache],
    tiers: tuple[CountingTier, CountingTier],
    policy: str,
    tmp_path: Path,
) -> None:
    cache = make(MemoryTier(), tiers[0], **POLICIES[policy](tmp_path / "j"))
    with cache.session("k") as s:
        s["ok"] = 1
    cache.flush()
    with (
        pytest.raises(SerializationError, match=r"'k': value\['bad'\]\['deep'\]\[1\]"),
        cache.session("k") as s,
    ):
        s["bad"] = {"deep": [1, object()]}
        s["ok"] = 2
    assert cache.get("k") == {"ok": 1}, "memory rolled back to the last commit"
    cache.flush()
    assert make(MemoryTier(), tiers[0]).get("k") == {"ok": 1}
    assert cache.stats().journal_depth == 0 and cache.stats().dirty == 0


# -- envelopes -----------------------------------------------------------------------


GARBAGE = [b"", b"garbage", b"TC\x01" + b"\x00" * 60, b"\x80\x04pickle", b"TC" + b"\xff" * 100]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_corrupt_bytes_are_a_counted_miss_and_quarantined(
    make: Callable[..., TieredCache],
    tiers: tuple[CountingTier, CountingTier],
    clock: FakeClock,
    garbage: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(), tier)
    skey = f"{cache.namespace}:bad"
    # Planted with no TTL of its own: only the envelope could expire it.
    tier.set(skey, garbage)
    with caplog.at_level(logging.WARNING, logger="tiercache"):
        assert cache.get("bad", MISSING) is MISSING
        assert cache.get("bad", MISSING) is MISSING
    st = cache.stats()
    assert st.corrupt_entries == 1, "the second read found the key absent, not corrupt"
    assert st.quarantined == 1
    assert tier.get(skey) is None, "moved out of the key"
    assert tier.get(f"{cache.namespace}\x00quarantine\x00bad") == garbage, (
        "kept, exactly, to inspect"
    )
    clock.advance(Quarantine().keep + 1)
    assert tier.get(f"{cache.namespace}\x00quarantine\x00bad") is None, "for a week, then gone"
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1
    assert "quarantine" in warnings[0].getMessage()
    if len(garbage) > 4:
        assert repr(garbage[:12]) not in caplog.text, "stored bytes are never logged"


def test_quarantine_keep_zero_deletes_the_bad_bytes(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(), tier, corrupt=Quarantine(keep=0))
    skey = f"{cache.namespace}:bad"
    tier.set(skey, b"garbage")
    assert cache.get("bad", MISSING) is MISSING
    assert tier.get(skey) is None and tier.get(f"{cache.namespace}\x00quarantine\x00bad") is None
    assert cache.stats().quarantined == 1


def test_a_repair_that_races_the_quarantine_wins(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    """The move happens only if the key still holds the bad bytes: a
    writer that replaced them between our read and the move keeps its
    value."""
    tier = tiers[0]
    writer = make(MemoryTier(), tier)
    skey = f"{writer.namespace}:k"
    tier.set(skey, b"garbage")
    real_get = tier.get

    def get_then_repair(key: str) -> bytes | None:
        raw = real_get(key)
        if key == skey and raw == b"garbage":
            writer.set("k", {"repaired": True})  # lands before the move
        return raw

    tier.get = get_then_repair  # type: ignore[method-assign]
    reader = make(MemoryTier(), tier)
    assert reader.get("k", MISSING) is MISSING  # it read the bad bytes
    tier.get = real_get  # type: ignore[method-assign]
    assert reader.stats().quarantined == 0
    assert make(MemoryTier(), tier).get("k") == {"repaired": True}


class NoQuarantine(CountingTier):
    """A user's tier that cannot move bytes atomically (the default)."""

    def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        return PersistentTier.quarantine(self, key, bad, to, keep)


def test_a_tier_without_quarantine_leaves_the_entry_and_is_still_logged_once(
    make: Callable[..., TieredCache], caplog: pytest.LogCaptureFixture
) -> None:
    tier = NoQuarantine()
    cache = make(MemoryTier(), tier)
    tier.set(f"{cache.namespace}:bad", b"garbage")
    with caplog.at_level(logging.WARNING, logger="tiercache"):
        for _ in range(3):
            # Unreadable is not absent: it is not remembered as a miss, so a
            # passing fault (a flaky serializer) cannot hide a stored value.
            assert cache.get("bad", MISSING) is MISSING
    assert cache.stats().corrupt_entries == 3
    assert cache.stats().quarantined == 0
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "left in place" in warnings[0].getMessage()
    with cache.session("bad") as s:  # the next write replaces the bad bytes
        s["fixed"] = True
    assert make(MemoryTier(), tier).get("bad") == {"fixed": True}


def test_corrupt_upper_copy_falls_through_to_good_lower_copy(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    upper, lower = tiers
    make(MemoryTier(), lower).set("k", {"good": True})
    cache = make(MemoryTier(), upper, lower)
    upper.set(f"{cache.namespace}:k", b"TC-corrupt")
    assert cache.get("k") == {"good": True}
    repaired = decode(upper.get(f"{cache.namespace}:k") or b"")
    assert repaired.version == decode(lower.get(f"{cache.namespace}:k") or b"").version, (
        "repaired by promotion"
    )


# -- validation and stats --------------------------------------------------------------


@pytest.mark.parametrize("key", [42, b"bytes", None, ("t",), "", "x" * 2000])
def test_bad_keys_are_rejected(make: Callable[..., TieredCache], key: Any) -> None:
    cache = make(MemoryTier())
    with pytest.raises(InvalidKeyError):
        cache.get(key)
    with pytest.raises(InvalidKeyError):
        cache.set(key, 1)
    with pytest.raises(InvalidKeyError), cache.session(key):
        pass


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": ""},
        {"ttl": -1},
        {"ttl": float("nan")},
        {"flush": "timer"},
        {"max_key_length": 0},
        {"serializer": object()},
    ],
)
def test_bad_config_is_rejected_at_construction(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("namespace", "ns")
    with pytest.raises(ConfigError):
        TieredCache(MemoryTier(), **kwargs)


def test_bad_tier_order_is_rejected(tiers: tuple[CountingTier, CountingTier]) -> None:
    with pytest.raises(ConfigError, match="MemoryTier"):
        TieredCache(tiers[0], namespace="n")
    with pytest.raises(ConfigError):
        MemoryTier(maxsize=0)
    with pytest.raises(ConfigError):
        WriteBehind(0)


def test_stats_snapshot_is_frozen_and_readable(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), *tiers)
    with cache.session("k") as s:
        s["a"] = 1
    cache.get("k")
    cache.get("missing")
    snap = cache.stats()
    cache.get("k")
    assert snap.tier("memory").hits == 1
    assert cache.stats().tier("memory").hits == 2
    assert snap.tier("memory").misses == 2
    assert snap.flushes["exit"] == 1
    assert snap.tiers[1].writes == snap.tiers[2].writes == 1, "one write, to each tier"
    text = str(snap)
    for word in ("memory", "dict", "hits", "writes avoided", "flushes"):
        assert word in text
    d = snap.as_dict()
    assert d["flushes_total"] == 1
    with pytest.raises(AttributeError):
        snap.loads = 5  # type: ignore[misc]


def test_oldest_dirty_age_is_reported(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier], clock: FakeClock
) -> None:
    cache = make(MemoryTier(), tiers[0], flush=WriteBehind(3600))
    with cache.session("k") as s:
        s["v"] = 1
    clock.advance(12)
    st = cache.stats()
    assert st.dirty == 1
    assert st.oldest_dirty_age_s == pytest.approx(12)


def test_delete_removes_from_every_tier(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), *tiers)
    cache.set("k", 1)
    old = cache.get("k")
    before = decode(tiers[1].get(f"{cache.namespace}:k") or b"").version
    assert cache.delete("k") is True
    assert cache.get("k", MISSING) is MISSING
    assert tiers[0].get(f"{cache.namespace}:k") is None
    # The shared tier keeps a tombstone: absent to every reader, at the next
    # version, so the key's versions never start over (issue #10.3).
    tomb = decode(tiers[1].get(f"{cache.namespace}:k") or b"")
    assert tomb.tombstone and tomb.version == before + 1
    assert cache.delete("k") is False
    del old


async def test_async_api_mirrors_sync(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(), *tiers)
    await cache.aset("k", {"a": 1})
    assert await cache.aget("k") == {"a": 1}
    async with cache.session("k") as s:
        s["b"] = 2
    assert await cache.aget("k") == {"a": 1, "b": 2}
    assert await cache.atouch("k") is True
    assert await cache.adelete("k") is True
    assert await cache.aget("k", MISSING) is MISSING
    await cache.aflush()
    await cache.aclose()


def test_a_miss_is_remembered_until_the_key_is_written(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier], clock: FakeClock
) -> None:
    tier = tiers[0]
    cache = make(MemoryTier(), tier, ttl=60)
    for _ in range(5):
        with cache.session("new") as s:
            assert s == {}
        assert cache.get("new", MISSING) is MISSING
    assert tier.calls["get"] == 1, "a missing key costs one read, not one per request"
    with cache.session("new") as s:
        s["x"] = 1
    assert cache.get("new") == {"x": 1}
    cache.delete("new")
    assert cache.get("new", MISSING) is MISSING
    assert tier.calls["get"] == 1
    clock.advance(61)  # remembered misses expire with the cache's TTL
    assert cache.get("new", MISSING) is MISSING
    assert tier.calls["get"] == 2


def test_memory_tier_bounded_by_bytes_too(
    make: Callable[..., TieredCache], tiers: tuple[CountingTier, CountingTier]
) -> None:
    cache = make(MemoryTier(maxsize=1000, max_bytes=2000), tiers[0])
    for i in range(20):
        cache.set(f"k{i}", {"blob": "x" * 300, "i": i})  # ~350 bytes sealed
    st = cache.stats()
    assert st.tier("memory").size is not None and st.tier("memory").size <= 6
    assert st.evictions >= 14
    assert [cache.get(f"k{i}")["i"] for i in range(20)] == list(range(20)), "read back from below"


@pytest.mark.parametrize("policy", POLICIES)
def test_a_value_over_the_byte_budget_fails_in_the_handler_and_stores_nothing(
    make: Callable[..., TieredCache],
    tiers: tuple[CountingTier, CountingTier],
    policy: str,
    tmp_path: Path,
) -> None:
    from tiercache import ValueTooLargeError

    cache = make(MemoryTier(), tiers[0], max_value_bytes=1000, **POLICIES[policy](tmp_path / "j"))
    with cache.session("k") as s:
        s["small"] = "x" * 10
    cache.flush()
    writes = tiers[0].writes()
    with (
        pytest.raises(ValueTooLargeError, match=r"'k'.*value\['history'\]"),
        cache.session("k") as s,
    ):
        s["history"] = ["line"] * 500
        s["small"] = "y"
    cache.flush()
    assert tiers[0].writes() == writes, "nothing was written"
    assert cache.get("k") == {"small": "x" * 10}, "the session is as before the scope"
    with pytest.raises(ConfigError):
        make(MemoryTier(), max_value_bytes=0)
