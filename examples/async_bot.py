"""An asyncio bot: memory + disk, plus Redis when a URL is given.

Fifty updates for one chat arrive at once (two webhook workers, a fast
user); each handler increments a counter after an ``await``. The per-key
lock makes the final count exact.

    python examples/async_bot.py [--dir DIR] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from typing import Any

from tiercache import DiskTier, MemoryTier, RedisTier, TieredCache, cached_session


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="disk tier directory")
    parser.add_argument("--redis", default=None, help="Redis URL (optional)")
    args = parser.parse_args()

    tiers: list[Any] = [MemoryTier(maxsize=1000), DiskTier(args.dir or tempfile.mkdtemp())]
    if args.redis:
        tiers.append(RedisTier(args.redis))
    async with TieredCache(*tiers, namespace="async-demo") as cache:
        label = " + ".join(["memory", "disk", *(["redis"] if args.redis else [])])
        print(f"tiers: {label}")

        @cached_session(cache, key=lambda chat_id, text: f"chat:{chat_id}")
        async def on_message(chat_id: int, text: str, session: Any = None) -> None:
            count = session.get("count", 0)
            await asyncio.sleep(0)  # other handlers run here
            session["count"] = count + 1
            session["last"] = text

        await cache.adelete("chat:1")
        await asyncio.gather(*(on_message(1, f"msg {i}") for i in range(50)))
        session = await cache.aget("chat:1")
        print(f"50 concurrent updates -> count = {session['count']}")
        print()
        print(cache.stats())


if __name__ == "__main__":
    asyncio.run(main())
