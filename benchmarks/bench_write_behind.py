"""A mutating write-behind scope on sessions of 10, 1,000 and 100,000 fields.

Run: ``pytest benchmarks/bench_write_behind.py --benchmark-only``.

Memory + disk, ``WriteBehind(3600)`` (the timer never runs during a
round), one field changed per scope:

* ``exit``: one scope; what the handler waits for. Issue #16: the exit
  serializes only the changed field, not the whole session;
* ``100 scopes + flush``: a hot session changed 100 times between two
  flushes, and the flush; the whole value is serialized once;
* baselines: serializing the session once with msgpack (what every exit
  used to cost), and a plain dict update plus a call.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest

from tiercache import DiskTier, MemoryTier, TieredCache, WriteBehind

SIZES = [10, 1_000, 100_000]


def session_of(n: int) -> dict[str, Any]:
    return {f"field_{i}": i for i in range(n)}


def make_cache(tmp_path: Path, n: int) -> TieredCache:
    cache = TieredCache(
        MemoryTier(),
        DiskTier(tmp_path / "disk"),
        namespace=uuid.uuid4().hex[:6],
        flush=WriteBehind(3600),
    )
    cache.set("s", session_of(n))
    return cache


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="write-behind scope, one field changed")
def test_write_behind_exit(benchmark: Any, tmp_path: Path, n: int) -> None:
    cache = make_cache(tmp_path, n)
    session = cache.session
    counter = iter(range(10**9))

    def request() -> None:
        with session("s") as s:
            s["field_1"] = next(counter)

    benchmark(request)
    cache.flush()
    assert (
        TieredCache(MemoryTier(), DiskTier(tmp_path / "disk"), namespace=cache.namespace).get("s")[
            "field_1"
        ]
        == next(counter) - 1
    )
    cache.close()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="write-behind: 100 scopes + flush")
def test_write_behind_hundred_scopes_and_flush(benchmark: Any, tmp_path: Path, n: int) -> None:
    cache = make_cache(tmp_path, n)
    session = cache.session

    def burst() -> None:
        for i in range(100):
            with session("s") as s:
                s["field_1"] = i
        cache.flush()

    benchmark.pedantic(burst, rounds=5, warmup_rounds=1)
    cache.close()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.benchmark(group="write-behind scope, one field changed")
def test_baseline_msgpack_dumps_of_the_session(benchmark: Any, n: int) -> None:
    value = session_of(n)
    benchmark(msgpack.packb, value)


@pytest.mark.benchmark(group="write-behind scope, one field changed")
def test_baseline_plain_dict_update_plus_call(benchmark: Any) -> None:
    value = session_of(10)
    counter = iter(range(10**9))

    def request() -> None:
        value["field_1"] = next(counter)

    benchmark(request)
