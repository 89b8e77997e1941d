"""Fixtures for the benchmarks: one redis-server for the whole run.

``TIERCACHE_REDIS_URL`` names a server to use instead (results then include
that server's network path); otherwise a private ``redis-server`` starts on
a free loopback port and stops at the end, as in the test suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tiercache.testing import RedisServer


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    given = os.environ.get("TIERCACHE_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url
