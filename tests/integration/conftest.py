"""Fixtures for the Redis Cluster and Sentinel tests (see
:class:`tiercache.testing.LocalCluster` and :class:`~tiercache.testing.LocalSentinel`).

* ``cluster``: one 3-master cluster for the whole session; every test that
  takes it starts with all its masters flushed.
* ``cluster_replicated``: a fresh 3 masters + 3 replicas, for tests that
  kill or restart nodes.
* ``sentinel``: a fresh master, replica and three sentinels per test (about
  1 s to start): every Sentinel test fails over or kills something.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tiercache.testing import LocalCluster, LocalSentinel


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture
def cluster(_session_cluster: LocalCluster) -> LocalCluster:
    for node in _session_cluster.nodes:
        if node.role == "master":
            _session_cluster.admin(node.port).flushall()
    return _session_cluster


@pytest.fixture
def cluster_replicated() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    with LocalSentinel() as deployment:
        yield deployment
