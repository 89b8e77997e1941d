"""aiogram 3 on tiercache: an FSM storage, its event isolation, and a
session middleware (extra ``tiercache[aiogram]``)::

    storage = TierCacheStorage(cache)
    dp = Dispatcher(storage=storage, events_isolation=storage.create_isolation())
    dp.update.middleware(SessionMiddleware(cache, key="chat"))   # optional

::

    update ──> FSMContextMiddleware ──> isolation.lock(key): one tiercache
                 scope on the FSM record for the whole update
                 ├─ get_state / get_data / set_* ──> cache.current(record)
                 │   (served from the open scope: no I/O, no write yet)
                 └─ scope exit: at most one write (none if nothing
                    changed); the handler raised: rolled back
    outside an update (or no isolation): each call is its own short scope

One record per :class:`StorageKey` (named by aiogram's ``DefaultKeyBuilder``
or yours): ``{"state": "Form:name", "data": {...}}``, fields left out when
empty and the record deleted when both are. Changes to different keys of
``data`` from two workers merge (path-level); one key changed by both goes
to the cache's resolver (by default the later writer gets
:class:`~tiercache.ConflictError` and its update is rolled back).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Literal

from aiogram import BaseMiddleware
from aiogram.dispatcher.middlewares.user_context import EVENT_CONTEXT_KEY
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import (
    BaseEventIsolation,
    BaseStorage,
    DefaultKeyBuilder,
    KeyBuilder,
    StateType,
    StorageKey,
)
from aiogram.types import TelegramObject

from ._cache import TieredCache
from ._exceptions import ConfigError, ConflictError
from ._policy import Lease
from ._tracking import MISSING, to_plain

__all__ = ["SessionMiddleware", "TierCacheIsolation", "TierCacheStorage"]

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]


class TierCacheStorage(BaseStorage):
    """aiogram's FSM storage over a :class:`~tiercache.TieredCache`.

    ``key_builder`` names records (default ``DefaultKeyBuilder()``: ``fsm:
    <chat>:<user>``; pass one ``with_bot_id=True`` etc. as for
    RedisStorage); the cache adds its namespace. ``get_data`` and
    ``get_value`` return copies the caller may change freely; setting
    equal data or state writes nothing.
    """

    def __init__(self, cache: TieredCache, *, key_builder: KeyBuilder | None = None) -> None:
        if not isinstance(cache, TieredCache):
            raise ConfigError(f"TierCacheStorage needs a TieredCache, got {cache!r}")
        self.cache = cache
        self.key_builder = key_builder or DefaultKeyBuilder()

    def create_isolation(self, *, lease: Lease | None = None) -> TierCacheIsolation:
        """An events isolation holding one scope per update (see
        :class:`TierCacheIsolation`); ``lease``: strict across processes."""
        return TierCacheIsolation(self, lease=lease)

    def record_key(self, key: StorageKey) -> str:
        """The cache key of ``key``'s record."""
        return self.key_builder.build(key)

    async def _edit(self, key: StorageKey, change: Callable[[Any], None]) -> None:
        """Apply ``change`` to the record: in the update's open scope, else
        in a scope of its own (an emptied record is deleted after it)."""
        name = self.record_key(key)
        record = self.cache.current(name)
        if record is not None:
            change(record)
            return
        scope = self.cache.session(name)
        async with scope as record:
            change(record)
            emptied = not record
        if emptied:
            await drop_if_unchanged(self.cache, name, scope.version)

    async def _read(self, key: StorageKey) -> Any:
        name = self.record_key(key)
        record = self.cache.current(name)
        if record is None:
            record = await self.cache.aget(name)
        return record if isinstance(record, dict) else {}

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"an FSM state is a str, a State or None, got {value!r}")

        def change(record: Any) -> None:
            if value is None:
                record.pop("state", None)
            else:
                record["state"] = value  # equal: not a change (tracking is exact)

        await self._edit(key, change)

    async def get_state(self, key: StorageKey) -> str | None:
        state = (await self._read(key)).get("state")
        return state if isinstance(state, str) else None

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            raise DataNotDictLikeError(
                f"Data must be a dict or dict-like object, got {type(data).__name__}"
            )
        new = to_plain(data)  # ours: the caller's dict stays theirs

        def change(record: Any) -> None:
            _replace_data(record, new)

        await self._edit(key, change)

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        data = (await self._read(key)).get("data")
        return to_plain(data) if isinstance(data, dict) else {}

    async def get_value(
        self, storage_key: StorageKey, dict_key: str, default: Any | None = None
    ) -> Any | None:
        data = (await self._read(storage_key)).get("data")
        if not isinstance(data, dict):
            return default
        value = data.get(dict_key, MISSING)
        return default if value is MISSING else to_plain(value)

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        """``dict.update`` of the record's data, atomic (one scope)."""
        if not isinstance(data, Mapping):
            raise DataNotDictLikeError(
                f"Data must be a dict or dict-like object, got {type(data).__name__}"
            )
        patch = to_plain(dict(data))
        result: dict[str, Any] = {}

        def change(record: Any) -> None:
            current = to_plain(record.get("data") or {})
            current.update(patch)
            _replace_data(record, current)
            result.update(to_plain(current))

        await self._edit(key, change)
        return result

    async def close(self) -> None:
        """Nothing of its own: close the cache (``await cache.aclose()``)
        where the bot shuts down, after the dispatcher."""


class TierCacheIsolation(BaseEventIsolation):
    """aiogram's events isolation as one tiercache scope per update.

    ``lock(key)`` opens a session scope on the FSM record: updates of one
    record are serialised in this process (threads and tasks alike; with
    ``lease=``, across processes too), every storage call inside is served
    from the open scope, the update writes at most once (nothing if it
    changed nothing), and a handler that raises rolls state and data back.
    Nothing is kept per key after the update (aiogram's
    ``SimpleEventIsolation`` keeps a lock per key forever).
    """

    def __init__(self, storage: TierCacheStorage, *, lease: Lease | None = None) -> None:
        if lease is not None and not isinstance(lease, Lease):
            raise ConfigError(f"lease must be a tiercache.Lease, got {lease!r}")
        self.storage = storage
        self.lease = lease

    @contextlib.asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        cache = self.storage.cache
        name = self.storage.record_key(key)
        scope = cache.session(name, lease=self.lease)
        async with scope as record:
            yield
            emptied = not record
        if emptied:
            await drop_if_unchanged(cache, name, scope.version)

    async def close(self) -> None:
        pass


async def drop_if_unchanged(cache: TieredCache, key: str, version: int | None) -> None:
    """Delete an emptied record, unless someone wrote it since (then it is
    theirs, and stays)."""
    if not version:
        return  # nothing was stored
    with contextlib.suppress(ConflictError):
        await cache.adelete(key, expected_version=version)


def _replace_data(record: Any, new: dict[str, Any]) -> None:
    """Make ``record["data"]`` equal ``new`` key by key, so another worker's
    change to another key merges with this one."""
    if not new:
        record.pop("data", None)
        return
    data = record.get("data")
    if not isinstance(data, dict):
        record["data"] = new
        return
    for k in [k for k in data if k not in new]:
        del data[k]
    for k, v in new.items():
        data[k] = v  # an equal value is not a change


KeyKind = Literal["chat", "user", "user_in_chat"]


class SessionMiddleware(BaseMiddleware):
    """Hand handlers a live tiercache session as the ``arg`` keyword
    (default ``session``), one scope per event: written once when the
    handler returns, rolled back when it raises.

    ``key``: ``"chat"`` (``chat:<id>``), ``"user"`` (``user:<id>``),
    ``"user_in_chat"`` (``chat:<id>:user:<id>``), or a function
    ``(event, data) -> str | None``. An event without that chat or user
    gets no session. Other keywords (``lease=``, ``conflict=``, ``ttl=``)
    go to :meth:`TieredCache.session`. Register it on the update observer
    (``dp.update.middleware(...)``) or on one event type's.
    """

    def __init__(
        self,
        cache: TieredCache,
        *,
        key: KeyKind | Callable[[TelegramObject, dict[str, Any]], str | None] = "chat",
        arg: str = "session",
        **session_options: Any,
    ) -> None:
        if not isinstance(cache, TieredCache):
            raise ConfigError(f"SessionMiddleware needs a TieredCache, got {cache!r}")
        if not callable(key) and key not in ("chat", "user", "user_in_chat"):
            raise ConfigError(
                f'key must be "chat", "user", "user_in_chat" or a function, got {key!r}'
            )
        if not isinstance(arg, str) or not arg.isidentifier():
            raise ConfigError(f"arg must be a keyword name, got {arg!r}")
        lease = session_options.get("lease")
        if lease is not None and not isinstance(lease, Lease):
            raise ConfigError(f"lease must be a tiercache.Lease, got {lease!r}")
        cache._scope_options(dict, **_options(session_options))  # checked now
        self.cache = cache
        self.key = key
        self.arg = arg
        self.options = session_options

    def key_of(self, event: TelegramObject, data: dict[str, Any]) -> str | None:
        if callable(self.key):
            return self.key(event, data)
        context = data.get(EVENT_CONTEXT_KEY)
        chat = getattr(context, "chat_id", None)
        user = getattr(context, "user_id", None)
        if self.key == "chat":
            return None if chat is None else f"chat:{chat}"
        if self.key == "user":
            return None if user is None else f"user:{user}"
        return None if chat is None or user is None else f"chat:{chat}:user:{user}"

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        key = self.key_of(event, data)
        if key is None:
            return await handler(event, data)
        async with self.cache.session(key, **self.options) as session:
            data[self.arg] = session
            return await handler(event, data)


def _options(given: dict[str, Any]) -> dict[str, Any]:
    allowed = {"ttl", "schema", "commit_on_error", "conflict", "lease"}
    unknown = set(given) - allowed
    if unknown:
        raise ConfigError(f"SessionMiddleware: unknown session options {sorted(unknown)}")
    return {
        "ttl": given.get("ttl"),
        "schema": given.get("schema"),
        "commit_on_error": given.get("commit_on_error", False),
        "conflict": given.get("conflict"),
        "lease": given.get("lease"),
    }
