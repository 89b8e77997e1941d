"""Redis stopped and restarted in the middle of a multi-process workload.

Three worker processes share one session; each increments its own field
as fast as it can and prints every value a scope returned with (an
acknowledged update). The parent stops the real redis-server while they
run, lets them work through the outage (their changes go to each one's
journal), starts it again, lets them work on, then tells them to stop:
each drains its journal and exits. Every acknowledged update must be in
the store: for each worker, the stored field equals the last value it
acknowledged.

The server runs with AOF (``appendfsync always``), so the restart itself
loses nothing Redis acknowledged; what is tested is that tiercache loses
nothing it acknowledged. Two flush policies: write-through, where the
journal takes over only while Redis is down, and write-behind, where the
journal is the write-ahead log of every change.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration._helpers import wait_until
from tiercache import MemoryTier, RedisTier, TieredCache
from tiercache.testing import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

#: Seconds Redis stays down (at least): long enough for the circuit
#: breaker's backoff to grow; TIERCACHE_OUTAGE_SECONDS=30 for a long run.
OUTAGE = float(os.environ.get("TIERCACHE_OUTAGE_SECONDS", "1.5"))

WORKER = textwrap.dedent(
    """
    import sys, threading, time
    from tiercache import (Journal, MemoryTier, RedisTier, TieredCache, TierError,
                           WriteBehind, WriteThrough)
    url, namespace, name, journal_dir, mode = sys.argv[1:6]
    flush = WriteBehind(0.05) if mode == "write-behind" else WriteThrough()
    # Room for any outage the test makes: the bound is tested elsewhere.
    # No bus: each worker keeps its own copy through the outage, so every
    # handler can go on (with the default bus, a copy another worker's
    # write invalidated is gone, and that worker waits for Redis).
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace,
                        journal=Journal(journal_dir, max_entries=10**7), flush=flush,
                        bus=None, max_stale=None)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        try:
            with cache.session("shared") as s:
                s[name] = s.get(name, 0) + 1
                value = s[name]
        except TierError as exc:
            print("error", flush=True)  # not acknowledged: the handler saw it
            print("handler saw:", repr(exc), file=sys.stderr, flush=True)
            time.sleep(0.01)
            continue
        print("ack", value, cache.stats().journal_depth, flush=True)
        time.sleep(0.002)
    deadline = time.monotonic() + 30
    while cache.stats().journal_depth and time.monotonic() < deadline:
        try:
            cache.flush()
        except TierError:
            time.sleep(0.1)
    st = cache.stats()
    print("done", st.journaled, st.journal_depth, flush=True)
    cache.close()
    """
)


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[str]
    acks: list[int] = field(default_factory=list)
    #: Acknowledged while changes waited in the journal (depth > 0).
    journaled_acks: int = 0
    errors: int = 0
    done: list[str] = field(default_factory=list)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, *rest = line.split()
            if word == "ack":
                self.acks.append(int(rest[0]))
                self.journaled_acks += int(rest[1]) > 0
            elif word == "error":
                self.errors += 1
            elif word == "done":
                self.done = rest


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    wait_until(check, what, timeout)


@pytest.mark.parametrize("mode", ["write-through", "write-behind"])
def test_redis_restart_mid_workload_loses_no_acknowledged_update(
    namespace: str, tmp_path: Path, mode: str
) -> None:
    with (
        RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server,
        contextlib.ExitStack() as stack,
    ):
        seed = TieredCache(MemoryTier(), RedisTier(server.url), namespace=namespace)
        seed.set("shared", {})
        seed.close()
        workers = [
            Worker(
                name,
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, server.url, namespace, name,
                     str(tmp_path / name), mode],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    # The timer logs each failed tick there; read on failure.
                    stderr=err,
                    text=True,
                ),
            )
            for name in ("w0", "w1", "w2")
            for err in [stack.enter_context((tmp_path / f"{name}.err").open("w"))]
        ]  # fmt: skip
        readers = [threading.Thread(target=w.read, daemon=True) for w in workers]
        for t in readers:
            t.start()

        def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
            try:
                wait_until(check, what, timeout)
            except AssertionError as exc:
                state = [
                    (w.name, len(w.acks), w.journaled_acks, w.errors, w.proc.poll())
                    for w in workers
                ]
                tails = [(tmp_path / f"{w.name}.err").read_text()[-1500:] for w in workers]
                raise AssertionError(
                    f"{exc}; (name, acks, journaled, errors, rc): {state}; stderr tails: {tails}"
                ) from None

        try:
            wait_for("every worker to be busy", lambda: all(len(w.acks) >= 50 for w in workers))
            server.stop()  # mid-workload
            stopped = time.monotonic()
            before = [w.journaled_acks for w in workers]

            def outage_done() -> bool:
                return time.monotonic() - stopped > OUTAGE and all(
                    w.journaled_acks >= b + 100 for w, b in zip(workers, before, strict=True)
                )

            wait_for("every worker to work through the outage", outage_done)
            server.start()
            after = [len(w.acks) for w in workers]

            def went_on() -> bool:
                return all(len(w.acks) >= a + 100 for w, a in zip(workers, after, strict=True))

            wait_for("every worker to go on after the restart", went_on)
        finally:
            for w in workers:
                assert w.proc.stdin is not None
                w.proc.stdin.close()
            for w in workers:
                w.proc.wait(timeout=60)
            for t in readers:
                t.join(timeout=10)
            for w in workers:
                assert w.proc.stdout is not None
                w.proc.stdout.close()
        cache = TieredCache(MemoryTier(), RedisTier(server.url), namespace=namespace)
        stored = cache.get("shared")
        cache.close()
    for w in workers:
        assert w.proc.returncode == 0, (tmp_path / f"{w.name}.err").read_text()[-3000:]
        journaled, depth = map(int, w.done)
        assert depth == 0, f"{w.name}'s journal drained"
        assert journaled > 0
        assert w.errors == 0, "handlers kept working through the outage"
        assert w.acks == list(range(1, len(w.acks) + 1)), "each ack one more than the last"
        assert stored[w.name] == w.acks[-1], (w.name, stored, w.acks[-1])
    print(
        f"outage {mode}: {sum(len(w.acks) for w in workers)} acknowledged updates, "
        f"{sum(w.journaled_acks for w in workers)} while journaled, Redis down "
        f">= {OUTAGE} s, lost 0"
    )


def test_a_hung_redis_stalls_one_call_not_every_handler(tmp_path: Path, namespace: str) -> None:
    """SIGSTOPped, Redis keeps its connections open and answers nothing: a
    call waits for its socket timeout. Only the call that finds the server
    hung may wait; the breaker then fails fast and probes in a background
    thread, so handlers keep working on the journal at memory speed."""
    from tiercache import Journal

    with RedisServer() as server:
        cache = TieredCache(
            MemoryTier(),
            RedisTier(server.url, socket_timeout=0.5, retries=1),
            namespace=namespace,
            journal=Journal(tmp_path / "journal"),
        )
        cache.set("k", {"n": 0})
        server.pause()
        latencies: list[float] = []
        n = 0
        started = time.monotonic()
        while time.monotonic() - started < 4.0:
            t0 = time.monotonic()
            with cache.session("k") as s:
                s["n"] += 1
                n = s["n"]
            latencies.append(time.monotonic() - t0)
            time.sleep(0.005)
        assert cache.stats().degraded
        server.resume()
        wait_for("the journal to drain", lambda: cache.stats().journal_depth == 0, 30)
        assert not cache.stats().degraded
        check = TieredCache(MemoryTier(), RedisTier(server.url), namespace=namespace)
        assert check.get("k") == {"n": n}, "every acknowledged update is stored"
        check.close()
        cache.close()
    slow = [t for t in latencies if t > 0.3]
    assert len(slow) <= 1, f"{len(slow)} of {len(latencies)} scopes waited: {slow}"
    assert len(latencies) > 100
