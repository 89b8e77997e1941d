"""Reads while the shared tier is down: what is served, and what is refused.

* A memory copy is served as long as ``max_stale`` allows (always without it).
* A local (disk) copy the shared tier cannot confirm is served within
  ``max_stale`` (always without it), counted, and confirmed once the shared
  tier answers again.
* A key in no local tier cannot be served: the scope raises TierError
  before its body runs, so a handler never acts on a made-up session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tiercache import (
    DiskTier,
    LocalBus,
    LocalHub,
    MemoryTier,
    TieredCache,
    TierError,
    cached_session,
)
from tiercache.testing import DictTier, FakeClock, Faults, FaultyTier

Make = Callable[..., tuple[TieredCache, Faults]]


@pytest.fixture
def shared(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def make(shared: DictTier, namespace: str, clock: FakeClock, tmp_path: Path) -> Iterator[Make]:
    """A cache on its own "host" (its own disk directory) over the shared
    tier, through its own connection (Faults) and a bus on one hub."""
    hub = LocalHub()
    made: list[tuple[TieredCache, Faults]] = []

    def factory(host: str, **kw: Any) -> tuple[TieredCache, Faults]:
        faults = Faults()
        kw.setdefault("bus", LocalBus(hub, namespace=namespace, clock=clock))
        cache = TieredCache(
            MemoryTier(),
            DiskTier(tmp_path / host),
            FaultyTier(shared, faults),
            namespace=namespace,
            clock=clock,
            **kw,
        )
        made.append((cache, faults))
        return cache, faults

    yield factory
    clock.advance(60)  # past every breaker backoff
    for cache, faults in made:
        faults.heal()
        cache.close()


def test_a_disk_copy_is_served_while_the_shared_tier_is_down_then_confirmed(
    make: Make, clock: FakeClock
) -> None:
    bot, _ = make("host-a")
    bot.set("chat:1", {"plan": "free"})  # on host-a's disk and in the shared tier
    bot.close()
    # While the bot is stopped, a process on another host upgrades the plan:
    # the bot's disk copy is stale, and no invalidation reached it.
    app, _ = make("host-b")
    with app.session("chat:1") as s:
        s["plan"] = "pro"
    clock.advance(30)
    # The bot restarts during an outage of its connection. The disk copy
    # predates this process's bus, so it would normally be confirmed first;
    # with the shared tier unreachable it is served (no max_stale here).
    bot, down = make("host-a", max_stale=None)  # (the default would refuse a 30 s old copy)
    down.down()
    assert bot.get("chat:1") == {"plan": "free"}
    with bot.session("chat:1") as s:  # a read-only handler keeps working
        assert s["plan"] == "free"
    assert bot.stats().served_unconfirmed == 1
    down.up()
    clock.advance(10)  # past the breaker's backoff: the next call probes
    # The first answer from the shared tier drops the unconfirmed copy from
    # memory; the next read confirms the disk copy, finds it old, reloads.
    assert bot.get("other") is None
    assert bot.get("chat:1") == {"plan": "pro"}


def test_a_disk_copy_older_than_max_stale_is_not_served_during_an_outage(
    make: Make, clock: FakeClock
) -> None:
    bot, _ = make("host-a", max_stale=5.0)
    bot.set("chat:1", {"plan": "free"})
    bot.close()
    clock.advance(30)
    bot, down = make("host-a", max_stale=5.0)
    down.down()
    with pytest.raises(TierError):
        bot.get("chat:1")
    assert bot.stats().served_unconfirmed == 0


def test_a_fresh_enough_disk_copy_is_served_within_max_stale(make: Make, clock: FakeClock) -> None:
    bot, _ = make("host-a", max_stale=60.0)
    bot.set("chat:1", {"plan": "free"})
    bot.close()
    clock.advance(30)
    bot, down = make("host-a", max_stale=60.0)
    down.down()
    assert bot.get("chat:1") == {"plan": "free"}
    assert bot.stats().served_unconfirmed == 1


def test_a_memory_copy_is_served_during_an_outage(make: Make) -> None:
    bot, down = make("host-a")
    bot.set("chat:1", {"n": 1})
    down.down()
    for _ in range(3):
        with bot.session("chat:1") as s:
            assert s["n"] == 1
    assert bot.get("chat:1") == {"n": 1}


def test_a_key_in_no_local_tier_raises_before_the_handler_runs(make: Make) -> None:
    bot, down = make("host-a")
    calls: list[int] = []

    @cached_session(bot, key=lambda chat_id: f"chat:{chat_id}")
    def on_message(chat_id: int, session: Any = None) -> None:
        calls.append(chat_id)
        session["n"] = session.get("n", 0) + 1

    down.down()
    with pytest.raises(TierError):
        on_message(7)
    assert calls == [], "the handler never saw a made-up session"
    assert bot.stats().journal_depth == 0 and bot.stats().dirty == 0


async def test_async_a_key_in_no_local_tier_raises_before_the_body(make: Make) -> None:
    bot, down = make("host-a")
    down.down()
    entered = False
    with pytest.raises(TierError):
        async with bot.session("chat:9"):
            entered = True
    assert not entered
