"""An aiogram 3 bot in webhook mode that edits the same user session as the
Mini App backend (backend.py), through one Redis.

    BOT_TOKEN=123456:ABC... REDIS_URL=redis://127.0.0.1:6379/0 \\
        WEBHOOK_URL=https://bot.example.com python examples/miniapp/bot.py --port 8081

Telegram POSTs each update to ``/webhook``; a handler's reply goes back in
the HTTP response as a method call (``handle_in_background=False``), so a
reply costs no extra request to the Bot API. Commands:

* ``/memo <name> <text>``: keep a named memo (``memos``: a bot-only field);
* ``/bonus``: +1 on the ``balance`` the Mini App's +1 button increments too;
* ``/balance``: the balance; ``/session``: the whole session as JSON, with
  the version read (what this process sees);
* ``/start``: a button that opens the Mini App (``WEBAPP_URL``).

The handlers get the sender's session from
``tiercache.aiogram.SessionMiddleware(cache, key="user")``: the live value
of ``user:{id}``, the key the backend uses, one scope per update, written
when the handler returns and before its reply is sent. A write that fails
(a :class:`tiercache.ConflictError` when the Mini App changed the same
leaf at once; nothing of the update was applied) makes the webhook answer
500, and Telegram delivers the update again.

``WEBHOOK_URL`` set: the webhook is registered at startup. ``TELEGRAM_OFFLINE=1``:
the bot never calls the Bot API (tests; replies still come back in the
webhook response). ``WEBHOOK_SECRET``: Telegram's secret-token header is
required. ``MINIAPP_STORE=naive`` / ``naive-lock``: the baseline (naive.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher, Router
from aiogram.client.session.base import BaseSession
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup, Message, WebAppInfo
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web
from backend import SESSION_KEY, add_one, make_cache

from tiercache import TieredCache, to_plain
from tiercache.aiogram import SessionMiddleware

WEBHOOK_PATH = "/webhook"

#: Handlers that change or show the session: each gets the sender's live
#: session as ``session``, one scope per update (SessionMiddleware, added
#: by create_app), written once when the handler returns.
router = Router()
#: /session opens its own scope, to report the version it read.
reports = Router()
cache: Any = None  # set by create_app(): TieredCache.from_url(REDIS_URL, namespace="miniapp")


def session_middleware(cache: Any) -> BaseMiddleware:
    """``session=`` for the handlers: the sender's session, keyed
    ``user:{id}`` as in the backend; the baseline's own for naive.py."""
    if isinstance(cache, TieredCache):
        return SessionMiddleware(cache, key="user", arg="session")
    from naive import NaiveSessionMiddleware

    return NaiveSessionMiddleware(cache)


@router.message(CommandStart())
async def start(message: Message) -> SendMessage:
    url = os.environ.get("WEBAPP_URL")
    markup = None
    if url:
        button = InlineKeyboardButton(text="Open the Mini App", web_app=WebAppInfo(url=url))
        markup = InlineKeyboardMarkup(inline_keyboard=[[button]])
    return message.answer("/memo <name> <text>, /bonus, /balance, /session", reply_markup=markup)


@router.message(Command("memo"))
async def memo(message: Message, command: CommandObject, session: dict[str, Any]) -> SendMessage:
    name, _, text = (command.args or "").partition(" ")
    if not name or not text or len(name) > 32 or len(text) > 500:
        return message.answer("usage: /memo <name> <text>")
    # Different memo names are different keys of one nested dict: merged
    # with whatever the Mini App wrote meanwhile.
    session.setdefault("memos", {})[name] = text
    return message.answer(f"saved memo {name}")


@router.message(Command("bonus"))
async def bonus(message: Message, session: dict[str, Any]) -> SendMessage:
    add_one(session)  # a Counter: adds to the Mini App's +1s, never overwrites them
    return message.answer(f"balance: {int(session['balance'])}")


@router.message(Command("balance"))
async def balance(message: Message, session: dict[str, Any]) -> SendMessage:
    return message.answer(f"balance: {int(session.get('balance', 0))}")


@reports.message(Command("session"))
async def report(message: Message) -> SendMessage:
    """The session as this process reads it, with the version read and
    when (staleness measurements compare it with acknowledgements)."""
    assert message.from_user is not None
    read_at = time.monotonic()
    scope = cache.session(SESSION_KEY.format(message.from_user.id))
    async with scope as s:  # reads only: writes nothing
        plain = to_plain(s)
    body = {"version": scope.version, "read_at": read_at, "session": plain}
    return message.answer(json.dumps(body, sort_keys=True))


class OfflineSession(BaseSession):
    """A Bot API session that refuses every call: the bot answers only
    through webhook responses (tests, a local run without Telegram)."""

    async def close(self) -> None:
        pass

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[Any],
        timeout: int | None = None,  # noqa: ASYNC109
    ) -> Any:
        raise RuntimeError(f"TELEGRAM_OFFLINE: refused {type(method).__name__}")

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 (the signature is aiogram's)
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise RuntimeError("TELEGRAM_OFFLINE")
        yield b""  # pragma: no cover


def create_app(token: str, redis_url: str) -> web.Application:
    global cache
    cache = make_cache(redis_url)
    offline = os.environ.get("TELEGRAM_OFFLINE") == "1"
    bot = Bot(token, session=OfflineSession() if offline else None)
    dp = Dispatcher()
    # The reply a handler returns goes out only after its scope has written
    # (the middleware's exit); a write that fails is a 500 instead.
    router.message.middleware(session_middleware(cache))
    dp.include_routers(router, reports)

    @dp.startup()
    async def register_webhook() -> None:
        if url := os.environ.get("WEBHOOK_URL"):
            await bot.set_webhook(url + WEBHOOK_PATH, secret_token=os.environ.get("WEBHOOK_SECRET"))

    @dp.shutdown()  # aiohttp's shutdown signal, after SIGTERM
    async def close_cache() -> None:
        await cache.aclose()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    SimpleRequestHandler(
        dp, bot, handle_in_background=False, secret_token=os.environ.get("WEBHOOK_SECRET")
    ).register(app, path=WEBHOOK_PATH)
    setup_application(app, dp, bot=bot)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    app = create_app(
        os.environ["BOT_TOKEN"], os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
