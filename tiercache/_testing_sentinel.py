"""A throwaway Redis Sentinel deployment for tests (see :mod:`tiercache.testing`).

::

    LocalSentinel()
      master ── replica (--replicaof) ── 3 sentinels (quorum 2); the sentinels
      and the replica are written into each sentinel's config, so no discovery
      round (2 s hello period) is waited for
      faults: failover() (SENTINEL FAILOVER), kill_master() (SIGKILL),
              restart(port): a killed node comes back (as a replica)
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import redis
from redis.sentinel import Sentinel

from ._testing_servers import Deployment, Process, cmd, free_ports, wait

__all__ = ["LocalSentinel"]


class LocalSentinel(Deployment):
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
        ports = free_ports(5)
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
        self._procs[master] = Process(self.binary, master, self._data_args(master))
        self._procs[replica] = Process(
            self.binary,
            replica,
            [*self._data_args(replica), "--replicaof", "127.0.0.1", str(master)],
        )
        ids = {p: secrets.token_hex(20) for p in self._sentinel_ports}
        for port in self._sentinel_ports:
            conf = os.path.join(self._directory(), f"sentinel-{port}.conf")
            with open(conf, "w", encoding="utf-8") as f:
                f.write(self._sentinel_conf(port, ids))
            self._procs[port] = Process(self.binary, port, [conf, "--sentinel"])
        self._start_all(self._procs)
        for port in self._sentinel_ports:
            try:
                # Redis 7: ask each instance for INFO every 250 ms, not 10 s,
                # so a sentinel sees a demoted or restarted replica at once.
                cmd(self.admin(port), "SENTINEL", "DEBUG", "info-period", 250)
            except redis.ResponseError:
                pass  # Redis 6.2 has no SENTINEL DEBUG: up to 10 s then
        wait(
            lambda: self._in_sync(master, replica),
            "the replica to sync with the master",
            timeout,
        )
        self._wait_watched(master, timeout)

    def _wait_watched(self, master: int, timeout: float) -> None:
        """Until every running sentinel names ``master`` and sees a replica
        it could promote (else SENTINEL FAILOVER answers NOGOODSLAVE)."""
        wait(
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
        reply = cmd(self.admin(sentinel), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
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
        role = cmd(self.admin(port), "ROLE")[0]
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

        wait(moved, f"a master other than port {old}", timeout)
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
        cmd(self.admin(self._sentinel_ports[0]), "SENTINEL", "FAILOVER", self.service)
        new = self._wait_new_master(old, timeout)
        if demote:
            cmd(self.admin(old), "REPLICAOF", "127.0.0.1", str(new))
            wait(lambda: self._in_sync(new, old), f"port {old} to replicate", timeout)
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
        wait(lambda: self._in_sync(master, port), f"port {port} to replicate", timeout)
        self._wait_watched(master, timeout)

    def wait_replicated(self, timeout: float = 20.0) -> None:
        """Until the current master has a replica in sync."""
        master = self.master_port
        other = next(p for p in self.data_ports if p != master)
        wait(lambda: self._in_sync(master, other), "a replica in sync", timeout)

    def close(self) -> None:
        if self._sentinel is not None:
            for s in self._sentinel.sentinels:
                s.close()
            self._sentinel = None
        super().close()
