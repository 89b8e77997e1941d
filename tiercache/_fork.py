"""After ``os.fork()``: a cache made before the fork keeps working in the child.

::

    parent: cache = TieredCache(...)          gunicorn --preload, multiprocessing "fork"
               │ os.fork()
               ▼
    child:  _in_child() ──> every live cache's _after_fork():
               new locks (one held at the fork by another thread would never be freed)
               memory emptied (the parent writes its pending changes; the child's
                   copies may go stale unseen while it starts listening)
               a new writer tag series and bus origin (parent and child must not take
                   each other's writes, or invalidations, for their own)
               the bus listener, the timer and the lease renewer started afresh
               the journal refused, with an error saying why: it is the parent's

Redis connections need nothing: redis-py gives a child new ones (and never
shuts the parent's sockets down), and so does diskcache for SQLite.

The hook is registered when the first cache is made, never at import.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

from . import _locks

__all__ = ["watch"]

log = logging.getLogger("tiercache")

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_registered = False
_lock = threading.Lock()


def watch(cache: Any) -> None:
    """Make ``cache`` (anything with ``_after_fork()``) work in a forked child."""
    global _registered
    with _lock:
        _live.add(cache)
        if not _registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_in_child)
            _registered = True


def _in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    _locks.after_fork()
    for cache in list(_live):
        try:
            cache._after_fork()
        except Exception:  # one cache's trouble must not break the others
            log.exception("tiercache: preparing %r for the forked child failed", cache)
