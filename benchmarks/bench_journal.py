"""The journal: what acknowledging a change durably costs.

Run: ``pytest benchmarks/bench_journal.py --benchmark-only``.

* one record appended (a 300-byte envelope), :class:`tiercache.Journal`
  vs the floor, a raw ``os.write`` of the same bytes to an append-only
  file, and vs the ``diskcache.Deque`` the journal used before;
* the same with ``fsync=True`` vs a raw ``write`` + ``fsync``;
* a write-behind scope exit that journals its change, vs one that does not.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import diskcache
import pytest

from tiercache import Journal, MemoryTier, MsgpackSerializer, TieredCache, WriteBehind
from tiercache._journal import Record
from tiercache.testing import DictTier

DATA = os.urandom(300)
SER = MsgpackSerializer()


def record(i: int = 0) -> Record:
    return Record("chat:42", DATA, i, {"count": i}, ())


@pytest.mark.benchmark(group="journal append, one record")
def test_journal_append(benchmark: Any, tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", max_entries=10**9)
    rec = [record()]
    benchmark(j.append, rec, SER)
    j.close()


@pytest.mark.benchmark(group="journal append, one record")
def test_raw_os_write_append(benchmark: Any, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    frame = Journal.encode([record()], SER)[0]
    benchmark(os.write, fd, frame)
    os.close(fd)


@pytest.mark.benchmark(group="journal append, one record")
def test_diskcache_deque_append(benchmark: Any, tmp_path: Path) -> None:
    d = diskcache.Deque(directory=str(tmp_path / "deque"))
    frame = Journal.encode([record()], SER)[0]
    benchmark(d.append, frame)
    d.cache.close()


@pytest.mark.benchmark(group="journal append with fsync")
def test_journal_append_fsync(benchmark: Any, tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", max_entries=10**9, fsync=True)
    rec = [record()]
    benchmark(j.append, rec, SER)
    j.close()


@pytest.mark.benchmark(group="journal append with fsync")
def test_raw_write_fsync(benchmark: Any, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "raw.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    frame = Journal.encode([record()], SER)[0]

    def write() -> None:
        os.write(fd, frame)
        os.fsync(fd)

    benchmark(write)
    os.close(fd)


def _scope_bench(benchmark: Any, cache: TieredCache) -> None:
    cache.set("chat:1", {"count": 0, "name": "user"})
    n = [0]

    def request() -> None:
        n[0] += 1
        with cache.session("chat:1") as s:
            s["count"] = n[0]

    benchmark(request)


@pytest.mark.benchmark(group="write-behind scope exit that changed one field")
def test_scope_write_behind(benchmark: Any) -> None:
    cache = TieredCache(MemoryTier(), DictTier(), namespace="bj", flush=WriteBehind(3600))
    _scope_bench(benchmark, cache)
    cache.close()


@pytest.mark.benchmark(group="write-behind scope exit that changed one field")
def test_scope_write_behind_journaled(benchmark: Any, tmp_path: Path) -> None:
    cache = TieredCache(
        MemoryTier(),
        DictTier(),
        namespace="bj",
        flush=WriteBehind(3600),
        journal=Journal(tmp_path / "j", max_entries=10**9),
    )
    _scope_bench(benchmark, cache)
    cache.close()
