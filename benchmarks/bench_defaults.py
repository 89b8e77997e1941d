"""The safe defaults (issue #11): what the bus the short configuration now
makes costs on the bot mix, and how it compares with cashews' client-side
caching.

Run: ``pytest benchmarks/bench_defaults.py --benchmark-only -s`` (``-s``
prints the summary as Markdown rows; every number is also in each result's
``extra_info``).

::

    parent (pytest)                      worker process(es), real OS processes
    ───────────────                      ─────────────────────────────────────
    start 1 or 2 workers ──────────────> build the variant, print "ready"
    a round: "go" to each ─────────────> run its share of the mix, reply
             wait for every reply <───── (5,000 requests per round in all)
    CONFIG RESETSTAT / INFO commandstats around the timed rounds
    one more round under MONITOR  ──────> client commands per request

**The mix** is the bot mix of ``bench_sessions.py`` (its ``workload``,
``handler_body`` and ``initial``): 1,000 users, Zipf-distributed keys
(exponent 1.1 here, fixed seed), 5,000 requests per round, 10% mutating
(``s["count"] = s.get("count", 0) + 1``), 90% reading one field;
write-through. With two processes each runs every other request of the same
5,000, concurrently, over the same users: they share the hot sessions, so a
scope can lose a compare-and-set race (``ConflictError``); it is re-run and
counted (``retries_per_round``). Requests per second are the 5,000 over the
wall time from "go" until the last worker replied.

**Variants**, each in the same run:

* ``sync-default``: ``TieredCache(MemoryTier(), RedisTier(url), namespace=...)``,
  i.e. ``bus=AUTO`` (a ``RedisBus`` on the same Redis, the invalidation XADD
  inside the compare-and-set script) and ``max_stale=AUTO`` (10 s);
* ``sync-nobus``: the same with ``bus=None, max_stale=None`` (the old default);
* ``sync-raw``: redis-py, per request a ``GET`` + ``orjson.loads`` (+ ``dumps``
  and ``SET`` when mutating): the floor of "no cache";
* ``async-*``: the same three through ``async with cache.session(key)`` and
  ``redis.asyncio``, plus ``async-cashews``: cashews with client-side caching
  (``Cache().setup("redis://...?protocol=2&client_side=true")``; with redis-py
  8's RESP3 default its invalidations never arrive). cashews has no sessions
  and no sync API: a read-only request is a ``get``, a mutating one a ``get``
  and a ``set`` of the changed dict (load-and-save). Compare it with the
  ``async-`` tiercache rows: same event loop, same kind of client.

**Round trips.** ``INFO commandstats`` counts the commands a Lua script runs
(the compare-and-set script's ``GET``, ``SET``, ``XADD``) as well as the
script's ``EVALSHA``, so it cannot tell round trips. They are counted in one
extra, untimed round under ``MONITOR`` (read by a small child process), which
marks commands run by scripts ``[... lua]``: those are left out, so an
``EVALSHA`` counts once. The bus listener's commands (``XREAD`` + ``XRANGE``,
one pipeline, on its own connection, off the request path) are counted apart.
``INFO commandstats`` of the timed rounds is kept too: ``EVALSHA`` per request
and every command the server ran, scripts' included.

``test_mutating_scope`` times one mutating write-through scope on a warm key
(default vs no bus, and the default with its own listener not started: a
diagnostic that shows what reading back its own invalidations costs) and
counts that scope's request-path commands: the goal is exactly one.
``test_mix_sustained`` runs the one-process sync mix for longer than
``max_stale`` (10 s), so the default's revalidation reads are in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
from bench_sessions import REQUESTS, handler_body, initial, workload  # the bot mix, one copy

from tiercache import ConflictError, MemoryTier, RedisBus, RedisTier, TieredCache

ZIPF_EXPONENT = 1.1
ROUNDS = 5
SUSTAINED_S = 12.0  # longer than max_stale=AUTO (10 s)
ROOT = Path(__file__).resolve().parents[1]
LISTENER_COMMANDS = frozenset({"XREAD", "XRANGE", "XREVRANGE"})
NO_BUS: dict[str, Any] = {"bus": None, "max_stale": None}

Requests = list[tuple[int, bool]]
#: run(requests) -> how many requests were re-run after a lost race.
Runner = Callable[[Requests], int]


def mix() -> Requests:
    return workload(exponent=ZIPF_EXPONENT)


# -- the variants (each built inside a worker process) --------------------------------


def tiercache_sync(url: str, namespace: str, **options: Any) -> tuple[Runner, Callable[[], None]]:
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, **options)
    session = cache.session

    def run(requests: Requests) -> int:
        retries = 0
        for user, mutate in requests:
            while True:
                try:
                    with session(f"chat:{user}", initial=initial) as s:
                        handler_body(s, mutate)
                    break
                except ConflictError:  # another process wrote it first: re-run
                    retries += 1
        return retries

    return run, cache.close


def tiercache_async(url: str, namespace: str, **options: Any) -> tuple[Runner, Callable[[], None]]:
    loop = asyncio.new_event_loop()
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, **options)
    session = cache.session

    async def arun(requests: Requests) -> int:
        retries = 0
        for user, mutate in requests:
            while True:
                try:
                    async with session(f"chat:{user}", initial=initial) as s:
                        handler_body(s, mutate)
                    break
                except ConflictError:
                    retries += 1
        return retries

    def close() -> None:
        loop.run_until_complete(cache.aclose())
        loop.close()

    return (lambda requests: loop.run_until_complete(arun(requests))), close


def raw_sync(url: str, namespace: str) -> tuple[Runner, Callable[[], None]]:
    r = redis.Redis.from_url(url)

    def run(requests: Requests) -> int:
        for user, mutate in requests:
            key = f"raw:{namespace}:{user}"
            raw = r.get(key)
            session = orjson.loads(raw) if raw else initial()
            handler_body(session, mutate)
            if mutate:
                r.set(key, orjson.dumps(session))
        return 0

    return run, r.close


def raw_async(url: str, namespace: str) -> tuple[Runner, Callable[[], None]]:
    loop = asyncio.new_event_loop()
    r = redis.asyncio.Redis.from_url(url)

    async def arun(requests: Requests) -> int:
        for user, mutate in requests:
            key = f"raw:{namespace}:{user}"
            raw = await r.get(key)
            session = orjson.loads(raw) if raw else initial()
            handler_body(session, mutate)
            if mutate:
                await r.set(key, orjson.dumps(session))
        return 0

    def close() -> None:
        loop.run_until_complete(r.aclose())
        loop.close()

    return (lambda requests: loop.run_until_complete(arun(requests))), close


def cashews_client_side(url: str, namespace: str) -> tuple[Runner, Callable[[], None]]:
    from cashews import Cache

    loop = asyncio.new_event_loop()
    cache = Cache()
    # protocol=2: on RESP3 (redis-py 8's default) the BCAST invalidations
    # never reach its pub/sub listener, and a peer's writes go unseen.
    cache.setup(f"{url}?protocol=2&client_side=true", client_side_prefix=f"cashews:{namespace}:")
    loop.run_until_complete(cache.init())

    async def arun(requests: Requests) -> int:
        for user, mutate in requests:
            key = f"chat:{user}"
            session = await cache.get(key)
            if session is None:
                session = initial()
            handler_body(session, mutate)
            if mutate:  # no sessions: load, change, save
                await cache.set(key, session)
        return 0

    def close() -> None:
        loop.run_until_complete(cache.close())
        loop.close()

    return (lambda requests: loop.run_until_complete(arun(requests))), close


VARIANTS: dict[str, Callable[[str, str], tuple[Runner, Callable[[], None]]]] = {
    "sync-default": lambda url, ns: tiercache_sync(url, ns),
    "sync-nobus": lambda url, ns: tiercache_sync(url, ns, **NO_BUS),
    "sync-raw": raw_sync,
    "async-default": lambda url, ns: tiercache_async(url, ns),
    "async-nobus": lambda url, ns: tiercache_async(url, ns, **NO_BUS),
    "async-cashews": cashews_client_side,
    "async-raw": raw_async,
}


# -- the worker process ----------------------------------------------------------------


def worker_main() -> None:
    """``python -c 'import bench_defaults; bench_defaults.worker_main()'
    VARIANT URL NAMESPACE INDEX PROCESSES``: on ``go`` run this worker's
    share once; on ``for SECONDS`` repeat it that long; on ``quit`` close."""
    variant, url, namespace, index, processes = sys.argv[1:6]
    share = mix()[int(index) :: int(processes)]
    run, close = VARIANTS[variant](url, namespace)
    print("@@ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "go":
            start = time.perf_counter()
            retries = run(share)
            reply = {"elapsed": time.perf_counter() - start, "retries": retries}
        elif command[0] == "for":
            start, requests, retries = time.perf_counter(), 0, 0
            while time.perf_counter() - start < float(command[1]):
                retries += run(share)
                requests += len(share)
            reply = {"elapsed": time.perf_counter() - start, "requests": requests}
            reply["retries"] = retries
        else:
            break
        print("@@" + json.dumps(reply), flush=True)
    close()


class Workers:
    """``processes`` worker processes of one variant over one namespace."""

    def __init__(self, variant: str, url: str, processes: int) -> None:
        namespace = f"bd{uuid.uuid4().hex[:8]}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]))
        code = "import bench_defaults; bench_defaults.worker_main()"
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, variant, url, namespace, str(i), str(processes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
                cwd=ROOT,
            )
            for i in range(processes)
        ]
        for p in self.procs:
            assert self._reply(p) == "ready"

    @staticmethod
    def _reply(p: subprocess.Popen[str]) -> str:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("@@"):
                return line[2:].strip()
        raise AssertionError(f"worker {p.pid} exited with {p.wait()}")

    def round(self, command: str = "go") -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(command + "\n")
            p.stdin.flush()
        return [json.loads(self._reply(p)) for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("quit\n")
            p.stdin.close()
        for p in self.procs:
            assert p.wait(timeout=60) == 0
            assert p.stdout is not None
            p.stdout.close()


# -- counting commands ---------------------------------------------------------------

MONITOR_CHILD = """
import socket, sys
from urllib.parse import urlsplit
url, out = sys.argv[1], sys.argv[2]
u = urlsplit(url)
s = socket.create_connection((u.hostname, u.port or 6379))
if u.password:
    s.sendall(b"AUTH %s\\r\\n" % u.password.encode())
    s.recv(64)
s.sendall(b"MONITOR\\r\\n")
with open(out, "wb", buffering=0) as f:
    while data := s.recv(1 << 16):
        f.write(data)
"""

_MONITOR_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]*)"')


@contextlib.contextmanager
def monitor(url: str) -> Iterator[tuple[Counter[str], Counter[str]]]:
    """Within the block, count the commands clients send (first counter) and
    the commands scripts run (second): ``MONITOR`` read by a child process,
    so this process's threads do not compete with it for the GIL."""
    clients: Counter[str] = Counter()
    scripts: Counter[str] = Counter()
    fd, path = tempfile.mkstemp(prefix="tiercache-monitor-")
    os.close(fd)
    child = subprocess.Popen([sys.executable, "-c", MONITOR_CHILD, url, path])
    r = redis.Redis.from_url(url)
    r.ping()  # its connection's handshake, before the window
    try:
        deadline = time.monotonic() + 10
        while Path(path).read_bytes()[:3] != b"+OK":
            assert time.monotonic() < deadline, "MONITOR did not start"
            time.sleep(0.01)
        yield clients, scripts
        token = uuid.uuid4().hex.encode()
        r.echo(token)  # the end of the window: everything before it was logged
        while token not in Path(path).read_bytes():
            assert time.monotonic() < deadline + 60, "MONITOR lost the end marker"
            time.sleep(0.01)
        log = Path(path).read_bytes()
    finally:
        child.terminate()
        child.wait()
        r.close()
        os.unlink(path)
    for line in log.split(b"\r\n")[1:]:
        m = _MONITOR_LINE.match(line)
        if m is None:
            continue
        name = m.group(2).decode(errors="replace").upper()
        if name == "ECHO" and token in line:
            break
        (scripts if m.group(1) == b"lua" else clients)[name] += 1


def commandstats(r: redis.Redis) -> Counter[str]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (scripts'
    commands included), without the benchmark's own INFO and CONFIG."""
    stats: dict[str, Any] = r.info("commandstats")
    calls = Counter({k.removeprefix("cmdstat_").upper(): int(v["calls"]) for k, v in stats.items()})
    for own in ("INFO", "CONFIG|RESETSTAT"):
        calls.pop(own, None)
    return calls


# -- the tests -----------------------------------------------------------------------

#: test id -> its summary, printed at the end of the module (run with -s).
SUMMARY: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    """At the end of the module, the results as Markdown rows and ratios."""
    yield
    if not SUMMARY:
        return
    print("\n\n| case | requests/s | client commands / request | of them bus listener |")
    print("|---|---|---|---|")
    for name, row in SUMMARY.items():
        if "client_commands_per_request" in row:
            print(
                f"| {name} | {row['requests_per_second']:,.0f} | "
                f"{row['client_commands_per_request']:.3f} | "
                f"{row['listener_commands_per_request']:.3f} |"
            )
        else:
            print(
                f"| {name} | {row['requests_per_second']:,.0f} | "
                f"EVALSHA {row['evalsha_per_request']:.3f} + revalidating GET "
                f"{row['client_gets_per_request']:.4f} | |"
            )
    rps = {name: row["requests_per_second"] for name, row in SUMMARY.items()}
    ratios = [
        ("default / no bus", "{p}-{m}-default", "{p}-{m}-nobus"),
        ("default / raw", "{p}-{m}-default", "{p}-{m}-raw"),
        ("no bus / raw", "{p}-{m}-nobus", "{p}-{m}-raw"),
        ("default / cashews", "{p}-{m}-default", "{p}-async-cashews"),
        ("no bus / cashews", "{p}-{m}-nobus", "{p}-async-cashews"),
    ]
    for processes in (1, 2):
        for mode in ("sync", "async"):
            for label, top, bottom in ratios:
                a = rps.get("mix[" + top.format(p=processes, m=mode) + "]")
                b = rps.get("mix[" + bottom.format(p=processes, m=mode) + "]")
                if a and b:
                    print(f"{processes} process(es), {mode}, {label} (req/s): {a / b:.3f}")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("processes", [1, 2])
def test_mix(benchmark: Any, redis_url: str, processes: int, variant: str) -> None:
    benchmark.group = f"defaults: bot mix, {processes} process(es), {variant.split('-')[0]}"
    r = redis.Redis.from_url(redis_url)
    workers = Workers(variant, redis_url, processes)
    retries: list[int] = []

    def one_round() -> None:
        retries.append(sum(reply["retries"] for reply in workers.round()))

    try:
        one_round()  # warm-up: loads every session the mix touches
        r.config_resetstat()
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
        server = commandstats(r)
        with monitor(redis_url) as (clients, scripts):
            one_round()
    finally:
        workers.close()
        r.close()
    requests = REQUESTS * ROUNDS
    listener = sum(n for name, n in clients.items() if name in LISTENER_COMMANDS)
    info = {
        "processes": processes,
        "requests_per_round": REQUESTS,
        "requests_per_second": round(REQUESTS / benchmark.stats.stats.median),
        "retries_per_round": statistics.median(retries[1:]),
        "client_commands_per_request": sum(clients.values()) / REQUESTS,
        "listener_commands_per_request": listener / REQUESTS,
        "client_commands": dict(clients.most_common()),
        "script_commands": dict(scripts.most_common()),
        "evalsha_per_request": server["EVALSHA"] / requests,
        "server_commands_per_request": sum(server.values()) / requests,
        "server_commands": dict(server.most_common()),
    }
    benchmark.extra_info.update(info)
    SUMMARY[f"mix[{processes}-{variant}]"] = info
    print(f"\n{processes} x {variant}: {info}")


SUSTAINED = ["sync-default", "sync-nobus"]


@pytest.mark.parametrize("variant", SUSTAINED)
def test_mix_sustained(benchmark: Any, redis_url: str, variant: str) -> None:
    """One process for SUSTAINED_S seconds: past max_stale, so the
    default's revalidation reads (one per session per 10 s) are counted."""
    benchmark.group = "defaults: bot mix, 1 process, sync, sustained 12 s"
    r = redis.Redis.from_url(redis_url)
    workers = Workers(variant, redis_url, 1)
    replies: list[dict[str, Any]] = []
    try:
        workers.round()
        r.config_resetstat()
        benchmark.pedantic(
            lambda: replies.extend(workers.round(f"for {SUSTAINED_S}")), rounds=1, iterations=1
        )
        server = commandstats(r)
    finally:
        workers.close()
        r.close()
    (reply,) = replies
    requests = reply["requests"]
    info = {
        "requests": requests,
        "requests_per_second": round(requests / reply["elapsed"]),
        # Outside scripts a GET is a load or a revalidation: each script runs one.
        "client_gets_per_request": (server["GET"] - server["EVALSHA"]) / requests,
        "evalsha_per_request": server["EVALSHA"] / requests,
        "server_commands_per_request": sum(server.values()) / requests,
        "server_commands": dict(server.most_common()),
    }
    benchmark.extra_info.update(info)
    SUMMARY[f"sustained[{variant}]"] = info
    print(f"\nsustained {variant}: {info}")


SCOPES = ["default", "nobus", "default, own listener not started"]


@pytest.mark.parametrize("case", SCOPES)
def test_mutating_scope(
    benchmark: Any, redis_url: str, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One mutating write-through scope on a warm key, in this process; its
    request-path commands (the bus listener's left out) must be one."""
    benchmark.group = "defaults: one mutating write-through scope"
    namespace = f"bs{uuid.uuid4().hex[:8]}"
    if case.startswith("default, own listener"):
        # Diagnostic only: the writes still carry their XADD, but nothing in
        # this process reads the stream back.
        monkeypatch.setattr(RedisBus, "start", lambda self, on_messages, on_gap: None)
    options = NO_BUS if case == "nobus" else {}
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, **options)
    monkeypatch.undo()
    session = cache.session

    def scope() -> None:
        with session("chat:1", initial=initial) as s:
            handler_body(s, True)

    scope()
    try:
        benchmark.pedantic(scope, rounds=2000, warmup_rounds=100, iterations=1)
        n = 200
        with monitor(redis_url) as (clients, _):
            for _ in range(n):
                scope()
            time.sleep(0.05)  # let the listener's last read in
    finally:
        cache.close()
    request_path = {k: v / n for k, v in clients.items() if k not in LISTENER_COMMANDS}
    listener = sum(v for k, v in clients.items() if k in LISTENER_COMMANDS) / n
    benchmark.extra_info.update(
        request_path_commands_per_scope=sum(request_path.values()),
        request_path_commands=request_path,
        listener_commands_per_scope=listener,
    )
    SUMMARY[f"scope[{case}]"] = {
        "requests_per_second": 1 / benchmark.stats.stats.median,
        "client_commands_per_request": sum(request_path.values()),
        "listener_commands_per_request": listener,
    }
    print(f"\nscope {case}: {benchmark.extra_info}")
