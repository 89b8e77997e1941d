"""Degraded mode: the shared tier goes away, handlers keep working, and
acknowledged changes wait in a crash-safe journal until it is back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache import (
    Journal,
    JournalFullError,
    MemoryTier,
    TieredCache,
    TierError,
)
from tiercache.testing import DictTier, FakeClock


class Switchable(DictTier):
    """A view of a shared DictTier that can be switched off, like a network."""

    def __init__(self, store: DictTier) -> None:
        super().__init__()
        self.store = store
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise TierError("connection refused")

    def get(self, key: str) -> bytes | None:
        self._check()
        return self.store.get(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._check()
        self.store.set(key, value, ttl)

    def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
        self._check()
        return self.store.compare_and_set(key, value, ttl, expected)

    def delete(self, key: str) -> bool:
        self._check()
        return self.store.delete(key)


@pytest.fixture
def store(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def make(
    store: DictTier, namespace: str, clock: FakeClock, tmp_path: Path
) -> Iterator[Callable[..., tuple[TieredCache, Switchable]]]:
    made: list[TieredCache] = []

    def factory(name: str = "j", **kw: Any) -> tuple[TieredCache, Switchable]:
        tier = Switchable(store)
        kw.setdefault("journal", Journal(tmp_path / name))
        cache = TieredCache(MemoryTier(), tier, namespace=namespace, clock=clock, **kw)
        made.append(cache)
        return cache, tier

    yield factory
    clock.advance(60)  # the network is back and every breaker backoff is over
    for c in made:
        for t in c._core.tiers:
            if isinstance(t, Switchable) or hasattr(t, "_tier"):
                getattr(t, "_tier", t).down = False
        c.close()


def read(store: DictTier, namespace: str, key: str) -> Any:
    return TieredCache(MemoryTier(), store, namespace=namespace).get(key)


def test_handlers_keep_working_and_changes_wait_in_the_journal(
    make: Callable[..., tuple[TieredCache, Switchable]],
    store: DictTier,
    namespace: str,
    clock: FakeClock,
) -> None:
    cache, tier = make()
    with cache.session("k") as s:
        s["n"] = 1
    tier.down = True
    for i in range(2, 5):
        with cache.session("k") as s:  # acknowledged: no error in the handler
            s["n"] = i
    st = cache.stats()
    assert st.degraded is True
    assert st.journal_depth >= 1 and st.journaled == 3
    assert cache.get("k") == {"n": 4}, "reads are served from memory"
    assert read(store, namespace, "k") == {"n": 1}
    tier.down = False
    clock.advance(10)  # past the breaker's backoff
    assert cache.flush() == 0  # nothing pending: it is all in the journal...
    assert cache.stats().journal_depth == 0  # ...which the flush replayed
    assert read(store, namespace, "k") == {"n": 4}
    assert cache.stats().degraded is False


def test_a_full_journal_is_a_clear_error_and_the_change_stays_pending(
    make: Callable[..., tuple[TieredCache, Switchable]], tmp_path: Path
) -> None:
    cache, tier = make(journal=Journal(tmp_path / "small", max_entries=2))
    with cache.session("k") as s:
        s["n"] = 0
    tier.down = True
    for i in range(2):
        with cache.session("k") as s:
            s["n"] = i + 1
    with pytest.raises(JournalFullError, match="full"), cache.session("k") as s:
        s["n"] = 99
    assert cache.stats().dirty == 1, "not acknowledged, not lost: still pending in memory"
    assert cache.get("k") == {"n": 99}


def test_a_restarted_process_replays_its_journal(
    make: Callable[..., tuple[TieredCache, Switchable]],
    store: DictTier,
    namespace: str,
    clock: FakeClock,
) -> None:
    first, tier = make("shared-dir")
    with first.session("k") as s:
        s["n"] = 1
    tier.down = True
    with first.session("k") as s:
        s["n"] = 2  # acknowledged into the journal, then the process "dies"
    first._journal.close()  # type: ignore[union-attr]
    clock.advance(10)
    second, _ = make("shared-dir")  # same journal directory: replays on start
    assert read(store, namespace, "k") == {"n": 2}
    assert second.stats().journal_depth == 0


def test_replay_merges_with_what_others_wrote_meanwhile(
    make: Callable[..., tuple[TieredCache, Switchable]],
    store: DictTier,
    namespace: str,
    clock: FakeClock,
) -> None:
    bot, tier = make("bot")
    app, _ = make("app")
    bot.set("k", {"bot": 0, "app": 0})
    app.get("k")
    tier.down = True  # only the bot loses its connection
    with bot.session("k") as s:
        s["bot"] = 1
    with app.session("k") as s:
        s["app"] = 1
    tier.down = False
    clock.advance(10)
    bot.flush()
    assert read(store, namespace, "k") == {"bot": 1, "app": 1}
    assert bot.stats().merges == 1


def test_the_breaker_fails_fast_while_open(
    make: Callable[..., tuple[TieredCache, Switchable]], clock: FakeClock
) -> None:
    cache, tier = make(journal=None)
    calls = 0
    real = tier.store.get

    def counting_get(key: str) -> bytes | None:
        nonlocal calls
        calls += 1
        return real(key)

    tier.store.get = counting_get  # type: ignore[method-assign]
    tier.down = True
    with pytest.raises(TierError):
        cache.get("a")
    for key in ("b", "c", "d"):
        with pytest.raises(TierError, match="circuit open"):
            cache.get(key)
    tier.down = False
    with pytest.raises(TierError, match="circuit open"):
        cache.get("e")  # still within the backoff
    clock.advance(1)
    assert cache.get("e") is None  # the probe goes through and closes it
    assert calls == 1
    assert cache.stats().degraded is False


def test_a_replay_that_merged_never_lets_a_stale_copy_win_a_version_race(
    make: Callable[..., tuple[TieredCache, Switchable]],
    store: DictTier,
    namespace: str,
    clock: FakeClock,
) -> None:
    """The bot journals k changes while cut off; the app writes k-1 times
    meanwhile, so the bot's merged replay lands exactly on the version the
    bot's journal promised. The bot's next write must still merge: a
    compare-and-set on that version would succeed and put back the app's
    field as it was before the outage."""
    bot, tier = make("bot")
    app, _ = make("app")
    bot.set("k", {"bot": 0, "app": 0})
    app.get("k")
    tier.down = True
    for i in range(1, 4):
        with bot.session("k") as s:
            s["bot"] = i  # journaled: versions 2, 3, 4
    for i in range(1, 3):
        with app.session("k") as s:
            s["app"] = i  # stored: versions 2, 3
    tier.down = False
    clock.advance(10)
    with bot.session("k") as s:
        # This scope's exit replays the journal first (a merge: version 4)
        # and then writes its own change on top.
        s["bot"] = 4
    assert read(store, namespace, "k") == {"bot": 4, "app": 2}
    with app.session("k") as s:
        s["app"] = 3
    assert read(store, namespace, "k") == {"bot": 4, "app": 3}
