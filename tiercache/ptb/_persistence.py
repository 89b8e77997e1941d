"""``TierCachePersistence``: python-telegram-bot's persistence on a TieredCache.

::

    Application ──get_*() at initialize──────────> keys() + get_many(): every stored user/chat
                ──refresh_*(d) before a handler──> DictSync.refresh: others' changes into d
                ──update_*(d) every interval─────> DictSync.write: only what changed, merged
                ──update_conversation(name, k, s)─> one path of ptb:conv:{name}, in a scope
                ──flush() at shutdown────────────> pending writes, then cache.aflush()
"""

from __future__ import annotations

import logging
from typing import Any

from telegram.ext import BasePersistence, PersistenceInput
from telegram.ext._utils.types import CDCData, ConversationDict, ConversationKey

from .. import MISSING, ConfigError, ConflictError, FieldPath, Resolver, TieredCache
from . import _api
from ._diff import same
from ._sync import DictSync

__all__ = ["TierCachePersistence"]

log = logging.getLogger("tiercache.ptb")

Data = dict[Any, Any]

#: Rounds of retries ``flush()`` gives pending writes: each lost race
#: reloads what is stored, so the next round settles it (or logs it).
FLUSH_ROUNDS = 5


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis-style glob."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _later_access(otherwise: Resolver) -> Resolver:
    """Callback data's resolver: the access time of a keyboard two
    processes used is the later one; anything else goes to ``otherwise``
    (the cache's resolver)."""

    def resolve(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
        if (
            isinstance(field, FieldPath)
            and len(field) == 3
            and field[0] == "keyboards"
            and field[2] == "at"
            and isinstance(ours, float)
            and isinstance(theirs, float)
        ):
            return max(ours, theirs)
        return otherwise(key, field, base, ours, theirs)

    return resolve


class TierCachePersistence(BasePersistence[Data, Data, Data]):
    """PTB persistence for user, chat, bot and callback data and
    conversations, stored in ``cache`` (any tiers; share a Redis tier to
    share the bot's data between processes).

    >>> from tiercache import MemoryTier, TieredCache
    >>> from tiercache.ptb import TierCachePersistence
    >>> cache = TieredCache(MemoryTier(), namespace="doc-ptb")
    >>> persistence = TierCachePersistence(cache, update_interval=30)
    >>> persistence.key("user", 42), persistence.key("conv", "signup")
    ('ptb:user:42', 'ptb:conv:signup')
    >>> cache.close()

    Then ``Application.builder().token(TOKEN).persistence(persistence)
    .post_shutdown(lambda app: cache.aclose()).build()``.

    Keys (``prefix`` is ``"ptb"`` unless told): ``{prefix}:user:{id}``,
    ``{prefix}:chat:{id}``, ``{prefix}:bot``, ``{prefix}:callback`` and
    ``{prefix}:conv:{name}`` (one dict per ConversationHandler, keyed by
    the conversation key tuple), inside the cache's namespace.

    * Dicts PTB hands back unchanged are not written (no I/O at all);
      changed ones write only their changed paths, merged into what other
      processes stored. A path both changed goes to the cache's conflict
      resolver: ``raise_conflict`` (the default) keeps the stored value
      and logs the dropped local one on the ``tiercache.ptb`` logger;
      :class:`tiercache.Counter` values add both deltas, exactly.
    * ``refresh_*`` (PTB calls them before each handler) pulls other
      processes' changes into PTB's dict; with nothing changed it is one
      memory read.
    * At most ``max_concurrency`` cache calls run at once, however many
      users and chats one ``update_persistence`` writes.
    * ``flush()`` (PTB calls it at shutdown) writes what is pending; it
      does not close the cache: ``await cache.aclose()`` in
      ``post_shutdown``.
    """

    def __init__(
        self,
        cache: TieredCache,
        *,
        update_interval: float = 60,
        store_data: PersistenceInput | None = None,
        prefix: str = "ptb",
        max_concurrency: int = 16,
    ) -> None:
        if not isinstance(cache, TieredCache):
            raise ConfigError(f"cache: expected a TieredCache, got {cache!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"prefix: expected a non-empty str, got {prefix!r}")
        if type(max_concurrency) is not int or max_concurrency < 1:
            raise ConfigError(f"max_concurrency: expected an int >= 1, got {max_concurrency!r}")
        super().__init__(store_data=store_data, update_interval=update_interval)
        self.cache = cache
        self.prefix = prefix
        self._sync = DictSync(cache, max_concurrency)
        self._sync.resolvers[self.key("callback")] = _later_access(cache.conflict)

    # -- keys and counters ----------------------------------------------------------------

    def key(self, kind: str, ident: object = None) -> str:
        """The cache key of one record: ``kind`` is ``user``, ``chat``,
        ``bot``, ``callback`` or ``conv``."""
        return f"{self.prefix}:{kind}" if ident is None else f"{self.prefix}:{kind}:{ident}"

    @property
    def conflicts(self) -> int:
        """Local changes dropped for another process's (logged each)."""
        return self._sync.conflicts

    @property
    def recent_conflicts(self) -> list[tuple[str, Any]]:
        """The last 100 of them: ``(key, Conflict)`` with the path and the
        base, local and stored values."""
        return list(self._sync.recent_conflicts)

    @property
    def unchanged(self) -> int:
        """Hand-backs that equalled what was stored, so wrote nothing."""
        return self._sync.unchanged

    # -- user and chat data -----------------------------------------------------------------

    async def _load_all(self, kind: str) -> dict[int, Data]:
        head = self.key(kind, "")
        names = await _api.keys(self.cache, _glob_escape(head) + "*")
        found: dict[int, Data] = {}
        for name, value in (await _api.get_many(self.cache, names)).items():
            try:
                ident = int(name[len(head) :])
            except ValueError:
                continue  # not one of ours: another writer's key under the prefix
            self._sync.loaded(name, value)
            found[ident] = value
        return found

    async def get_user_data(self) -> dict[int, Data]:
        return await self._load_all("user")

    async def get_chat_data(self) -> dict[int, Data]:
        return await self._load_all("chat")

    async def update_user_data(self, user_id: int, data: Data) -> None:
        await self._sync.write(self.key("user", user_id), data)

    async def update_chat_data(self, chat_id: int, data: Data) -> None:
        await self._sync.write(self.key("chat", chat_id), data)

    async def refresh_user_data(self, user_id: int, user_data: Data) -> None:
        await self._sync.refresh(self.key("user", user_id), user_data)

    async def refresh_chat_data(self, chat_id: int, chat_data: Data) -> None:
        await self._sync.refresh(self.key("chat", chat_id), chat_data)

    async def drop_user_data(self, user_id: int) -> None:
        await self._drop(self.key("user", user_id))

    async def drop_chat_data(self, chat_id: int) -> None:
        await self._drop(self.key("chat", chat_id))

    async def _drop(self, key: str) -> None:
        self._sync.forget(key)
        await self.cache.adelete(key)

    # -- bot and callback data ------------------------------------------------------------------

    async def get_bot_data(self) -> Data:
        key = self.key("bot")
        value = await _api.get_copy(self.cache, key)
        data: Data = value if isinstance(value, dict) else {}
        self._sync.loaded(key, data)
        return data

    async def update_bot_data(self, data: Data) -> None:
        # PTB calls this on every run: a good moment to retry what is pending.
        await self._sync.retry()
        await self._sync.write(self.key("bot"), data)

    async def refresh_bot_data(self, bot_data: Data) -> None:
        await self._sync.refresh(self.key("bot"), bot_data)

    async def get_callback_data(self) -> CDCData | None:
        key = self.key("callback")
        value = await _api.get_copy(self.cache, key)
        if not isinstance(value, dict):
            return None
        self._sync.loaded(key, value)
        stored = value.get("keyboards", {})
        # PTB's cache is least recently used first: by access time.
        keyboards = sorted(
            ((uuid, kb["at"], dict(kb["buttons"])) for uuid, kb in stored.items()),
            key=lambda k: k[1],
        )
        return keyboards, dict(value.get("queries", {}))

    async def update_callback_data(self, data: CDCData) -> None:
        keyboards, queries = data
        # Keyed by keyboard, so two processes' keyboards merge; only the
        # access time of one keyboard both used is a conflict (the later wins).
        record = {
            "keyboards": {
                uuid: {"at": at, "buttons": dict(buttons)} for uuid, at, buttons in keyboards
            },
            "queries": dict(queries),
        }
        await self._sync.write(self.key("callback"), record)

    # -- conversations ------------------------------------------------------------------------

    async def get_conversations(self, name: str) -> ConversationDict:
        value = await _api.get_copy(self.cache, self.key("conv", name))
        return value if isinstance(value, dict) else {}

    async def update_conversation(
        self, name: str, key: ConversationKey, new_state: object | None
    ) -> None:
        ckey = self.key("conv", name)
        try:
            async with self._sync.slot(), self.cache.session(ckey) as s:
                old = s.get(key, MISSING)
                if new_state is None:
                    if old is not MISSING:
                        del s[key]
                elif old is MISSING or not same(old, new_state):
                    s[key] = new_state
        except ConflictError as exc:
            # Another process moved the same conversation at the same time.
            self._sync.conflicts += 1
            log.warning(
                "tiercache.ptb: %r: conversation %r was moved here (to %r) and by "
                "another process at the same time; the stored state is kept (%s)",
                ckey,
                key,
                new_state,
                exc,
            )

    # -- shutdown -----------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what is pending (PTB calls this when it stops); the cache
        stays open: close it in ``post_shutdown``."""
        for _ in range(FLUSH_ROUNDS):
            if not self._sync.pending_keys():
                break
            await self._sync.retry()
        await self.cache.aflush()
