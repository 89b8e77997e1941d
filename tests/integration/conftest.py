"""Fixtures for the Redis Cluster and Sentinel tests (see
:class:`tiercache.testing.LocalCluster` and :class:`~tiercache.testing.LocalSentinel`).

* ``flushed_cluster``: one 3-master :class:`LocalCluster` for the whole
  session; every test that takes it starts with all its masters flushed.
* ``killable_cluster``: a fresh 3 masters + 3 replicas, for tests that
  kill or restart nodes.

The session's cluster itself is ``cluster`` (and ``cluster_url``), in
tests/conftest.py.
* ``sentinel``: a fresh master, replica and three sentinels per test (about
  1 s to start): every Sentinel test fails over or kills something.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tiercache.testing import LocalCluster, LocalSentinel


@pytest.fixture
def flushed_cluster(cluster: LocalCluster) -> LocalCluster:
    """The session's cluster (tests/conftest.py), every master flushed."""
    for node in cluster.nodes:
        if node.role == "master":
            cluster.admin(node.port).flushall()
    return cluster


@pytest.fixture
def killable_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def sentinel() -> Iterator[LocalSentinel]:
    with LocalSentinel() as deployment:
        yield deployment
