"""A throwaway local Redis Cluster for the tests (3 masters, no replicas),
until tiercache.testing has one."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tiercache import testing


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_ports(n: int) -> list[int]:
    """Free ports whose cluster-bus port (+10000) is free and valid too."""
    ports: list[int] = []
    while len(ports) < n:
        p = random.randint(20000, 29999)
        if p not in ports and _bindable(p) and _bindable(p + 10000):
            ports.append(p)
    return ports


@dataclass
class Cluster:
    url: str
    ports: list[int]
    procs: list[subprocess.Popen[bytes]]


@contextmanager
def local_cluster(masters: int = 3) -> Iterator[Cluster]:
    server = testing.find_redis_server()
    cli = os.path.join(os.path.dirname(server), "redis-cli")
    root = tempfile.mkdtemp(prefix="tc-cluster-")
    ports = _cluster_ports(masters)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for p in ports:
            d = os.path.join(root, str(p))
            os.mkdir(d)
            procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(p),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{p}.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        d,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 10
        for p in ports:
            while (
                subprocess.run([cli, "-p", str(p), "ping"], capture_output=True).stdout.strip()
                != b"PONG"
            ):
                assert time.monotonic() < deadline, "cluster node did not start"
                time.sleep(0.05)
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=30,
        )
        for p in ports:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"], capture_output=True
                ).stdout
            ):
                assert time.monotonic() < deadline, "cluster did not form"
                time.sleep(0.05)
        yield Cluster(f"redis+cluster://127.0.0.1:{ports[0]}", ports, procs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
