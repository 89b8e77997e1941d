"""Counting the write commands clients send to a Redis, for benchmarks
that compare how many writes storages make (bench_aiogram, bench_ptb)."""

from __future__ import annotations

import threading
import uuid

import redis

__all__ = ["WRITES", "WriteMonitor"]

#: Commands that change data, as a client sends them.
WRITES = frozenset(
    {
        "SET", "SETEX", "PSETEX", "DEL", "UNLINK", "EVAL", "EVALSHA", "HSET", "HDEL",
        "MSET", "EXPIRE", "PEXPIRE", "XADD", "GETDEL",
    }
)  # fmt: skip


class WriteMonitor:
    """Counts client write commands while open, under ``MONITOR``: a
    script's own commands (marked ``lua``) are left out, so an
    ``EVALSHA`` is one write however many commands it runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.writes = 0
        self.stop = f"stop-{uuid.uuid4().hex}"
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as m:
            self._ready.set()
            for cmd in m.listen():
                if cmd.get("client_type") == "lua":
                    continue
                text = str(cmd.get("command", ""))
                if self.stop in text:
                    break
                if text.split(" ", 1)[0].upper() in WRITES:
                    self.writes += 1
        client.close()

    def __enter__(self) -> WriteMonitor:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        client = redis.Redis.from_url(self.url)
        client.echo(self.stop)
        client.close()
        self._thread.join(10)
