"""tiercache.ptb against persistences that write every hand-back, on the
same update stream (issue #12).

Run: ``pytest benchmarks/bench_ptb.py --benchmark-only -s``.

* **Writes.** One stream of 2,000 updates over 200 users (fixed seed),
  40% mutating (``inc``: ``user_data["n"] += 1`` and a note in
  ``chat_data``), 60% read-only, fed through a real PTB ``Application``
  (no network: tests/integration/_ptb_app.py), with
  ``update_persistence()`` after every 100 updates, as PTB's interval
  timer would. Redis write commands are counted under ``MONITOR`` as the
  clients send them (a script's own commands, marked ``lua``, are left
  out: an ``EVALSHA`` is one write). Variants: ``TierCachePersistence``
  over ``TieredCache.from_url`` (memory + Redis + bus); the same cache
  with ``aset`` of every hand-back (what an adapter without diffs does);
  a JSON ``SET`` of every hand-back (what small Redis persistences for
  PTB do).
* **Time** of one ``update_persistence()`` that hands back 200 users'
  and chats' unchanged dicts (pytest-benchmark), each variant.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from tiercache import TieredCache
from tiercache.ptb import TierCachePersistence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _redis_monitor import WriteMonitor

from tests.integration import _ptb_app as ptb

USERS = 200
EVERY = 100  # updates between two update_persistence() runs


class AsetPersistence(TierCachePersistence):
    """Every hand-back written whole with ``cache.aset`` (no diff)."""

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        await self.cache.aset(self.key("user", user_id), data)

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        await self.cache.aset(self.key("chat", chat_id), data)

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        await self.cache.aset(self.key("bot"), data)


class JsonSetPersistence(TierCachePersistence):
    """A JSON ``SET`` per hand-back straight to Redis (reads through the
    cache are never used: nothing is stored there)."""

    def __init__(self, cache: TieredCache, url: str) -> None:
        super().__init__(cache)
        # redis-py's default async pool raises MaxConnectionsError past
        # 100 connections: 301 of the 401 SETs one update_persistence()
        # gathers here. A blocking pool, as tiercache's own, to count fairly.
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=50)
        self.r = redis.asyncio.Redis.from_pool(pool)  # closes the pool with it
        self.head = f"json-{uuid.uuid4().hex[:6]}"

    async def _set(self, name: str, data: Any) -> None:
        await self.r.set(f"{self.head}:{name}", json.dumps(data))

    async def update_user_data(self, user_id: int, data: dict[Any, Any]) -> None:
        await self._set(f"user:{user_id}", data)

    async def update_chat_data(self, chat_id: int, data: dict[Any, Any]) -> None:
        await self._set(f"chat:{chat_id}", data)

    async def update_bot_data(self, data: dict[Any, Any]) -> None:
        await self._set("bot", data)

    async def refresh_user_data(self, user_id: int, user_data: dict[Any, Any]) -> None:
        pass

    async def refresh_chat_data(self, chat_id: int, chat_data: dict[Any, Any]) -> None:
        pass

    async def refresh_bot_data(self, bot_data: dict[Any, Any]) -> None:
        pass

    async def flush(self) -> None:
        await self.r.aclose()


Variant = Callable[[str], tuple[TierCachePersistence, TieredCache]]


def _cache(url: str) -> TieredCache:
    return TieredCache.from_url(url, namespace=f"bench-{uuid.uuid4().hex[:6]}")


def _tiercache(url: str) -> tuple[TierCachePersistence, TieredCache]:
    cache = _cache(url)
    return TierCachePersistence(cache), cache


def _aset(url: str) -> tuple[TierCachePersistence, TieredCache]:
    cache = _cache(url)
    return AsetPersistence(cache), cache


def _json(url: str) -> tuple[TierCachePersistence, TieredCache]:
    cache = _cache(url)
    return JsonSetPersistence(cache, url), cache


VARIANTS: dict[str, Variant] = {
    "tiercache.ptb": _tiercache,
    "aset per hand-back": _aset,
    "JSON SET per hand-back": _json,
}


def stream(seed: int = 7) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    return [
        (rng.randrange(USERS) + 1, "inc" if rng.random() < 0.4 else "read") for _ in range(2000)
    ]


@pytest.fixture(scope="module")
def summary() -> Iterator[list[str]]:
    rows: list[str] = []
    yield rows
    print("\n" + "\n".join(rows))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_writes_per_update(name: str, redis_url: str, summary: list[str], benchmark: Any) -> None:
    updates = stream()
    mutating = sum(1 for _, text in updates if text == "inc")

    async def go() -> tuple[int, int, int]:
        persistence, cache = VARIANTS[name](redis_url)
        app = ptb.build(persistence)
        await app.initialize()
        runs = 0
        with WriteMonitor(redis_url) as m:
            for i, (user, text) in enumerate(updates, 1):
                await ptb.send(app, ptb.message(user, text))
                if i % EVERY == 0:
                    await app.update_persistence()
                    runs += 1
        # The same users again, read-only: what does an idle interval cost?
        for user in range(1, USERS + 1):
            await ptb.send(app, ptb.message(user, "read"))
        with WriteMonitor(redis_url) as idle:
            await app.update_persistence()
        await app.shutdown()
        await cache.aclose()
        return m.writes, runs, idle.writes

    writes, runs, idle = benchmark.pedantic(lambda: asyncio.run(go()), rounds=1)
    benchmark.extra_info.update(
        writes=writes, writes_per_mutating=writes / mutating, idle_run_writes=idle
    )
    summary.append(
        f"| {name} | {writes} ({writes / runs:.0f} a run) | {writes / mutating:.2f} | {idle} |"
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_unchanged_update_persistence_time(name: str, redis_url: str, benchmark: Any) -> None:
    loop = asyncio.new_event_loop()
    persistence, cache = VARIANTS[name](redis_url)
    app = ptb.build(persistence)
    loop.run_until_complete(app.initialize())
    for user in range(1, USERS + 1):
        loop.run_until_complete(ptb.send(app, ptb.message(user, "inc")))
    loop.run_until_complete(app.update_persistence())

    def one() -> None:
        app.mark_data_for_update_persistence(
            chat_ids=range(1, USERS + 1), user_ids=range(1, USERS + 1)
        )
        loop.run_until_complete(app.update_persistence())

    benchmark(one)
    loop.run_until_complete(app.shutdown())
    loop.run_until_complete(cache.aclose())
    loop.close()
