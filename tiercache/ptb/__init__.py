"""python-telegram-bot 22 persistence on a :class:`~tiercache.TieredCache`
(the ``tiercache[ptb]`` extra).

::

    cache = TieredCache(MemoryTier(), RedisTier(url), namespace="mybot")
    persistence = TierCachePersistence(cache)
    app = Application.builder().token(TOKEN).persistence(persistence).post_shutdown(
        lambda app: cache.aclose()).build()

See :class:`TierCachePersistence` for what is stored where and what two
processes writing one user's data get.
"""

from __future__ import annotations

from ._diff import Conflict
from ._persistence import TierCachePersistence

__all__ = ["Conflict", "TierCachePersistence"]
