"""Regressions from hostile testing (issue #10) that need real processes, a
real redis-server or a real (full) disk. Each test names the item it
proves; the unit-level ones are in tests/unit/test_hostile.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tiercache import (
    DiskTier,
    InvalidKeyError,
    MemoryTier,
    RedisTier,
    TieredCache,
    TierError,
    ValueTooLargeError,
    WriteBehind,
)
from tiercache.testing import RedisServer

pytestmark = pytest.mark.redis

INCREMENTER = textwrap.dedent(
    """
    import sys
    from tiercache import ConflictError, DiskTier, MemoryTier, RedisBus, RedisTier, TieredCache

    kind, where, namespace, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if kind == "redis":
        cache = TieredCache(MemoryTier(), RedisTier(where), namespace=namespace,
                            bus=RedisBus(where, namespace=namespace))
    else:
        cache = TieredCache(MemoryTier(), DiskTier(where), namespace=namespace)
    acknowledged = conflicts = 0
    while acknowledged < n:
        try:
            with cache.session("counter") as s:  # a plain scope: no lease, no update()
                s["n"] = s.get("n", 0) + 1
        except ConflictError:
            conflicts += 1  # not applied: the handler would be retried
            continue
        acknowledged += 1
    cache.close()
    print(acknowledged, conflicts)
    """
)


@pytest.mark.parametrize("kind", ["redis", "disk"])
def test_four_processes_incrementing_on_stale_copies_lose_no_acknowledged_increment(
    redis_url: str, namespace: str, tmp_path: Path, kind: str
) -> None:
    """#10.1: with equal-value merges, ~22% of acknowledged increments
    vanished over Redis with a healthy bus, 9 of 2,000 over one shared
    DiskTier. Every increment a scope returned from is in the store now;
    the ones that lost a race raised ConflictError and were retried."""
    where = redis_url if kind == "redis" else str(tmp_path / "shared")
    per = 150
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENTER, kind, where, namespace, str(per)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    acknowledged = conflicts = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
        a, c = map(int, out.split())
        acknowledged, conflicts = acknowledged + a, conflicts + c
    tier: Any = RedisTier(redis_url) if kind == "redis" else DiskTier(where)
    with TieredCache(MemoryTier(), tier, namespace=namespace) as check:
        assert check.get("counter") == {"n": acknowledged}
    assert acknowledged == 4 * per


# -- 6 and 9 on a real Redis ------------------------------------------------------------


def test_a_surrogate_key_never_reaches_redis_and_a_wrong_type_key_blocks_nothing(
    redis_url: str, namespace: str
) -> None:
    """#10.6: 0 of 50 good keys used to reach Redis after one bad key's
    failed set stayed pending. The unencodable key is refused up front;
    a key Redis refuses (another client made it a list) fails alone."""
    cache = TieredCache(
        MemoryTier(), RedisTier(redis_url), namespace=namespace, flush=WriteBehind(3600)
    )
    with pytest.raises(InvalidKeyError):
        cache.set("\ud800", {"a": 1})
    for i in range(50):
        with cache.session(f"good{i}") as s:
            s["n"] = i
    with cache.session("bad") as s:
        s["n"] = -1
    raw = redis.Redis.from_url(redis_url)
    raw.rpush(f"tc:{namespace}:bad", "not a session")  # meanwhile, another client
    with pytest.raises(TierError, match=r"WRONGTYPE|wrong kind") as info:
        cache.flush()
    assert info.value.transient is False
    assert not cache.stats().degraded, "one refusal is not an outage"
    with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as check:
        assert [check.get(f"good{i}") for i in range(50)] == [{"n": i} for i in range(50)]
    raw.delete(f"tc:{namespace}:bad")  # the operator repairs it: the change lands
    cache.close()
    with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as check:
        assert check.get("bad") == {"n": -1}
    raw.close()


def test_lookalike_namespaces_are_different_keys_in_redis(redis_url: str, namespace: str) -> None:
    """#10.9 on Redis: one tenant cannot read or overwrite another's data."""
    x = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    xy = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace + ":y")
    x.set("y:a", {"tenant": "x"})
    assert xy.get("a") is None
    xy.set("a", {"tenant": "x:y"})
    with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as check:
        assert check.get("y:a") == {"tenant": "x"}
    x.close()
    xy.close()


# -- 11. a full local disk is bypassed ---------------------------------------------------


@contextlib.contextmanager
def full_disk(size_kb: int = 256) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A directory on a tiny tmpfs (real ENOSPC), and the DiskTier settings
    for it. Where mounting is not allowed, SQLite's page limit makes the
    same "database or disk is full" error."""
    top = Path(tempfile.mkdtemp(prefix="tiercache-full-"))
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(top)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield top, ({} if mounted else {"sqlite_max_page_count": size_kb // 4})
    finally:
        if mounted:
            subprocess.run(["umount", str(top)], check=False)
        os.rmdir(top)


def fill(directory: Path) -> None:
    with contextlib.suppress(OSError), open(directory / "ballast", "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_a_full_disk_tier_is_bypassed_while_redis_serves(redis_url: str, namespace: str) -> None:
    """#10.11: a full DiskTier took a healthy Redis setup down (reads of
    keys Redis held, and every write, failed). Now its failures are
    counted, logged once, and bypassed; and a copy it could not replace is
    never served stale."""
    with full_disk() as (top, settings):
        cache = TieredCache(
            MemoryTier(maxsize=1),
            DiskTier(top / "d", **settings),
            RedisTier(redis_url),
            namespace=namespace,
        )
        with cache.session("k") as s:
            s["v"] = 1  # on disk and in Redis
        if not settings:
            fill(top)
        else:
            for i in range(400):  # fill SQLite up to its page limit
                try:
                    cache._core.tiers[0].set(f"filler{i}", b"x" * 2000)
                except TierError:
                    break
        for i in range(20):
            with cache.session(f"new{i}") as s:
                s["n"] = i  # no error: Redis took it
        with cache.session("k") as s:
            s["v"] = 2  # Redis has 2; the disk copy (1) could not be replaced
        cache.get("new0")  # pushes k out of memory (maxsize=1)
        assert cache.get("k") == {"v": 2}, "the old disk copy is confirmed, not served"
        st = cache.stats()
        assert st.tier("disk").errors >= 1
        assert st.degraded is False
        with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as check:
            assert [check.get(f"new{i}") for i in range(20)] == [{"n": i} for i in range(20)]
        cache.close()


# -- 12. one value Redis refuses is that value's error ---------------------------------


@pytest.fixture
def small_bulk_server() -> Iterator[RedisServer]:
    with RedisServer(args=["--proto-max-bulk-len", "1mb"]) as server:
        yield server


@pytest.mark.parametrize("knows_limit", [True, False], ids=["limit-known", "config-denied"])
def test_a_value_over_proto_max_bulk_len_is_its_own_error_not_an_outage(
    small_bulk_server: RedisServer, namespace: str, knows_limit: bool
) -> None:
    """#10.12: one value over proto-max-bulk-len was classed transient and
    opened the breaker: other keys failed and nothing drained. Known limit:
    refused at scope exit (ValueTooLargeError), under write-behind too.
    CONFIG denied (limit unknown): Redis drops the connection, the tier
    sees it still answers, and the write is refused (transient=False)."""
    url = small_bulk_server.url
    if not knows_limit:
        admin = redis.Redis.from_url(url)
        admin.execute_command("ACL", "SETUSER", "bot", "on", ">pw", "~*", "&*", "+@all", "-config")
        admin.close()
        url = f"redis://bot:pw@127.0.0.1:{small_bulk_server.port}/0"
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
    with cache.session("small") as s:
        s["n"] = 1  # the first contact: the tier learns the limit if it may
    big = "x" * (1 << 21)  # 2 MiB
    expected = ValueTooLargeError if knows_limit else TierError
    with pytest.raises(expected) as info, cache.session("big") as s:
        s["blob"] = big
    if not knows_limit:
        assert info.value.transient is False  # type: ignore[attr-defined]
    assert cache.stats().degraded is False, "the circuit stays closed"
    assert cache.stats().dirty == 0, "not applied: nothing waits to be written"
    for i in range(5):
        with cache.session(f"after{i}") as s:
            s["n"] = i
    behind = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, flush=WriteBehind(3600))
    for i in range(5):
        with behind.session(f"wb{i}") as s:
            s["n"] = i
    if knows_limit:
        with pytest.raises(ValueTooLargeError), behind.session("wbbig") as s:
            s["blob"] = big  # refused before it is acknowledged
        assert behind.flush() == 5
    else:
        with behind.session("wbbig") as s:
            s["blob"] = big  # acknowledged: the limit is unknown here
        with pytest.raises(TierError, match=r"refused|invalid bulk length"):
            behind.flush()  # the 5 others drain; the big one keeps its own error
        assert behind.stats().dirty == 1
        with behind.session("wbbig") as s:
            s["blob"] = "small now"  # what an operator's fix would do
        assert behind.flush() == 1
    assert behind.stats().degraded is False
    with TieredCache(MemoryTier(), RedisTier(url), namespace=namespace) as check:
        assert [check.get(f"wb{i}") for i in range(5)] == [{"n": i} for i in range(5)]
        assert check.get("big") is None
    behind.close()
    cache.close()


# -- 4. a cache made before os.fork() works in the child --------------------------------

FORKER = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from tiercache import (
        Journal, MemoryTier, RedisBus, RedisTier, TieredCache, TierError, WriteBehind,
    )

    url, namespace, journal_dir = sys.argv[1:4]

    def make(**kw):
        return TieredCache(
            MemoryTier(), RedisTier(url), namespace=namespace,
            bus=RedisBus(url, namespace=namespace), flush=WriteBehind(0.05), **kw,
        )

    def wait(pred, seconds=10):
        end = time.monotonic() + seconds
        while not pred():
            if time.monotonic() > end:
                return False
            time.sleep(0.01)
        return True

    cache = make()
    with cache.session("seen-by-child") as s:
        s["v"] = "parent"
    cache.flush()
    cache.get("seen-by-parent")  # the parent remembers it as missing
    # A thread of the parent holds a key's lock at the moment of the fork.
    holding, release = threading.Event(), threading.Event()
    def hold():
        with cache.session("held") as s:
            s["by"] = "parent thread"
            holding.set()
            release.wait(10)
    threading.Thread(target=hold, daemon=True).start()
    holding.wait(5)

    # WriteBehind + a journal: the journal is the parent's.
    wal = TieredCache(
        MemoryTier(), RedisTier(url), namespace=namespace + "-wal",
        flush=WriteBehind(3600), journal=Journal(journal_dir),
    )
    with wal.session("k") as s:
        s["v"] = 1

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        out = {}
        with cache.session("held") as s:  # the parent thread's lock is not ours
            s["by"] = "child"
        out["held_opened"] = True
        with cache.session("seen-by-parent") as s:
            s["v"] = "child"  # written by the child's own timer
        out["bus_healthy"] = wait(lambda: cache.stats().bus_healthy)
        out["child_sees_parent"] = wait(
            lambda: (cache.get("seen-by-child") or {}).get("v") == "parent again"
        )
        try:
            with wal.session("k") as s:
                s["v"] = 2
            out["journal"] = "no error"
        except TierError as exc:
            out["journal"] = str(exc)
        out["wal_value"] = dict(wal.get("k") or {})
        out["child_origin"] = cache._bus.origin
        os.write(w, json.dumps(out).encode())
        os.close(w)
        wait(lambda: False, 0.5)  # let the timer write before leaving
        cache.close()
        os._exit(0)
    os.close(w)
    # The parent: writes a key the child holds, then reads the child's.
    time.sleep(0.3)
    with cache.session("seen-by-child") as s:
        s["v"] = "parent again"
    cache.flush()
    got = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        got += chunk
    _, status = os.waitpid(pid, 0)
    child = json.loads(got or b"{}")
    release.set()
    parent_sees_child = wait(lambda: (cache.get("seen-by-parent") or {}).get("v") == "child")
    print(json.dumps({
        "child": child,
        "status": status,
        "parent_sees_child": parent_sees_child,
        "parent_origin": cache._bus.origin,
        "parent_journal_depth": wal.stats().journal_depth,
    }))
    wal.close()
    cache.close()
    """
)


@pytest.mark.timeout(60)
def test_a_cache_made_before_fork_works_in_the_child(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """#10.4: the forked child shared the parent's bus origin (each dropped
    the other's invalidations), had no listener but reported the bus
    healthy, had no write-behind timer, appended to the parent's journal,
    and could deadlock on a lock held at the fork. Now the child works on
    its own: a new origin and listener (each sees the other's writes), its
    own timer, locks free, and the parent's journal refused with an error
    that says why."""
    out = subprocess.run(
        [sys.executable, "-c", FORKER, redis_url, namespace, str(tmp_path / "journal")],
        capture_output=True,
        timeout=50,
        check=True,
    )
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    child = result["child"]
    assert result["status"] == 0
    assert child["held_opened"] is True, "a lock held by a parent thread at the fork"
    assert child["bus_healthy"] is True
    assert child["child_origin"] != result["parent_origin"]
    assert child["child_sees_parent"] is True, "the child hears the parent's invalidation"
    assert result["parent_sees_child"] is True, "the parent hears the child's, and its timer wrote"
    assert "belongs to process" in child["journal"] and "after the fork" in child["journal"]
    assert child["wal_value"] != {"v": 2}, "the refused change was not applied"
    assert result["parent_journal_depth"] == 1, "the parent's journal is untouched"
    with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as check:
        assert check.get("held") == {"by": "child"}
    with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace + "-wal") as check:
        assert check.get("k") == {"v": 1}, "the parent's journaled change, replayed at its close"


def test_a_copy_from_before_a_delete_never_matches_the_recreated_key_on_redis(
    redis_url: str, namespace: str
) -> None:
    """#10.3 on Redis: a holds a pre-delete copy; b deletes; c re-creates and
    writes as often as a's copy had been. a's copy is not confirmed by
    version, and its write merges into c's value instead of overwriting."""
    a = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, max_stale=0.05)
    b = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    c = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    a.set("k", {"who": "a"})
    with a.session("k") as s:
        s["n"] = 1
    assert b.delete("k") is True
    raw = redis.Redis.from_url(redis_url)
    assert raw.get(f"tc:{namespace}:k") is not None, "a tombstone, not a bare DEL"
    raw.close()
    for who in ("c", "c again"):
        with c.session("k") as s:
            s["who"] = who
    with a.session("k") as s:
        s["mine"] = True
    with TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace) as check:
        assert check.get("k") == {"who": "c again", "mine": True}
    for cache in (a, b, c):
        cache.close()
