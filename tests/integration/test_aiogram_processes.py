"""Two aiogram workers as real processes on one Redis, in the default
configuration (``TieredCache.from_url``), each feeding updates of the same
chats through a real Dispatcher with ``TierCacheStorage`` and its
isolation: every update a worker saw succeed is in the final data; a
same-field race reaches the handler as ConflictError (its update rolled
back), never as a silent loss."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiogram.fsm.storage.base import StorageKey

from tiercache import TieredCache
from tiercache.aiogram import TierCacheStorage

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    sys.path.insert(0, sys.argv[1])
    from tiercache import ConflictError, TieredCache
    from tiercache.aiogram import TierCacheStorage
    from tests.integration._aiogram_bot import dispatcher, make_bot, message

    _, _, url, namespace, name, n, chats, start = sys.argv
    n, chats, start = int(n), int(chats), float(start)

    async def main():
        cache = TieredCache.from_url(url, namespace=namespace)
        storage = TierCacheStorage(cache)
        dp = dispatcher(storage, storage.create_isolation())
        bot = make_bot()
        tags, incs, conflicts = [], {}, 0
        await asyncio.sleep(max(0.0, start - time.time()))
        for i in range(n):
            chat = i % chats + 1
            try:
                await dp.feed_update(bot, message(chat, f"tag:{name}{i}"))
                tags.append([chat, f"{name}{i}"])
            except ConflictError:
                conflicts += 1
            try:
                await dp.feed_update(bot, message(chat, "inc"))
                incs[chat] = incs.get(chat, 0) + 1
            except ConflictError:
                conflicts += 1
        await bot.session.close()
        await cache.aclose()
        print(json.dumps({"tags": tags, "incs": incs, "conflicts": conflicts}))

    asyncio.run(main())
    """
)


def test_two_aiogram_workers_lose_no_acknowledged_update(redis_url: str, namespace: str) -> None:
    chats, n = 6, 50
    start = time.time() + 1.5  # both import aiogram first, then go at once
    args = [str(n), str(chats), str(start)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ROOT), redis_url, namespace, name, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    cache = TieredCache.from_url(redis_url, namespace=namespace)
    storage = TierCacheStorage(cache)
    import asyncio

    async def final(chat: int) -> dict[str, object]:
        return await storage.get_data(StorageKey(bot_id=42, chat_id=chat, user_id=chat))

    datas = {chat: asyncio.run(final(chat)) for chat in range(1, chats + 1)}
    cache.close()
    for r in results:
        for chat, tag in r["tags"]:
            assert datas[chat].get(tag) is True, f"acknowledged tag {tag} of chat {chat} lost"
    for chat in range(1, chats + 1):
        acked = sum(r["incs"].get(str(chat), 0) for r in results)
        assert datas[chat].get("n", 0) == acked, f"chat {chat}: {datas[chat].get('n')} != {acked}"
    total = 2 * n * 2
    conflicts = sum(r["conflicts"] for r in results)
    print(f"two workers: {total} updates, {conflicts} rejected with ConflictError, 0 lost")
    assert conflicts < total / 2
