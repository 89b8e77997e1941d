"""RedisTier's listing: ``SCAN MATCH`` (every master of a cluster), then
one pipelined ``GETRANGE`` per batch to leave deletes' tombstones out.

::

    keys(glob) ──> SCAN prefix + [cluster slot tag] + glob, COUNT 1000
                   └─> per batch of 1000: GETRANGE name 0 5 (a hash is a
                       live entry: WRONGTYPE) ─> names without the prefix
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._envelope import is_tombstone
from .._keys import glob_escape
from .._redisclient import SyncClient, _LoopClient
from ._redis_fields import FieldsCalls

__all__ = ["SCAN_COUNT", "ScanCalls"]

#: Names asked for per SCAN call, and checked per pipeline.
SCAN_COUNT = 1000

#: Enough of an envelope's head for is_tombstone (it pads the rest).
_HEAD = bytes(64)


class ScanCalls(FieldsCalls):
    """``keys`` / ``akeys`` of RedisTier (lists live entries only)."""

    lists_live = True

    def _scan_match(self, glob: str) -> tuple[str, int]:
        # On a cluster every name has a slot tag after the prefix: {8 hex}.
        tag = "{????????}" if self.cluster else ""
        return glob_escape(self._prefix) + tag + glob, len(self._prefix) + len(tag)

    def live_batches(self, glob: str, client: SyncClient | None = None) -> Iterator[list[str]]:
        """Batches of the names :meth:`keys` lists, streamed (no retries:
        for listings too big to hold, such as the command line's)."""
        c = client if client is not None else self._client()
        match, cut = self._scan_match(glob)
        batch: list[bytes] = []
        for name in c.scan_iter(match=match, count=SCAN_COUNT):
            batch.append(name)
            if len(batch) >= SCAN_COUNT:
                yield _live(batch, _heads(c, batch), cut)
                batch = []
        if batch:
            yield _live(batch, _heads(c, batch), cut)

    def keys(self, glob: str) -> list[str]:
        def call(c: SyncClient) -> list[str]:
            return [name for batch in self.live_batches(glob, c) for name in batch]

        return self._run("keys", None, call)

    async def akeys(self, glob: str) -> list[str]:
        match, cut = self._scan_match(glob)

        async def call(e: _LoopClient) -> list[str]:
            out: list[str] = []
            batch: list[bytes] = []
            async for name in e.client.scan_iter(match=match, count=SCAN_COUNT):
                batch.append(name)
                if len(batch) >= SCAN_COUNT:
                    out += _live(batch, await _aheads(e.client, batch), cut)
                    batch = []
            if batch:
                out += _live(batch, await _aheads(e.client, batch), cut)
            return out

        return await self._arun("keys", None, call)


def _heads(c: SyncClient, names: list[bytes]) -> list[Any]:
    with c.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.getrange(name, 0, 5)
        return list(pipe.execute(raise_on_error=False))


async def _aheads(c: Any, names: list[bytes]) -> list[Any]:
    async with c.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.getrange(name, 0, 5)
        return list(await pipe.execute(raise_on_error=False))


def _live(names: list[bytes], heads: list[Any], cut: int) -> list[str]:
    """The names whose head is not a tombstone's (gone since the scan:
    an empty head; a hash answers WRONGTYPE and is a live entry)."""
    out: list[str] = []
    for name, head in zip(names, heads, strict=True):
        if isinstance(head, bytes) and (not head or is_tombstone(head + _HEAD)):
            continue
        out.append(name.decode("utf-8", "surrogateescape")[cut:])
    return out
