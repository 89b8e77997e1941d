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

import hashlib
import math
from collections.abc import Sequence
from typing import Any, cast

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from .._exceptions import TierError
from .._fields import Delta, assemble, head_of
from .._redisclient import SyncClient, _LoopClient
from ._base import CasItem
from ._redis_calls import RedisCalls
from ._redis_cluster import arun_by_node, run_by_node, slot_tag
from ._redis_scripts import CAS_LUA, FIELDS_CAS_LUA, QUARANTINE_LUA, READ_LUA

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


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


#: The SHA1 of each script a cluster batch sends by EVALSHA.
_SHAS = {text: _sha(text) for text in (CAS_LUA, FIELDS_CAS_LUA, READ_LUA)}


def _first_error(out: list[Any]) -> list[Any]:
    """``out``, unless one of its items is an error: then raise that."""
    for item in out:
        if isinstance(item, BaseException):
            raise item
    return out


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
    #: RedisTier's: a cluster batch sends an item again alone by them.
    compare_and_set: Any
    acompare_and_set: Any

    def _key(self, key: str) -> str:
        if self.cluster:
            return self._prefix + slot_tag(key) + key
        return self._prefix + key

    def _lua_script(self, text: str) -> Any:
        """A registered script of the sync client (made once per text)."""
        script = self._lua.get(text)
        if script is None:
            script = self._lua[text] = self._client().register_script(text)
        return script

    # -- sync ------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        skey = self._key(key)

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
            if self.cluster:
                read = self._lua_script(READ_LUA)
                out = run_by_node(
                    c,
                    skeys,
                    lambda pipe, i: self._queue_read(pipe, skeys[i]),
                    lambda i: _reply(read(keys=[skeys[i]])),
                    lambda exc: exc,
                    [READ_LUA],
                )
                return self._read_replies(out, lambda i: _reply(read(keys=[skeys[i]])))
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

    # -- cluster batches (see _redis_cluster) ---------------------------------

    def _queue_read(self, pipe: Any, skey: str) -> None:
        if self._hashes:
            # By execute_command: redis-py's sync cluster pipeline refuses
            # its evalsha() method, not the command (one key: one slot).
            pipe.execute_command("EVALSHA", _SHAS[READ_LUA], 1, skey)
        else:
            pipe.get(skey)

    def _read_replies(self, out: list[Any], again: Any) -> list[bytes | None]:
        """A cluster batch read's replies as envelopes: a GET that met a
        hash is read again by READ_LUA (``again(i)``; async callers did)."""
        for i, r in enumerate(out):
            if again is not None and _wrongtype(r):
                self._hashes = True
                out[i] = again(i)
            elif not isinstance(r, BaseException):
                out[i] = _reply(r)
        return cast("list[bytes | None]", _first_error(out))

    def _queue_cas_raw(self, pipe: Any, item: CasItem | FieldsCasItem) -> None:
        """Queue a compare-and-set by EVALSHA (a cluster pipeline does not
        load scripts; an item that meets NOSCRIPT is sent again alone)."""
        if len(item) == 5:
            keys, args = self._fields_args(*item)
            pipe.execute_command("EVALSHA", _SHAS[FIELDS_CAS_LUA], len(keys), *keys, *args)
        else:
            keys, args = self._cas_args(*item)
            pipe.execute_command("EVALSHA", _SHAS[CAS_LUA], len(keys), *keys, *args)

    def _cas_outcome(self, item: CasItem | FieldsCasItem, result: Any) -> bool | TierError:
        """One cluster batch item's result: applied or not, or its own error
        (a refusal, or its node's outage: transient)."""
        if isinstance(result, TierError):
            return result
        if isinstance(result, BaseException):
            return self._error("compare_and_set", item[0], result, False)
        return bool(result)

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

    def compare_and_set_many(
        self, items: Sequence[CasItem | FieldsCasItem]
    ) -> list[bool | TierError]:
        if not items:
            return []
        if any(len(i) == 5 for i in items):
            self._hashes = True

        def call(c: SyncClient) -> list[bool | TierError]:
            if self.cluster:
                return self._cluster_cas_many(c, items)
            with c.pipeline(transaction=False) as pipe:
                for item in items:
                    self._queue_cas(pipe, item)
                return [bool(r) for r in pipe.execute()]

        return self._run("compare_and_set_many", None, call, sum(map(self._item_size, items)))

    def _cluster_cas_many(
        self, c: SyncClient, items: Sequence[CasItem | FieldsCasItem]
    ) -> list[bool | TierError]:
        def alone(i: int) -> Any:
            item = items[i]
            try:
                if len(item) == 5:
                    return self.compare_and_set_fields(*item)
                return self.compare_and_set(*item)
            except TierError as exc:
                return exc

        out = run_by_node(
            c,
            [self._key(item[0]) for item in items],
            lambda pipe, i: self._queue_cas_raw(pipe, items[i]),
            alone,
            lambda exc: self._error("compare_and_set_many", None, exc, True),
            [CAS_LUA, FIELDS_CAS_LUA],
        )
        return [self._cas_outcome(item, r) for item, r in zip(items, out, strict=True)]

    def quarantine_args(self, key: str, bad: bytes, to: str, keep_ms: int) -> Any:
        keys, args = [self._key(key), self._key(to)], [bad, keep_ms, head_of(bad)]
        return QUARANTINE_LUA, keys, args

    # -- async -----------------------------------------------------------------

    async def _ascript(
        self, e: _LoopClient, text: str, keys: list[str], args: Sequence[Any] = ()
    ) -> Any:
        """Run one of the tier's scripts on this loop's client."""
        if not self.cluster:
            script = e.script if text is CAS_LUA else e.client.register_script(text)
            # client=: with replicas=, this loop's client wrapped to WAIT.
            return await script(keys=keys, args=args, client=e.client)
        # Not redis-py's AsyncScript: it answers NOSCRIPT with a SCRIPT LOAD
        # on every node, which races with concurrent calls on an asyncio
        # cluster client (a connection's writer gone mid-command). EVAL
        # caches the script on the one node that lacked it (a new master).
        try:
            return await e.client.evalsha(_SHAS[text], len(keys), *keys, *args)
        except NoScriptError:
            return await e.client.eval(text, len(keys), *keys, *args)

    async def aget(self, key: str) -> bytes | None:
        skey = self._key(key)

        async def call(e: _LoopClient) -> bytes | None:
            if not self._hashes:
                try:
                    return cast("bytes | None", await e.client.get(skey))
                except redis.ResponseError as exc:
                    if not _wrongtype(exc):
                        raise
                    self._hashes = True
            return _reply(await self._ascript(e, READ_LUA, [skey]))

        return await self._arun("get", key, call)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        skeys = [self._key(k) for k in keys]

        async def call(e: _LoopClient) -> list[bytes | None]:
            if self.cluster:

                async def alone(i: int) -> bytes | None:
                    return _reply(await self._ascript(e, READ_LUA, [skeys[i]]))

                out = await arun_by_node(
                    e.client,
                    skeys,
                    lambda pipe, i: self._queue_read(pipe, skeys[i]),
                    alone,
                    lambda exc: exc,
                )
                wrong = [i for i, r in enumerate(out) if _wrongtype(r)]
                for i in wrong:
                    self._hashes = True
                    out[i] = await alone(i)
                return self._read_replies(out, None)
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
            return bool(await self._ascript(e, FIELDS_CAS_LUA, keys, args))

        return bool(await self._arun("compare_and_set", key, call, delta.size))

    async def acompare_and_set_many(
        self, items: Sequence[CasItem | FieldsCasItem]
    ) -> list[bool | TierError]:
        if not items:
            return []
        if any(len(i) == 5 for i in items):
            self._hashes = True

        async def call(e: _LoopClient) -> list[bool | TierError]:
            if self.cluster:
                return await self._acluster_cas_many(e, items)
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

    async def _acluster_cas_many(
        self, e: _LoopClient, items: Sequence[CasItem | FieldsCasItem]
    ) -> list[bool | TierError]:
        async def alone(i: int) -> Any:
            item = items[i]
            try:
                if len(item) == 5:
                    return await self.acompare_and_set_fields(*item)
                return await self.acompare_and_set(*item)
            except TierError as exc:
                return exc

        out = await arun_by_node(
            e.client,
            [self._key(item[0]) for item in items],
            lambda pipe, i: self._queue_cas_raw(pipe, items[i]),
            alone,
            lambda exc: self._error("compare_and_set_many", None, exc, True),
        )
        return [self._cas_outcome(item, r) for item, r in zip(items, out, strict=True)]
