"""Shutdown that loses nothing: a real worker process under ``WriteBehind(5.0)``
is stopped with SIGTERM (what ``docker stop``, systemd and Kubernetes send)
or SIGINT, by PID, and every change it acknowledged must be in the store.

The worker increments a counter in scopes that change two fields (so a
change is either whole or not there at all) and prints the value after
each scope returned: an acknowledged change. Five seconds is far longer
than any of these runs, so the timer never writes: whatever is stored was
written by the shutdown. Without :func:`tiercache.close_on_signals` the
default SIGTERM action kills the process and loses them all (the first
test shows it).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tiercache import DiskTier, MemoryTier, RedisTier, TieredCache

ROOT = Path(__file__).resolve().parents[2]

#: Workers stopped at random moments; TIERCACHE_SIGTERM_RUNS=300 for a long run.
RUNS = int(os.environ.get("TIERCACHE_SIGTERM_RUNS", "6"))

#: argv: tier ("redis" or "disk"), its URL or directory, namespace, style
#: ("sync" or "async"), helper ("block": with / async with; "bare": no
#: block, closed at exit; "none"), what ("count": increment in a loop;
#: "busy": the same without a pause;
#: "hold": a few increments, then a scope that stays open; "thread": the
#: main thread counts while another thread holds a scope for 0.5 s).
WORKER = textwrap.dedent(
    """
    import asyncio, sys, threading, time
    from tiercache import (DiskTier, MemoryTier, RedisTier, TieredCache, WriteBehind,
                           close_on_signals)

    tier, where, namespace, style, helper, what = sys.argv[1:7]

    def make():
        lower = RedisTier(where) if tier == "redis" else DiskTier(where)
        return TieredCache(MemoryTier(), lower, namespace=namespace, flush=WriteBehind(5.0))

    def ack(*words):
        print(*words, flush=True)

    def increment(s):
        s["a"] = s.get("a", 0) + 1
        s["b"] = s["a"]  # two fields: the change is whole, or not there
        return s["a"]

    def run(cache):
        if what == "thread":
            def holder():
                with cache.session("other") as s:
                    ack("thread-inside")
                    time.sleep(0.5)
                    s["by"] = "thread"
                ack("thread-ack")
            threading.Thread(target=holder).start()
        for i in range(10**9):
            with cache.session("counter") as s:
                n = increment(s)
                if what == "hold" and i == 5:
                    ack("inside", n)
                    time.sleep(60)  # the signal comes here, the scope open
            ack(n)
            if what != "busy":
                time.sleep(0.001)

    async def arun(cache):
        for i in range(10**9):
            async with cache.session("counter") as s:
                n = increment(s)
                if what == "hold" and i == 5:
                    ack("inside", n)
                    await asyncio.sleep(60)
            ack(n)
            await asyncio.sleep(0.001 if what != "busy" else 0)

    if style == "sync":
        cache = make()
        if helper == "block":
            with close_on_signals(cache):
                run(cache)
        else:
            if helper == "bare":
                close_on_signals(cache)
            run(cache)
    else:
        async def main():
            cache = make()
            if helper == "block":
                async with close_on_signals(cache):
                    await arun(cache)
            else:
                if helper == "bare":
                    close_on_signals(cache)
                await arun(cache)
        asyncio.run(main())
    """
)


class Worker:
    """A worker process and what it acknowledged."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, *args],
            cwd=ROOT,  # this checkout's tiercache, whatever is installed
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.acked = 0
        self.lines: list[str] = []

    def read_until(self, done: Callable[[list[str]], bool]) -> None:
        """Read its output until ``done(words)`` holds for a line."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                _, err = self.proc.communicate(timeout=10)
                raise AssertionError(f"the worker ended early: {self.lines[-3:]}\n{err}")
            self._note(line)
            if done(line.split()):
                return

    def _note(self, line: str) -> None:
        self.lines.append(line.strip())
        words = line.split()
        if words and words[0].isdigit():
            self.acked = max(self.acked, int(words[0]))

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Send ``signum`` by PID; its exit status and stderr once it ended."""
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=10)  # no hang
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the worker did not stop within 10 s") from None
        # Read the rest through the same file object readline used: lines it
        # already buffered are there and nowhere else (communicate() reads
        # the pipe itself and missed them: acknowledgements went uncounted).
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with self.proc.stdout, self.proc.stderr:
            for line in self.proc.stdout:
                self._note(line)
            err = self.proc.stderr.read()
        return self.proc.returncode, err


def counting(n: int) -> Callable[[list[str]], bool]:
    return lambda words: bool(words) and words[0].isdigit() and int(words[0]) >= n


def stored(tier: str, where: str, namespace: str, key: str = "counter") -> Any:
    lower = RedisTier(where) if tier == "redis" else DiskTier(where)
    cache = TieredCache(MemoryTier(), lower, namespace=namespace)
    try:
        return cache.get(key)
    finally:
        cache.close()


def check_counter(worker: Worker, value: Any) -> None:
    """Every acknowledged increment is stored, and each change is whole: at
    most one more (a signal between a scope's return and its print)."""
    assert value is not None, f"nothing stored; acknowledged {worker.acked}"
    assert value["a"] == value["b"], value
    assert worker.acked <= value["a"] <= worker.acked + 1, (worker.acked, value)


@pytest.mark.redis
def test_without_the_helper_sigterm_loses_what_write_behind_held(
    redis_url: str, namespace: str
) -> None:
    """The problem: the default action of SIGTERM runs neither ``finally``
    nor ``atexit``."""
    worker = Worker("redis", redis_url, namespace, "sync", "none", "count")
    worker.read_until(counting(20))
    status, _ = worker.stop()
    assert status == -signal.SIGTERM
    assert stored("redis", redis_url, namespace) is None, "all acknowledged, none stored"


@pytest.mark.redis
@pytest.mark.parametrize("style", ["sync", "async"])
@pytest.mark.parametrize("helper", ["block", "bare"])
def test_sigterm_loses_nothing_acknowledged_over_redis(
    redis_url: str, namespace: str, style: str, helper: str
) -> None:
    worker = Worker("redis", redis_url, namespace, style, helper, "count")
    worker.read_until(counting(20))
    status, err = worker.stop()
    assert status == 128 + signal.SIGTERM, err
    assert "Traceback" not in err, err
    check_counter(worker, stored("redis", redis_url, namespace))


@pytest.mark.parametrize("style", ["sync", "async"])
def test_sigterm_loses_nothing_acknowledged_over_disk(
    tmp_path: Path, namespace: str, style: str
) -> None:
    where = str(tmp_path / "d")
    worker = Worker("disk", where, namespace, style, "block", "count")
    worker.read_until(counting(20))
    status, err = worker.stop()
    assert status == 128 + signal.SIGTERM, err
    check_counter(worker, stored("disk", where, namespace))


@pytest.mark.redis
@pytest.mark.timeout(60 + 5 * RUNS)
def test_sigterm_at_random_moments_loses_nothing_acknowledged(
    redis_url: str, namespace: str
) -> None:
    """Mid-scope, mid-commit, mid-print: wherever the main thread (or the
    loop) is, every acknowledged change is stored, whole, and each worker
    goes on from what the one before it left."""
    rng = random.Random(2024)
    before = 0
    for run in range(RUNS):
        style = ("sync", "async")[run % 2]
        worker = Worker("redis", redis_url, namespace, style, "block", "busy")
        worker.read_until(counting(before + 1))
        assert int(worker.lines[0]) == before + 1, "it went on from what was stored"
        time.sleep(rng.uniform(0.0, 0.05))
        status, err = worker.stop()
        assert status == 128 + signal.SIGTERM, err
        value = stored("redis", redis_url, namespace)
        check_counter(worker, value)
        before = value["a"]


@pytest.mark.redis
def test_sigint_is_a_keyboard_interrupt_and_loses_nothing(redis_url: str, namespace: str) -> None:
    """SIGINT (Ctrl+C) stops the program as Python does: KeyboardInterrupt,
    and an exit by SIGINT."""
    worker = Worker("redis", redis_url, namespace, "sync", "block", "count")
    worker.read_until(counting(20))
    status, err = worker.stop(signal.SIGINT)
    assert status == -signal.SIGINT, err
    assert "KeyboardInterrupt" in err
    check_counter(worker, stored("redis", redis_url, namespace))


@pytest.mark.redis
@pytest.mark.parametrize("style", ["sync", "async"])
def test_sigterm_inside_an_open_scope_rolls_it_back_and_keeps_the_rest(
    redis_url: str, namespace: str, style: str
) -> None:
    """The signal lands while the main thread (or task) has a scope open:
    that scope was never acknowledged, so it rolls back; the five before it
    were, and are written. No deadlock: close runs after the scope ended."""
    worker = Worker("redis", redis_url, namespace, style, "block", "hold")
    worker.read_until(lambda words: words[:1] == ["inside"])
    status, err = worker.stop()
    assert status == 128 + signal.SIGTERM, err
    assert worker.acked == 5
    assert stored("redis", redis_url, namespace) == {"a": 5, "b": 5}


def test_sigterm_waits_for_a_scope_another_thread_has_open(tmp_path: Path, namespace: str) -> None:
    """close() waits (up to ``wait``) for a scope another thread has open,
    so its change, acknowledged after the signal, is written too."""
    where = str(tmp_path / "d")
    worker = Worker("disk", where, namespace, "sync", "block", "thread")
    worker.read_until(lambda words: words[:1] == ["thread-inside"])
    worker.read_until(counting(5))
    status, err = worker.stop()
    assert status == 128 + signal.SIGTERM, err
    assert "thread-ack" in worker.lines
    check_counter(worker, stored("disk", where, namespace))
    assert stored("disk", where, namespace, "other") == {"by": "thread"}
