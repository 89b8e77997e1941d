"""The baseline tiercache is measured against: each request GETs the
user's session as one JSON blob from Redis, changes it and SETs it back
(what a bot keeping its data in Redis by hand does). ``lock=True`` adds
a per-process, per-key ``asyncio.Lock``, which serialises the requests of
one process but not the two processes against each other.

It has the few methods of :class:`tiercache.TieredCache` that backend.py
and bot.py use, and :class:`NaiveSessionMiddleware` stands in for
``tiercache.aiogram.SessionMiddleware``, so the same handlers run on
either (``MINIAPP_STORE``).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from aiogram import BaseMiddleware


class NaiveCache:
    def __init__(self, url: str, *, namespace: str, lock: bool) -> None:
        self.redis = aioredis.from_url(url)
        self.prefix = f"naive:{namespace}:"
        self.locks: defaultdict[str, asyncio.Lock] | None = (
            defaultdict(asyncio.Lock) if lock else None
        )

    def session(self, key: str, *, at_least: int | None = None) -> NaiveScope:
        return NaiveScope(self, key)

    async def aget(self, key: str, default: Any = None, *, at_least: int | None = None) -> Any:
        raw = await self.redis.get(f"{self.prefix}{key}")
        return default if raw is None else json.loads(raw)

    async def aclose(self) -> None:
        await self.redis.aclose()


class NaiveScope:
    #: No versions: every read goes to Redis.
    version: int | None = None

    def __init__(self, cache: NaiveCache, key: str) -> None:
        self.cache = cache
        self.key = key
        self.lock = cache.locks[key] if cache.locks is not None else None

    async def __aenter__(self) -> dict[str, Any]:
        if self.lock is not None:
            await self.lock.acquire()
        try:
            raw = await self.cache.redis.get(f"{self.cache.prefix}{self.key}")
        except BaseException:
            self._release()
            raise
        self.value: dict[str, Any] = {} if raw is None else json.loads(raw)
        self.before = json.dumps(self.value, sort_keys=True)
        return self.value

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            after = json.dumps(self.value, sort_keys=True)
            if exc is None and after != self.before:  # write only what changed
                await self.cache.redis.set(f"{self.cache.prefix}{self.key}", after)
        finally:
            self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()


class NaiveSessionMiddleware(BaseMiddleware):
    """``session=`` for aiogram handlers from a :class:`NaiveCache`:
    ``user:{id}`` loaded before the handler, saved after it."""

    def __init__(self, cache: NaiveCache) -> None:
        self.cache = cache

    async def __call__(self, handler: Any, event: Any, data: dict[str, Any]) -> Any:
        user = data["event_from_user"]
        async with self.cache.session(f"user:{user.id}") as session:
            data["session"] = session
            return await handler(event, data)
