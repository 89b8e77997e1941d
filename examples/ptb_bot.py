"""A python-telegram-bot 22 bot whose user, chat and bot data live in tiercache.

    pip install 'tiercache[ptb]'
    TELEGRAM_TOKEN=123:abc python examples/ptb_bot.py --polling [--redis URL]
    python examples/ptb_bot.py            # offline demo: two fake updates, no network

The three lines that matter are marked below. With ``--redis`` any number
of processes share the data: each writes only what its handlers changed,
and merges it into what the others stored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from telegram import Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters
from telegram.request import BaseRequest

from tiercache import Counter, DiskTier, MemoryTier, RedisTier, TieredCache
from tiercache.ptb import TierCachePersistence


async def hello(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert context.user_data is not None and update.effective_user is not None
    # A Counter: two processes counting one user's messages at once add up.
    context.user_data["hellos"] = context.user_data.get("hellos", Counter()) + 1
    if update.message is not None:
        await update.message.reply_text(f"hello #{context.user_data['hellos']}")


def build(token: str, redis_url: str | None, request: BaseRequest | None = None) -> Any:
    tiers: list[Any] = [MemoryTier(), DiskTier("./.tiercache-ptb")]
    if redis_url:
        tiers.append(RedisTier(redis_url))
    cache = TieredCache(*tiers, namespace="ptb-example")  # 1. the cache

    async def post_shutdown(application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        await cache.aclose()  # after PTB's last update_persistence() and flush()

    persistence = TierCachePersistence(cache, update_interval=30)  # 2. the persistence
    builder = Application.builder().token(token).persistence(persistence)  # 3. PTB uses it
    if request is not None:  # the offline demo: no network
        builder = builder.request(request).get_updates_request(request).updater(None)
    app = builder.post_shutdown(post_shutdown).build()
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, hello))
    return app


class OfflineRequest(BaseRequest):
    """Answers the Bot API from memory, so the demo needs no token."""

    @property
    def read_timeout(self) -> float | None:
        return None

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def do_request(self, url: str, method: str, *args: Any, **kw: Any) -> tuple[int, bytes]:
        me = {"id": 1, "is_bot": True, "first_name": "Demo", "username": "demo_bot"}
        sent = {"message_id": 2, "date": 0, "chat": {"id": 42, "type": "private"}, "text": "ok"}
        result = me if url.endswith("/getMe") else sent
        return 200, json.dumps({"ok": True, "result": result}).encode()


async def demo(redis_url: str | None) -> None:
    app = build("1:offline", redis_url, OfflineRequest())
    await app.initialize()
    for i in (1, 2):  # two messages from user 42, as Telegram sends them
        update = {
            "update_id": i,
            "message": {
                "message_id": i,
                "date": 0,
                "chat": {"id": 42, "type": "private"},
                "from": {"id": 42, "is_bot": False, "first_name": "Ann"},
                "text": "hello",
            },
        }
        await app.process_update(Update.de_json(update, app.bot))
    await app.shutdown()  # writes user 42's data (PTB: update_persistence, flush)
    await app.post_shutdown(app)  # what run_polling() calls last: closes the cache
    print(f"user 42 said hello {app.user_data[42]['hellos']} times")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polling", action="store_true", help="run for real (TELEGRAM_TOKEN)")
    parser.add_argument("--redis", help="a redis:// URL shared by every process of the bot")
    args = parser.parse_args()
    if args.polling:
        build(os.environ["TELEGRAM_TOKEN"], args.redis).run_polling()
    else:
        asyncio.run(demo(args.redis))


if __name__ == "__main__":
    main()
