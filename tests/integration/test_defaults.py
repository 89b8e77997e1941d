"""The short configuration is the safe one (issue #11): a bus and a
staleness bound by default, read-your-writes with ``at_least=``, and the
one-line presets. Real Redis servers; the staleness test uses a real
writer process."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

import tiercache._atleast as atleast
from tiercache import (
    AUTO,
    DEFAULT_MAX_STALE,
    ConfigError,
    DiskTier,
    MemoryTier,
    RedisBus,
    RedisTier,
    TieredCache,
    VersionNotReachedError,
    WriteBehind,
)
from tiercache.testing import RedisServer

pytestmark = pytest.mark.redis


def short(url: str, namespace: str, **options: object) -> TieredCache:
    """The configuration the README's quick start shows: nothing about
    buses or staleness."""
    return TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, **options)  # type: ignore[arg-type]


# -- the defaults ---------------------------------------------------------------------


def test_a_shared_redis_tier_gets_a_bus_and_a_staleness_bound_by_default(
    redis_url: str, namespace: str
) -> None:
    cache = short(redis_url, namespace)
    try:
        assert isinstance(cache._bus, RedisBus)
        assert cache.max_stale == DEFAULT_MAX_STALE
        assert cache._s.tier_publishes, "the write's own script publishes"
    finally:
        cache.close()


def test_opting_out_is_explicit(redis_url: str, namespace: str, tmp_path: Path) -> None:
    cache = short(redis_url, namespace, bus=None, max_stale=None)
    assert cache._bus is None and cache.max_stale is None
    cache.close()
    embedded = TieredCache(MemoryTier(), DiskTier(tmp_path), namespace=namespace)
    assert embedded._bus is None, "no shared tier: nothing to share invalidations through"
    assert embedded.max_stale == DEFAULT_MAX_STALE
    embedded.close()
    memory_only = TieredCache(MemoryTier(), namespace=namespace, bus=AUTO, max_stale=AUTO)
    assert memory_only._bus is None and memory_only.max_stale is None
    memory_only.close()


def test_a_mutating_write_through_scope_is_one_round_trip(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted where it is sent: every request this process writes to a
    Redis socket while one mutating scope exits (the XADD of the
    invalidation runs inside the compare-and-set script)."""
    cache = short(redis_url, namespace)
    other = short(redis_url, namespace)
    sent: list[bytes] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def counting(
        self: redis.connection.AbstractConnection, command: object, *a: object, **kw: object
    ) -> None:
        parts = command if isinstance(command, list) else [command]
        data = b"".join(p if isinstance(p, bytes) else bytes(p) for p in parts)  # type: ignore[arg-type]
        if b"XREAD" not in data:  # the listeners' own blocking reads
            sent.append(data)
        real(self, command, *a, **kw)  # type: ignore[arg-type]

    try:
        with cache.session("k") as s:
            s["n"] = 0
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
        with cache.session("k") as s:
            s["n"] += 1
        monkeypatch.undo()
        assert len(sent) == 1 and b"EVALSHA" in sent[0], sent
        deadline = time.monotonic() + 5
        while other.get("k", {}).get("n") != 1:
            assert time.monotonic() < deadline, "the other process saw the write"
            time.sleep(0.005)
    finally:
        monkeypatch.undo()
        cache.close()
        other.close()


# -- staleness across processes ----------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from tiercache import MemoryTier, RedisTier, TieredCache
    url, namespace = sys.argv[1:3]
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
    for line in sys.stdin:
        key, value = line.split()
        with cache.session(key) as s:
            s["v"] = int(value)
        print(time.time(), flush=True)
    cache.close()
    """
)


def test_another_process_write_is_seen_promptly_by_default(redis_url: str, namespace: str) -> None:
    """Held keys, remembered misses and never-seen keys: the time from the
    writer's acknowledgement to this process serving the new value."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, redis_url, namespace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    reader = short(redis_url, namespace)
    lags: dict[str, list[float]] = {"held": [], "remembered miss": [], "never seen": []}
    try:
        for i in range(40):
            for kind in lags:
                key = f"{kind.replace(' ', '-')}:{i}"
                if kind == "held":
                    writer.stdin.write(f"{key} 0\n")
                    writer.stdin.flush()
                    writer.stdout.readline()
                    deadline = time.monotonic() + DEFAULT_MAX_STALE
                    while reader.get(key) != {"v": 0}:
                        assert time.monotonic() < deadline
                        time.sleep(0.001)
                elif kind == "remembered miss":
                    assert reader.get(key) is None  # remembered as missing now
                writer.stdin.write(f"{key} {i + 1}\n")
                writer.stdin.flush()
                acked = float(writer.stdout.readline())
                while reader.get(key) != {"v": i + 1}:
                    assert time.time() - acked < DEFAULT_MAX_STALE, f"{kind} {key} stale"
                    time.sleep(0.0005)
                lags[kind].append(time.time() - acked)
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
        writer.stdout.close()
        reader.close()
    assert writer.returncode == 0
    report = []
    for kind, values in lags.items():
        values.sort()
        p50, p99 = statistics.median(values), values[int(len(values) * 0.99) - 1]
        report.append(f"{kind}: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        assert max(values) < DEFAULT_MAX_STALE
    print("staleness across processes (default configuration): " + "; ".join(report))


def _staleness_after(redis_url: str, namespace: str, break_bus: str) -> float:
    writer, reader = short(redis_url, namespace), short(redis_url, namespace)
    client = redis.Redis.from_url(redis_url)
    try:
        writer.set("k", {"v": 0})
        assert reader.get("k") == {"v": 0}
        if break_bus == "kill":
            # The listener's connection (and every other client one) dies.
            client.client_kill_filter(_type="normal", skipme=True)
        else:
            bus = reader._bus
            assert isinstance(bus, RedisBus)
            client.delete(bus.stream)
        time.sleep(0.05)
        for attempt in range(3):
            try:
                writer.set("k", {"v": 1})
                break
            except Exception:  # the killed connection: its retry may fail once
                if attempt == 2:
                    raise
        acked = time.monotonic()
        while reader.get("k") != {"v": 1}:
            assert time.monotonic() - acked < DEFAULT_MAX_STALE + 1, "beyond the default bound"
            time.sleep(0.002)
        return time.monotonic() - acked
    finally:
        client.close()
        writer.close()
        reader.close()


@pytest.mark.parametrize("break_bus", ["kill", "delete-stream"])
def test_staleness_stays_within_the_default_bound_when_the_bus_breaks(
    redis_url: str, namespace: str, break_bus: str
) -> None:
    lag = _staleness_after(redis_url, namespace, break_bus)
    assert lag <= DEFAULT_MAX_STALE
    print(f"bus {break_bus}: the write was seen after {lag * 1000:.1f} ms")


# -- read-your-writes -----------------------------------------------------------------------


def test_scope_version_is_the_version_it_committed_or_read(redis_url: str, namespace: str) -> None:
    cache = short(redis_url, namespace)
    try:
        with cache.session("k") as s:
            s["n"] = 1
        first = cache.session("k")
        with first:
            pass
        read = first.version
        scope = cache.session("k")
        assert scope.version is None, "not ended yet"
        with scope as s:
            s["n"] = 2
        assert scope.version is not None and read is not None and scope.version > read
        failing = cache.session("k")
        with pytest.raises(RuntimeError), failing as s:
            s["n"] = 3
            raise RuntimeError
        assert failing.version is None, "a rolled-back scope committed nothing"
        fresh = cache.session("never-stored")
        with fresh:
            pass
        assert fresh.version is None
    finally:
        cache.close()


def test_at_least_reloads_a_stale_copy_when_no_invalidation_arrives(
    redis_url: str, namespace: str
) -> None:
    writer = short(redis_url, namespace)
    # The reader hears nothing and never revalidates: only at_least helps.
    reader = short(redis_url, namespace, bus=None, max_stale=None)
    try:
        writer.set("k", {"n": 0})
        assert reader.get("k") == {"n": 0}
        scope = writer.session("k")
        with scope as s:
            s["n"] = 1
        assert scope.version is not None
        assert reader.get("k") == {"n": 0}, "stale without at_least (the test's premise)"
        assert reader.get("k", at_least=scope.version) == {"n": 1}
        with writer.session("k") as s:
            s["n"] = 2
        again = writer.session("k")
        with again:
            pass
        with reader.session("k", at_least=again.version) as s:
            assert s["n"] == 2
            s["n"] = 3
        assert writer.get("k", at_least=cast_version(reader, "k")) == {"n": 3}
    finally:
        writer.close()
        reader.close()


def cast_version(cache: TieredCache, key: str) -> int:
    scope = cache.session(key)
    with scope:
        pass
    assert scope.version is not None
    return scope.version


async def test_aget_at_least_and_async_scopes(redis_url: str, namespace: str) -> None:
    writer = short(redis_url, namespace)
    reader = short(redis_url, namespace, bus=None, max_stale=None)
    try:
        await writer.aset("k", {"n": 0})
        assert await reader.aget("k") == {"n": 0}
        scope = writer.session("k")
        async with scope as s:
            s["n"] = 1
        assert await reader.aget("k", at_least=scope.version) == {"n": 1}
        async with writer.session("k") as s:
            s["n"] = 2
        wanted = scope.version + 1  # type: ignore[operator]
        async with reader.session("k", at_least=wanted) as s:
            assert s["n"] == 2
    finally:
        await writer.aclose()
        await reader.aclose()


def test_at_least_waits_for_a_write_behind_flush(redis_url: str, namespace: str) -> None:
    writer = short(redis_url, namespace, flush=WriteBehind(0.3))
    reader = short(redis_url, namespace, bus=None, max_stale=None)
    try:
        writer.set("k", {"n": 0})
        assert reader.get("k") == {"n": 0}
        scope = writer.session("k")
        with scope as s:
            s["n"] = 1
        assert scope.version is not None
        started = time.monotonic()
        assert reader.get("k", at_least=scope.version) == {"n": 1}
        assert time.monotonic() - started < atleast.AT_LEAST_WAIT
        assert writer.get("k") == {"n": 1}
    finally:
        writer.close()
        reader.close()


def test_at_least_a_version_never_written_is_a_clear_error(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(atleast, "AT_LEAST_WAIT", 0.2)
    cache = short(redis_url, namespace)
    try:
        cache.set("k", {"n": 0})
        version = cast_version(cache, "k")
        with pytest.raises(VersionNotReachedError) as info:
            cache.get("k", at_least=version + 10)
        assert info.value.key == "k" and info.value.wanted == version + 10
        assert info.value.found == version
        assert cache.get("k") == {"n": 0}, "nothing was changed by the failed read"
        for bad in (0, -1, "7", 1.5, True):
            with pytest.raises(ConfigError):
                cache.get("k", at_least=bad)  # type: ignore[arg-type]
            with pytest.raises(ConfigError):
                cache.session("k", at_least=bad)  # type: ignore[arg-type]
    finally:
        cache.close()


def test_version_not_reached_error_pickles() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(VersionNotReachedError("k", 9, 7)))
    assert (err.key, err.wanted, err.found) == ("k", 9, 7)


# -- presets ----------------------------------------------------------------------------


def test_from_url_builds_the_safe_configuration(redis_url: str, namespace: str) -> None:
    cache = TieredCache.from_url(redis_url, namespace=namespace, socket_timeout=3.0, ttl=60)
    try:
        tiers = cache._core.tiers
        assert isinstance(cache._bus, RedisBus)
        assert cache.max_stale == DEFAULT_MAX_STALE
        assert len(tiers) == 1
        with cache.session("k") as s:
            s["n"] = 1
        assert cache.get("k") == {"n": 1}
    finally:
        cache.close()
    plain = TieredCache.from_url(redis_url, namespace=namespace, bus=None, max_stale=None)
    assert plain._bus is None and plain.max_stale is None
    plain.close()


def test_from_url_file_is_the_embedded_default(tmp_path: Path, namespace: str) -> None:
    url = f"file://{tmp_path}/store"
    cache = TieredCache.from_url(url, namespace=namespace, memory=MemoryTier(maxsize=10))
    with cache.session("k") as s:
        s["n"] = 1
    cache.close()
    again = TieredCache.from_url(url, namespace=namespace)
    assert again.get("k") == {"n": 1}
    assert again._bus is None
    again.close()


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("http://example.com", {}),
        ("file://otherhost/dir", {}),
        ("redis://127.0.0.1:1", {"no_such_option": 1}),
        (42, {}),
    ],
)
def test_from_url_refuses_what_it_cannot_build(url: object, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TieredCache.from_url(url, namespace="ns", **options)  # type: ignore[arg-type]


def test_from_url_concurrency_sanity(redis_url: str, namespace: str) -> None:
    async def main() -> None:
        cache = TieredCache.from_url(redis_url, namespace=namespace)
        try:

            async def one(i: int) -> None:
                async with cache.session(f"k{i}") as s:
                    s["n"] = i

            await asyncio.gather(*(one(i) for i in range(50)))
            assert [await cache.aget(f"k{i}") for i in range(50)] == [{"n": i} for i in range(50)]
        finally:
            await cache.aclose()

    asyncio.run(main())


# -- outage for keys never seen (opt-in) -----------------------------------------------------


def test_a_key_never_seen_is_journaled_from_initial_while_redis_is_down_and_merged_after(
    namespace: str, tmp_path: Path
) -> None:

    # AOF: the restart keeps what Redis acknowledged (the other writer's key).
    with RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        _journal_new_key_through_an_outage(server, namespace, tmp_path)


def _journal_new_key_through_an_outage(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    from tiercache import Journal, TierError

    url = redis_server.url
    journaled = short(url, namespace, journal=Journal(tmp_path / "j", new_keys=True))
    strict = short(url, namespace, journal=Journal(tmp_path / "k"))
    other = short(url, namespace)
    try:
        # Another process creates the key; this one never read it.
        with other.session("new") as s:
            s["theirs"] = 2
        redis_server.stop()
        with journaled.session("new") as s:
            assert s == {}, "started from initial(): the stored value is out of reach"
            s["ours"] = 1
        assert journaled.stats().journal_depth == 1
        with pytest.raises(TierError), strict.session("new"):
            pass  # without the opt-in: refused before the handler runs
        redis_server.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                journaled.flush()
                if journaled.stats().journal_depth == 0:
                    break
            except TierError:
                pass
            assert time.monotonic() < deadline, "the journal drained after the restart"
            time.sleep(0.05)
        reader = short(url, namespace)
        assert reader.get("new") == {"theirs": 2, "ours": 1}, "three-way merge, initial() as base"
        reader.close()
        assert journaled.get("new") == {"theirs": 2, "ours": 1}
    finally:
        for c in (journaled, strict, other):
            with contextlib.suppress(Exception):
                c.close()


def test_journal_new_keys_must_be_a_bool(tmp_path: Path) -> None:
    from tiercache import Journal

    with pytest.raises(ConfigError):
        Journal(tmp_path, new_keys="yes")  # type: ignore[arg-type]
