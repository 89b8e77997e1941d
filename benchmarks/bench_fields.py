"""Writes of only what changed (issue #14): per-scope time and bytes sent to
Redis for sessions of 10, 1,000 and 100,000 top-level fields, one field
changed per scope, in one run.

Run: ``pytest benchmarks/bench_fields.py --benchmark-only -s`` (``-s``
prints the summary as Markdown rows; every number is also in each result's
``extra_info``).

**Variants**, each on the same redis-server:

* ``fields``: ``RedisTier(url)``, the default: a value of 8 KiB or more is a
  hash of its fields and a scope sends only the changed ones;
* ``fields+disk``: the same with a ``DiskTier`` between memory and Redis:
  the disk tier stores whole values (it gets the same envelope bytes), so
  this row is what choosing that layout for disk costs;
* ``whole``: ``RedisTier(url, fields=None)``: every write is the whole
  value (the layout before #14);
* ``json-set``: redis-py ``GET`` + ``json.loads``, change one field,
  ``json.dumps`` + ``SET``: what aiogram's ``RedisStorage`` does with a
  state's data.

The tiercache variants hold the session in memory (a hot session: the scope
is a memory hit, write-through), with ``bus=None, max_stale=None`` so only
the write is measured. A scope increments one field (``s[k] += 1``), a
different one each time. Bytes are what the server received
(``INFO stats`` ``total_net_input_bytes``) over 20 scopes, untimed,
divided by 20.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tiercache import DiskTier, MemoryTier, RedisTier, TieredCache

SIZES = (10, 1_000, 100_000)
VARIANTS = ("fields", "fields+disk", "whole", "json-set")
_rows: dict[tuple[int, str], dict[str, float]] = {}


def session(n: int) -> dict[str, Any]:
    return {f"field{i}": i for i in range(n)}


def runner(url: str, variant: str, n: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one scope, cleanup) for a variant."""
    key = f"bench-fields-{uuid.uuid4().hex[:8]}"
    fields = itertools.cycle([f"field{i}" for i in range(n)])
    if variant == "json-set":
        r = redis.Redis.from_url(url)
        r.set(key, json.dumps(session(n)))

        def scope() -> None:
            data = json.loads(r.get(key))  # type: ignore[arg-type]
            f = next(fields)
            data[f] += 1
            r.set(key, json.dumps(data))

        return scope, r.close
    tier = RedisTier(url, fields=None) if variant == "whole" else RedisTier(url)
    tiers: list[Any] = [MemoryTier(), tier]
    tmp = tempfile.TemporaryDirectory()
    if variant == "fields+disk":
        tiers.insert(1, DiskTier(tmp.name))
    cache = TieredCache(*tiers, namespace=key, bus=None, max_stale=None)
    cache.set("s", session(n))
    with cache.session("s") as s:  # the first write converts to the layout
        s["field0"] += 1

    def cscope() -> None:
        with cache.session("s") as s:
            s[next(fields)] += 1

    def cleanup() -> None:
        cache.close()
        tmp.cleanup()

    return cscope, cleanup


@pytest.fixture(scope="module")
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_field_changed(
    benchmark: Any, redis_url: str, r: redis.Redis, variant: str, n: int
) -> None:
    scope, cleanup = runner(redis_url, variant, n)
    try:
        before = int(r.info("stats")["total_net_input_bytes"])
        for _ in range(20):
            scope()
        sent = (int(r.info("stats")["total_net_input_bytes"]) - before) / 20
        rounds = 200 if n <= 1_000 else 10
        benchmark.pedantic(scope, rounds=rounds, iterations=1, warmup_rounds=2)
    finally:
        cleanup()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(bytes_per_scope=sent, median_us=median * 1e6)
    _rows[(n, variant)] = {"bytes": sent, "median_us": median * 1e6}


def teardown_module() -> None:
    if _wal:
        print("\n| journaled write-behind, 100,000 fields | median | journal bytes / scope |")
        print("|---|---:|---:|")
        for variant, (us, per) in _wal.items():
            print(f"| {variant} | {us:,.0f} µs | {per:,.0f} |")
    if _disk:
        print("\n| disk, 100,000 fields | median |")
        print("|---|---:|")
        for op, us in _disk.items():
            print(f"| {op} | {us:,.0f} µs |")
    if _reads:
        print("\n| fields | read | median |")
        print("|---:|---|---:|")
        for (n, variant), us in sorted(_reads.items()):
            print(f"| {n:,} | {variant} | {us:,.0f} µs |")
    if not _rows:
        return
    print("\n| fields | variant | median per scope | bytes sent per scope | time vs json-set |")
    print("|---:|---|---:|---:|---:|")
    for n in SIZES:
        base = _rows.get((n, "json-set"))
        for variant in VARIANTS:
            row = _rows.get((n, variant))
            if row is None:
                continue
            ratio = f"{row['median_us'] / base['median_us']:.2f}x" if base else "-"
            print(
                f"| {n:,} | {variant} | {row['median_us']:,.0f} µs | "
                f"{row['bytes']:,.0f} | {ratio} |"
            )


READS = ("fields", "whole", "raw-get")


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("variant", READS)
def test_cold_read(benchmark: Any, redis_url: str, variant: str, n: int) -> None:
    """One read of the stored session from Redis (a memory miss): the
    fields layout's ``HGETALL`` and reassembly against the string's ``GET``
    (through the tier, and raw redis-py with nothing decoded)."""
    key = f"bench-read-{uuid.uuid4().hex[:8]}"
    writer = TieredCache(
        MemoryTier(),
        RedisTier(redis_url, fields=0 if variant == "fields" else None),
        namespace=key,
        bus=None,
        max_stale=None,
    )
    writer.set("s", session(n))
    with writer.session("s") as s:
        s["field0"] += 1
    writer.close()
    tier = RedisTier(redis_url)
    skey = f"{key}:s"
    r = redis.Redis.from_url(redis_url)
    try:
        if variant == "raw-get":
            r.set(
                "raw-" + skey, r.get("tc:" + skey) if n <= 10 else b"x" * len(tier.get(skey) or b"")
            )
            benchmark.pedantic(lambda: r.get("raw-" + skey), rounds=20 if n > 1000 else 200)
        else:
            assert tier.get(skey) is not None
            benchmark.pedantic(lambda: tier.get(skey), rounds=20 if n > 1000 else 200)
    finally:
        tier.close()
        r.close()
    median = benchmark.stats.stats.median
    _reads[(n, variant)] = median * 1e6


_reads: dict[tuple[int, str], float] = {}


def test_batch_read_of_small_sessions(benchmark: Any, redis_url: str) -> None:
    """``get_many`` of 50 small (string) entries: pipelined GETs (a hash
    must be told from a missing key, which MGET cannot) against one MGET."""
    key = f"bench-many-{uuid.uuid4().hex[:8]}"
    writer = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=key, bus=None)
    for i in range(50):
        writer.set(f"u{i}", {"state": "menu", "n": i})
    writer.close()
    tier = RedisTier(redis_url)
    r = redis.Redis.from_url(redis_url)
    skeys = [f"{key}:u{i}" for i in range(50)]
    try:
        benchmark(lambda: tier.get_many(skeys))
        tier_median = benchmark.stats.stats.median
        raw = [f"tc:{k}" for k in skeys]
        import statistics
        import time as _t

        times = []
        for _ in range(300):
            t = _t.perf_counter()
            r.mget(raw)
            times.append(_t.perf_counter() - t)
        mget = statistics.median(times)
    finally:
        tier.close()
        r.close()
    benchmark.extra_info.update(mget_us=mget * 1e6, ratio=tier_median / mget)
    print(
        f"\nget_many(50): {tier_median * 1e6:.0f} µs; raw MGET {mget * 1e6:.0f} µs; "
        f"{tier_median / mget:.2f}x"
    )


DISK = ("whole-set", "block-set", "whole-get", "blocks-get")


@pytest.mark.parametrize("op", DISK)
def test_disk_layouts(benchmark: Any, op: str, tmp_path: Any) -> None:
    """How the disk tier would fare with blocks (raw diskcache, 100,000
    fields, the fields layout's ~1,500 blocks): writing one changed block
    instead of the whole value, against reading every block instead of one
    value. This is what chose whole values for the disk tier."""
    import diskcache

    from tiercache import MsgpackSerializer
    from tiercache._fields import Parts

    value = session(100_000)
    ser = MsgpackSerializer()
    parts = Parts.build(value, ser.dumps)
    whole = parts.payload()
    blocks = [parts.block(i) for i in range(parts.blocks)]
    dc = diskcache.Cache(str(tmp_path))
    dc.set("whole", whole)
    for i, b in enumerate(blocks):
        dc.set(("b", i), b)
    try:
        if op == "whole-set":
            benchmark.pedantic(lambda: dc.set("whole", whole), rounds=20)
        elif op == "block-set":
            benchmark.pedantic(lambda: dc.set(("b", 7), blocks[7]), rounds=200)
        elif op == "whole-get":
            benchmark.pedantic(lambda: dc.get("whole"), rounds=20)
        else:
            benchmark.pedantic(lambda: [dc.get(("b", i)) for i in range(len(blocks))], rounds=10)
    finally:
        dc.close()
    _disk[op] = benchmark.stats.stats.median * 1e6
    benchmark.extra_info.update(blocks=len(blocks), value_bytes=len(whole))


_disk: dict[str, float] = {}


@pytest.mark.parametrize("variant", ["fields", "whole"])
def test_journaled_write_behind_scope(
    benchmark: Any, redis_url: str, variant: str, tmp_path: Any
) -> None:
    """``WriteBehind`` + ``Journal`` (every change journaled before the
    scope returns) on a 100,000-field session, one field changed: the
    journal takes the changed fields (``fields``) or the whole value."""
    from tiercache import Journal, WriteBehind

    key = f"bench-wal-{uuid.uuid4().hex[:8]}"
    tier = RedisTier(redis_url) if variant == "fields" else RedisTier(redis_url, fields=None)
    cache = TieredCache(
        MemoryTier(),
        tier,
        namespace=key,
        bus=None,
        max_stale=None,
        flush=WriteBehind(3600),
        journal=Journal(tmp_path / "j", max_entries=10**6),
    )
    cache.set("s", session(100_000))
    cache.flush()
    with cache.session("s") as s:
        s["field0"] += 1
    cache.flush()
    fields = itertools.cycle([f"field{i}" for i in range(100_000)])

    def scope() -> None:
        with cache.session("s") as s:
            s[next(fields)] += 1

    scope()  # the chain's whole record
    before = sum(p.stat().st_size for p in (tmp_path / "j").glob("*.tcj"))
    for _ in range(20):
        scope()
    per = (sum(p.stat().st_size for p in (tmp_path / "j").glob("*.tcj")) - before) / 20
    benchmark.pedantic(scope, rounds=20, iterations=1)
    cache.close()
    _wal[variant] = (benchmark.stats.stats.median * 1e6, per)
    benchmark.extra_info.update(journal_bytes_per_scope=per)


_wal: dict[str, tuple[float, float]] = {}
