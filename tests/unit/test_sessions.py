"""Session scopes and @cached_session: locking, rollback, laziness, stale
handles, migrations and durability, sync and async."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tiercache import (
    MISSING,
    DetachedError,
    LazySession,
    MemoryTier,
    Schema,
    SchemaError,
    TierCacheError,
    TieredCache,
    WriteBehind,
    cached_session,
)
from tiercache.testing import DictTier, FakeClock


@pytest.fixture
def tier(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def make(clock: FakeClock, namespace: str, tier: DictTier) -> Iterator[Callable[..., TieredCache]]:
    made: list[TieredCache] = []

    def factory(*tiers: Any, **kw: Any) -> TieredCache:
        kw.setdefault("namespace", namespace)
        kw.setdefault("clock", clock)
        cache = TieredCache(*(tiers or (MemoryTier(), tier)), **kw)
        made.append(cache)
        return cache

    yield factory
    for c in made:
        c.close()


def stored(cache: TieredCache, tier: DictTier, key: str) -> Any:
    """What a fresh process would read: bypasses this cache's memory."""
    return TieredCache(MemoryTier(), tier, namespace=cache.namespace).get(key, MISSING)


# -- 1. read-only scopes write nothing ---------------------------------------------------


async def test_scope_sync_and_async_commit(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make()
    with cache.session("a") as s:
        s["n"] = 1
    async with cache.session("b") as s:
        s["n"] = 2
    assert stored(cache, tier, "a") == {"n": 1}
    assert stored(cache, tier, "b") == {"n": 2}


# -- 2. one scope per key at a time -----------------------------------------------------


def test_fifty_threads_increment_exactly(make: Callable[..., TieredCache], tier: DictTier) -> None:
    cache = make()

    def work() -> None:
        for _ in range(20):
            with cache.session("counter") as s:
                n = s.get("n", 0)
                threading.Event().wait(0)  # let another thread run mid-update
                s["n"] = n + 1

    threads = [threading.Thread(target=work) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get("counter") == {"n": 1000}
    assert stored(cache, tier, "counter") == {"n": 1000}


async def test_fifty_tasks_increment_exactly(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make()

    @cached_session(cache, key=lambda: "counter")
    async def handler(session: dict[str, int] | None = None) -> None:
        assert session is not None
        n = session.get("n", 0)
        await asyncio.sleep(0)  # another task runs here: the lock must hold
        session["n"] = n + 1

    await asyncio.gather(*(handler() for _ in range(50)))
    assert cache.get("counter") == {"n": 50}
    assert stored(cache, tier, "counter") == {"n": 50}


async def test_threads_and_tasks_exclude_each_other(make: Callable[..., TieredCache]) -> None:
    cache = make()

    def thread_work() -> None:
        for _ in range(100):
            with cache.session("c") as s:
                s["n"] = s.get("n", 0) + 1

    async def task_work() -> None:
        for _ in range(100):
            async with cache.session("c") as s:
                n = s.get("n", 0)
                await asyncio.sleep(0)
                s["n"] = n + 1

    t = threading.Thread(target=thread_work)
    t.start()
    await asyncio.gather(task_work(), task_work())
    await asyncio.to_thread(t.join)
    assert cache.get("c") == {"n": 300}


def test_different_keys_run_concurrently(make: Callable[..., TieredCache]) -> None:
    cache = make()
    inside = threading.Barrier(2, timeout=5)

    def work(key: str) -> None:
        with cache.session(key) as s:
            inside.wait()  # both scopes are open at once, or this times out
            s["ok"] = True

    threads = [threading.Thread(target=work, args=(k,)) for k in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get("x") == {"ok": True} and cache.get("y") == {"ok": True}


def test_locks_are_forgotten_when_unused(make: Callable[..., TieredCache]) -> None:
    cache = make(MemoryTier(maxsize=100))
    for i in range(100_000):
        with cache.session(f"user:{i}") as s:
            _ = s.get("x")
    for i in range(100_000):  # memory hits take the hot path: same bound
        with cache.session(f"user:{i % 100}") as s:
            _ = s.get("x")
    for i in range(100_000):
        with cache.session(f"user:{i}") as s:
            s["x"] = i
    assert len(cache._locks) <= cache._locks.SWEEP_AT
    assert cache._locks.unused() == len(cache._locks), "no lock is held after the scopes"


def test_nested_scope_on_same_key_raises_instead_of_deadlocking(
    make: Callable[..., TieredCache],
) -> None:
    cache = make()
    with cache.session("k") as s:
        s["a"] = 1
        with pytest.raises(TierCacheError, match="already open"), cache.session("k"):
            pass
        with pytest.raises(TierCacheError, match="scope open"):
            cache.set("k", 1)
    assert cache.get("k") == {"a": 1}


# -- 3. stacked decorators ---------------------------------------------------------------


def test_stacked_decorators_lock_in_global_order(make: Callable[..., TieredCache]) -> None:
    cache = make()

    @cached_session(cache, key=lambda u, c: f"user:{u}", arg="user")
    @cached_session(cache, key=lambda u, c: f"chat:{c}", arg="chat")
    def h1(u: int, c: int, user: Any = None, chat: Any = None) -> None:
        user["n"] = user.get("n", 0) + 1
        chat["n"] = chat.get("n", 0) + 1

    # The same two keys, stacked the other way round.
    @cached_session(cache, key=lambda u, c: f"chat:{c}", arg="chat")
    @cached_session(cache, key=lambda u, c: f"user:{u}", arg="user")
    def h2(u: int, c: int, user: Any = None, chat: Any = None) -> None:
        chat["n"] = chat.get("n", 0) + 1
        threading.Event().wait(0)
        user["n"] = user.get("n", 0) + 1

    def run(fn: Callable[..., None]) -> None:
        for _ in range(200):
            fn(1, 2)

    threads = [threading.Thread(target=run, args=(f,)) for f in (h1, h2, h1, h2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert cache.get("user:1") == {"n": 800}
    assert cache.get("chat:2") == {"n": 800}
    assert "user" not in inspect.signature(h1).parameters
    assert "chat" not in inspect.signature(h1).parameters
    assert list(inspect.signature(h1).parameters) == ["u", "c"]


def test_same_key_from_two_decorators_is_one_session(make: Callable[..., TieredCache]) -> None:
    cache = make()

    @cached_session(cache, key=lambda i: f"id:{i}", arg="a")
    @cached_session(cache, key=lambda i: f"id:{i}", arg="b")
    def h(i: int, a: Any = None, b: Any = None) -> bool:
        a["x"] = 1
        return a is b

    assert h(5) is True
    assert cache.get("id:5") == {"x": 1}


def test_decorator_preserves_metadata_and_works_on_methods(
    make: Callable[..., TieredCache],
) -> None:
    cache = make()

    class Bot:
        @cached_session(cache, key=lambda self, chat_id: f"chat:{chat_id}")
        def handle(self, chat_id: int, session: Any = None) -> int:
            """Docstring kept."""
            session["n"] = session.get("n", 0) + 1
            return int(session["n"])

    bot = Bot()
    assert bot.handle(3) == 1 and bot.handle(3) == 2
    assert Bot.handle.__doc__ == "Docstring kept."
    assert Bot.handle.__name__ == "handle"


# -- 4. lazy --------------------------------------------------------------------------------


class CountingDict(DictTier):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.gets = 0

    def get(self, key: str) -> bytes | None:
        self.gets += 1
        return super().get(key)


async def test_lazy_session_does_no_io_until_used(
    make: Callable[..., TieredCache], clock: FakeClock
) -> None:
    tier = CountingDict(clock)
    cache = make(MemoryTier(), tier)

    @cached_session(cache, key=lambda flag: "k", lazy=True)
    async def handler(flag: bool, session: LazySession[dict[str, int]] | None = None) -> None:
        assert session is not None
        assert len(cache._locks) == 0, "no lock taken before first use"
        if flag:
            s = await session.aload()
            s["n"] = s.get("n", 0) + 1

    await handler(False)
    assert tier.gets == 0
    await handler(True)
    assert tier.gets == 1
    assert cache.get("k") == {"n": 1}

    @cached_session(cache, key=lambda: "k", lazy=True)
    def sync_handler(session: LazySession[dict[str, int]] | None = None) -> int:
        assert session is not None
        return session.load()["n"]

    assert sync_handler() == 1


# -- 5. rollback -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_exception_rolls_back_cache_and_storage(
    make: Callable[..., TieredCache], tier: DictTier, mode: str
) -> None:
    cache = make()
    with cache.session("k") as s:
        s.update(n=1, items=[1, 2], nested={"a": {"b": 1}})
    before = stored(cache, tier, "k")

    class Boom(Exception):
        pass

    boom = Boom("body failed")
    with pytest.raises(Boom) as caught:
        if mode == "sync":
            with cache.session("k") as s:
                s["n"] = 99
                s["items"].append(3)
                s["nested"]["a"]["b"] = 2
                del s["nested"]
                s["new"] = 1
                raise boom
        else:
            async with cache.session("k") as s:
                s["n"] = 99
                s["items"].append(3)
                raise boom
    assert caught.value is boom, "the exception propagates unchanged"
    assert cache.get("k") == before == {"n": 1, "items": [1, 2], "nested": {"a": {"b": 1}}}
    assert stored(cache, tier, "k") == before


def test_commit_on_error_keeps_changes(make: Callable[..., TieredCache], tier: DictTier) -> None:
    cache = make()
    with pytest.raises(ValueError), cache.session("k", commit_on_error=True) as s:
        s["n"] = 1
        raise ValueError
    assert stored(cache, tier, "k") == {"n": 1}


def test_decorator_rolls_back_on_error(make: Callable[..., TieredCache], tier: DictTier) -> None:
    cache = make()

    @cached_session(cache, key=lambda fail: "k")
    def h(fail: bool, session: Any = None) -> None:
        session["n"] = session.get("n", 0) + 1
        if fail:
            raise RuntimeError("nope")

    h(False)
    with pytest.raises(RuntimeError):
        h(True)
    assert stored(cache, tier, "k") == {"n": 1}
    assert cache.get("k") == {"n": 1}


# -- 6. stale handles ---------------------------------------------------------------------------


def test_value_used_after_scope_raises(make: Callable[..., TieredCache]) -> None:
    cache = make()
    with cache.session("k") as s:
        s["list"] = [1]
        inner = s["list"]
    with pytest.raises(DetachedError):
        s["x"] = 1
    with pytest.raises(DetachedError):
        inner.append(2)
    assert cache.get("k") == {"list": [1]}


def test_value_after_rollback_raises(make: Callable[..., TieredCache]) -> None:
    cache = make()
    with pytest.raises(KeyError), cache.session("k") as s:
        s["a"] = 1
        raise KeyError
    with pytest.raises(DetachedError):
        s["a"] = 2


def test_value_after_eviction_raises(make: Callable[..., TieredCache], tier: DictTier) -> None:
    cache = make(MemoryTier(maxsize=1), tier)
    with cache.session("a") as s:
        s["v"] = 1
    old = cache.get("a")
    with cache.session("b") as s:  # evicts a
        s["v"] = 2
    with pytest.raises(DetachedError):
        old["v"] = 3
    assert cache.get("a") == {"v": 1}


# -- 7. migrations ---------------------------------------------------------------------------------


def test_migrations_run_in_order_and_write_once(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    v0 = make()
    v0.set("k", {"name": "ann"})
    calls: list[int] = []

    def m0(v: dict[str, Any]) -> dict[str, Any]:
        calls.append(0)
        v["first"] = v.pop("name")
        return v

    def m1(v: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {**v, "lang": "en"}

    schema = Schema(2, {0: m0, 1: m1})
    v2 = make(schema=schema)
    with v2.session("k") as s:
        assert s == {"first": "ann", "lang": "en"}
    assert calls == [0, 1]
    assert v2.stats().flushes["migrate"] == 1
    # Written back once, in the new form: another v2 process runs no migration.
    calls.clear()
    assert make(schema=schema).get("k") == {"first": "ann", "lang": "en"}
    assert calls == []


def test_newer_stored_schema_raises_and_leaves_data(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    new = make(schema=Schema(3, {0: dict, 1: dict, 2: dict}))
    new.set("k", {"v": 3})
    raw = tier.get(f"{new.namespace}:k")
    old = make(schema=Schema(1, {0: dict}))
    with pytest.raises(SchemaError, match="newer"), old.session("k"):
        pass
    assert tier.get(f"{new.namespace}:k") == raw


# -- 8. durability per flush policy ----------------------------------------------------------------


def test_write_through_is_durable_when_scope_returns(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make()
    with cache.session("k") as s:
        s["v"] = 1
    assert stored(cache, tier, "k") == {"v": 1}


def test_write_behind_returns_before_write(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    cache = make(flush=WriteBehind(3600))
    with cache.session("k") as s:
        s["v"] = 1
    assert stored(cache, tier, "k") is MISSING
    assert cache.get("k") == {"v": 1}
    cache.flush()
    assert stored(cache, tier, "k") == {"v": 1}


async def test_async_stale_handles_and_migrations(
    make: Callable[..., TieredCache], tier: DictTier
) -> None:
    old = make()
    await old.aset("k", {"name": "ann"})
    schema = Schema(1, {0: lambda v: {**v, "lang": "en"}})
    cache = make(schema=schema)
    async with cache.session("k") as s:
        assert s == {"name": "ann", "lang": "en"}
        s["list"] = [1]
        inner = s["list"]
    assert cache.stats().flushes["migrate"] == 1
    with pytest.raises(DetachedError):
        s["x"] = 1
    with pytest.raises(DetachedError):
        inner.append(2)
    with pytest.raises(RuntimeError):
        async with cache.session("k") as s:
            s["name"] = "bob"
            raise RuntimeError
    with pytest.raises(DetachedError):
        s["name"] = "eve"
    reader = TieredCache(MemoryTier(), tier, namespace=cache.namespace, schema=schema)
    assert reader.get("k") == {"name": "ann", "lang": "en", "list": [1]}


async def test_async_scopes_on_real_redis_roll_back_and_lock(
    redis_url: str, namespace: str
) -> None:
    from tiercache import RedisTier

    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)

    @cached_session(cache, key=lambda fail=False: "counter")
    async def incr(fail: bool = False, session: Any = None) -> None:
        n = session.get("n", 0)
        await asyncio.sleep(0)
        session["n"] = n + 1
        if fail:
            raise ValueError("rolled back")

    await asyncio.gather(*(incr() for _ in range(50)))
    with pytest.raises(ValueError):
        await incr(fail=True)
    fresh = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    assert await fresh.aget("counter") == {"n": 50}
    await fresh.aclose()
    await cache.aclose()
