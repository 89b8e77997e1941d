"""A small aiogram 3 bot for the adapter's tests, worker processes and
benchmark: real Dispatcher, Router, FSMContext and handlers; the Bot API
behind a mocked session (no network)."""

from __future__ import annotations

import datetime
from collections.abc import AsyncGenerator
from typing import Any

from aiogram import Bot, Dispatcher, F, Router
from aiogram.client.session.base import BaseSession
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage
from aiogram.methods import SendMessage, TelegramMethod
from aiogram.types import Chat, Message, Update, User

TOKEN = "42:TEST-TOKEN"


class MockSession(BaseSession):
    """Answers every Bot API call locally: sendMessage with the message
    it would have sent, anything else with True; records the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[TelegramMethod[Any]] = []

    async def close(self) -> None:
        pass

    async def make_request(
        self,
        bot: Bot,
        method: TelegramMethod[Any],
        timeout: int | None = None,  # noqa: ASYNC109 - aiogram's signature
    ) -> Any:
        self.calls.append(method)
        if isinstance(method, SendMessage):
            return Message(
                message_id=len(self.calls),
                date=datetime.datetime.now(datetime.UTC),
                chat=Chat(id=int(method.chat_id), type="private"),
                text=method.text,
            )
        return True

    async def stream_content(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        timeout: int = 30,  # noqa: ASYNC109 - aiogram's signature
        chunk_size: int = 65536,
        raise_for_status: bool = True,
    ) -> AsyncGenerator[bytes, None]:
        raise NotImplementedError
        yield b""  # pragma: no cover


def make_bot() -> Bot:
    return Bot(TOKEN, session=MockSession())


_ids = iter(range(1, 1 << 62))


def message(chat: int, text: str, *, user: int | None = None) -> Update:
    """An Update with a private-chat text message from ``user`` (default:
    the chat's own user)."""
    n = next(_ids)
    return Update(
        update_id=n,
        message=Message(
            message_id=n,
            date=datetime.datetime.now(datetime.UTC),
            chat=Chat(id=chat, type="private" if user is None else "group"),
            from_user=User(id=chat if user is None else user, is_bot=False, first_name="u"),
            text=text,
        ),
    )


class Form(StatesGroup):
    name = State()
    age = State()


def router() -> Router:
    r = Router()

    @r.message(Command("start"))
    async def start(msg: Message, state: FSMContext) -> None:
        await state.set_state(Form.name)
        await state.update_data(started=True)

    @r.message(F.text == "inc")
    async def inc(msg: Message, state: FSMContext) -> None:
        data = await state.get_data()
        await state.update_data(n=data.get("n", 0) + 1)

    @r.message(F.text.startswith("tag:"))
    async def tag(msg: Message, state: FSMContext) -> None:
        await state.update_data({msg.text.removeprefix("tag:"): True})  # type: ignore[union-attr]

    @r.message(F.text == "read")
    async def read(msg: Message, state: FSMContext) -> None:
        await state.get_state()
        await state.get_data()

    @r.message(F.text == "fail")
    async def fail(msg: Message, state: FSMContext) -> None:
        await state.update_data(half="done")
        await state.set_state(Form.age)
        raise RuntimeError("the handler failed")

    @r.message(F.text == "clear")
    async def clear(msg: Message, state: FSMContext) -> None:
        await state.clear()

    @r.message(F.text == "hi")
    async def hi(msg: Message, state: FSMContext) -> None:
        await msg.answer(f"state {await state.get_state()}")

    @r.message(F.text == "count")
    async def count(msg: Message, session: Any = None) -> None:
        assert session is not None
        session["n"] = session.get("n", 0) + 1

    return r


def dispatcher(storage: BaseStorage, isolation: BaseEventIsolation | None = None) -> Dispatcher:
    dp = Dispatcher(
        storage=storage, **({} if isolation is None else {"events_isolation": isolation})
    )
    dp.include_router(router())
    return dp
