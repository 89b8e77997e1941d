"""tiercache.aiogram against real aiogram 3: the storage contract (ours,
stricter than aiogram's own suite about copies and writes), updates fed
through a real Dispatcher with one scope per update, and the session
middleware; over memory + disk and memory + Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tiercache import ConfigError, DiskTier, MemoryTier, RedisTier, TieredCache
from tiercache._locks import LockRegistry
from tiercache.aiogram import SessionMiddleware, TierCacheStorage

from ._aiogram_bot import Form, dispatcher, make_bot, message

SHAPES = ["disk", pytest.param("redis", marks=pytest.mark.redis)]

KEY = StorageKey(bot_id=42, chat_id=-100, user_id=7)


@pytest.fixture(params=SHAPES)
def make_cache(
    request: pytest.FixtureRequest, tmp_path: Path, namespace: str
) -> Iterator[Callable[[], TieredCache]]:
    made: list[TieredCache] = []

    def make() -> TieredCache:
        if request.param == "redis":
            shared: Any = RedisTier(request.getfixturevalue("redis_url"))
        else:
            shared = DiskTier(tmp_path / "disk")
        cache = TieredCache(MemoryTier(), shared, namespace=namespace)
        made.append(cache)
        return cache

    yield make
    for c in made:
        c.close()


@pytest.fixture
def cache(make_cache: Callable[[], TieredCache]) -> TieredCache:
    return make_cache()


def writes(cache: TieredCache) -> int:
    """Writes the shared tier took so far (the bus has a row of its own)."""
    shared = cache._core.tiers[-1].name
    return next(t.writes for t in cache.stats().tiers if t.name == shared)


# -- the storage -------------------------------------------------------------------------


async def test_state_and_data_round_trip(
    cache: TieredCache, make_cache: Callable[[], TieredCache]
) -> None:
    storage = TierCacheStorage(cache)
    assert await storage.get_state(KEY) is None
    assert await storage.get_data(KEY) == {}
    await storage.set_state(KEY, Form.name)
    assert await storage.get_state(KEY) == "Form:name"
    await storage.set_state(KEY, "custom")
    assert await storage.get_state(KEY) == "custom"
    await storage.set_data(KEY, {"a": 1, "nested": {"x": [1, 2]}})
    assert await storage.get_data(KEY) == {"a": 1, "nested": {"x": [1, 2]}}
    assert await storage.get_value(KEY, "a") == 1
    assert await storage.get_value(KEY, "missing") is None
    assert await storage.get_value(KEY, "missing", 5) == 5
    assert await storage.update_data(KEY, {"b": 2}) == {"a": 1, "nested": {"x": [1, 2]}, "b": 2}
    await storage.set_data(KEY, {"only": True})
    assert await storage.get_data(KEY) == {"only": True}
    with pytest.raises(DataNotDictLikeError):
        await storage.set_data(KEY, [("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        await storage.set_state(KEY, 5)  # type: ignore[arg-type]
    # Another process (another cache on the same shared tier) reads it.
    other = TierCacheStorage(make_cache())
    assert await other.get_data(KEY) == {"only": True}
    assert await other.get_state(KEY) == "custom"


async def test_reads_are_copies_the_caller_may_change(cache: TieredCache) -> None:
    storage = TierCacheStorage(cache)
    given_data = {"cart": {"items": [1]}}
    await storage.set_data(KEY, given_data)
    given_data["cart"]["items"].append("mine")  # the caller's dict stays theirs
    data = await storage.get_data(KEY)
    data["cart"]["items"].append(2)  # no DetachedError, nothing stored
    (await storage.get_value(KEY, "cart"))["items"].append(3)
    returned = await storage.update_data(KEY, {"x": 1})
    returned["cart"]["items"].append(4)
    assert await storage.get_data(KEY) == {"cart": {"items": [1]}, "x": 1}


async def test_equal_state_or_data_writes_nothing(cache: TieredCache) -> None:
    storage = TierCacheStorage(cache)
    await storage.set_state(KEY, Form.name)
    await storage.set_data(KEY, {"a": 1, "b": {"c": [1]}})
    before = writes(cache)
    await storage.set_state(KEY, "Form:name")
    await storage.set_data(KEY, {"b": {"c": [1]}, "a": 1})
    await storage.update_data(KEY, {"a": 1})
    await storage.get_data(KEY)
    assert writes(cache) == before


async def test_an_emptied_record_is_deleted(cache: TieredCache) -> None:
    storage = TierCacheStorage(cache)
    await storage.set_state(KEY, Form.name)
    await storage.set_data(KEY, {"a": 1})
    assert await cache.akeys() == ["fsm:-100:7"]
    await storage.set_state(KEY, None)
    assert await cache.akeys() == ["fsm:-100:7"]  # data is left
    await storage.set_data(KEY, {})
    assert await cache.akeys() == []
    assert await storage.get_state(KEY) is None and await storage.get_data(KEY) == {}


async def test_keys_follow_the_key_builder(cache: TieredCache) -> None:
    key = StorageKey(
        bot_id=42, chat_id=1, user_id=2, thread_id=3, business_connection_id="bc", destiny="d"
    )
    builder = DefaultKeyBuilder(
        prefix="bot", with_bot_id=True, with_business_connection_id=True, with_destiny=True
    )
    storage = TierCacheStorage(cache, key_builder=builder)
    await storage.set_state(key, "s")
    assert await cache.akeys() == ["bot:42:bc:1:3:2:d"]
    with pytest.raises(ValueError, match="destiny"):
        await TierCacheStorage(cache).get_state(key)  # aiogram's own check
    with pytest.raises(ConfigError):
        TierCacheStorage(object())  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from("abcd"),
            st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)),
            max_size=4,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_set_data_stores_exactly_what_was_given(datas: list[dict[str, Any]]) -> None:
    """Whatever sequence of set_data/update_data: get_data is the model."""
    cache = TieredCache(MemoryTier(), namespace="prop")
    storage = TierCacheStorage(cache)

    async def go() -> None:
        model: dict[str, Any] = {}
        for i, data in enumerate(datas):
            if i % 2:
                model.update(data)
                assert await storage.update_data(KEY, data) == model
            else:
                model = dict(data)
                await storage.set_data(KEY, data)
            assert await storage.get_data(KEY) == model

    asyncio.run(go())
    cache.close()


# -- a Dispatcher, one scope per update ------------------------------------------------------


@pytest.fixture
async def bot() -> AsyncIterator[Any]:
    b = make_bot()
    yield b
    await b.session.close()


async def test_updates_write_once_when_they_change_and_never_when_they_read(
    cache: TieredCache, bot: Any
) -> None:
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage, storage.create_isolation())
    await dp.feed_update(bot, message(1, "/start"))  # a state and data: one record
    assert writes(cache) == 1
    for _ in range(5):
        await dp.feed_update(bot, message(1, "read"))
        await dp.feed_update(bot, message(1, "hi"))  # replies through the bot
    assert writes(cache) == 1
    await dp.feed_update(bot, message(1, "inc"))  # get_data + update_data: one write
    await dp.feed_update(bot, message(1, "inc"))
    assert writes(cache) == 3
    assert await storage.get_data(StorageKey(42, 1, 1)) == {"started": True, "n": 2}
    assert bot.session.calls[-1].text == "state Form:name"


async def test_a_failing_handler_rolls_state_and_data_back(cache: TieredCache, bot: Any) -> None:
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage, storage.create_isolation())
    await dp.feed_update(bot, message(1, "/start"))
    before = writes(cache)
    with pytest.raises(RuntimeError, match="handler failed"):
        await dp.feed_update(bot, message(1, "fail"))
    key = StorageKey(42, 1, 1)
    assert await storage.get_state(key) == "Form:name"
    assert await storage.get_data(key) == {"started": True}
    assert writes(cache) == before
    await dp.feed_update(bot, message(1, "clear"))  # state.clear(): the record goes
    assert await cache.akeys() == []


async def test_a_hundred_concurrent_updates_of_one_chat_count_exactly(
    cache: TieredCache, bot: Any
) -> None:
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage, storage.create_isolation())
    await asyncio.gather(*(dp.feed_update(bot, message(5, "inc")) for _ in range(100)))
    assert await storage.get_data(StorageKey(42, 5, 5)) == {"n": 100}
    assert writes(cache) == 100


async def test_locks_of_unused_chats_are_forgotten(cache: TieredCache, bot: Any) -> None:
    """aiogram's SimpleEventIsolation keeps a lock per chat for good; the
    scope's key locks are swept past a bound, whatever the number of chats."""
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage, storage.create_isolation())
    chats = LockRegistry.SWEEP_AT + 300
    for chat in range(chats):
        await dp.feed_update(bot, message(chat + 1, "read"))
    assert len(cache._locks.table) <= chats - LockRegistry.SWEEP_AT
    assert writes(cache) == 0


async def test_without_the_isolation_each_call_is_its_own_scope(
    cache: TieredCache, bot: Any
) -> None:
    """aiogram's default isolation (none): correct, just more writes."""
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage)
    await dp.feed_update(bot, message(1, "/start"))
    assert writes(cache) == 2  # set_state, update_data
    assert await storage.get_state(StorageKey(42, 1, 1)) == "Form:name"


async def test_group_chats_keep_one_record_per_user(cache: TieredCache, bot: Any) -> None:
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage, storage.create_isolation())
    await dp.feed_update(bot, message(-5, "tag:a", user=1))
    await dp.feed_update(bot, message(-5, "tag:b", user=2))
    assert await cache.akeys() == ["fsm:-5:1", "fsm:-5:2"]


# -- the session middleware ---------------------------------------------------------------------


async def test_session_middleware_injects_a_live_session(cache: TieredCache, bot: Any) -> None:
    storage = TierCacheStorage(cache)
    dp = dispatcher(storage, storage.create_isolation())
    dp.update.middleware(SessionMiddleware(cache, key="user_in_chat"))
    for _ in range(3):
        await dp.feed_update(bot, message(-9, "count", user=4))
    await dp.feed_update(bot, message(-9, "read", user=4))
    assert await cache.aget("chat:-9:user:4") == {"n": 3}
    assert writes(cache) == 3  # the read-only update wrote nothing


async def test_session_middleware_key_kinds_and_checks(cache: TieredCache, bot: Any) -> None:
    for kind, expected in [("chat", "chat:-3"), ("user", "user:8")]:
        dp = dispatcher(TierCacheStorage(cache))
        dp.message.middleware(SessionMiddleware(cache, key=kind))  # type: ignore[arg-type]
        await dp.feed_update(bot, message(-3, "count", user=8))
        assert await cache.aget(expected) == {"n": 1}
    dp = dispatcher(TierCacheStorage(cache))
    dp.message.middleware(
        SessionMiddleware(cache, key=lambda event, data: f"custom:{event.text}", arg="session")
    )
    await dp.feed_update(bot, message(1, "count"))
    assert await cache.aget("custom:count") == {"n": 1}
    with pytest.raises(ConfigError):
        SessionMiddleware(cache, key="room")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        SessionMiddleware(cache, arg="not a name")
    with pytest.raises(ConfigError):
        SessionMiddleware(cache, lease=5)
    with pytest.raises(ConfigError):
        SessionMiddleware(cache, colour="red")
