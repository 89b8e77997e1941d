"""An aiogram 3 bot whose FSM and sessions live in tiercache.

The three lines that matter::

    storage = TierCacheStorage(cache)
    dp = Dispatcher(storage=storage, events_isolation=storage.create_isolation())
    dp.update.middleware(SessionMiddleware(cache, key="chat"))

With ``BOT_TOKEN`` set it polls Telegram; without, it feeds a short
conversation through the real Dispatcher offline (the Bot API answered
locally) and prints what each update wrote:

    python examples/aiogram_bot.py [--dir DIR] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import tempfile
from collections.abc import AsyncGenerator
from typing import Any

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.base import BaseSession
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import Chat, Message, Update, User

from tiercache import DiskTier, MemoryTier, RedisTier, TieredCache
from tiercache.aiogram import SessionMiddleware, TierCacheStorage

router = Router()


class Signup(StatesGroup):
    name = State()
    age = State()


@router.message(Command("start"))
async def start(message: Message, state: FSMContext) -> None:
    await state.set_state(Signup.name)
    await message.answer("What is your name?")


@router.message(Signup.name)
async def got_name(message: Message, state: FSMContext) -> None:
    await state.update_data(name=message.text)
    await state.set_state(Signup.age)
    await message.answer("How old are you?")


@router.message(Signup.age)
async def got_age(message: Message, state: FSMContext, session: Any) -> None:
    if not (message.text or "").isdigit():
        raise ValueError("not a number")  # rolled back: state and data stay as they were
    data = await state.get_data()
    await state.clear()  # the FSM record goes
    session["signups"] = session.get("signups", 0) + 1  # the chat's own session
    await message.answer(f"Welcome, {data['name']} ({message.text})!")


@router.message(F.text == "/stats")
async def stats(message: Message, session: Any) -> None:
    await message.answer(f"signups in this chat: {session.get('signups', 0)}")


def build(cache: TieredCache) -> Dispatcher:
    storage = TierCacheStorage(cache)
    dp = Dispatcher(storage=storage, events_isolation=storage.create_isolation())
    dp.update.middleware(SessionMiddleware(cache, key="chat"))
    dp.include_router(router)

    @dp.shutdown()
    async def close_cache() -> None:
        await cache.aclose()

    return dp


class OfflineSession(BaseSession):
    """Answers the Bot API locally (the offline demo): prints what the
    bot would send."""

    async def close(self) -> None:
        pass

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[Any],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> Any:
        if isinstance(method, SendMessage):
            print(f"  bot: {method.text}")
            return Message(
                message_id=1,
                date=datetime.datetime.now(datetime.UTC),
                chat=Chat(id=int(method.chat_id), type="private"),
                text=method.text,
            )
        return True

    async def stream_content(self, *args: Any, **kwargs: Any) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError
        yield b""  # pragma: no cover


def update(n: int, text: str) -> Update:
    return Update(
        update_id=n,
        message=Message(
            message_id=n,
            date=datetime.datetime.now(datetime.UTC),
            chat=Chat(id=7, type="private"),
            from_user=User(id=7, is_bot=False, first_name="Ann"),
            text=text,
        ),
    )


def shared_writes(cache: TieredCache) -> int:
    name = cache._core.tiers[-1].name
    return next(t.writes for t in cache.stats().tiers if t.name == name)


async def offline(cache: TieredCache) -> None:
    dp = build(cache)
    bot = Bot("42:OFFLINE", session=OfflineSession())
    for n, text in enumerate(["/start", "Ann", "forty", "40", "/stats"], 1):
        before = shared_writes(cache)
        print(f"user: {text}")
        try:
            await dp.feed_update(bot, update(n, text))
        except ValueError as exc:
            print(f"  handler raised ({exc}): state and data rolled back")
        print(f"  writes: {shared_writes(cache) - before}")
    await dp.emit_shutdown()
    await bot.session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="disk tier directory")
    parser.add_argument("--redis", default=None, help="Redis URL (optional)")
    args = parser.parse_args()
    tiers: list[Any] = [MemoryTier(), DiskTier(args.dir or tempfile.mkdtemp())]
    if args.redis:
        tiers.append(RedisTier(args.redis))
    cache = TieredCache(*tiers, namespace="aiogram-demo")
    token = os.environ.get("BOT_TOKEN")
    if token:
        asyncio.run(build(cache).start_polling(Bot(token)))
    else:
        asyncio.run(offline(cache))


if __name__ == "__main__":
    main()
