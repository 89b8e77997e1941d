"""DiskTier on a real directory: several processes, raw storage, failures."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import diskcache
import pytest

from tiercache import ConfigError, TierError
from tiercache._envelope import Envelope, encode, peek_version
from tiercache._tiers import DiskTier


def envelope(version: int, payload: bytes = b"") -> bytes:
    return encode(Envelope(1, 0, version, 0, 0, 0, payload))


def run_child(code: str, *args: str, timeout: float = 30.0) -> subprocess.Popen[str]:
    """A fresh interpreter (as ``spawn`` would start) running ``code``."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


CHILD_WRITE_READ = """
import sys
from tiercache._tiers import DiskTier
tier = DiskTier(sys.argv[1])
print(repr(tier.get("from-parent")))
tier.set("from-child", bytes(range(256)) * 200)
tier.set("small-from-child", b"hi", 60)
tier.close()
"""


def test_two_processes_see_each_others_writes(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    try:
        tier.set("from-parent", b"\x00parent")
        out = wait(run_child(CHILD_WRITE_READ, str(tmp_path)))
        assert out.strip() == repr(b"\x00parent")
        assert tier.get("from-child") == bytes(range(256)) * 200
        assert tier.get("small-from-child") == b"hi"
    finally:
        tier.close()


CHILD_CAS_INCREMENT = """
import sys
from tiercache._envelope import Envelope, encode, peek_version
from tiercache._tiers import DiskTier
tier = DiskTier(sys.argv[1])
n = int(sys.argv[2])
done = 0
while done < n:
    current = tier.get("counter")
    version = 0 if current is None else peek_version(current)
    new = encode(Envelope(1, 0, version + 1, 0, 0, 0, b""))
    if tier.compare_and_set("counter", new, None, version):
        done += 1
tier.close()
"""


def test_compare_and_set_is_atomic_across_processes(tmp_path: Path) -> None:
    """Two processes increment one versioned counter; no increment is lost."""
    DiskTier(tmp_path).close()  # create the schema before the race
    n = 150
    children = [run_child(CHILD_CAS_INCREMENT, str(tmp_path), str(n)) for _ in range(2)]
    for child in children:
        wait(child, timeout=60)
    tier = DiskTier(tmp_path)
    try:
        assert peek_version(tier.get("counter") or b"") == 2 * n
    finally:
        tier.close()


def test_values_are_stored_raw_not_pickled(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    try:
        tier.set("small", b"abc")
        tier.set("large", b"x" * 100_000)
        tier.set("bytearray", bytearray(b"ba"))  # type: ignore[arg-type]
        tier.set_many([("memoryview", memoryview(b"mv"), None)])  # type: ignore[list-item]
        tier.compare_and_set("cas", bytearray(envelope(1)), None, 0)  # type: ignore[arg-type]
        with sqlite3.connect(tmp_path / "cache.db") as con:
            modes = dict(con.execute("SELECT key, mode FROM Cache").fetchall())
        con.close()
        raw, binary = diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY
        assert modes == {
            "small": raw,
            "large": binary,
            "bytearray": raw,
            "memoryview": raw,
            "cas": raw,
        }
        assert tier.get_many(["bytearray", "memoryview"]) == [b"ba", b"mv"]
    finally:
        tier.close()


def test_a_held_lock_is_a_tier_error_not_a_hang(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, timeout=0.05)
    tier.set("k", b"v")
    other = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        assert tier.get("k") == b"v"  # WAL: readers never wait for writers
        for op in (
            lambda: tier.set("k", b"w"),
            lambda: tier.set_many([("k", b"w", None)]),
            lambda: tier.compare_and_set("k", envelope(1), None, 0),
            lambda: tier.delete("k"),
            lambda: tier.touch("k", 5),
        ):
            started = time.monotonic()
            with pytest.raises(TierError) as info:
                op()
            assert isinstance(info.value.__cause__, diskcache.Timeout | sqlite3.Error)
            assert time.monotonic() - started < 2.0
        other.execute("ROLLBACK")
        assert tier.get("k") == b"v"  # nothing half-written
    finally:
        other.close()
        tier.close()


async def test_async_reads_inline_writes_in_a_thread(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path)
    seen: dict[str, int] = {}
    cache = tier.cache
    get, set_ = cache.get, cache.set

    def spy_get(*args: object, **kwargs: object) -> object:
        seen["get"] = threading.get_ident()
        return get(*args, **kwargs)

    def spy_set(*args: object, **kwargs: object) -> object:
        seen["set"] = threading.get_ident()
        return set_(*args, **kwargs)

    cache.get, cache.set = spy_get, spy_set
    try:
        await tier.aset("k", b"v")
        assert await tier.aget("k") == b"v"
        assert await tier.aget_many(["k"]) == [b"v"]
        assert seen["get"] == threading.get_ident()
        assert seen["set"] != threading.get_ident()
        assert await asyncio.gather(tier.adelete("k"), tier.atouch("x", 1)) == [True, False]
    finally:
        del cache.get, cache.set
        await tier.aclose()


def test_accepts_an_open_cache_and_leaves_it_open(tmp_path: Path) -> None:
    with diskcache.Cache(str(tmp_path)) as cache:
        tier = DiskTier(cache)
        tier.set("k", b"v")
        tier.close()
        assert cache.get("k") == b"v"
        assert tier.directory == str(tmp_path)


def test_rejects_bad_settings(tmp_path: Path) -> None:
    with (
        diskcache.Cache(str(tmp_path / "json"), disk=diskcache.JSONDisk) as json_cache,
        pytest.raises(ConfigError, match=r"default diskcache\.Disk"),
    ):
        DiskTier(json_cache)
    with (
        diskcache.Cache(str(tmp_path / "given")) as given,
        pytest.raises(ConfigError, match="size_limit"),
    ):
        DiskTier(given, size_limit=10)
    with pytest.raises(ConfigError, match="size_limit"):
        DiskTier(tmp_path, size_limit=0)
    with pytest.raises(ConfigError, match="timeout"):
        DiskTier(tmp_path, timeout=-1)
    with pytest.raises(ConfigError, match="disk="):
        DiskTier(tmp_path, disk=diskcache.JSONDisk)
    with pytest.raises(ConfigError, match="path"):
        DiskTier(42)  # type: ignore[arg-type]
