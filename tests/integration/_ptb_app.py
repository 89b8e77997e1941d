"""Real python-telegram-bot Applications with no network, for the adapter's
tests and their worker processes: a :class:`BaseRequest` that answers
``getMe`` (and anything else with ``true``), updates built as Telegram
would send them, and handlers that count."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
from typing import Any

from telegram import Update
from telegram.ext import (
    Application,
    BasePersistence,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    filters,
)
from telegram.request import BaseRequest, RequestData

from tiercache import Counter

BOT = {"id": 777, "is_bot": True, "first_name": "Test", "username": "tiercache_test_bot"}
TOKEN = "777:offline-token"

_update_ids = itertools.count(1)


class OfflineRequest(BaseRequest):
    """Answers the Bot API from memory: ``getMe`` the bot above, every
    other method ``true`` (sendMessage and friends are never looked at)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def read_timeout(self) -> float | None:
        return None

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: Any = None,
        write_timeout: Any = None,
        connect_timeout: Any = None,
        pool_timeout: Any = None,
    ) -> tuple[int, bytes]:
        endpoint = url.rsplit("/", 1)[-1]
        self.calls.append(endpoint)
        result: Any = BOT if endpoint == "getMe" else True
        return 200, json.dumps({"ok": True, "result": result}).encode()


def message(user_id: int, text: str, chat_id: int | None = None) -> dict[str, Any]:
    """The JSON of a text message update from ``user_id`` in a private chat."""
    uid = next(_update_ids)
    chat = chat_id if chat_id is not None else user_id
    entities = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return {
        "update_id": uid,
        "message": {
            "message_id": uid,
            "date": 1_700_000_000,
            "chat": {"id": chat, "type": "private" if chat == user_id else "group"},
            "from": {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"},
            "text": text,
            **({"entities": entities} if text.startswith("/") else {}),
        },
    }


@dataclasses.dataclass
class Cart:
    """A user class kept in user_data (registered with MsgpackSerializer)."""

    items: list[str]
    total: int = 0


class Step(enum.IntEnum):
    """Conversation states, as PTB's examples write them."""

    NAME = 1
    AGE = 2


async def count(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """``inc``: user_data["n"] += 1 (a Counter if ``counter``), and a note
    in chat_data; ``read``: only reads."""
    assert update.message is not None and update.message.text is not None
    text = update.message.text
    if text == "read":
        _ = dict(context.user_data or {}), dict(context.chat_data or {})
        return
    ud, cd = context.user_data, context.chat_data
    assert ud is not None and cd is not None
    if text == "counter":
        ud["n"] = ud.get("n", Counter()) + 1
    elif text == "inc":
        ud["n"] = ud.get("n", 0) + 1
    elif text.startswith("set "):
        _, field, value = text.split(" ", 2)
        ud.setdefault("profile", {})[field] = value
    cd["last"] = text


async def _start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Step:
    return Step.NAME


async def _name(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Step:
    assert context.user_data is not None and update.message is not None
    context.user_data["name"] = update.message.text
    return Step.AGE


async def _age(update: Update, context: ContextTypes.DEFAULT_TYPE) -> int:
    assert context.user_data is not None and update.message is not None
    context.user_data["age"] = update.message.text
    return ConversationHandler.END


def signup() -> ConversationHandler[Any]:
    """A persistent conversation with IntEnum states: /signup, name, age."""
    text = filters.TEXT & ~filters.COMMAND
    return ConversationHandler(
        entry_points=[CommandHandler("signup", _start)],
        states={Step.NAME: [MessageHandler(text, _name)], Step.AGE: [MessageHandler(text, _age)]},
        fallbacks=[],
        name="signup",
        persistent=True,
    )


def build(
    persistence: BasePersistence[Any, Any, Any],
    *,
    conversation: bool = False,
    callback_data: bool = False,
) -> Any:
    """An Application on ``persistence`` with the handlers above (the
    conversation first, if asked for; PTB's arbitrary callback data, if
    asked for)."""
    builder = (
        Application.builder()
        .token(TOKEN)
        .request(OfflineRequest())
        .get_updates_request(OfflineRequest())
        .updater(None)
        .persistence(persistence)
    )
    if callback_data:
        builder = builder.arbitrary_callback_data(True)
    app = builder.build()
    if conversation:
        app.add_handler(signup())
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, count), group=1)
    return app


async def send(app: Any, *updates: dict[str, Any]) -> None:
    for data in updates:
        await app.process_update(Update.de_json(data, app.bot))
