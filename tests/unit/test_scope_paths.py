"""The scope's hot paths: written out flat twice (``with`` and ``async
with``), and who owns a key's lock (the running task, else the thread)."""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from typing import Any

import pytest

from tiercache import MemoryTier, TieredCache, cached_session
from tiercache._locks import NestedScopeError, owner, thread_loops
from tiercache._scope import Scope


def _block(fn: Any, start: str, end: str) -> str:
    src = inspect.getsource(fn)
    a = src.index(start)
    return src[a : src.index(end, a)]


def test_the_hot_entry_is_the_same_code_for_with_and_async_with() -> None:
    start, end = "if opts.fast and s.plain_hits:", "return value\n"
    sync = _block(Scope.__enter__, start, end)
    assert "mlock.acquire()" in sync and "lock.owner = me" in sync
    assert sync == _block(Scope.__aenter__, start, end)


def test_the_clean_exit_is_the_same_code_for_with_and_async_with() -> None:
    start, end = "entry = self._entry\n", "        try:\n            "
    sync = _block(Scope.__exit__, start, end + "run(")
    asyn = _block(Scope.__aexit__, start, end + "await arun(")
    assert "s.writes_avoided += 1" in sync
    assert sync == re.sub(r"await arun\(", "run(", asyn)


# -- owner() ------------------------------------------------------------------------------


def test_owner_outside_any_loop_is_the_thread() -> None:
    assert owner() == threading.get_ident()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append((owner(), threading.get_ident())))
    t.start()
    t.join()
    assert got[0][0] == got[0][1] != threading.get_ident()


def test_owner_in_a_task_is_that_task_and_tasks_differ() -> None:
    async def main() -> None:
        async def who() -> Any:
            await asyncio.sleep(0)
            return owner(), asyncio.current_task()

        results = await asyncio.gather(who(), who(), who())
        for mine, task in results:
            assert mine is task
        assert len({id(m) for m, _ in results}) == 3
        assert owner() is asyncio.current_task()

    asyncio.run(main())


def test_owner_in_a_loop_callback_outside_any_task_is_the_thread() -> None:
    loop = asyncio.new_event_loop()
    got: list[Any] = []
    try:
        loop.call_soon(lambda: (got.append(owner()), loop.stop()))
        loop.run_forever()
    finally:
        loop.close()
    assert got == [threading.get_ident()]


def test_owner_follows_a_new_loop_in_the_same_thread() -> None:
    """asyncio.run twice: the loop remembered for the thread is the old one;
    tasks of the new one must still be told apart."""

    async def pair() -> None:
        async def who() -> Any:
            await asyncio.sleep(0)
            return owner()

        a, b = await asyncio.gather(who(), who())
        assert a is not b and isinstance(a, asyncio.Task)

    asyncio.run(pair())
    assert owner() == threading.get_ident()  # stopped loop: the thread again
    assert threading.get_ident() not in thread_loops
    asyncio.run(pair())


def test_owner_of_a_loop_moved_to_another_thread() -> None:
    """A loop run in one thread, stopped, then run in another: each thread
    sees its own owner."""
    loop = asyncio.new_event_loop()

    async def task_owner() -> Any:
        return owner() is asyncio.current_task()

    try:
        assert loop.run_until_complete(task_owner())
        got: list[Any] = []

        def other() -> None:
            got.append(loop.run_until_complete(task_owner()))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert got == [True]
        assert owner() == threading.get_ident()
    finally:
        loop.close()


# -- the paths behave alike ------------------------------------------------------------------


@pytest.fixture
def cache() -> Any:
    c = TieredCache(MemoryTier(), namespace="paths")
    c.set("k", {"n": 0, "xs": [1, 2, 3]})
    yield c
    c.close()


def test_nested_scopes_are_refused_across_with_and_async_with(cache: TieredCache) -> None:
    async def main() -> None:
        async with cache.session("k"):
            with pytest.raises(NestedScopeError):
                with cache.session("k"):
                    pass  # pragma: no cover
        with cache.session("k"):
            with pytest.raises(NestedScopeError):
                async with cache.session("k"):
                    pass  # pragma: no cover

    asyncio.run(main())
    with cache.session("k") as s:  # nothing left held
        assert s["n"] == 0


def test_a_heap_reordered_behind_the_trackers_back_is_written(cache: TieredCache) -> None:
    """The clean exit's quick check must see what heapq does through the
    C API, on both paths."""
    import heapq

    with cache.session("k") as s:
        heapq.heapreplace(s["xs"], 7)  # [2, 7, 3]: same length, new items
    assert cache.stats().writes_avoided == 0
    assert cache.get("k")["xs"] == [2, 7, 3]

    async def main() -> None:
        async with cache.session("k") as s:
            heapq.heapreplace(s["xs"], 1)

    asyncio.run(main())
    assert cache.get("k")["xs"] == [1, 7, 3]
    assert cache.stats().writes_avoided == 0


def test_the_fast_exit_wakes_a_waiting_thread(cache: TieredCache) -> None:
    entered = threading.Event()
    order: list[str] = []

    def other() -> None:
        entered.wait()
        with cache.session("k") as s:
            order.append(f"other saw {s['n']}")

    t = threading.Thread(target=other)
    t.start()
    with cache.session("k"):
        entered.set()
        for _ in range(200):
            if cache._locks.table["k"].waiters:
                break
            threading.Event().wait(0.005)
        order.append("first")
    t.join(5)
    assert not t.is_alive()
    assert order == ["first", "other saw 0"]


def test_one_session_decorator_key_error_holds_nothing(cache: TieredCache) -> None:
    def bad_key(x: int) -> str:
        raise LookupError("no key")

    @cached_session(cache, key=bad_key)
    def handler(x: int, session: Any = None) -> None:
        raise AssertionError("not called")  # pragma: no cover

    with pytest.raises(LookupError):
        handler(1)
    assert cache._locks.held_by_others_locked(object()) is False


def test_one_session_decorator_rolls_back_when_the_handler_raises(cache: TieredCache) -> None:
    @cached_session(cache, key=lambda: "k")
    def handler(session: Any = None) -> None:
        session["n"] = 5
        raise ValueError("boom")

    @cached_session(cache, key=lambda: "k")
    async def ahandler(session: Any = None) -> None:
        session["n"] = 6
        raise ValueError("boom")

    with pytest.raises(ValueError):
        handler()
    with pytest.raises(ValueError):
        asyncio.run(ahandler())
    assert cache.get("k")["n"] == 0
    with cache.session("k") as s:
        assert s["n"] == 0
