"""Versioned writes: compare-and-set on the shared tier, field-level merge,
conflict policies and update(). Two caches over one store stand for two
processes here; tests/integration/test_processes.py uses real ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tiercache import (
    MISSING,
    ConflictError,
    MemoryTier,
    TieredCache,
    WriteBehind,
    keep_ours,
    keep_theirs,
)
from tiercache._envelope import decode
from tiercache.testing import DictTier, FakeClock


def stored(shared: DictTier, cache: TieredCache, key: str) -> tuple[int, Any]:
    fresh = TieredCache(MemoryTier(), shared, namespace=cache.namespace)
    raw = shared.get(f"{cache.namespace}:{key}")
    return (decode(raw).version if raw else 0), fresh.get(key, MISSING)


def test_disjoint_fields_merge_silently(proc: Callable[..., TieredCache], shared: DictTier) -> None:
    bot, app = proc(), proc()
    with bot.session("chat:1") as s:
        s.update(count=0, lang="en", theme="dark")
    first, _ = stored(shared, bot, "chat:1")
    with app.session("chat:1") as s:  # both processes now hold the first version
        assert s["lang"] == "en"
    with bot.session("chat:1") as s:
        s["count"] = 1
    with app.session("chat:1") as s:  # stale copy: its write loses the race
        s["theme"] = "light"
        del s["lang"]
    version, value = stored(shared, bot, "chat:1")
    assert value == {"count": 1, "theme": "light"}, "both changes survive"
    assert version == first + 2
    assert app.get("chat:1") == value, "the merged value is what app now holds"
    assert app.stats().merges == 1 and app.stats().conflicts == 0


@pytest.mark.parametrize(
    ("policy", "expect"),
    [(keep_ours, "app"), (keep_theirs, "bot"), (lambda k, f, b, o, t: f"{t}+{o}", "bot+app")],
)
def test_same_field_conflict_policies(
    proc: Callable[..., TieredCache], shared: DictTier, policy: Any, expect: str
) -> None:
    bot, app = proc(), proc(conflict=policy)
    bot.set("k", {"who": "none", "n": 0})
    assert app.get("k") == {"who": "none", "n": 0}
    with bot.session("k") as s:
        s["who"] = "bot"
    with app.session("k") as s:
        s["who"] = "app"
        s["n"] = 5
    assert stored(shared, bot, "k")[1] == {"who": expect, "n": 5}
    assert app.stats().conflicts == 1


def test_same_field_conflict_raises_by_default(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(), proc()
    bot.set("k", {"who": "none"})
    app.get("k")
    with bot.session("k") as s:
        s["who"] = "bot"
    with pytest.raises(ConflictError, match="'who'"), app.session("k") as s:
        s["who"] = "app"
    assert stored(shared, bot, "k")[1] == {"who": "bot"}, "theirs is kept"
    assert app.get("k") == {"who": "bot"}, "and the loser now holds theirs"
    with app.session("k") as s:  # the next scope starts from the stored value
        s["who"] = "app, knowingly"
    assert stored(shared, bot, "k")[1] == {"who": "app, knowingly"}


def test_per_scope_policy_overrides_the_cache(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(), proc()
    bot.set("k", {"who": "none"})
    app.get("k")
    with bot.session("k") as s:
        s["who"] = "bot"
    with app.session("k", conflict=keep_ours) as s:
        s["who"] = "app"
    assert stored(shared, bot, "k")[1] == {"who": "app"}


def test_write_behind_conflict_is_logged_and_counted(
    proc: Callable[..., TieredCache], shared: DictTier, caplog: pytest.LogCaptureFixture
) -> None:
    bot, app = proc(), proc(flush=WriteBehind(3600))
    bot.set("k", {"who": "none"})
    app.get("k")
    with bot.session("k") as s:
        s["who"] = "bot"
    with app.session("k") as s:
        s["who"] = "app"
    app.flush()
    assert stored(shared, bot, "k")[1] == {"who": "bot"}
    assert app.stats().as_dict()["conflicts_lost"] == 1
    assert "lost a same-field conflict" in caplog.text


def test_a_deleted_key_is_recreated_by_a_later_write(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(), proc()
    bot.set("k", {"a": 1})
    app.get("k")
    bot.delete("k")
    with app.session("k") as s:
        s["b"] = 2
    assert stored(shared, bot, "k")[1] == {"a": 1, "b": 2}


def test_set_overwrites_whatever_is_stored(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(), proc()
    bot.set("k", {"a": 1})
    app.get("k")
    with bot.session("k") as s:
        s["a"] = 2
    app.set("k", {"replaced": True})
    assert stored(shared, bot, "k")[1] == {"replaced": True}


def test_update_reapplies_the_function_on_conflict(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    a, b = proc(), proc()
    calls = 0

    def incr(s: dict[str, int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            # Another process writes between our read and our write.
            b.update("counter", lambda t: t.__setitem__("n", t.get("n", 0) + 10))
        s["n"] = s.get("n", 0) + 1

    result = a.update("counter", incr)
    assert result == {"n": 11}
    assert calls == 2, "the first attempt lost the race and ran again on theirs"
    # A new key's first version comes from the clock; b wrote it, a's
    # (re-run) write is the one after it.
    assert stored(shared, a, "counter") == (a._core.next_version(0) + 1, {"n": 11})
    assert a.get("counter") == {"n": 11}


async def test_aupdate_and_return_value(proc: Callable[..., TieredCache]) -> None:
    a = proc()
    assert await a.aupdate("k", lambda s: {"fresh": True}) == {"fresh": True}
    out = await a.aupdate("k", lambda s: s.update(more=1))
    assert out == {"fresh": True, "more": 1}
    assert await a.aget("k") == out


# -- strict mode ------------------------------------------------------------------


def test_strict_scopes_in_two_caches_never_lose_an_increment(
    proc: Callable[..., TieredCache],
) -> None:
    import threading

    from tiercache import Lease

    caches = [proc(lease=Lease(5, wait=30)) for _ in range(3)]

    def work(cache: TieredCache) -> None:
        for _ in range(100):
            with cache.session("counter") as s:
                n = s.get("n", 0)
                threading.Event().wait(0)
                s["n"] = n + 1

    threads = [threading.Thread(target=work, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert proc().get("counter") == {"n": 300}


def test_strict_write_after_losing_the_lease_is_refused(
    proc: Callable[..., TieredCache], shared: DictTier, clock: FakeClock
) -> None:
    from tiercache import Lease, TierError

    a, b = proc(lease=Lease(1)), proc(lease=Lease(1))
    with pytest.raises(TierError, match="lease expired"), a.session("k") as s:
        s["who"] = "a"
        clock.advance(2)  # a stalls past its lease; b takes the key meanwhile
        with b.session("k") as t:
            t["who"] = "b"
    assert stored(shared, a, "k")[1] == {"who": "b"}, "the stale holder wrote nothing"


def test_strict_mode_needs_a_tier_with_leases(namespace: str) -> None:
    from tiercache import ConfigError, Lease

    cache = TieredCache(MemoryTier(), namespace=namespace, lease=Lease())
    with pytest.raises(ConfigError, match="lease"), cache.session("k"):
        pass


def test_a_batched_flush_merges_only_the_entry_that_lost(
    proc: Callable[..., TieredCache], shared: DictTier
) -> None:
    bot, app = proc(flush=WriteBehind(3600)), proc()
    for i in range(3):
        bot.set(f"k{i}", {"a": 0, "b": 0})
    for i in range(3):
        with bot.session(f"k{i}") as s:
            s["a"] = i + 1
    app.update("k1", lambda s: s.__setitem__("b", 9))  # k1 moved underneath bot
    assert bot.flush() == 3
    assert [stored(shared, bot, f"k{i}")[1] for i in range(3)] == [
        {"a": 1, "b": 0},
        {"a": 2, "b": 9},
        {"a": 3, "b": 0},
    ]
    assert bot.stats().merges == 1
