"""Regressions from hostile testing (issue #10), at unit level: two caches over
one store stand for two processes. Each test names the item it proves; the
ones that need real processes or a real Redis are in
tests/integration/test_hostile.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache import (
    ConflictError,
    Journal,
    MemoryTier,
    Schema,
    TieredCache,
    keep_ours,
)
from tiercache.testing import DictTier, FakeClock

from .test_journal import Switchable


@pytest.fixture
def store(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def proc(store: DictTier, namespace: str, clock: FakeClock) -> Iterator[Callable[..., TieredCache]]:
    """A "process": its own memory tier over the shared store."""
    made: list[TieredCache] = []

    def factory(*tiers: Any, **kw: Any) -> TieredCache:
        cache = TieredCache(
            MemoryTier(), *(tiers or (store,)), namespace=namespace, clock=clock, **kw
        )
        made.append(cache)
        return cache

    yield factory
    clock.advance(60)  # past every breaker backoff
    for c in made:
        for t in c._core.tiers:
            getattr(t, "_tier", t).down = False
        c.close()


def read(store: DictTier, namespace: str, key: str) -> Any:
    with TieredCache(MemoryTier(), store, namespace=namespace) as cache:
        return cache.get(key)


# -- 1. a field both sides changed is a conflict, whatever the values -------------------


def test_two_increments_to_the_same_value_are_a_conflict_not_an_agreement(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.1: both take n from 5 to 6 on the same version. Storing 6 loses an
    increment; the second writer must hear about it."""
    a, b = proc(), proc()
    a.set("k", {"n": 5, "other": 0})
    b.get("k")  # b holds version 1 too
    with a.session("k") as s:
        s["n"] += 1
    with pytest.raises(ConflictError, match="'n'"), b.session("k") as s:
        s["n"] += 1
    assert read(store, namespace, "k") == {"n": 6, "other": 0}
    assert b.stats().conflicts == 1
    assert b.get("k") == {"n": 6, "other": 0}, "b's memory took the stored value"


def test_an_equal_value_conflict_goes_to_the_resolver(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.1: the resolver sees it too, with base, ours and theirs."""
    seen: list[tuple[Any, ...]] = []

    def add_both(key: str, field: Any, base: Any, ours: Any, theirs: Any) -> Any:
        seen.append((field, base, ours, theirs))
        return theirs + (ours - base)

    a, b = proc(), proc(conflict=add_both)
    a.set("k", {"n": 5})
    b.get("k")
    with a.session("k") as s:
        s["n"] = 6
    with b.session("k") as s:
        s["n"] = 6
    assert seen == [("n", 5, 6, 6)]
    assert read(store, namespace, "k") == {"n": 7}


def test_a_whole_value_both_changed_to_equal_content_is_a_conflict(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.1 for a list root (one field): equal content is still two changes."""
    a, b = proc(), proc(conflict=keep_ours)
    a.set("k", [1])
    b.get("k")
    with a.session("k", initial=list) as s:
        s.append(2)
    with b.session("k", initial=list) as s:
        s.append(2)
    assert b.stats().conflicts == 1


def test_a_field_changed_and_changed_back_is_not_ours_to_write(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """The other half of #10.1: no net change of ours keeps theirs, no conflict."""
    from tiercache import WriteBehind

    a, b = proc(flush=WriteBehind(3600)), proc()
    a.set("k", {"n": 5, "m": 0})
    b.get("k")
    with a.session("k") as s:
        s["n"] = 9
        s["m"] = 1
    with a.session("k") as s:
        s["n"] = 5  # back where the store had it
    with b.session("k") as s:
        s["n"] = 7
    a.flush()
    assert read(store, namespace, "k") == {"n": 7, "m": 1}
    assert a.stats().conflicts == 0


# -- 2. a journaled change is migrated once -----------------------------------------------


def _v1() -> Schema:
    return Schema(1, {0: lambda v: v})


def _v2() -> Schema:
    def to_cents(v: dict[str, Any]) -> dict[str, Any]:
        v["credits"] *= 100
        return v

    return Schema(2, {0: lambda v: v, 1: to_cents})


@pytest.mark.parametrize("someone_wrote", [False, True], ids=["replayed-as-is", "merged"])
def test_a_change_journaled_at_an_old_schema_is_migrated_once(
    proc: Callable[..., TieredCache],
    store: DictTier,
    namespace: str,
    clock: FakeClock,
    tmp_path: Path,
    someone_wrote: bool,
) -> None:
    """#10.2: journaled at schema 1, replayed by code at schema 2 (with
    another process on schema 2 writing meanwhile, or not): credits x100
    once, never x10,000."""
    tier = Switchable(store)
    bot = proc(tier, schema=_v1(), journal=Journal(tmp_path / "bot"))
    bot.set("k", {"credits": 3, "name": "a"})
    tier.down = True
    with bot.session("k") as s:
        s["name"] = "b"  # acknowledged into the journal, at schema 1
    assert bot.stats().journal_depth == 1
    bot._journal.close()  # type: ignore[union-attr]  # the process stops
    if someone_wrote:
        app = proc(schema=_v2())
        with app.session("k") as s:  # loads (migrates: 300) and writes
            s["seen"] = True
    tier.down = False
    clock.advance(10)
    restarted = proc(Switchable(store), schema=_v2(), journal=Journal(tmp_path / "bot"))
    assert restarted.stats().journal_depth == 0, "replayed at start"
    want = {"credits": 300, "name": "b", **({"seen": True} if someone_wrote else {})}
    with TieredCache(MemoryTier(), store, namespace=namespace, schema=_v2()) as fresh:
        assert fresh.get("k") == want
    assert restarted.get("k") == want


# -- 3. versions never repeat across a delete ---------------------------------------------


def test_a_copy_from_before_a_delete_never_matches_the_recreated_key(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str, clock: FakeClock
) -> None:
    """#10.3 (ABA): a holds version v; b deletes; c re-creates and writes as
    often as a's copy had been written. a's next write must merge with c's
    value, not overwrite it on a matching version; a re-read by version must
    not confirm a's copy either."""
    a, b, c = proc(), proc(), proc(max_stale=1.0)
    a.set("k", {"who": "a", "n": 0})
    with a.session("k") as s:
        s["n"] = 1
    b.delete("k")
    with c.session("k") as s:
        s["who"] = "c"
    with c.session("k") as s:
        s["n"] = 100
    with a.session("k") as s:  # a's stale copy, never invalidated (no bus)
        s["mine"] = True
    assert read(store, namespace, "k") == {"who": "c", "n": 100, "mine": True}

    d = proc(max_stale=1.0)
    assert d.get("k") == {"who": "c", "n": 100, "mine": True}
    b.delete("k")
    with c.session("k") as s:
        s.update(who="c2", n=2)
    clock.advance(2)  # d's copy is older than max_stale: re-read by version
    assert d.get("k") == {"who": "c2", "n": 2}, "a version from before the delete never matches"


def test_a_recreated_key_starts_above_every_version_it_had(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str, clock: FakeClock
) -> None:
    """#10.3 without a tombstone (the store lost the key: an expiry, a
    restart without persistence): the new key's first version comes from the
    clock, above the old key's, so the old copy's write cannot match."""
    from tiercache._envelope import decode

    a, c = proc(), proc()
    a.set("k", {"n": 0})
    for i in range(5):
        with a.session("k") as s:
            s["n"] = i
    skey = f"{namespace}:k"
    old = decode(store.get(skey) or b"").version
    store.delete(skey)  # gone without a trace
    clock.advance(0.001)
    with c.session("k") as s:
        s["n"] = 100
    assert decode(store.get(skey) or b"").version > old
    with a.session("k") as s:
        s["other"] = 1
    assert read(store, namespace, "k") == {"n": 100, "other": 1}


def test_a_stored_version_at_the_maximum_is_unreadable_and_repaired(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.19: a version of 2**64-1 (planted; a CRC-valid envelope) no longer
    makes every later write raise: it is a counted miss, and a write
    replaces it."""
    import struct
    import zlib

    from tiercache._envelope import VERSION_OFFSET

    a = proc()
    a.set("k", {"n": 1})
    skey = f"{namespace}:k"
    data = bytearray(store.get(skey) or b"")
    struct.pack_into("<Q", data, VERSION_OFFSET, 2**64 - 1)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    store.set(skey, bytes(data))
    b = proc()
    assert b.get("k") is None
    assert b.stats().corrupt_entries == 1
    with b.session("k") as s:
        s["n"] = 2
    assert read(store, namespace, "k") == {"n": 2}


# -- 17. the decorator takes the lease ------------------------------------------------------


@pytest.mark.parametrize("where", ["decorator", "cache"])
def test_cached_session_takes_the_configured_lease(
    proc: Callable[..., TieredCache], store: DictTier, where: str
) -> None:
    """#10.17: @cached_session(lease=...) and a cache-wide lease= are strict
    scopes, as cache.session() is: the lease is held while the handler runs."""
    from tiercache import Lease, cached_session

    cache = proc(**({"lease": Lease(5)} if where == "cache" else {}))
    kw = {"lease": Lease(5)} if where == "decorator" else {}
    held_inside: list[bool] = []

    @cached_session(cache, key=lambda n: f"chat:{n}", **kw)
    def handler(n: int, session: Any = None) -> None:
        held_inside.append(any("lease" in k for k in store._data))
        session["n"] = session.get("n", 0) + 1

    handler(1)
    assert held_inside == [True]
    assert not any("lease" in k for k in store._data), "released after the handler"
    assert cache.get("chat:1") == {"n": 1}


# -- 6. keys that cannot be encoded; one unwritable entry never blocks a batch -------------


@pytest.mark.parametrize("key", ["\ud800", "ok\udfffok", "a" * 10 + "\udc80"])
async def test_a_key_with_a_lone_surrogate_is_an_invalid_key_everywhere(
    proc: Callable[..., TieredCache], key: str
) -> None:
    """#10.6: refused before it can be stored anywhere (Redis and SQLite
    cannot encode it), so it never sits pending."""
    from tiercache import InvalidKeyError

    cache = proc()
    with pytest.raises(InvalidKeyError, match="UTF-8"):
        cache.set(key, {"a": 1})
    with pytest.raises(InvalidKeyError):
        cache.get(key)
    with pytest.raises(InvalidKeyError):
        cache.delete(key)
    with pytest.raises(InvalidKeyError):
        cache.update(key, lambda s: None)
    with pytest.raises(InvalidKeyError), cache.session(key):
        pass
    with pytest.raises(InvalidKeyError):
        await cache.aget(key)
    with pytest.raises(InvalidKeyError):
        async with cache.session(key):
            pass
    assert cache.stats().dirty == 0
    cache.set("fine:ключ:🙂", {"a": 1})  # other non-ASCII keys are fine
    assert cache.get("fine:ключ:🙂") == {"a": 1}


class RefusesOne(DictTier):
    """A shared tier that refuses one key for good (a permission, a key of
    the wrong type), the way a server that answered would."""

    def __init__(self, store: DictTier, bad: str) -> None:
        super().__init__()
        self.store, self.bad = store, bad
        self.batches = 0

    def get(self, key: str) -> bytes | None:
        return self.store.get(key)

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        if key.endswith(self.bad):
            from tiercache import TierError

            err = TierError(f"refused: {key!r} is of the wrong type")
            err.transient = err.sent = False
            raise err
        return self.store.compare_and_set(key, value, ttl, expected)

    def compare_and_set_many(self, items: Any) -> list[bool]:
        self.batches += 1
        return super().compare_and_set_many(items)  # the loop above: fails on the bad one


def test_one_entry_the_store_refuses_never_blocks_the_rest_of_a_batch(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.6: 50 good keys and one the store refuses, flushed in one batch:
    the 50 are written, the bad one keeps its own error (and stays
    pending: it was acknowledged), and later flushes still drain."""
    from tiercache import TierError, WriteBehind

    tier = RefusesOne(store, "bad")
    cache = proc(tier, flush=WriteBehind(3600))
    for i in range(50):
        with cache.session(f"good{i}") as s:
            s["n"] = i
    with cache.session("bad") as s:
        s["n"] = -1
    with pytest.raises(TierError, match="wrong type"):
        cache.flush()
    assert tier.batches == 1
    assert [read(store, namespace, f"good{i}") for i in range(50)] == [{"n": i} for i in range(50)]
    assert cache.stats().dirty == 1
    with cache.session("good0") as s:
        s["n"] = 100
    with pytest.raises(TierError, match="wrong type"):
        cache.flush()
    assert read(store, namespace, "good0") == {"n": 100}
    tier.bad = "\x00nothing"  # the operator fixes it: the acknowledged change lands
    assert cache.flush() == 1
    assert read(store, namespace, "bad") == {"n": -1}


# -- 9. namespaces and internal names never collide -------------------------------------


@pytest.mark.parametrize("tier_kind", ["dict", "disk"])
def test_namespaces_that_look_alike_are_different_names(
    clock: FakeClock, tmp_path: Path, tier_kind: str
) -> None:
    """#10.9: namespace x with key y:a and namespace x:y with key a were
    one stored key: one tenant read and overwrote the other's data."""
    from tiercache import DiskTier

    shared: Any = DictTier(clock=clock) if tier_kind == "dict" else DiskTier(tmp_path / "d")
    x = TieredCache(MemoryTier(), shared, namespace="x", clock=clock)
    xy = TieredCache(MemoryTier(), shared, namespace="x:y", clock=clock)
    x.set("y:a", {"tenant": "x"})
    assert xy.get("a") is None
    xy.set("a", {"tenant": "x:y"})
    assert TieredCache(MemoryTier(), shared, namespace="x", clock=clock).get("y:a") == {
        "tenant": "x"
    }
    back = TieredCache(MemoryTier(), shared, namespace="x\\", clock=clock)
    assert back.get(":y:a") is None
    for c in (x, xy, back):
        c.close()


def test_a_user_key_can_never_name_an_internal_key(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.9: the key "\\x00quarantine\\x00victim" was destroyed when "victim"
    was quarantined."""
    cache = proc()
    cache.set("\x00quarantine\x00victim", {"mine": True})
    store.set(f"{namespace}:victim", b"TC garbage")
    fresh = proc()
    assert fresh.get("victim") is None
    assert fresh.stats().quarantined == 1
    assert read(store, namespace, "\x00quarantine\x00victim") == {"mine": True}
    assert store.get(f"{namespace}\x00quarantine\x00victim") == b"TC garbage"


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800", "", "n" * 201])
def test_a_namespace_that_could_alias_another_is_a_config_error(bad: str) -> None:
    from tiercache import ConfigError

    with pytest.raises(ConfigError, match="namespace"):
        TieredCache(MemoryTier(), namespace=bad)


# -- 18. an error raised to the handler means the change was not applied ------------------


def test_set_that_failed_before_reaching_the_store_is_not_applied(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str, clock: FakeClock
) -> None:
    """#10.18 for cache.set: memory goes back to the old value; nothing is
    written later."""
    from tiercache import TierError

    tier = Switchable(store)
    cache = proc(tier)
    cache.set("k", {"v": 1})
    tier.down = True
    tier_error_sent_false(tier)
    with pytest.raises(TierError):
        cache.set("k", {"v": 2})
    assert cache.get("k") == {"v": 1}
    tier.down = False
    clock.advance(60)
    assert cache.flush() == 0
    assert read(store, namespace, "k") == {"v": 1}


def tier_error_sent_false(tier: Switchable) -> None:
    """Make the Switchable's outage a refused connection (never sent)."""
    from tiercache import TierError

    def check() -> None:
        if tier.down:
            err = TierError("connection refused")
            err.sent = False
            raise err

    tier._check = check  # type: ignore[method-assign]


@pytest.mark.parametrize("sent", [False, True], ids=["refused", "reply-lost"])
def test_counters_never_end_higher_than_acknowledged(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str, clock: FakeClock, sent: bool
) -> None:
    """#10.18: a framework retries a handler that raised. Refused writes are
    rolled back (the retry's increment is the only one); writes whose reply
    was lost are acknowledged (no retry) and land once."""
    from tiercache import TierError

    class Lossy(Switchable):
        def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
            if self.down:
                if sent:
                    self.store.compare_and_set(key, value, ttl, expected)  # it landed
                err = TierError("connection reset")
                err.sent = sent
                raise err
            return self.store.compare_and_set(key, value, ttl, expected)

    tier = Lossy(store)
    cache = proc(tier)
    acknowledged = 0
    for attempt in range(20):
        tier.down = attempt % 3 == 1
        clock.advance(10)  # past the breaker's backoff
        for _ in range(3):  # the framework's retries
            try:
                with cache.session("counter") as s:
                    s["n"] = s.get("n", 0) + 1
            except TierError:
                tier.down = False
                clock.advance(10)
                continue
            acknowledged += 1
            break
    tier.down = False
    clock.advance(60)
    cache.flush()
    assert read(store, namespace, "counter") == {"n": acknowledged}


# -- 8. time bounds run on the monotonic clock ---------------------------------------------


class SteppingClock:
    """A wall clock that can be stepped back (NTP, a VM resumed), beside a
    monotonic one that only moves forward."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_700_000_000.0, 0.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_a_remembered_miss_ends_within_max_stale_when_the_wall_clock_steps_back(
    store: DictTier, namespace: str
) -> None:
    """#10.8: after the wall clock stepped back an hour, a remembered miss
    outlived max_stale by that hour."""
    clock = SteppingClock()
    a = TieredCache(MemoryTier(), store, namespace=namespace, clock=clock, max_stale=5.0)
    b = TieredCache(MemoryTier(), store, namespace=namespace, clock=clock)
    assert a.get("k") is None  # remembered as missing
    b.set("k", {"by": "b"})
    clock.wall -= 3600  # stepped back
    clock.advance(6)  # past max_stale, by the monotonic clock
    assert a.get("k") == {"by": "b"}
    a.close()
    b.close()


def test_a_memory_copy_expires_on_time_when_the_wall_clock_steps_back(
    store: DictTier, namespace: str
) -> None:
    clock = SteppingClock()
    a = TieredCache(MemoryTier(), namespace=namespace, clock=clock, ttl=10)
    a.set("k", {"n": 1})
    clock.wall -= 3600
    clock.advance(11)
    assert a.get("k") is None, "the TTL counts down however the wall clock moves"
    a.close()


# -- 19. settings out of range are ConfigErrors at once ------------------------------------


@pytest.mark.parametrize("ttl", [1e16, 4e9, float("inf")])
def test_a_ttl_past_what_can_be_stored_is_a_config_error(
    proc: Callable[..., TieredCache], ttl: float
) -> None:
    """#10.19: ttl=1e16 passed validation, then every write raised ValueError."""
    from tiercache import ConfigError, Expiry, cached_session

    with pytest.raises(ConfigError, match="100 years"):
        proc(ttl=ttl)
    with pytest.raises(ConfigError, match="100 years"):
        Expiry(ttl, sliding=True)
    cache = proc()
    with pytest.raises(ConfigError):
        cache.set("k", {}, ttl=ttl)
    with pytest.raises(ConfigError):
        cache.session("k", ttl=ttl)
    with pytest.raises(ConfigError):
        cached_session(cache, key=str, ttl=ttl)
    cache.set("k", {"n": 1}, ttl=3e9)  # 95 years is fine
    assert cache.get("k") == {"n": 1}


def test_a_directory_named_like_a_journal_segment_is_a_config_error(tmp_path: Path) -> None:
    from tiercache import ConfigError

    (tmp_path / "j" / "00000000000000000001.tcj").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a file"):
        Journal(tmp_path / "j")


# -- 13. one caller's cancellation never cancels another's load ----------------------------


class SlowTier(DictTier):
    """A shared tier whose async reads take a while (a slow network)."""

    def __init__(self, store: DictTier, delay: float) -> None:
        super().__init__()
        self.store, self.delay, self.reads = store, delay, 0

    def get(self, key: str) -> bytes | None:
        return self.store.get(key)

    async def aget(self, key: str) -> bytes | None:
        import asyncio

        self.reads += 1
        await asyncio.sleep(self.delay)
        return self.store.get(key)


async def test_cancelling_one_waiter_of_a_shared_load_leaves_the_others_their_value(
    proc: Callable[..., TieredCache], store: DictTier
) -> None:
    """#10.13: both tasks share one load; cancelling the one that started it
    used to cancel the other's aget too."""
    import asyncio

    proc().set("k", {"n": 1})
    tier = SlowTier(store, 0.2)
    cache = proc(tier)
    first = asyncio.create_task(cache.aget("k"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(cache.aget("k"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == {"n": 1}
    assert first.cancelled()
    assert tier.reads == 1, "one shared load"
    third = asyncio.create_task(cache.aget("other"))
    await asyncio.sleep(0.05)
    third.cancel()  # nobody else waits: the load finishes anyway, quietly
    await asyncio.sleep(0.3)
    assert await cache.aget("k") == {"n": 1}


def test_an_interrupted_loading_thread_does_not_interrupt_its_waiters(
    proc: Callable[..., TieredCache], store: DictTier
) -> None:
    """#10.13, sync: a KeyboardInterrupt in the thread that loads is that
    thread's; a thread waiting for the same load loads again instead."""
    import threading

    proc().set("k", {"n": 1})
    entered, release = threading.Event(), threading.Event()
    calls = 0

    class Interrupting(DictTier):
        def get(self, key: str) -> bytes | None:
            nonlocal calls
            calls += 1
            if calls == 1:
                entered.set()
                release.wait(5)
                raise KeyboardInterrupt
            return store.get(key)

    cache = proc(Interrupting())
    got: list[Any] = []

    def owner() -> None:
        try:
            cache.get("k")
        except KeyboardInterrupt:
            got.append("interrupted")

    t1 = threading.Thread(target=owner)
    t1.start()
    assert entered.wait(5)
    t2 = threading.Thread(target=lambda: got.append(cache.get("k")))
    t2.start()
    import time

    time.sleep(0.1)  # t2 waits on t1's flight
    release.set()
    t1.join(5)
    t2.join(5)
    assert sorted(map(str, got)) == sorted(["interrupted", str({"n": 1})])


# -- 14. a scope may end in another task or thread -------------------------------------------


async def test_a_scope_entered_in_one_task_and_exited_in_another(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.14: exiting raised ValueError from a contextvar token after
    committing, and the first task could never open the key again."""
    import asyncio

    cache = proc()
    scope = cache.session("k")

    async def enter() -> Any:
        return await scope.__aenter__()

    async def leave() -> None:
        await scope.__aexit__(None, None, None)

    value = await asyncio.create_task(enter())
    value["by"] = "first task"
    await asyncio.create_task(leave())
    assert read(store, namespace, "k") == {"by": "first task"}
    async with cache.session("k") as s:  # this task, and others, open it again
        s["n"] = 1
    assert await asyncio.create_task(cache.aget("k")) == {"by": "first task", "n": 1}


def test_a_scope_entered_in_one_thread_and_exited_in_another(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    import threading

    cache = proc()
    scope = cache.session("k")
    value = scope.__enter__()
    value["by"] = "main"
    t = threading.Thread(target=scope.__exit__, args=(None, None, None))
    t.start()
    t.join(5)
    assert read(store, namespace, "k") == {"by": "main"}
    with cache.session("k") as s:
        s["n"] = 1
    done: list[Any] = []

    def other() -> None:
        with cache.session("k") as s:
            done.append(dict(s))

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert done == [{"by": "main", "n": 1}]


# -- 15. an interrupt never leaves a lock held -------------------------------------------------


STORM = """
import gc, json, random, signal, sys, threading, time
from tiercache import MemoryTier, TierCacheError, TieredCache
from tiercache.testing import DictTier, FakeClock


class Interrupt(BaseException):
    pass  # what KeyboardInterrupt is


class Timeout(Exception):
    pass  # the common kind: an alarm-based request timeout


kind = Interrupt if sys.argv[1] == "base" else Timeout
clock = FakeClock()
cache = TieredCache(MemoryTier(), DictTier(clock=clock), namespace="storm", clock=clock)
zone = [False]  # raise only inside cache calls, never in this script's own code


def handler(signum, frame):
    if zone[0]:
        raise kind


signal.signal(signal.SIGALRM, handler)
rng = random.Random(int(sys.argv[2]))
interrupts = 0
deadline = time.monotonic() + float(sys.argv[3])
signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.00017)
while time.monotonic() < deadline:
    key = f"k{rng.randrange(4)}"
    op = rng.randrange(6)
    try:
        zone[0] = True
        if op == 0:
            with cache.session(key) as s:
                s["n"] = s.get("n", 0) + 1
        elif op == 1:
            with cache.session(key) as s:
                s.get("n")
        elif op == 2:
            cache.set(key, {"n": 0})
        elif op == 3:
            cache.get(key)
        elif op == 4:
            cache.update(key, lambda v: v.update(u=1))
        else:
            cache.delete(key)
        zone[0] = False
    except (kind, TierCacheError):
        zone[0] = False
        interrupts += 1
signal.setitimer(signal.ITIMER_REAL, 0)
zone[0] = False
clock.advance(60)  # past any breaker backoff a wrapped interrupt opened
gc.collect()  # scopes dropped mid-way give their keys back here at the latest
opened = []


def open_all():
    try:
        for i in range(4):
            with cache.session(f"k{i}") as s:
                s["after"] = True
            opened.append(f"k{i}")
    except Exception as exc:
        opened.append(repr(exc))


t = threading.Thread(target=open_all, daemon=True)
t.start()
t.join(5)
closer = threading.Thread(target=cache.close, daemon=True)
closer.start()
closer.join(5)
st = cache.stats()
print(json.dumps({
    "interrupts": interrupts,
    "opened": opened,
    "close_hung": closer.is_alive(),
    "corrupt": st.corrupt_entries,
    "quarantined": st.quarantined,
}))
sys.stdout.flush()
import os
os._exit(0)
"""


@pytest.mark.parametrize("seed", [7, 8])
def test_interrupts_at_random_moments_never_leave_a_lock_held(seed: int) -> None:
    """#10.15: a KeyboardInterrupt (or any exception a signal handler
    raises) landing between a lock's acquire and release left the memory
    lock or a key lock held: the next call hung, and so did close(). A real
    process takes a timer signal every ~0.2 ms whose handler raises, as
    KeyboardInterrupt does, at random moments into scopes, sets, gets,
    updates and deletes (thousands of times); afterwards every key opens
    from another thread at once, close() returns, and no good data was
    taken for corrupt. (An ordinary exception from a handler, landing in
    the decoder, is tests/unit/test_faults.py's
    test_a_decode_failure_that_does_not_repeat_is_not_corruption: at this
    rate it would also hit the logging module, which is not built for it.)"""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", STORM, "base", str(seed), "3"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert result["interrupts"] > 500, "the signals did land"
    assert result["opened"] == ["k0", "k1", "k2", "k3"], "a key stayed locked"
    assert result["close_hung"] is False
    assert result["corrupt"] == 0 and result["quarantined"] == 0, "good data taken for bad"


# -- 16. a sync scope inside a coroutine never hangs --------------------------------------------


async def test_a_sync_scope_inside_a_coroutine_on_a_held_key_is_a_clear_error(
    proc: Callable[..., TieredCache],
) -> None:
    """#10.16: with cache.session(k) (sync) on the event loop's thread while
    another task holds k in async with: it hung forever."""
    import asyncio

    from tiercache import TierCacheError

    cache = proc()
    holding, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with cache.session("k") as s:
            s["by"] = "holder"
            holding.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await holding.wait()
    with pytest.raises(TierCacheError, match="async with"), cache.session("k"):
        pass
    with pytest.raises(TierCacheError, match="async with"):
        cache.set("k", {"x": 1})
    release.set()
    await task
    with cache.session("k") as s:  # free: a sync scope in a coroutine works
        assert s["by"] == "holder"
    assert await cache.aget("k") == {"by": "holder"}


# -- 5. close() while another thread's scope is open ---------------------------------------


def test_close_waits_for_a_scope_another_thread_has_open(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    """#10.5: under WriteBehind without a journal, the scope returned
    normally and its change was never written."""
    import threading

    from tiercache import WriteBehind

    cache = proc(flush=WriteBehind(3600))
    inside, go = threading.Event(), threading.Event()

    def handler() -> None:
        with cache.session("k") as s:
            s["by"] = "handler"
            inside.set()
            go.wait(5)

    t = threading.Thread(target=handler)
    t.start()
    assert inside.wait(5)
    closer = threading.Thread(target=cache.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "close waits for the open scope"
    from tiercache import TierCacheError

    with pytest.raises(TierCacheError, match="closed"), cache.session("other"):
        pass  # nothing new starts meanwhile
    go.set()
    t.join(5)
    closer.join(5)
    assert not closer.is_alive()
    assert read(store, namespace, "k") == {"by": "handler"}


def test_a_scope_still_open_after_close_gave_up_waiting_is_not_applied(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    import threading

    from tiercache import TierCacheError, WriteBehind

    cache = proc(flush=WriteBehind(3600))
    inside, go = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    def handler() -> None:
        try:
            with cache.session("k") as s:
                s["by"] = "late"
                inside.set()
                go.wait(5)
        except TierCacheError as exc:
            raised.append(exc)

    t = threading.Thread(target=handler)
    t.start()
    assert inside.wait(5)
    cache.close(wait=0.2)  # gives up waiting
    go.set()
    t.join(5)
    assert len(raised) == 1 and "was not applied" in str(raised[0])
    assert read(store, namespace, "k") is None


async def test_aclose_waits_for_another_tasks_scope(
    proc: Callable[..., TieredCache], store: DictTier, namespace: str
) -> None:
    import asyncio

    from tiercache import WriteBehind

    cache = proc(flush=WriteBehind(3600))
    inside = asyncio.Event()

    async def handler() -> None:
        async with cache.session("k") as s:
            s["by"] = "task"
            inside.set()
            await asyncio.sleep(0.2)

    task = asyncio.create_task(handler())
    await inside.wait()
    await cache.aclose()
    await task
    assert read(store, namespace, "k") == {"by": "task"}
