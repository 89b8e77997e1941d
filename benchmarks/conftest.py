"""Fixtures for the benchmarks: one redis-server for the whole run.

``TIERCACHE_REDIS_URL`` names a server to use instead (results then include
that server's network path); otherwise a private ``redis-server`` starts on
a free loopback port and stops at the end, as in the test suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tiercache import testing


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with testing.redis_url() as url:
        yield url
