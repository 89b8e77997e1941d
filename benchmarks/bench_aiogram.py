"""tiercache.aiogram against aiogram's own RedisStorage on the same update
stream (issue #12).

Run: ``pytest benchmarks/bench_aiogram.py --benchmark-only -s``.

* **Writes.** One stream of 2,000 updates over 200 users (fixed seed):
  40% mutating (a third each: ``update_data`` of a counter after
  ``get_data``; ``update_data`` of a new key; ``set_state`` +
  ``update_data``, as a conversation step), 60% read-only (``get_state``
  + ``get_data``), fed through a real ``Dispatcher`` with a mocked Bot
  session. Redis write commands are counted under ``MONITOR`` as the
  clients send them (a script's own commands, marked ``lua``, are left
  out: an ``EVALSHA`` is one write).
  Variants: ``TierCacheStorage`` + its isolation over memory + Redis
  (``TieredCache.from_url`` defaults), aiogram's ``RedisStorage`` with
  aiogram's default isolation, and ``RedisStorage`` + ``RedisEventIsolation``.
* **Exactness.** 100 concurrent ``inc`` updates of one chat, each variant.
* **Time** per update (pytest-benchmark): one mutating and one read-only
  update of a warm chat, each variant, same run.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiogram import Dispatcher
from aiogram.fsm.storage.base import (
    BaseEventIsolation,
    BaseStorage,
    DefaultKeyBuilder,
    StorageKey,
)
from aiogram.fsm.storage.redis import RedisStorage

from tiercache import TieredCache
from tiercache.aiogram import TierCacheStorage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _redis_monitor import WriteMonitor

from tests.integration._aiogram_bot import dispatcher, make_bot, message

Variant = Callable[[str], tuple[BaseStorage, BaseEventIsolation | None, Any]]


def tiercache_variant(url: str) -> tuple[BaseStorage, BaseEventIsolation | None, Any]:
    cache = TieredCache.from_url(url, namespace=f"bench-{uuid.uuid4().hex[:6]}")
    storage = TierCacheStorage(cache)
    return storage, storage.create_isolation(), cache.aclose


def _redis_storage(url: str) -> RedisStorage:
    return RedisStorage.from_url(
        url, key_builder=DefaultKeyBuilder(prefix=f"fsm-{uuid.uuid4().hex[:6]}")
    )


def redis_variant(url: str) -> tuple[BaseStorage, BaseEventIsolation | None, Any]:
    storage = _redis_storage(url)
    return storage, None, storage.close


def redis_isolated_variant(url: str) -> tuple[BaseStorage, BaseEventIsolation | None, Any]:
    storage = _redis_storage(url)
    return storage, storage.create_isolation(), storage.close


VARIANTS: dict[str, Variant] = {
    "tiercache": tiercache_variant,
    "RedisStorage": redis_variant,
    "RedisStorage+RedisEventIsolation": redis_isolated_variant,
}


def stream(seed: int = 7) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    rng = random.Random(seed)
    mutating: list[tuple[int, str]] = []
    reading: list[tuple[int, str]] = []
    for i in range(2000):
        chat = rng.randrange(200) + 1
        if rng.random() < 0.4:
            kind = rng.randrange(3)  # a counter, a new key, or a state change with data
            mutating.append((chat, ("inc", f"tag:t{i % 7}", "/start")[kind]))
        else:
            reading.append((chat, "read"))
    return mutating, reading


async def feed(dp: Dispatcher, bot: Any, updates: list[tuple[int, str]]) -> None:
    for chat, text in updates:
        await dp.feed_update(bot, message(chat, text))


@pytest.fixture(scope="module")
def summary() -> Iterator[list[str]]:
    rows: list[str] = []
    yield rows
    print("\n" + "\n".join(rows))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_writes_per_update(name: str, redis_url: str, summary: list[str], benchmark: Any) -> None:
    mutating, reading = stream()

    async def go() -> tuple[int, int, int]:
        storage, isolation, close = VARIANTS[name](redis_url)
        dp = dispatcher(storage, isolation)
        bot = make_bot()
        with WriteMonitor(redis_url) as m_mut:
            await feed(dp, bot, mutating)
        with WriteMonitor(redis_url) as m_read:
            await feed(dp, bot, reading)
        # 100 concurrent increments of one chat.
        chat = 10_000
        await asyncio.gather(*(dp.feed_update(bot, message(chat, "inc")) for _ in range(100)))
        data = await storage.get_data(StorageKey(bot_id=42, chat_id=chat, user_id=chat))
        await bot.session.close()
        await close()
        return m_mut.writes, m_read.writes, int(data.get("n", 0))

    mut_writes, read_writes, kept = benchmark.pedantic(lambda: asyncio.run(go()), rounds=1)
    per_mut = mut_writes / len(mutating)
    per_read = read_writes / len(reading)
    benchmark.extra_info.update(
        writes_per_mutating=per_mut, writes_per_read_only=per_read, kept_of_100=kept
    )
    summary.append(
        f"| {name} | {per_mut:.2f} | {per_read:.2f} | {kept} of 100 | "
        f"{len(mutating)} + {len(reading)} |"
    )


@pytest.mark.parametrize("kind", ["mutating", "read-only"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_update_time(name: str, kind: str, redis_url: str, benchmark: Any) -> None:
    loop = asyncio.new_event_loop()
    storage, isolation, close = VARIANTS[name](redis_url)
    dp = dispatcher(storage, isolation)
    bot = make_bot()
    text = "inc" if kind == "mutating" else "read"
    loop.run_until_complete(dp.feed_update(bot, message(1, "inc")))  # warm
    benchmark(lambda: loop.run_until_complete(dp.feed_update(bot, message(1, text))))
    loop.run_until_complete(bot.session.close())
    loop.run_until_complete(close())
    loop.close()
