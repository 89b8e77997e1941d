"""A throwaway Redis Cluster for tests (see :mod:`tiercache.testing`).

::

    LocalCluster(masters=3, replicas=1)
      N = masters * (1 + replicas) redis-server --cluster-enabled yes, started at once
      └─> redis-cli --cluster create ... --cluster-replicas R --cluster-yes
          └─> wait: every node says cluster_state:ok and sees all 16384 slots
      faults: kill_master_of(key) + wait_promoted(), restart(node),
              move_slot(slot, to) / reshard(slots, to): live migration
              (SETSLOT IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE)
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import key_slot

from ._testing_servers import Deployment, Process, cmd, free_ports, redis_cli, wait

__all__ = ["SLOTS", "ClusterNode", "LocalCluster"]

#: Hash slots of a Redis Cluster.
SLOTS = 16384


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of a :class:`LocalCluster` as it is now."""

    port: int
    pid: int | None
    #: "master" or "replica" (its own view); "down" when its process is not running.
    role: str
    #: The node's cluster id.
    id: str


class LocalCluster(Deployment):
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas.

    >>> with LocalCluster(masters=3) as cluster:  # doctest: +SKIP
    ...     tier = RedisTier(cluster.url)
    ...     cluster.client().set(b"k", b"v")
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        server: str | None = None,
        node_timeout_ms: int = 2000,
    ) -> None:
        if masters < 1 or (masters < 3 and replicas) or replicas < 0:
            # redis-cli refuses fewer than 3 masters; one master alone is
            # set up by hand below (no replicas then).
            raise ValueError("a cluster needs masters >= 1 (>= 3 with replicas), replicas >= 0")
        super().__init__(server, "tiercache-cluster-")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self._ports = free_ports(masters * (1 + replicas))
        self._ids: dict[int, str] = {}

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    @property
    def seed(self) -> tuple[str, int]:
        """One node's address: enough for a cluster client to find the rest."""
        return ("127.0.0.1", self._ports[0])

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self._ports[0]}"

    def _node_args(self, port: int) -> list[str]:
        return [
            *self._data_args(port),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            f"nodes-{port}.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica takes over however long it was cut off: a test kills
            # masters under load, and failover must not depend on timing.
            "--cluster-replica-validity-factor",
            "0",
        ]

    def start(self, timeout: float = 20.0) -> None:
        """Start every node, create the cluster, and wait until it is whole."""
        if self._procs:
            return
        for port in self._ports:
            self._procs[port] = Process(self.binary, port, self._node_args(port))
        self._start_all(self._ports)
        if self.masters == 1:
            one = self.admin(self._ports[0])
            cmd(one, "CLUSTER", "ADDSLOTS", *range(SLOTS))
        else:
            subprocess.run(
                [
                    redis_cli(self.binary),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self._ports),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                check=True,
                timeout=timeout,
            )
        for port in self._ports:
            self._ids[port] = cmd(self.admin(port), "CLUSTER", "MYID").decode()
        self.wait_ok(timeout)

    # -- state ---------------------------------------------------------------

    def _live(self) -> list[int]:
        return [p for p in self._ports if self._procs[p].alive]

    def _slot_owners(self, port: int) -> dict[int, int]:
        """slot -> master port, in the view of the node at ``port``."""
        owners: dict[int, int] = {}
        for start, end, master, *_ in cmd(self.admin(port), "CLUSTER", "SLOTS"):
            for slot in range(int(start), int(end) + 1):
                owners[slot] = int(master[1])
        return owners

    def _whole(self, port: int) -> bool:
        info = cmd(self.admin(port), "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text or f"cluster_slots_ok:{SLOTS}" not in text:
            return False
        live = set(self._live())
        owners = set(self._slot_owners(port).values())
        return owners <= live

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every running node says ``cluster_state:ok``, sees every
        slot served, and only by running masters."""
        wait(
            lambda: all(self._whole(p) for p in self._live()),
            "the cluster to be ok on every node",
            timeout,
        )

    def _role(self, port: int) -> str:
        if not self._procs[port].alive:
            return "down"
        role = cmd(self.admin(port), "ROLE")[0]
        role = role.decode() if isinstance(role, bytes) else str(role)
        return "replica" if role == "slave" else role

    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node: port, pid, role (as it says now) and cluster id."""
        return [
            ClusterNode(p, self.pid_of(p), self._role(p), self._ids.get(p, "")) for p in self._ports
        ]

    def node(self, port: int) -> ClusterNode:
        return ClusterNode(port, self.pid_of(port), self._role(port), self._ids.get(port, ""))

    def client(self, **kwargs: Any) -> RedisCluster:
        """A ``redis.cluster.RedisCluster`` (``decode_responses=False``) the
        caller closes."""
        kwargs.setdefault("decode_responses", False)
        host, port = self.seed
        live = self._live()
        return RedisCluster(host=host, port=live[0] if live else port, **kwargs)

    def slot_owner(self, slot: int) -> ClusterNode:
        """The master serving ``slot`` now (in a running node's view)."""
        port = self._slot_owners(self._live()[0])[slot]
        return self.node(port)

    def master_of(self, key: str | bytes) -> ClusterNode:
        """The master serving ``key``'s slot now."""
        return self.slot_owner(key_slot(key.encode() if isinstance(key, str) else key))

    # -- faults ----------------------------------------------------------------

    def kill(self, node: ClusterNode | int) -> None:
        """SIGKILL one node's process."""
        self._procs[_port(node)].kill()

    def kill_master_of(self, key: str | bytes) -> ClusterNode:
        """SIGKILL the master serving ``key``; the node as it was."""
        node = self.master_of(key)
        self.kill(node)
        return node

    def wait_promoted(self, timeout: float = 15.0) -> None:
        """Until a replica took over every slot a dead master served and
        the cluster is ok again on every running node."""
        self.wait_ok(timeout)

    def restart(self, node: ClusterNode | int, timeout: float = 20.0) -> None:
        """Start a node again on its port, with its cluster config: it
        rejoins (a master that was replaced comes back as a replica)."""
        port = _port(node)
        proc = self._procs[port]
        proc.stop()
        client = self._admin.pop(port, None)
        if client is not None:
            client.close()
        proc.spawn()
        proc.wait_ready()
        self.wait_ok(timeout)

    def move_slot(self, slot: int, to: ClusterNode | int, batch: int = 100) -> None:
        """Migrate ``slot`` to master ``to`` while clients keep using it:
        the target imports, the source migrates (a key not on the source
        any more is ASKed to the target), the keys move in ``MIGRATE``
        batches, then every master learns the new owner."""
        target = _port(to)
        source = self.slot_owner(slot).port
        if source == target:
            return
        src, dst = self.admin(source), self.admin(target)
        src_id, dst_id = self._ids[source], self._ids[target]
        cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            cmd(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", *keys)
        # The target first: from then on it serves the slot; the source,
        # told next, redirects with MOVED instead of ASK.
        cmd(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        cmd(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self._live():
            if port not in (source, target) and self._role(port) == "master":
                cmd(self.admin(port), "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def reshard(self, slots: Iterable[int], to: ClusterNode | int) -> None:
        """:meth:`move_slot` for each of ``slots``."""
        for slot in slots:
            self.move_slot(slot, to)


def _port(node: ClusterNode | int) -> int:
    return node if isinstance(node, int) else node.port
