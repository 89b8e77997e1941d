"""tiercache.ptb: TierCachePersistence under real python-telegram-bot 22
Applications (no network: tests/integration/_ptb_app.py), over memory +
disk and memory + Redis.

Two Applications in one test stand for two processes: each has its own
cache (own memory tier) on the same storage, told of the other's writes
by a bus (a LocalBus over the disk tier, the default RedisBus over
Redis). The test with real OS processes is at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from telegram.ext import PersistenceInput

from tests.integration import _ptb_app as ptb
from tiercache import (
    ConfigError,
    Counter,
    DiskTier,
    LocalBus,
    LocalHub,
    MemoryTier,
    MsgpackSerializer,
    RedisTier,
    SerializationError,
    TieredCache,
)
from tiercache.ptb import TierCachePersistence

ROOT = Path(__file__).resolve().parents[2]

Factory = Callable[..., TieredCache]


@pytest.fixture(params=["disk", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_cache(
    backend: str, tmp_path: Path, namespace: str, request: pytest.FixtureRequest
) -> Iterator[Factory]:
    """Caches ("processes") over one storage: ``make_cache()`` twice is two
    processes of one bot."""
    made: list[TieredCache] = []
    hub = LocalHub()

    def factory(**kw: Any) -> TieredCache:
        kw.setdefault("namespace", namespace)
        if backend == "disk":
            kw.setdefault("bus", LocalBus(hub, namespace=kw["namespace"]))
            cache = TieredCache(MemoryTier(), DiskTier(tmp_path / "disk"), **kw)
        else:
            url = request.getfixturevalue("redis_url")
            cache = TieredCache(MemoryTier(), RedisTier(url), **kw)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.close()


def writes(cache: TieredCache) -> int:
    """Writes the persistent tier took (the bus has a row of its own)."""
    return sum(t.writes for t in cache.stats().tiers if t.name in ("disk", "redis"))


def reads(cache: TieredCache) -> int:
    return sum(t.reads for t in cache.stats().tiers if t.name in ("disk", "redis"))


@asynccontextmanager
async def running(persistence: TierCachePersistence, **kw: Any) -> AsyncIterator[Any]:
    """An initialized Application, shut down (persistence flushed) after."""
    app = ptb.build(persistence, **kw)
    await app.initialize()
    try:
        yield app
    finally:
        await app.shutdown()


async def eventually(check: Callable[[], Any], within: float = 5.0) -> None:
    """Wait until ``check()`` is true (bus deliveries over Redis are not
    instant); a LocalBus delivers before the writer returns."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- writes --------------------------------------------------------------------------


async def test_unchanged_hand_backs_write_nothing(make_cache: Factory) -> None:
    cache = make_cache()
    p = TierCachePersistence(cache)
    async with running(p) as app:
        await ptb.send(app, *(ptb.message(u, "inc") for u in (1, 2, 3)))
        before = writes(cache)
        await app.update_persistence()
        # one user_data and one chat_data record per user (bot_data: unchanged)
        assert writes(cache) - before == 6
        read_before = reads(cache)
        for _ in range(5):
            await ptb.send(app, *(ptb.message(u, "read") for u in (1, 2, 3)))
            before = writes(cache)
            await app.update_persistence()
            assert writes(cache) == before  # PTB handed back 7 dicts, all unchanged
        assert reads(cache) == read_before  # 30 refreshes: memory hits
        assert p.unchanged >= 5 * 7
        await ptb.send(app, ptb.message(2, "inc"))
        before = writes(cache)
        await app.update_persistence()
        assert writes(cache) - before == 1  # only user 2's user_data changed
    assert cache.get("ptb:user:2") == {"n": 2}


@pytest.mark.redis
async def test_redis_itself_sees_no_command_for_unchanged_data(
    redis_url: str, namespace: str
) -> None:
    """Counted by the server: an update_persistence() over 50 untouched
    users and chats sends nothing; one changed user, one script call."""
    import redis

    r = redis.Redis.from_url(redis_url)
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    try:
        async with running(TierCachePersistence(cache)) as app:
            await ptb.send(app, *(ptb.message(u, "inc") for u in range(1, 51)))
            await app.update_persistence()
            await ptb.send(app, *(ptb.message(u, "read") for u in range(1, 51)))
            r.config_resetstat()
            await app.update_persistence()
            assert _calls(r) == {}  # not one command but the bus listener's reads
            await ptb.send(app, ptb.message(7, "inc"))
            r.config_resetstat()
            await app.update_persistence()
            assert _calls(r, but=SCRIPTED) == {"evalsha": 1}
    finally:
        await cache.aclose()
        r.close()


#: What the compare-and-set script runs inside its one EVALSHA.
SCRIPTED = ("set", "get", "type", "xadd", "pexpire", "del")


def _calls(r: Any, *, but: tuple[str, ...] = ()) -> dict[str, int]:
    """Commands the server ran since CONFIG RESETSTAT, but the bus
    listener's reads, the test's own calls and ``but``."""
    ignore = ("config", "info", "xread", "xrange", "ping", "hello", "client", *but)
    calls: dict[str, int] = {}
    for name, entry in r.info("commandstats").items():
        command = name.removeprefix("cmdstat_").partition("|")[0]
        if command not in ignore:
            calls[command] = calls.get(command, 0) + int(entry["calls"])
    return calls


async def test_data_round_trips_into_a_second_application(make_cache: Factory) -> None:
    cache = make_cache()
    p = TierCachePersistence(cache)
    async with running(p) as app:
        await ptb.send(app, ptb.message(5, "inc"), ptb.message(5, "set city Oslo"))
        app.bot_data["started"] = {"by": 5, "tags": {"a", "b"}, "pos": (1, 2)}
        await app.update_persistence()
    assert cache.get("ptb:user:5") == {"n": 1, "profile": {"city": "Oslo"}}
    assert cache.get("ptb:chat:5") == {"last": "set city Oslo"}

    second = TierCachePersistence(make_cache())
    async with running(second) as app2:
        assert app2.bot_data == {"started": {"by": 5, "tags": {"a", "b"}, "pos": (1, 2)}}
        await ptb.send(app2, ptb.message(5, "inc"))
        await app2.update_persistence()
        # refresh_user_data loaded user 5 before the handler ran
        assert app2.user_data[5]["n"] == 2


async def test_callback_data_round_trips_and_merges_keyboards(make_cache: Factory) -> None:
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    def keyboard(data: object) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup([[InlineKeyboardButton("go", callback_data=data)]])

    a_cache, b_cache = make_cache(), make_cache()
    async with (
        running(TierCachePersistence(a_cache), callback_data=True) as a,
        running(TierCachePersistence(b_cache), callback_data=True) as b,
    ):
        a.bot.callback_data_cache.process_keyboard(keyboard(("buy", 3)))
        await a.update_persistence()
        before = writes(a_cache)
        await a.update_persistence()
        assert writes(a_cache) == before  # unchanged: not written
        b.bot.callback_data_cache.process_keyboard(keyboard(("sell", 1)))
        await b.update_persistence()  # b's keyboard merges with a's
    async with running(TierCachePersistence(make_cache()), callback_data=True) as c:
        keyboards, _ = c.bot.callback_data_cache.persistence_data
        buttons = sorted(v for _, _, data in keyboards for v in data.values())
        assert buttons == [("buy", 3), ("sell", 1)]


async def test_telegram_objects_and_user_classes_round_trip(make_cache: Factory) -> None:
    """Telegram objects go in as ``to_dict()`` and come back with
    ``de_json``; the user's own classes are registered with the serializer."""
    from telegram import User

    cache = make_cache(serializer=MsgpackSerializer(types=[ptb.Cart]))
    async with running(TierCachePersistence(cache)) as app:
        await ptb.send(app, ptb.message(5, "inc"))
        user = User(5, "user5", False)
        app.user_data[5]["me"] = user.to_dict()
        app.user_data[5]["cart"] = ptb.Cart(items=["tea"], total=3)
        app.mark_data_for_update_persistence(user_ids=5)
    cache2 = make_cache(serializer=MsgpackSerializer(types=[ptb.Cart]))
    async with running(TierCachePersistence(cache2)) as app2:
        await ptb.send(app2, ptb.message(5, "read"))
        data = app2.user_data[5]
        assert User.de_json(data["me"], app2.bot) == user
        assert data["cart"] == ptb.Cart(items=["tea"], total=3)
        before = writes(cache2)
        await app2.update_persistence()
        assert writes(cache2) == before  # an equal object is no change


async def test_get_user_data_lists_every_stored_user_and_chat(make_cache: Factory) -> None:
    p = TierCachePersistence(make_cache())
    async with running(p) as app:
        await ptb.send(app, *(ptb.message(u, "inc", chat_id=-100 - u % 2) for u in range(1, 8)))
        await ptb.send(app, ptb.message(99, "read"))  # empty user_ and chat_data: not stored
    second = TierCachePersistence(make_cache())
    users = await second.get_user_data()
    assert users == {u: {"n": 1} for u in range(1, 8)}
    chats = await second.get_chat_data()
    assert chats == {-100: {"last": "inc"}, -101: {"last": "inc"}}
    async with running(second) as app2:
        assert dict(app2.user_data) == users


async def test_drop_user_data_deletes_the_record(make_cache: Factory) -> None:
    cache = make_cache()
    p = TierCachePersistence(cache)
    async with running(p) as app:
        await ptb.send(app, ptb.message(3, "inc"))
        await app.update_persistence()
        assert cache.get("ptb:user:3") == {"n": 1}
        app.drop_user_data(3)
        await app.update_persistence()
    assert cache.get("ptb:user:3") is None


async def test_prefix_and_store_data_are_honoured(make_cache: Factory) -> None:
    cache = make_cache()
    p = TierCachePersistence(
        cache, prefix="bot7", store_data=PersistenceInput(chat_data=False), update_interval=5
    )
    assert p.update_interval == 5
    async with running(p) as app:
        await ptb.send(app, ptb.message(4, "inc"))
    assert cache.get("bot7:user:4") == {"n": 1}
    assert cache.get("bot7:chat:4") is None and cache.get("ptb:user:4") is None
    for bad in ({"prefix": ""}, {"max_concurrency": 0}):
        with pytest.raises(ConfigError):
            TierCachePersistence(cache, **bad)


# -- conversations -----------------------------------------------------------------------


async def test_conversation_states_persist_and_reload(make_cache: Factory) -> None:
    serializer = MsgpackSerializer(types=[ptb.Step])  # IntEnum states need registering
    cache = make_cache(serializer=serializer)
    async with running(TierCachePersistence(cache), conversation=True) as app:
        await ptb.send(app, ptb.message(8, "/signup"), ptb.message(9, "/signup"))
        await ptb.send(app, ptb.message(9, "Bo"))
        await app.update_persistence()
    stored = cache.get("ptb:conv:signup")
    assert stored == {(8, 8): ptb.Step.NAME, (9, 9): ptb.Step.AGE}
    assert type(stored[(8, 8)]) is ptb.Step

    # a restarted process carries on where the conversation was
    cache2 = make_cache(serializer=MsgpackSerializer(types=[ptb.Step]))
    async with running(TierCachePersistence(cache2), conversation=True) as app2:
        await ptb.send(app2, ptb.message(8, "Al"), ptb.message(9, "42"))
        await app2.update_persistence()
        assert app2.user_data[8]["name"] == "Al"
        assert app2.user_data[9] == {"name": "Bo", "age": "42"}
    # user 9 finished (END removes the key); the two processes' entries merged
    assert cache2.get("ptb:conv:signup") == {(8, 8): ptb.Step.AGE}


async def test_unregistered_enum_state_is_a_clear_error(make_cache: Factory) -> None:
    errors: list[object] = []
    async with running(TierCachePersistence(make_cache()), conversation=True) as app:

        async def on_error(update: object, context: Any) -> None:
            errors.append(context.error)

        app.add_error_handler(on_error)
        await ptb.send(app, ptb.message(8, "/signup"))
        await app.update_persistence()
    assert errors and all(isinstance(e, SerializationError) for e in errors)
    assert "Step" in str(errors[0])


# -- several processes --------------------------------------------------------------------


async def test_refresh_pulls_another_process_change(make_cache: Factory) -> None:
    a_cache, b_cache = make_cache(), make_cache()
    async with (
        running(TierCachePersistence(a_cache)) as a,
        running(TierCachePersistence(b_cache)) as b,
    ):
        await ptb.send(a, ptb.message(1, "inc"))
        await a.update_persistence()
        await ptb.send(b, ptb.message(1, "set lang de"))  # b saw n == 1 first
        assert b.user_data[1] == {"n": 1, "profile": {"lang": "de"}}
        await ptb.send(a, ptb.message(1, "inc"), ptb.message(1, "set city Rome"))
        a.bot_data["motd"] = "hi from a"
        await a.update_persistence()

        async def b_sees_it() -> bool:
            await ptb.send(b, ptb.message(1, "read"))
            return bool(b.user_data[1].get("n") == 2 and b.bot_data.get("motd"))

        await eventually(b_sees_it)
        # b's own unwritten change was kept, nested paths merged
        assert b.user_data[1] == {"n": 2, "profile": {"lang": "de", "city": "Rome"}}
        assert b.bot_data == {"motd": "hi from a"}
        await b.update_persistence()
    assert b_cache.get("ptb:user:1") == {"n": 2, "profile": {"lang": "de", "city": "Rome"}}


async def test_a_same_path_conflict_is_logged_never_silent(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    a_cache, b_cache = make_cache(), make_cache()
    pa, pb = TierCachePersistence(a_cache), TierCachePersistence(b_cache)
    async with running(pa) as a, running(pb) as b:
        await ptb.send(a, ptb.message(1, "inc"))
        await a.update_persistence()
        await ptb.send(b, ptb.message(1, "read"))
        assert b.user_data[1] == {"n": 1}
        # both increment n from 1, each in its own RAM (a plain int)
        await ptb.send(a, ptb.message(1, "inc"))
        await ptb.send(b, ptb.message(1, "inc"), ptb.message(1, "set lang fi"))
        await a.update_persistence()
        await eventually(lambda: _stored_is(b_cache, "ptb:user:1", "n", 2))
        with caplog.at_level(logging.WARNING, logger="tiercache.ptb"):
            await b.update_persistence()
        assert pb.conflicts == 1
        (key, conflict), *_ = pb.recent_conflicts
        assert (key, conflict.path, conflict.base, conflict.ours, conflict.theirs) == (
            "ptb:user:1",
            ("n",),
            1,
            2,
            2,
        )
        assert any("dropped" in r.getMessage() for r in caplog.records)
        # b's other change was written; its n is replaced by the stored one
        assert b_cache.get("ptb:user:1") == {"n": 2, "profile": {"lang": "fi"}}
        await ptb.send(b, ptb.message(1, "read"))
        assert b.user_data[1] == {"n": 2, "profile": {"lang": "fi"}}
        before = writes(b_cache)
        await b.update_persistence()
        assert writes(b_cache) == before  # the dropped value is not written later


async def test_a_write_from_a_stale_copy_is_deferred_then_settled(
    tmp_path: Path, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No bus: b's memory copy is stale, so its scope loses the
    compare-and-set race on ``n`` and writes nothing; the retry (or the
    next refresh) settles ``n`` through the resolver, logged, and writes
    b's other change."""
    caches = [
        TieredCache(MemoryTier(), DiskTier(tmp_path / "d"), namespace=namespace, bus=None)
        for _ in range(2)
    ]
    pa, pb = (TierCachePersistence(c) for c in caches)
    try:
        async with running(pa) as a, running(pb) as b:
            await ptb.send(a, ptb.message(1, "inc"))
            await a.update_persistence()
            await ptb.send(b, ptb.message(1, "read"))
            await ptb.send(a, ptb.message(1, "inc"))
            await a.update_persistence()
            await ptb.send(b, ptb.message(1, "inc"), ptb.message(1, "set lang sv"))
            with caplog.at_level(logging.INFO, logger="tiercache.ptb"):
                await b.update_persistence()  # user 1: deferred (then retried)
                await ptb.send(b, ptb.message(1, "read"))
                await b.update_persistence()
            assert "write deferred" in caplog.text
            assert pb.conflicts == 1  # n: once, by the retry or the refresh
            assert b.user_data[1] == {"n": 2, "profile": {"lang": "sv"}}
        assert caches[1].get_copy("ptb:user:1") == {"n": 2, "profile": {"lang": "sv"}}
    finally:
        for c in caches:
            c.close()


async def _stored_is(cache: TieredCache, key: str, field: str, value: Any) -> bool:
    got = await cache.aget(key)
    return isinstance(got, dict) and got.get(field) == value


async def test_counters_merge_exactly(make_cache: Factory) -> None:
    a_cache, b_cache = make_cache(), make_cache()
    pa, pb = TierCachePersistence(a_cache), TierCachePersistence(b_cache)
    async with running(pa) as a, running(pb) as b:
        await ptb.send(a, ptb.message(1, "counter"), ptb.message(1, "inc"))
        await a.update_persistence()
        await ptb.send(b, ptb.message(1, "read"))
        for _ in range(3):
            await ptb.send(a, ptb.message(1, "counter"))
            await ptb.send(b, ptb.message(1, "counter"), ptb.message(1, "inc"))
        await a.update_persistence()  # a: 2 + 3
        await eventually(lambda: _stored_is(b_cache, "ptb:user:1", "n", 5))
        await b.update_persistence()  # b: 2 + 6, from a stale 2
        stored = b_cache.get("ptb:user:1")
        assert stored["n"] == Counter(11) and type(stored["n"]) is Counter
        assert pa.conflicts == pb.conflicts == 0


async def test_one_update_persistence_over_many_users_bounds_concurrency(
    make_cache: Factory,
) -> None:
    cache = make_cache()
    p = TierCachePersistence(cache, max_concurrency=8)
    inside = peak = 0
    session = cache.session

    @asynccontextmanager
    async def counted(key: str, **kw: Any) -> AsyncIterator[Any]:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        try:
            async with session(key, **kw) as s:
                yield s
        finally:
            inside -= 1

    cache.session = counted  # type: ignore[assignment, method-assign]
    async with running(p) as app:
        await ptb.send(app, *(ptb.message(u, "inc") for u in range(1, 251)))
        await app.update_persistence()  # 500 writes gathered at once
        assert 1 < peak <= 8
    assert cache.get("ptb:user:250") == {"n": 1}


@pytest.mark.redis
async def test_hundreds_of_users_at_once_fit_a_small_pool(redis_url: str, namespace: str) -> None:
    """300 users and chats gathered by one update_persistence(), 4 Redis
    connections: every write lands, no error reaches PTB."""
    cache = TieredCache(MemoryTier(), RedisTier(redis_url, max_connections=4), namespace=namespace)
    errors: list[object] = []
    try:
        async with running(TierCachePersistence(cache)) as app:

            async def on_error(update: object, context: Any) -> None:
                errors.append(context.error)

            app.add_error_handler(on_error)
            await ptb.send(app, *(ptb.message(u, "inc") for u in range(1, 301)))
            await app.update_persistence()
        assert errors == []
        assert len(await cache.akeys("ptb:user:*")) == 300
    finally:
        await cache.aclose()


async def test_shutdown_writes_pending_and_post_shutdown_closes(make_cache: Factory) -> None:
    cache = make_cache()
    p = TierCachePersistence(cache)
    app = ptb.build(p)

    async def post_shutdown(application: Any) -> None:
        await cache.aclose()

    await app.initialize()
    await ptb.send(app, ptb.message(6, "inc"))
    await app.shutdown()  # PTB: update_persistence(), then persistence.flush()
    await post_shutdown(app)  # what run_polling() calls next
    again = make_cache()
    assert again.get("ptb:user:6") == {"n": 1}


# -- real processes ------------------------------------------------------------------------

WORKER = ROOT / "tests" / "integration" / "_ptb_worker.py"
PYTHON = [sys.executable, "-W", "error::RuntimeWarning"]


async def test_a_custom_context_type_is_one_versioned_unit(
    make_cache: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """user_data of a non-dict ContextTypes class: stored whole, written
    only when it changed and only over the version this process saw."""
    serializer = MsgpackSerializer(types=[ptb.Cart])
    a_cache, b_cache = make_cache(serializer=serializer), make_cache(serializer=serializer)
    pa, pb = TierCachePersistence(a_cache), TierCachePersistence(b_cache)
    await pa.update_user_data(1, ptb.Cart(["tea"], 3))  # type: ignore[arg-type]
    before = writes(a_cache)
    await pa.update_user_data(1, ptb.Cart(["tea"], 3))  # type: ignore[arg-type]
    assert writes(a_cache) == before
    assert (await pb.get_user_data()) == {1: ptb.Cart(["tea"], 3)}
    await pa.update_user_data(1, ptb.Cart(["tea", "jam"], 5))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="tiercache.ptb"):
        await pb.update_user_data(1, ptb.Cart(["milk"], 1))  # type: ignore[arg-type]
    assert pb.conflicts == 1 and "dropped" in caplog.text
    assert b_cache.get_versioned("ptb:user:1")[0] == ptb.Cart(["tea", "jam"], 5)


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["counter", "inc"])
def test_two_processes_increment_one_user_counter(
    redis_url: str, namespace: str, tmp_path: Path, mode: str
) -> None:
    """Two OS processes, one Redis: each increments user 1's ``n`` N times,
    with ``update_persistence()`` after each. A Counter ends at exactly 2N;
    a plain int at 2N minus the increments that were logged as dropped."""
    n = 60
    start = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [*PYTHON, str(WORKER), redis_url, namespace, mode, str(n), str(start), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    time.sleep(0.05)
    start.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, bus=None)
    try:
        final = cache.get("ptb:user:1")["n"]
    finally:
        cache.close()
    dropped = sum(r["dropped"] for r in results)
    if mode == "counter":
        assert (final, dropped) == (2 * n, 0)
    else:
        assert final + dropped == 2 * n, (final, results)


# -- the example ----------------------------------------------------------------------------------


def test_the_example_bot_runs_offline(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", str(ROOT / "examples" / "ptb_bot.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "user 42 said hello 2 times" in proc.stdout
