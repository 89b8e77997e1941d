"""The fields layout on a real redis-server: a large dict value is a hash of
its top-level fields, a write sends only the changed ones, and everything a
string entry promises still holds (reads, corrupt data, old entries, merges,
expiry, deletes, async)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiercache import Counter, MemoryTier, MsgpackSerializer, RedisTier, TieredCache
from tiercache._envelope import decode

pytestmark = pytest.mark.redis


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def make(
    url: str, namespace: str, *, options: dict[str, Any] | None = None, **tier: Any
) -> TieredCache:
    """A cache over memory and ``RedisTier(url, **tier)``; ``options`` go to
    the cache. No bus and no max_stale: each test drives its processes."""
    return TieredCache(
        MemoryTier(),
        RedisTier(url, **tier),
        namespace=namespace,
        **{"bus": None, "max_stale": None, **(options or {})},
    )


def fresh(url: str, namespace: str, key: str) -> Any:
    cache = make(url, namespace)
    try:
        return cache.get(key)
    finally:
        cache.close()


def opened(raw: bytes | None) -> Any:
    """The value of envelope bytes a tier returned."""
    assert raw is not None
    return MsgpackSerializer().loads(decode(raw).payload)


def net_in(r: redis.Redis) -> int:
    return int(r.info("stats")["total_net_input_bytes"])


def test_a_one_field_change_of_a_huge_session_sends_under_one_percent(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    value = {f"field{i}": {"n": i, "tag": "x" * 8} for i in range(100_000)}
    full = len(MsgpackSerializer().dumps(value))
    cache = make(redis_url, namespace)
    cache.set("big", value)
    with cache.session("big") as s:  # the first write stores it as fields
        s["field0"]["n"] = -1
    assert r.type(f"tc:{namespace}:big") == b"hash"
    sent = []
    for i in range(1, 6):
        before = net_in(r)
        with cache.session("big") as s:
            s[f"field{i}"]["n"] += 1000
        sent.append(net_in(r) - before)
    cache.close()
    assert max(sent) < full / 100, (sent, full)
    expected = dict(value)
    expected["field0"] = {"n": -1, "tag": "x" * 8}
    for i in range(1, 6):
        expected[f"field{i}"] = {"n": i + 1000, "tag": "x" * 8}
    assert fresh(redis_url, namespace, "big") == expected


def test_small_values_stay_strings_and_large_ones_become_hashes(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    cache = make(redis_url, namespace)
    with cache.session("small") as s:
        s.update({f"k{i}": i for i in range(10)})
    with cache.session("small") as s:
        s["k0"] = -1
    with cache.session("large") as s:
        s.update({f"k{i}": "v" * 100 for i in range(200)})
    with cache.session("large") as s:
        s["k0"] = "changed"
    cache.close()
    assert r.type(f"tc:{namespace}:small") == b"string"
    assert r.type(f"tc:{namespace}:large") == b"hash"
    assert fresh(redis_url, namespace, "small") == {"k0": -1, **{f"k{i}": i for i in range(1, 10)}}
    large = fresh(redis_url, namespace, "large")
    assert large["k0"] == "changed" and len(large) == 200


def test_an_entry_in_the_string_layout_is_read_and_converted_when_written(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    old = make(redis_url, namespace, fields=None)  # as before the layout existed
    old.set("u", {f"k{i}": "v" * 100 for i in range(200)})
    old.close()
    assert r.type(f"tc:{namespace}:u") == b"string"
    cache = make(redis_url, namespace)
    with cache.session("u") as s:
        assert s["k1"] == "v" * 100
        s["k1"] = "new"
    cache.close()
    assert r.type(f"tc:{namespace}:u") == b"hash"
    # A process configured never to write hashes still reads one.
    assert fresh(redis_url, namespace, "u")["k1"] == "new"
    reader = make(redis_url, namespace, fields=None)
    assert reader.get("u")["k1"] == "new"
    reader.close()
    tier = RedisTier(redis_url, fields=None)
    got, nope = tier.get_many([f"{namespace}:u", f"{namespace}:nope"])
    tier.close()
    assert nope is None and opened(got)["k1"] == "new"


def test_a_corrupt_field_makes_the_whole_entry_a_counted_miss_and_quarantined(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    cache = make(redis_url, namespace)
    cache.set("u", {f"k{i}": "v" * 100 for i in range(200)})
    with cache.session("u") as s:
        s["k0"] = "x"
    cache.close()
    skey = f"tc:{namespace}:u"
    name = sorted(r.hkeys(skey))[-1]  # a block of fields (b"" is the head)
    good = r.hget(skey, name)
    assert name and good is not None
    r.hset(skey, name, good[:-1] + b"!")  # one byte of one block
    reader = make(redis_url, namespace)
    assert reader.get("u") is None, "never half a session"
    st_ = reader.stats()
    assert st_.corrupt_entries == 1 and st_.quarantined == 1
    assert r.exists(skey) == 0
    kept = r.get(f"tc:{namespace}\x00quarantine\x00u")
    assert kept is not None and b"v" * 100 in kept, "the bytes read are kept aside"
    with reader.session("u") as s:  # the key starts again, as any corrupt one
        s["fresh"] = True
    reader.close()
    assert fresh(redis_url, namespace, "u") == {"fresh": True}


def test_processes_changing_different_fields_of_a_hash_merge(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    bot, app = make(redis_url, namespace), make(redis_url, namespace)
    bot.set("u", {"n": Counter(), **{f"k{i}": "v" * 100 for i in range(200)}})
    with bot.session("u") as s:
        s["k0"] = "bot0"  # now a hash
    app.get("u")
    for i in range(3):
        with bot.session("u") as s:
            s["n"] += 1
            s[f"bot{i}"] = i
        with app.session("u") as s:  # stale each time: loses, merges
            s["n"] += 1
            s[f"app{i}"] = i
            del s[f"k{i + 10}"]
    bot.close()
    app.close()
    assert r.type(f"tc:{namespace}:u") == b"hash", "a merge writes fields too"
    assert app.stats().merges == 3
    value = fresh(redis_url, namespace, "u")
    assert value["n"] == 6
    assert all(value[f"bot{i}"] == i and value[f"app{i}"] == i for i in range(3))
    assert not any(f"k{i + 10}" in value for i in range(3))
    assert len(value) == 1 + 200 - 3 + 6


def test_expiry_and_deletes_of_a_hash(redis_url: str, namespace: str, r: redis.Redis) -> None:
    cache = make(redis_url, namespace)
    big = {f"k{i}": "v" * 100 for i in range(200)}
    cache.set("t", big, ttl=60)
    with cache.session("t") as s:
        s["k0"] = "x"
    skey = f"tc:{namespace}:t"
    assert r.type(skey) == b"hash" and 0 < r.pttl(skey) <= 60_000
    cache.set("p", big)
    with cache.session("p") as s:
        s["k0"] = "x"
    assert r.type(f"tc:{namespace}:p") == b"hash" and r.pttl(f"tc:{namespace}:p") == -1
    assert cache.delete("t") is True
    cache.close()
    assert fresh(redis_url, namespace, "t") is None
    assert fresh(redis_url, namespace, "p")["k0"] == "x"


def test_batch_reads_mix_layouts(redis_url: str, namespace: str) -> None:
    cache = make(redis_url, namespace)
    cache.set("small", {"a": 1})
    cache.set("large", {f"k{i}": "v" * 100 for i in range(200)})
    with cache.session("large") as s:
        s["k0"] = "x"
    cache.close()
    tier = RedisTier(redis_url)
    small, large, missing = tier.get_many([f"{namespace}:{k}" for k in ("small", "large", "no")])
    tier.close()
    assert opened(small) == {"a": 1} and opened(large)["k0"] == "x" and missing is None


def test_async_scopes_write_and_read_fields(redis_url: str, namespace: str, r: redis.Redis) -> None:
    async def main() -> Any:
        cache = make(redis_url, namespace)
        await cache.aset("u", {f"k{i}": "v" * 100 for i in range(200)})
        for i in range(3):
            async with cache.session("u") as s:
                s[f"k{i}"] = i
        await cache.aclose()
        reader = make(redis_url, namespace)
        tier = RedisTier(redis_url)
        try:
            return await reader.aget("u"), (await tier.aget_many([f"{namespace}:u"]))[0]
        finally:
            await reader.aclose()
            await tier.aclose()

    one, many = asyncio.run(main())
    assert r.type(f"tc:{namespace}:u") == b"hash"
    assert one == opened(many) and [one[f"k{i}"] for i in range(3)] == [0, 1, 2]


_examples = iter(range(10**6))
ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "del", "nest"]),
        st.integers(0, 30),
        st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, min_size=1, max_size=4))
def test_any_sequence_of_scopes_reads_back_exactly(redis_url: str, steps: list[Any]) -> None:
    """Every dict value stored as fields (fields=0): whatever scopes do,
    a fresh process reads back what the writer holds."""
    namespace = f"fields-prop-{next(_examples)}"
    model: dict[str, Any] = {f"k{i}": i for i in range(20)}
    cache = make(redis_url, namespace, fields=0)
    cache.set("u", model)
    for scope in steps:
        with cache.session("u") as s:
            for op, i, v in scope:
                k = f"k{i}"
                if op == "set":
                    s[k] = v
                    model[k] = v
                elif op == "del":
                    s.pop(k, None)
                    model.pop(k, None)
                else:
                    s.setdefault("nested", {})[k] = v
                    model.setdefault("nested", {})[k] = v
        assert fresh(redis_url, namespace, "u") == model
    cache.close()


# -- the other promises, with the new layout -------------------------------------------

BIG = {f"k{i}": "v" * 100 for i in range(200)}


def as_hash(cache: TieredCache, key: str) -> None:
    """Store ``BIG`` under ``key`` and write it once more: a hash now."""
    cache.set(key, dict(BIG))
    with cache.session(key) as s:
        s["k0"] = "v" * 100 + "!"
    with cache.session(key) as s:
        s["k0"] = "v" * 100


def test_a_rolled_back_scope_leaves_nothing_in_the_next_write(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    """The parts kept for the next write must not hold a change that was
    rolled back: neither a handler's exception nor a write the store turned
    down."""
    cache = make(redis_url, namespace)
    as_hash(cache, "u")
    with pytest.raises(RuntimeError), cache.session("u") as s:
        s["k1"] = "rolled back"
        raise RuntimeError("handler failed")
    with cache.session("u") as s:
        s["k2"] = "kept"
    # A conflict at exit: the change was not applied, and is not written later.
    other = make(redis_url, namespace)
    with other.session("u") as s:
        s["k3"] = "theirs"
    from tiercache import ConflictError

    with pytest.raises(ConflictError), cache.session("u") as s:
        s["k3"] = "ours, refused"
    with cache.session("u") as s:
        s["k4"] = "after"
    cache.close()
    other.close()
    value = fresh(redis_url, namespace, "u")
    assert value["k1"] == "v" * 100 and value["k2"] == "kept"
    assert value["k3"] == "theirs" and value["k4"] == "after"
    assert r.type(f"tc:{namespace}:u") == b"hash"


def test_write_behind_coalesces_scopes_into_one_fields_write(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    from tiercache import WriteBehind

    cache = make(redis_url, namespace, options={"flush": WriteBehind(60)})
    as_hash(cache, "u")
    cache.flush()
    before = net_in(r)
    for i in range(1, 4):
        with cache.session("u") as s:
            s[f"k{i}"] = i
            if i < 3:
                s.pop(f"k{i + 100}")
    assert cache.flush() == 1, "three scopes, one write"
    sent = net_in(r) - before
    cache.close()
    full = len(MsgpackSerializer().dumps(BIG))
    assert sent < full / 2, (sent, full)  # the blocks of 5 fields, of 16
    value = fresh(redis_url, namespace, "u")
    assert [value[f"k{i}"] for i in range(1, 4)] == [1, 2, 3]
    assert len(value) == 198


def test_a_migrated_hash_is_written_back_whole_in_the_new_schema(
    redis_url: str, namespace: str
) -> None:
    from tiercache import Schema

    old = make(redis_url, namespace)
    as_hash(old, "u")
    old.close()
    schema = Schema(1, {0: lambda v: {**v, "migrated": True}})
    cache = make(redis_url, namespace, options={"schema": schema})
    with cache.session("u") as s:
        assert s["migrated"] is True
        s["k1"] = "new"
    cache.close()
    reader = TieredCache(
        MemoryTier(), RedisTier(redis_url), namespace=namespace, bus=None, schema=schema
    )
    value = reader.get("u")
    reader.close()
    assert value["migrated"] is True and value["k1"] == "new" and len(value) == 201


def test_an_outage_journals_and_replays_a_hash_entry(
    redis_server: Any, namespace: str, tmp_path: Any
) -> None:
    from tiercache import Journal

    url = redis_server.url
    cache = make(url, namespace, options={"journal": Journal(tmp_path / "j")})
    as_hash(cache, "u")
    redis_server.stop()
    for i in range(1, 4):
        with cache.session("u") as s:  # acknowledged into the journal
            s[f"k{i}"] = f"offline {i}"
    redis_server.start()
    import time

    deadline = time.monotonic() + 20
    while cache.stats().journal_depth and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            cache.flush()
        except Exception:
            continue
    assert cache.stats().journal_depth == 0
    with cache.session("u") as s:
        s["k9"] = "back"
    cache.close()
    value = fresh(url, namespace, "u")
    assert [value[f"k{i}"] for i in (1, 2, 3, 9)] == ["offline 1", "offline 2", "offline 3", "back"]


def test_another_process_hears_of_a_fields_write_on_the_default_bus(
    redis_url: str, namespace: str
) -> None:
    import time

    writer = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    reader = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    as_hash(writer, "u")
    assert reader.get("u")["k1"] == "v" * 100  # held in the reader's memory
    with writer.session("u") as s:
        s["k1"] = "changed"
    deadline = time.monotonic() + 5
    while reader.get("u")["k1"] != "changed" and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert reader.get("u")["k1"] == "changed"
        assert reader.stats().invalidations >= 1
    finally:
        writer.close()
        reader.close()


class Boom(Exception):
    pass


scopes = st.lists(
    st.tuples(
        st.sampled_from(["commit", "raise", "flush", "other"]),
        st.lists(st.tuples(st.integers(0, 25), st.integers() | st.none()), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=scopes, mode=st.sampled_from(["through", "behind", "wal"]))
def test_commits_rollbacks_flushes_and_other_writers_read_back_exactly(
    redis_url: str, plan: list[Any], mode: str, tmp_path_factory: Any
) -> None:
    """Fields layout for every dict (fields=0), write-through, write-behind
    or write-behind with a journal (every change journaled, as deltas after
    the first record): scopes that commit, scopes that raise (rolled back),
    explicit flushes, another process's writes of other fields, and (with
    the journal) a process that stops without flushing and is started
    again. After each flush (write-through: each scope) a fresh reader sees
    exactly the model. None as a value means delete the field."""
    from tiercache import Journal, WriteBehind, WriteThrough

    namespace = f"fields-plan-{next(_examples)}"
    model: dict[str, Any] = {f"k{i}": i for i in range(26)}
    directory = tmp_path_factory.mktemp("wal")

    def open_cache() -> TieredCache:
        flush = WriteThrough() if mode == "through" else WriteBehind(3600)
        journal = Journal(directory) if mode == "wal" else None
        return make(redis_url, namespace, options={"flush": flush, "journal": journal}, fields=0)

    cache = open_cache()
    other = make(redis_url, namespace, fields=0)
    cache.set("u", dict(model))
    cache.flush()
    for n, (kind, changes) in enumerate(plan):
        if kind == "flush":
            if mode == "wal" and n % 2:
                cache._journal.close()  # type: ignore[union-attr]  # stops, no flush
                cache = open_cache()  # replays the journal
            else:
                cache.flush()
            assert fresh(redis_url, namespace, "u") == model
            continue
        if kind == "other":
            cache.flush()  # theirs lands on ours; their fields are their own
            with other.session("u") as s:
                s[f"other{n}"] = n
            model[f"other{n}"] = n
            continue
        try:
            with cache.session("u") as s:
                for i, v in changes:
                    if v is None:
                        s.pop(f"k{i}", None)
                    else:
                        s[f"k{i}"] = v
                if kind == "raise":
                    raise Boom
        except Boom:
            continue
        for i, v in changes:
            if v is None:
                model.pop(f"k{i}", None)
            else:
                model[f"k{i}"] = v
        if mode == "through":
            assert fresh(redis_url, namespace, "u") == model
    cache.flush()
    assert fresh(redis_url, namespace, "u") == model
    cache.close()
    other.close()


def journal_bytes(directory: Any) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.tcj"))


def test_the_journal_records_only_the_changed_fields_and_replays_exactly(
    redis_url: str, namespace: str, tmp_path: Any
) -> None:
    """Write-behind with a journal (every change journaled before its scope
    returns): after one whole record of a value kept as fields, a record
    holds only what changed; a process that stopped without flushing has
    them put back together and replayed by the next one."""
    from tiercache import Journal, WriteBehind

    directory = tmp_path / "wal"
    value = {f"field{i}": {"n": i} for i in range(20_000)}
    full = len(MsgpackSerializer().dumps(value))

    def open_cache() -> TieredCache:
        journal = Journal(directory, max_entries=10_000)
        return make(redis_url, namespace, options={"flush": WriteBehind(3600), "journal": journal})

    first = open_cache()
    first.set("big", value)
    first.flush()
    with first.session("big") as s:  # stored as fields from here on
        s["field0"]["n"] = -1
    first.flush()
    before = journal_bytes(directory)
    for i in range(1, 41):
        with first.session("big") as s:
            s[f"field{i}"]["n"] += 1000
            if i % 10 == 0:
                del s[f"field{i + 5000}"]
                s[f"new{i}"] = [i]
    grown = journal_bytes(directory) - before
    assert first.stats().journal_depth == 40
    # One whole record, then 39 small ones (not 40 whole values).
    assert grown < full + 39 * full / 100, (grown, full)
    first._journal.close()  # type: ignore[union-attr]  # "dies" without a flush
    second = open_cache()  # replays the journal on start
    assert second.stats().journal_depth == 0
    second.close()
    expected = dict(value)
    expected["field0"] = {"n": -1}
    for i in range(1, 41):
        expected[f"field{i}"] = {"n": i + 1000}
        if i % 10 == 0:
            del expected[f"field{i + 5000}"]
            expected[f"new{i}"] = [i]
    assert fresh(redis_url, namespace, "big") == expected


@pytest.mark.parametrize(
    "damage",
    ["stray field", "no head", "foreign hash", "block missing", "head of another value"],
)
def test_a_damaged_hash_is_a_counted_quarantined_miss(
    redis_url: str, namespace: str, r: redis.Redis, damage: str
) -> None:
    cache = make(redis_url, namespace)
    as_hash(cache, "u")
    as_hash(cache, "other")
    with cache.session("other") as s:
        s["k1"] = "another value"
    cache.close()
    skey = f"tc:{namespace}:u"
    blocks = sorted(k for k in r.hkeys(skey) if k)
    if damage == "stray field":
        r.hset(skey, b"stray", b"\x01")
    elif damage == "no head":
        r.hdel(skey, b"")
    elif damage == "foreign hash":
        r.delete(skey)
        r.hset(skey, mapping={b"name": b"alice", b"age": b"3"})
    elif damage == "block missing":
        r.hdel(skey, blocks[0])
    else:
        head = r.hget(f"tc:{namespace}:other", b"")
        assert head is not None
        r.hset(skey, b"", head)
    reader = make(redis_url, namespace)
    assert reader.get("u") is None, "never a made-up or half session"
    st_ = reader.stats()
    assert st_.corrupt_entries == 1 and st_.quarantined == 1
    assert r.exists(skey) == 0
    assert reader.get("other") is not None, "other keys are untouched"
    reader.close()


def test_a_hash_under_another_type_of_key_is_refused_not_guessed(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    from tiercache import TierError

    r.rpush(f"tc:{namespace}:l", b"x")
    cache = make(redis_url, namespace)
    as_hash(cache, "u")  # this tier now reads through the script
    with pytest.raises(TierError, match="WRONGTYPE"):
        cache.get("l")
    cache.close()


def test_a_leased_scope_writes_over_a_hash_and_the_next_write_converts_back(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    from tiercache import Lease

    cache = make(redis_url, namespace)
    as_hash(cache, "u")
    with cache.session("u", lease=Lease(5)) as s:
        s["k1"] = "leased"
    assert r.type(f"tc:{namespace}:u") == b"string", "a fenced write is one string"
    with cache.session("u") as s:
        s["k2"] = "after"
    cache.close()
    assert r.type(f"tc:{namespace}:u") == b"hash"
    value = fresh(redis_url, namespace, "u")
    assert value["k1"] == "leased" and value["k2"] == "after" and len(value) == 200


def test_keys_of_any_type_and_sliding_expiry_with_fields(
    redis_url: str, namespace: str, r: redis.Redis
) -> None:
    from tiercache import Expiry

    cache = make(redis_url, namespace, options={"ttl": Expiry(60, sliding=True)})
    value: dict[Any, Any] = dict.fromkeys(range(100), "v" * 100)
    value.update({(1, "t"): {"nested": [1, 2]}, b"raw": b"\x00", "s": {1, 2, 3}})
    cache.set("u", value)
    with cache.session("u") as s:
        s[5] = "changed"
        s[(1, "t")]["nested"].append(3)
    skey = f"tc:{namespace}:u"
    assert r.type(skey) == b"hash" and 0 < r.pttl(skey) <= 60_000
    r.pexpire(skey, 5_000)
    assert cache.touch("u") is True  # sliding: the hash's TTL is renewed
    assert r.pttl(skey) > 50_000
    cache.close()
    expected = dict(value)
    expected[5] = "changed"
    expected[(1, "t")] = {"nested": [1, 2, 3]}
    assert fresh(redis_url, namespace, "u") == expected


def test_async_scopes_that_race_on_a_hash_merge(redis_url: str, namespace: str) -> None:
    async def main() -> Any:
        bot, app = make(redis_url, namespace), make(redis_url, namespace)
        await bot.aset("u", dict(BIG))
        async with bot.session("u") as s:
            s["k0"] = "hash now"
        await app.aget("u")
        async with bot.session("u") as s:
            s["k1"] = "bot"
        async with app.session("u") as s:  # stale: merges over the hash
            s["k2"] = "app"
        merges = app.stats().merges
        await bot.aclose()
        await app.aclose()
        return merges

    assert asyncio.run(main()) == 1
    value = fresh(redis_url, namespace, "u")
    assert (value["k0"], value["k1"], value["k2"]) == ("hash now", "bot", "app")
