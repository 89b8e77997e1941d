"""The Redis tier's reads and fields-layout writes (see tiercache._fields).

::

    get:  no hash seen yet ──> GET ──WRONGTYPE──┐ (a hash exists: from now
          a hash seen ──> READ_LUA ─────────────┴─> on, READ_LUA: one round
                                                     trip for either layout)
    get_many: MGET, plus one TYPE round trip when it found nothing for a key
          (a hash reads as nil there); once a hash is seen, READ_LUA for each
          reply: bytes ──> as is; HGETALL's list ──> assemble() ──> envelope
    compare_and_set_fields: FIELDS_CAS_LUA with the head, the changed (or
          all) fields and the removed names, in one round trip

A process that never stores a hash and never meets one reads with plain
GETs, as before the layout existed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import redis
import redis.asyncio

from .._fields import Delta, assemble, head_of
from .._redisclient import SyncClient, _LoopClient
from ._base import CasItem
from ._redis_calls import RedisCalls
from ._redis_scripts import FIELDS_CAS_LUA, QUARANTINE_LUA, READ_LUA

__all__ = ["FieldsCalls", "FieldsCasItem", "_px"]

#: A compare-and-set of the fields layout: a CasItem and its Delta.
FieldsCasItem = tuple[str, bytes, "float | None", int, Delta]

#: ``note_lua``'s five arguments when the write publishes nothing.
_NO_NOTE = ["", "", "", "", ""]


def _px(ttl: float | None) -> int:
    """Milliseconds for SET PX: 0 for no expiry, -1 for already expired.

    Rounds up: a backend TTL may be late, never early.
    """
    if ttl is None:
        return 0
    if ttl <= 0:
        return -1
    return max(1, math.ceil(ttl * 1000))


def _wrongtype(exc: BaseException) -> bool:
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("WRONGTYPE")


def _reply(r: Any) -> bytes | None:
    """READ_LUA's answer as envelope bytes."""
    if r is None or isinstance(r, bytes):
        return r
    items = cast(list[bytes], r)
    head = b""
    fields: list[tuple[bytes, bytes]] = []
    for i in range(0, len(items) - 1, 2):
        name, value = items[i], items[i + 1]
        if name:
            fields.append((name, value))
        else:
            head = value
    return assemble(head, fields)


class FieldsCalls(RedisCalls):
    """Reads (either layout) and the fields-layout writes of RedisTier."""

    supports_fields = True
    _prefix: str
    _hashes: bool
    _note: Any
    #: Registered scripts of the sync client, by their text.
    _lua: dict[str, Any]

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _lua_script(self, text: str) -> Any:
        """A registered script of the sync client (made once per text)."""
        script = self._lua.get(text)
        if script is None:
            script = self._lua[text] = self._client().register_script(text)
        return script

    # -- sync ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        skey = self._prefix + key

        def call(c: SyncClient) -> bytes | None:
            if not self._hashes:
                try:
                    return cast("bytes | None", c.get(skey))
                except redis.ResponseError as exc:
                    if not _wrongtype(exc):
                        raise
                    self._hashes = True
            return _reply(self._lua_script(READ_LUA)(keys=[skey], client=c))

        return self._run("get", key, call)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        skeys = [self._key(k) for k in keys]

        def call(c: SyncClient) -> list[bytes | None]:
            if not self._hashes:
                out = cast("list[bytes | None]", c.mget(skeys))
                if None not in out:
                    return out
                # MGET answers nil for a hash as for a missing key: ask
                # which of the keys it had nothing for are hashes.
                with c.pipeline(transaction=False) as pipe:
                    for sk, got in zip(skeys, out, strict=True):
                        if got is None:
                            pipe.type(sk)
                    if b"hash" not in pipe.execute():
                        return out
                self._hashes = True
            script = self._lua_script(READ_LUA)
            with c.pipeline(transaction=False) as pipe:
                for sk in skeys:
                    script(keys=[sk], client=pipe)
                return [_reply(r) for r in pipe.execute()]

        return self._run("get_many", None, call)

    def _fields_args(
        self, key: str, value: bytes, ttl: float | None, expected: int, delta: Delta
    ) -> tuple[list[str], list[Any]]:
        keys = [self._key(key)]
        note: list[Any] = []
        self._note(key, value, keys, note)
        args: list[Any] = note or list(_NO_NOTE)
        args += [
            delta.head,
            expected.to_bytes(8, "little"),
            _px(ttl),
            "f" if delta.full else "d",
            len(delta.gone),
            *delta.gone,
            *delta.put,
        ]
        return keys, args

    def compare_and_set_fields(
        self, key: str, value: bytes, ttl: float | None, expected: int, delta: Delta
    ) -> bool:
        """Compare-and-set in the fields layout: ``value`` is the envelope
        the fields make (what the other tiers store), ``delta`` what is
        sent. False when the stored version is not ``expected`` (or, for a
        delta, not a hash)."""
        keys, args = self._fields_args(key, value, ttl, expected, delta)
        self._hashes = True

        def call(c: SyncClient) -> bool:
            return bool(self._lua_script(FIELDS_CAS_LUA)(keys=keys, args=args, client=c))

        return bool(self._run("compare_and_set", key, call, delta.size))

    def _queue_cas(self, pipe: Any, item: CasItem | FieldsCasItem) -> None:
        if len(item) == 5:
            keys, args = self._fields_args(*item)
            self._lua_script(FIELDS_CAS_LUA)(keys=keys, args=args, client=pipe)
        else:
            keys, args = self._cas_args(*item)
            self._script()(keys=keys, args=args, client=pipe)

    def _cas_args(
        self, key: str, value: bytes, ttl: float | None, expected: int
    ) -> tuple[list[str], list[Any]]:
        keys, args = [self._key(key)], [value, expected.to_bytes(8, "little"), _px(ttl)]
        self._note(key, value, keys, args)
        return keys, args

    @staticmethod
    def _item_size(item: CasItem | FieldsCasItem) -> int:
        return item[4].size if len(item) == 5 else len(item[1])

    def compare_and_set_many(self, items: Sequence[CasItem | FieldsCasItem]) -> list[bool]:
        if not items:
            return []
        if any(len(i) == 5 for i in items):
            self._hashes = True

        def call(c: SyncClient) -> list[bool]:
            with c.pipeline(transaction=False) as pipe:
                for item in items:
                    self._queue_cas(pipe, item)
                return [bool(r) for r in pipe.execute()]

        return self._run("compare_and_set_many", None, call, sum(map(self._item_size, items)))

    def quarantine_args(self, key: str, bad: bytes, to: str, keep_ms: int) -> Any:
        keys, args = [self._key(key), self._key(to)], [bad, keep_ms, head_of(bad)]
        return QUARANTINE_LUA, keys, args

    # -- async -----------------------------------------------------------------

    async def aget(self, key: str) -> bytes | None:
        skey = self._prefix + key

        async def call(e: _LoopClient) -> bytes | None:
            if not self._hashes:
                try:
                    return cast("bytes | None", await e.client.get(skey))
                except redis.ResponseError as exc:
                    if not _wrongtype(exc):
                        raise
                    self._hashes = True
            return _reply(await e.client.register_script(READ_LUA)(keys=[skey]))

        return await self._arun("get", key, call)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        skeys = [self._key(k) for k in keys]

        async def call(e: _LoopClient) -> list[bytes | None]:
            if not self._hashes:
                out = cast("list[bytes | None]", await e.client.mget(skeys))
                if None not in out:
                    return out
                async with e.client.pipeline(transaction=False) as pipe:
                    for sk, got in zip(skeys, out, strict=True):
                        if got is None:
                            pipe.type(sk)
                    if b"hash" not in await pipe.execute():
                        return out
                self._hashes = True
            script = e.client.register_script(READ_LUA)
            async with e.client.pipeline(transaction=False) as pipe:
                for sk in skeys:
                    await script(keys=[sk], client=pipe)
                return [_reply(r) for r in await pipe.execute()]

        return await self._arun("get_many", None, call)

    async def acompare_and_set_fields(
        self, key: str, value: bytes, ttl: float | None, expected: int, delta: Delta
    ) -> bool:
        keys, args = self._fields_args(key, value, ttl, expected, delta)
        self._hashes = True

        async def call(e: _LoopClient) -> bool:
            script = e.client.register_script(FIELDS_CAS_LUA)
            return bool(await script(keys=keys, args=args, client=e.client))

        return bool(await self._arun("compare_and_set", key, call, delta.size))

    async def acompare_and_set_many(self, items: Sequence[CasItem | FieldsCasItem]) -> list[bool]:
        if not items:
            return []
        if any(len(i) == 5 for i in items):
            self._hashes = True

        async def call(e: _LoopClient) -> list[bool]:
            async with e.client.pipeline(transaction=False) as pipe:
                for item in items:
                    if len(item) == 5:
                        keys, args = self._fields_args(*item)
                        script = e.client.register_script(FIELDS_CAS_LUA)
                    else:
                        keys, args = self._cas_args(*item)
                        script = e.script
                    await script(keys=keys, args=args, client=pipe)
                return [bool(r) for r in await pipe.execute()]

        size = sum(map(self._item_size, items))
        return await self._arun("compare_and_set_many", None, call, size)
