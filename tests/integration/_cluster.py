"""A minimal local Redis Cluster for the bus's cluster tests (until
``tiercache.testing.LocalCluster`` lands, which should replace this).

N masters, no replicas, no persistence, on free loopback ports in one
temporary directory; every process is stopped by its own PID. A node can be
restarted (same port, same ``nodes-P.conf``, data gone) to fault-test a
reader of its slots.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tiercache.testing import RedisServer, find_redis_server


def _free_port_pair() -> int:
    """A free loopback port P whose cluster bus port P + 10000 is free too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class Cluster:
    """``masters`` redis-server processes joined into one cluster, each
    with ``replicas`` replicas (``nodes``: the masters first, as
    ``redis-cli --cluster create`` assigns them)."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.masters, self.replicas = masters, replicas
        self.binary = find_redis_server()
        self.cli = str(Path(self.binary).with_name("redis-cli"))
        self.dir = tempfile.mkdtemp(prefix="tiercache-cluster-")
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            port = _free_port_pair()
            self.nodes.append(
                RedisServer(
                    binary=self.binary,
                    port=port,
                    args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--dir",  # the last --dir wins: one shared directory
                        self.dir,
                    ],
                )
            )

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming the first node as the seed."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says ``cluster_state:ok`` and knows every
        node, and every replica is in sync."""
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.pid is None:
                continue  # killed
            with redis.Redis(port=node.port, socket_timeout=1.0) as client:
                while True:
                    try:
                        info = client.cluster("INFO")
                        if (
                            info["cluster_state"] == "ok"
                            and int(info["cluster_known_nodes"]) == len(self.nodes)
                            and int(info["cluster_size"]) == self.masters
                            and client.info("replication").get("master_link_status", "up") == "up"
                        ):
                            break
                    except redis.RedisError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster not ok after {timeout} s")
                    time.sleep(0.05)

    def restart(self, index: int) -> None:
        """Restart one node: it rejoins with its slots, and without its data."""
        self.nodes[index].restart()
        self.wait_ok()

    def port_of(self, node: str) -> int:
        """The port of a ``host:port`` node name."""
        return int(node.rpartition(":")[2])

    def index_of(self, node: str) -> int:
        """The index in ``nodes`` of a ``host:port`` node name."""
        return [n.port for n in self.nodes].index(self.port_of(node))

    def move_slot(self, slot: int, to: int) -> None:
        """Reshard one slot, with its keys, to node ``to``, as ``redis-cli
        --cluster reshard`` does (IMPORTING / MIGRATING, MIGRATE, SETSLOT NODE)."""
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        try:
            ids = [c.cluster("MYID") for c in clients]
            source = self.node_of_slot(slot)
            src, dst = clients[source], clients[to]
            dst.cluster("SETSLOT", slot, "IMPORTING", ids[source])
            src.cluster("SETSLOT", slot, "MIGRATING", ids[to])
            while keys := src.cluster("GETKEYSINSLOT", slot, 100):
                src.migrate("127.0.0.1", self.nodes[to].port, keys, 0, 5000)
            for c in clients:
                c.cluster("SETSLOT", slot, "NODE", ids[to])
            deadline = time.monotonic() + 10
            while not all(self._owner(c, slot) == self.nodes[to].port for c in clients):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"slot {slot} not moved in 10 s")
                time.sleep(0.02)
        finally:
            for c in clients:
                c.close()

    @staticmethod
    def _owner(client: redis.Redis, slot: int) -> int | None:
        for start, end, (_host, port, *_), *_ in client.execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(port)
        return None

    def node_of_slot(self, slot: int) -> int:
        """The index of the node serving ``slot``."""
        with redis.Redis(port=self.nodes[0].port) as client:
            port = self._owner(client, slot)
        return [n.port for n in self.nodes].index(port)

    def replica_of(self, master: str) -> str:
        """The ``host:port`` of a replica of the master ``master``."""
        with redis.Redis(port=self.port_of(master), decode_responses=True) as client:
            my_id = client.cluster("MYID")
            nodes: dict[str, dict[str, str]] = client.cluster("NODES")  # parsed by redis-py
            for address, node in nodes.items():
                if node["master_id"] == my_id:
                    return address.split("@")[0]
        raise LookupError(f"{master} has no replica")

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster(masters: int = 3, replicas: int = 0) -> Iterator[Cluster]:
    """The body of a pytest fixture: a started cluster, closed after."""
    c = Cluster(masters, replicas)
    try:
        c.start()
        yield c
    finally:
        c.close()
