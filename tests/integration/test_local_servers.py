"""The Cluster and Sentinel test helpers themselves: they start whole,
and their faults do what they say."""

from __future__ import annotations

import threading

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError

from tiercache.testing import SLOTS, LocalCluster, LocalSentinel

pytestmark = pytest.mark.redis


def test_a_cluster_covers_every_slot_on_every_node(flushed_cluster: LocalCluster) -> None:
    cluster = flushed_cluster
    for node in cluster.nodes:
        assert node.role == "master" and node.pid is not None
        info = cluster.admin(node.port).cluster("info")
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == SLOTS
    client = cluster.client()
    try:
        keys = [f"k{i}".encode() for i in range(30)]
        for k in keys:
            client.set(k, k)
        assert [client.get(k) for k in keys] == keys
        # The keys are spread: more than one master holds some.
        assert len({cluster.master_of(k).port for k in keys}) == 3
    finally:
        client.close()
    assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
    assert cluster.seed == ("127.0.0.1", cluster.ports[0])


def test_a_slot_moves_while_keys_in_it_are_written(flushed_cluster: LocalCluster) -> None:
    cluster = flushed_cluster
    tag = "{chat:1}"
    slot = key_slot(tag.encode())
    source = cluster.master_of(tag)
    target = next(n for n in cluster.nodes if n.port != source.port)
    client = cluster.client()
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        i = 0
        try:
            while not stop.is_set():
                client.set(f"{tag}:{i % 500}".encode(), str(i).encode())
                written.append(i)
                i += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    for i in range(500):
        client.set(f"{tag}:{i}".encode(), str(i).encode())
    writer = threading.Thread(target=write)
    writer.start()
    try:
        cluster.move_slot(slot, target, batch=50)
    finally:
        stop.set()
        writer.join(10)
    try:
        assert not errors, errors
        assert cluster.master_of(tag).port == target.port
        assert cluster.admin(source.port).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert cluster.admin(target.port).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 500
        last = written[-1]
        assert client.get(f"{tag}:{last % 500}".encode()) == str(last).encode()
    finally:
        client.close()


def test_a_killed_master_is_replaced_by_its_replica(killable_cluster: LocalCluster) -> None:
    cluster = killable_cluster
    roles = sorted(n.role for n in cluster.nodes)
    assert roles == ["master"] * 3 + ["replica"] * 3
    # Written on the key's master and WAITed for there, on that connection:
    # the replica has it before its master dies.
    with cluster.admin(cluster.master_of("k").port).pipeline(transaction=False) as pipe:
        pipe.set(b"k", b"v")
        pipe.wait(1, 2000)
        assert pipe.execute() == [True, 1]
    old = cluster.kill_master_of("k")
    cluster.wait_promoted()
    new = cluster.master_of("k")
    assert new.port != old.port and new.role == "master"
    assert cluster.node(old.port).role == "down"
    client = cluster.client()
    try:
        assert client.get(b"k") == b"v"
    finally:
        client.close()
    cluster.restart(old)
    assert cluster.node(old.port).role == "replica"


def test_sentinel_failover_moves_the_master(sentinel: LocalSentinel) -> None:
    first = sentinel.master_port
    client = sentinel.client()
    try:
        client.set(b"k", b"v")
        new = sentinel.failover()
        assert new != first and sentinel.master_address() == ("127.0.0.1", new)
        assert sentinel.role(new) == "master" and sentinel.role(first) == "replica"
        # A pooled connection to the old master, now a replica, fails once
        # (READONLY, then redis-py's sentinel pool reconnects): see
        # test_sentinel.py for what the tier makes of that.
        with pytest.raises(ConnectionError, match="previous master"):
            client.set(b"k2", b"v2")
        client.set(b"k2", b"v2")  # the client follows the master
        assert sentinel.admin(new).get(b"k2") == b"v2"
        # The old master resyncs from the new one (a full sync: it starts
        # empty); a kill before that ends would find nothing to promote.
        sentinel.wait_replicated()
        old = sentinel.kill_master()
        assert old == new and sentinel.master_port == first
        assert sentinel.role(old) == "down"
        assert client.get(b"k") == b"v"
        sentinel.restart(old)
        assert sentinel.role(old) == "replica"
    finally:
        client.close()
    assert sentinel.url.startswith("redis+sentinel://127.0.0.1:")
    assert sentinel.url.endswith("/mymaster/0") and len(sentinel.sentinels) == 3
