"""The harness the tier contract suite runs through: every tier x {sync, async}.

Each test is an ``async def`` that talks to a :class:`Harness`; in ``sync``
mode the harness calls the tier's sync methods (straight from the test's
event loop, as a sync caller would), in ``async`` mode the ``a``-prefixed
ones. A tier joins the suite by adding one factory to :data:`FACTORIES`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiercache._tiers import DictTier, DiskTier, PersistentTier, RedisTier
from tiercache.testing import FakeClock

#: Lets ``seconds`` of the tier's time pass: a fake clock moves instantly,
#: a real backend's clock needs real sleeping.
Advance = Callable[[float], Awaitable[None]]


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def make_dict(request: pytest.FixtureRequest) -> tuple[PersistentTier, Advance]:
    clock = FakeClock()

    async def advance(seconds: float) -> None:
        clock.advance(seconds)

    return DictTier(clock=clock), advance


def make_disk(request: pytest.FixtureRequest) -> tuple[PersistentTier, Advance]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    return DiskTier(tmp_path / "disk"), _sleep


def make_redis(request: pytest.FixtureRequest) -> tuple[PersistentTier, Advance]:
    # Looked up only here, so the server starts only when a Redis case runs.
    url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("namespace")
    return RedisTier(url, prefix=f"tc:{namespace}:"), _sleep


def make_cluster(request: pytest.FixtureRequest) -> tuple[PersistentTier, Advance]:
    url: str = request.getfixturevalue("cluster_url")
    namespace: str = request.getfixturevalue("namespace")
    return RedisTier(url, prefix=f"tc:{namespace}:"), _sleep


#: name -> (factory, marks). Add a tier here and it runs the whole contract.
FACTORIES: dict[
    str,
    tuple[Callable[[pytest.FixtureRequest], tuple[PersistentTier, Advance]], Sequence[object]],
] = {
    "dict": (make_dict, ()),
    "disk": (make_disk, ()),
    "redis": (make_redis, (pytest.mark.redis,)),
    "cluster": (make_cluster, (pytest.mark.redis,)),
}

MODES = ("sync", "async")


@dataclass
class Harness:
    """One tier driven in one mode; the methods mirror the tier protocol."""

    tier: PersistentTier
    mode: str
    advance: Advance

    @property
    def is_async(self) -> bool:
        return self.mode == "async"

    async def get(self, key: str) -> bytes | None:
        return await self.tier.aget(key) if self.is_async else self.tier.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self.tier.aget_many(keys) if self.is_async else self.tier.get_many(keys)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if self.is_async:
            await self.tier.aset(key, value, ttl)
        else:
            self.tier.set(key, value, ttl)

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if self.is_async:
            await self.tier.aset_many(items)
        else:
            self.tier.set_many(items)

    async def delete(self, key: str) -> bool:
        return await self.tier.adelete(key) if self.is_async else self.tier.delete(key)

    async def touch(self, key: str, ttl: float | None) -> bool:
        return await self.tier.atouch(key, ttl) if self.is_async else self.tier.touch(key, ttl)

    async def compare_and_set(
        self, key: str, value: bytes, ttl: float | None, expected: int
    ) -> bool:
        if self.is_async:
            return await self.tier.acompare_and_set(key, value, ttl, expected)
        return self.tier.compare_and_set(key, value, ttl, expected)

    async def quarantine(self, key: str, bad: bytes, to: str, keep: float) -> bool:
        if self.is_async:
            return await self.tier.aquarantine(key, bad, to, keep)
        return self.tier.quarantine(key, bad, to, keep)

    async def eventually(self, check: Callable[[], Awaitable[bool]], within: float = 2.0) -> bool:
        """Poll ``check`` until it holds or ``within`` real seconds pass."""
        deadline = time.monotonic() + within
        while True:
            if await check():
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)


@pytest.fixture(
    params=[
        pytest.param((name, mode), id=f"{name}-{mode}", marks=marks)
        for name, (_, marks) in FACTORIES.items()
        for mode in MODES
    ]
)
def made(request: pytest.FixtureRequest) -> tuple[str, PersistentTier, Advance]:
    """The tier, made outside the event loop: starting a server (a cluster
    takes seconds) is no callback of the test's loop."""
    name, mode = request.param
    factory, _ = FACTORIES[name]
    tier, advance = factory(request)
    return mode, tier, advance


@pytest.fixture
async def harness(made: tuple[str, PersistentTier, Advance]) -> AsyncIterator[Harness]:
    mode, tier, advance = made
    try:
        yield Harness(tier, mode, advance)
    finally:
        if mode == "async":
            await tier.aclose()
        else:
            tier.close()
