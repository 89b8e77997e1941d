"""Fixtures of the unit tests that stand for several processes: caches with
their own memory tiers over one shared store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tiercache import MemoryTier, TieredCache
from tiercache.testing import DictTier, FakeClock


@pytest.fixture
def shared(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def proc(
    shared: DictTier, namespace: str, clock: FakeClock
) -> Iterator[Callable[..., TieredCache]]:
    """A "process": its own memory tier over the shared store."""
    made: list[TieredCache] = []

    def factory(**kw: Any) -> TieredCache:
        cache = TieredCache(MemoryTier(), shared, namespace=namespace, clock=clock, **kw)
        made.append(cache)
        return cache

    yield factory
    for c in made:
        c.close()
