"""The read-side API adapters need, on every tier shape, sync and async:
``current`` (the open scope's live value), ``get_copy`` (detached),
``get_many`` (batches), ``keys`` (listing with a glob) and the
version-checked write (``get_versioned`` + ``set(expected_version=)``).

Each shape is two caches over the same persistent tiers: two processes,
as far as the shared tier can tell (the multi-process tests elsewhere use
real processes; these are about what each call returns)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache import (
    MISSING,
    ConfigError,
    ConflictError,
    DiskTier,
    InvalidKeyError,
    MemoryTier,
    PersistentTier,
    RedisTier,
    TieredCache,
    WriteBehind,
)
from tiercache._envelope import peek_version
from tiercache._keys import glob_match

SHAPES = [
    "memory",
    "disk",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
]

Pair = Callable[..., tuple[TieredCache, TieredCache]]


@pytest.fixture(params=SHAPES)
def pair(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Pair]:
    """``pair()``: two caches of one namespace over the same shared tier
    (memory: one cache twice)."""
    made: list[TieredCache] = []
    shape = request.param

    def tiers() -> list[Any]:
        if shape == "disk":
            return [MemoryTier(), DiskTier(tmp_path / "disk")]
        if shape == "redis":
            return [MemoryTier(), RedisTier(request.getfixturevalue("redis_url"))]
        if shape == "cluster":
            return [MemoryTier(), RedisTier(request.getfixturevalue("cluster_url"))]
        return [MemoryTier()]

    def make(**kw: Any) -> tuple[TieredCache, TieredCache]:
        kw.setdefault("namespace", namespace)
        if shape == "cluster":
            # Not about the bus: a cluster's default one is 16 listener
            # threads a cache, and their start-up starves the event loop of
            # an async test on two cores.
            kw.setdefault("bus", None)
        a = TieredCache(*tiers(), **kw)
        b = a if shape == "memory" else TieredCache(*tiers(), **kw)
        made.extend({id(a): a, id(b): b}.values())
        return a, b

    yield make
    for c in made:
        c.close()


# -- current -------------------------------------------------------------------------


def test_current_is_the_open_scopes_live_value_and_only_in_its_context(pair: Pair) -> None:
    cache, _ = pair()
    assert cache.current("chat:1") is None
    assert cache.current("chat:1", MISSING) is MISSING
    seen: list[Any] = []
    with cache.session("chat:1") as s:
        assert cache.current("chat:1") is s
        cache.current("chat:1")["n"] = 1  # a change of the scope itself
        thread = threading.Thread(target=lambda: seen.append(cache.current("chat:1", "none")))
        thread.start()
        thread.join()
        assert cache.current("chat:2") is None
    assert seen == ["none"]  # another thread holds no scope on it
    assert cache.current("chat:1") is None  # ended
    assert cache.get("chat:1") == {"n": 1}


def test_changes_through_current_roll_back_with_the_scope(pair: Pair) -> None:
    cache, _ = pair()
    cache.set("chat:1", {"n": 1})
    with pytest.raises(RuntimeError), cache.session("chat:1"):
        cache.current("chat:1")["n"] = 2
        raise RuntimeError("handler failed")
    assert cache.get("chat:1") == {"n": 1}


async def test_current_in_tasks(pair: Pair) -> None:
    cache, _ = pair()

    async def child() -> Any:
        return cache.current("chat:1", "none")

    async with cache.session("chat:1") as s:
        s["n"] = 1
        assert cache.current("chat:1") is s
        # A task started from the scope's task is another task.
        assert await asyncio.create_task(child()) == "none"
    assert cache.current("chat:1") is None
    with pytest.raises(InvalidKeyError):
        cache.current(42)  # type: ignore[arg-type]


# -- copies and batches -------------------------------------------------------------------


def test_get_copy_is_plain_and_detached_nested_too(pair: Pair) -> None:
    cache, other = pair()
    cache.set("u:1", {"cart": {"items": [1]}, "tags": {"a"}})
    copy = other.get_copy("u:1")
    assert type(copy) is dict and type(copy["cart"]) is dict and type(copy["tags"]) is set
    copy["cart"]["items"].append(2)  # no DetachedError: it is ours
    copy["tags"].add("b")
    assert other.get("u:1") == {"cart": {"items": [1]}, "tags": {"a"}}
    assert cache.get_copy("nope") is None
    assert cache.get_copy("nope", MISSING) is MISSING


async def test_aget_copy(pair: Pair) -> None:
    cache, other = pair()
    await cache.aset("u:1", {"a": [1]})
    copy = await other.aget_copy("u:1")
    copy["a"].append(2)
    assert await other.aget("u:1") == {"a": [1]}
    assert await other.aget_copy("u:2", {}) == {}


def test_get_many_returns_found_keys_only(pair: Pair) -> None:
    cache, other = pair()
    for i in range(5):
        cache.set(f"u:{i}", {"i": i})
    cache.set("none", None)  # a stored None is found
    got = other.get_many(["u:3", "u:1", "missing", "u:1", "none"])
    assert got == {"u:3": {"i": 3}, "u:1": {"i": 1}, "none": None}
    assert list(got) == ["u:3", "u:1", "none"]
    copies = other.get_many(["u:0"], copy=True)
    copies["u:0"]["i"] = 99
    assert other.get("u:0") == {"i": 0}
    assert other.get_many([]) == {}
    with pytest.raises(ConfigError, match="not one str"):
        other.get_many("u:1")


async def test_aget_many_many_keys_at_once(pair: Pair) -> None:
    cache, other = pair()
    for i in range(60):
        await cache.aset(f"u:{i}", {"i": i})
    got = await other.aget_many([f"u:{i}" for i in range(70)], copy=True)
    assert got == {f"u:{i}": {"i": i} for i in range(60)}


# -- keys ----------------------------------------------------------------------------------


def test_keys_lists_live_keys_matching_a_glob(pair: Pair, namespace: str) -> None:
    """Including what another process wrote; not another namespace's."""
    cache, other = pair()
    for key in ["user:1", "user:2", "user:10", "chat:1", "a*b", "ü:1"]:
        cache.set(key, {"k": key})
    cache.set("gone", {})
    cache.delete("gone")  # a tombstone stays behind in the shared tier
    cache.set("brief", {}, ttl=0.01)
    import time

    time.sleep(0.05)
    assert other.keys() == sorted(["user:1", "user:2", "user:10", "chat:1", "a*b", "ü:1"])
    assert other.keys("user:*") == ["user:1", "user:10", "user:2"]
    assert other.keys("user:?") == ["user:1", "user:2"]
    assert other.keys("user:[^1]") == ["user:2"]
    assert other.keys("a\\*b") == ["a*b"]
    assert other.keys("ü:*") == ["ü:1"]
    assert other.keys("nothing*") == []
    # Another namespace on the same tiers is not listed.
    _, third = pair(namespace=namespace + "x")
    third.set("user:99", {})
    assert "user:99" not in other.keys()
    assert third.keys() == ["user:99"]


def test_keys_include_changes_not_written_yet(pair: Pair) -> None:
    cache, _ = pair(flush=WriteBehind(3600))
    with cache.session("draft:1") as s:
        s["x"] = 1
    assert cache.keys("draft:*") == ["draft:1"]
    cache.flush()
    assert cache.keys("draft:*") == ["draft:1"]


async def test_akeys(pair: Pair) -> None:
    cache, other = pair()
    for i in range(3):
        await cache.aset(f"k:{i}", i)
    await cache.adelete("k:0")
    assert await other.akeys("k:*") == ["k:1", "k:2"]
    with pytest.raises(ConfigError):
        await other.akeys(b"k:*")  # type: ignore[arg-type]


@pytest.mark.redis
def test_keys_lists_fields_layout_values(redis_url: str, namespace: str) -> None:
    """A value stored as a hash of fields is listed like any other."""
    with TieredCache(MemoryTier(), RedisTier(redis_url, fields=0), namespace=namespace) as cache:
        cache.set("big:1", {f"f{i}": i for i in range(50)})
        r = redis.Redis.from_url(redis_url)
        assert b"hash" in {r.type(k) for k in r.keys(f"tc:{namespace}:*")}
        r.close()
        with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as other:
            assert other.keys() == ["big:1"]


class NoListing(PersistentTier):
    name = "nolist"

    def __init__(self) -> None:
        self.d: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.d.get(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.d[key] = value

    def delete(self, key: str) -> bool:
        return self.d.pop(key, None) is not None

    def touch(self, key: str, ttl: float | None) -> bool:
        return key in self.d


class Listing(NoListing):
    """A custom tier with compare-and-set (so deletes leave tombstones)
    whose listing includes those tombstones: it cannot tell them apart."""

    supports_cas = True

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        current = self.d.get(key)
        if (0 if current is None else peek_version(current)) != expected:
            return False
        self.d[key] = value
        return True

    def keys(self, glob: str) -> list[str]:
        match = glob_match(glob)
        return [k for k in self.d if match(k)]


def test_a_custom_tier_lists_only_if_it_can_and_the_cache_skips_deletes() -> None:
    with TieredCache(MemoryTier(), NoListing(), namespace="c") as cache:
        with pytest.raises(ConfigError, match="cannot list"):
            cache.keys()
    tier = Listing()
    with TieredCache(MemoryTier(), tier, namespace="c") as cache:
        cache.set("a", 1)
        cache.set("b", 2)
        cache.delete("b")
        assert sorted(tier.d) == ["c:a", "c:b"]  # b's tombstone
        with TieredCache(MemoryTier(), tier, namespace="c") as other:
            assert other.keys() == ["a"]


GLOB_KEYS = ["a", "b", "ab", "a*b", "a?b", "a[b", "a]b", "a\\b", "abc", "x-y", "", "ä", "A"]


@pytest.mark.redis
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pattern=st.text(alphabet="ab*?[]^-\\xäA", max_size=6),
)
def test_glob_means_in_memory_what_scan_match_means_in_redis(redis_url: str, pattern: str) -> None:
    """One glob dialect: the regex tiercache matches memory and disk keys
    with agrees with the server's own SCAN MATCH, for any pattern."""
    r = redis.Redis.from_url(redis_url)
    try:
        prefix = "globcheck:"
        if not r.exists(prefix + "a"):
            r.mset({prefix + k: b"1" for k in GLOB_KEYS})
        server = {
            n.decode()[len(prefix) :] for n in r.scan_iter(match=prefix + pattern, count=1000)
        }
        ours = {k for k in GLOB_KEYS if glob_match(pattern)(k)}
        assert ours == server, pattern
    finally:
        r.close()


# -- version-checked writes --------------------------------------------------------------------


def test_a_version_checked_set_writes_only_over_the_version_it_read(pair: Pair) -> None:
    cache, other = pair()
    assert cache.get_versioned("u:1") == (None, 0)
    cache.set("u:1", {"n": 1}, expected_version=0)  # create only
    with pytest.raises(ConflictError):
        other.set("u:1", {"n": 100}, expected_version=0)  # it exists now
    value, version = other.get_versioned("u:1")
    assert value == {"n": 1} and version > 0
    value["n"] += 1  # a plain copy: ours to change
    cache.set("u:1", {"n": 5})  # someone else writes in between
    with pytest.raises(ConflictError, match="no longer at version"):
        other.set("u:1", value, expected_version=version)
    assert other.get("u:1") == {"n": 5} and cache.get("u:1") == {"n": 5}
    value, version = other.get_versioned("u:1")
    other.set("u:1", None, expected_version=version)  # None is a value too
    assert other.get("u:1", MISSING) is None
    fresh, newer = cache.get_versioned("u:1", MISSING)  # fresh from the shared tier
    assert fresh is None and newer > version
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ConfigError, match="expected_version"):
            cache.set("u:1", 1, expected_version=bad)  # type: ignore[arg-type]


def test_scope_version_is_a_version_set_can_check(pair: Pair) -> None:
    cache, other = pair()
    scope = cache.session("u:1")
    with scope as s:
        s["n"] = 1
    assert scope.version is not None
    other.set("u:1", {"n": 2}, expected_version=scope.version)
    assert cache.get_versioned("u:1")[0] == {"n": 2}


async def test_async_version_checked_set(pair: Pair) -> None:
    cache, other = pair()
    await cache.aset("u:1", {"n": 1})
    value, version = await other.aget_versioned("u:1")
    await cache.aset("u:1", {"n": 2})
    with pytest.raises(ConflictError):
        await other.aset("u:1", value, expected_version=version)
    value, version = await other.aget_versioned("u:1", {})
    value["n"] += 1
    await other.aset("u:1", value, expected_version=version)
    fresh, newer = await cache.aget_versioned("u:1")
    assert fresh == {"n": 3} and newer > version


def test_versioned_writes_from_threads_lose_nothing(pair: Pair) -> None:
    """Read-copy-write with retry on ConflictError: an exact counter."""
    cache, other = pair()
    cache.set("n", {"n": 0})

    def work(c: TieredCache) -> None:
        for _ in range(25):
            while True:
                value, version = c.get_versioned("n")
                value["n"] += 1
                try:
                    c.set("n", value, expected_version=version)
                    break
                except ConflictError:
                    continue

    threads = [threading.Thread(target=work, args=(c,)) for c in (cache, other, cache, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get_versioned("n")[0] == {"n": 100}


def test_a_version_checked_delete(pair: Pair) -> None:
    cache, other = pair()
    cache.set("u:1", {"n": 1})
    _, version = other.get_versioned("u:1")
    cache.set("u:1", {"n": 2})
    with pytest.raises(ConflictError):
        other.delete("u:1", expected_version=version)
    assert cache.get_versioned("u:1")[0] == {"n": 2}  # nothing deleted
    with pytest.raises(ConflictError):
        other.delete("u:1", expected_version=0)  # "absent": it is not
    _, version = other.get_versioned("u:1")
    assert other.delete("u:1", expected_version=version) is True
    assert cache.get_versioned("u:1") == (None, 0)
    assert other.get("u:1") is None and "u:1" not in other.keys()
    other.set("u:1", {"again": 1}, expected_version=0)  # absent again: 0 fits
    _, version = other.get_versioned("u:1")
    other.delete("u:1", expected_version=version)
    assert other.delete("u:1", expected_version=0) is False  # absent, as expected


async def test_async_version_checked_delete(pair: Pair) -> None:
    cache, other = pair()
    await cache.aset("u:1", 1)
    _, version = await other.aget_versioned("u:1")
    await cache.aset("u:1", 2)
    with pytest.raises(ConflictError):
        await other.adelete("u:1", expected_version=version)
    _, version = await other.aget_versioned("u:1")
    assert await other.adelete("u:1", expected_version=version)
    assert await other.akeys() == []
