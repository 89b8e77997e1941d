"""RedisTier against a real redis-server: faults, event loops, wire behaviour."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
import redis
import redis.asyncio

from tiercache import ConfigError, TierError
from tiercache._envelope import Envelope, encode
from tiercache._tiers import RedisTier
from tiercache.testing import RedisServer

pytestmark = pytest.mark.redis

ENVELOPE_LIKE = b"TC" + bytes(46)  # 48 bytes, version 0


def _ops_sync(tier: RedisTier) -> dict[str, object]:
    return {
        "get": lambda: tier.get("k"),
        "get_many": lambda: tier.get_many(["k", "j"]),
        "set": lambda: tier.set("k", b"v", 10),
        "set_many": lambda: tier.set_many([("k", b"v", None)]),
        "delete": lambda: tier.delete("k"),
        "touch": lambda: tier.touch("k", 10),
        "touch-persist": lambda: tier.touch("k", None),
        "compare_and_set": lambda: tier.compare_and_set("k", ENVELOPE_LIKE, None, 0),
    }


def _ops_async(tier: RedisTier) -> dict[str, object]:
    return {
        "aget": lambda: tier.aget("k"),
        "aget_many": lambda: tier.aget_many(["k", "j"]),
        "aset": lambda: tier.aset("k", b"v", 10),
        "aset_many": lambda: tier.aset_many([("k", b"v", None)]),
        "adelete": lambda: tier.adelete("k"),
        "atouch": lambda: tier.atouch("k", 10),
        "atouch-persist": lambda: tier.atouch("k", None),
        "acompare_and_set": lambda: tier.acompare_and_set("k", ENVELOPE_LIKE, None, 0),
    }


# -- faults ----------------------------------------------------------------------


def test_errors_are_wrapped_when_the_server_is_gone(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, prefix="t:")
    tier.set("k", b"v")
    redis_server.stop()
    try:
        for name, op in _ops_sync(tier).items():
            started = time.monotonic()
            with pytest.raises(TierError) as info:
                op()  # type: ignore[operator]
            assert isinstance(info.value.__cause__, redis.RedisError | OSError), name
            # Refused connections fail fast; the retry is bounded.
            assert time.monotonic() - started < 2.0, name
    finally:
        tier.close()


async def test_async_errors_are_wrapped_when_the_server_is_gone(
    redis_server: RedisServer,
) -> None:
    tier = RedisTier(redis_server.url, prefix="t:")
    await tier.aset("k", b"v")  # opens this loop's pool
    redis_server.stop()
    try:
        for name, op in _ops_async(tier).items():
            with pytest.raises(TierError) as info:
                await op()  # type: ignore[operator]
            assert isinstance(info.value.__cause__, redis.RedisError | OSError), name
    finally:
        await tier.aclose()


async def test_recovers_after_a_restart(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, prefix="t:")
    try:
        tier.set("k", b"v")
        await tier.aset("k", b"v")
        redis_server.restart()  # all data and all connections are gone
        # Pooled connections were cut; the one retry reconnects.
        assert tier.get("k") is None
        assert await tier.aget("k") is None
        tier.set("k", b"again")
        assert await tier.aget("k") == b"again"
    finally:
        await tier.aclose()


# -- the event loop --------------------------------------------------------------


async def test_async_methods_use_redis_asyncio(redis_url: str, namespace: str) -> None:
    tier = RedisTier(redis_url, prefix=f"{namespace}:")
    try:
        await tier.aset("k", b"v")
        entry = tier._loops[asyncio.get_running_loop()]
        assert isinstance(entry.client, redis.asyncio.Redis)
        assert tier._sync is None  # the sync client is opened only when used
    finally:
        await tier.aclose()


async def test_async_methods_never_block_the_loop(redis_server: RedisServer) -> None:
    """While the server stalls every command, the loop keeps ticking."""
    tier = RedisTier(redis_server.url, prefix="t:")
    admin = redis.Redis.from_url(redis_server.url)
    try:
        await tier.aset("k", ENVELOPE_LIKE)  # connect first: connecting is not what we test
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        pause = 0.4
        admin.execute_command("CLIENT", "PAUSE", int(pause * 1000), "ALL")
        started = time.monotonic()
        # Each op waits the pause out on the server; none may hold the loop.
        results = await asyncio.gather(*(op() for op in _ops_async(tier).values()))  # type: ignore[operator]
        elapsed = time.monotonic() - started
        stop.set()
        await ticking
        assert len(results) == 8
        assert elapsed >= pause * 0.5  # the ops really did wait
        assert ticks >= 10, f"loop ticked {ticks} times in {elapsed:.2f} s"
    finally:
        admin.close()
        await tier.aclose()


def test_one_tier_serves_many_event_loops(redis_url: str, namespace: str) -> None:
    """Loops come and go (asyncio.run, a loop per thread); no leak, no warning."""
    tier = RedisTier(redis_url, prefix=f"{namespace}:")

    async def use(value: bytes) -> bytes | None:
        await tier.aset("k", value)
        return await tier.aget("k")

    try:
        for i in range(3):
            assert asyncio.run(use(b"%d" % i)) == b"%d" % i
            # The loop's shutdown closed its client and forgot the loop.
            assert tier._loops == {}

        results: list[bytes | None] = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(asyncio.run(use(b"t%d" % i))))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == 4
        assert tier._loops == {}
    finally:
        tier.close()
    gc.collect()  # an unclosed connection would warn here, and warnings are errors


def test_close_closes_a_loop_that_is_still_open(redis_url: str, namespace: str) -> None:
    tier = RedisTier(redis_url, prefix=f"{namespace}:")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(tier.aset("k", b"v"))
        client = tier._loops[loop].client
        tier.close()  # not running: the tier runs the close on it
        assert tier._loops == {}
        pool = client.connection_pool
        assert not any(c.is_connected for c in pool._available_connections)
        assert tier.get("k") == b"v"  # still usable: reconnects
        tier.close()
        tier.close()  # idempotent
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- what goes over the wire -------------------------------------------------------


def _commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since CONFIG RESETSTAT, the same on every Redis
    version: 7 counts subcommands apart (``config|resetstat``,
    ``script|load``), 6.2 under their command; they are summed here."""
    out: dict[str, int] = {}
    for name, v in client.info("commandstats").items():
        command = name.removeprefix("cmdstat_").partition("|")[0]
        out[command] = out.get(command, 0) + int(v["calls"])
    return out


def test_touch_sends_only_expiry_commands(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, prefix="t:")
    admin = redis.Redis.from_url(redis_server.url)
    try:
        tier.set("k", b"v" * 100_000)
        admin.config_resetstat()
        assert tier.touch("k", 60) is True
        assert tier.touch("k", None) is True
        stats = _commandstats(admin)
        stats.pop("config", None)
        stats.pop("info", None)
        assert stats == {"pexpire": 1, "exists": 1, "persist": 1, "multi": 1, "exec": 1}
    finally:
        admin.close()
        tier.close()


def test_set_many_and_cas_commands(redis_server: RedisServer) -> None:
    tier = RedisTier(redis_server.url, prefix="t:")
    admin = redis.Redis.from_url(redis_server.url)
    try:
        admin.config_resetstat()
        tier.set_many([(f"k{i}", b"v", 60 if i % 2 else None) for i in range(100)])
        v1 = encode(Envelope(1, 0, 1, 0, 0, 0, b""))
        assert tier.compare_and_set("cas", v1, 5, 0) is True
        assert tier.compare_and_set("cas", v1, 5, 0) is False
        stats = _commandstats(admin)
        assert stats["set"] == 101  # SETs inside a script count too
        assert "multi" not in stats  # a plain pipeline, not a transaction
        # The script is loaded once (after one NOSCRIPT), then called by its SHA.
        assert stats.get("script", 0) == 1
        assert stats.get("eval", 0) == 0
        assert stats["evalsha"] == 3
        assert admin.pttl("t:k1") > 59_000
        assert admin.pttl("t:k0") == -1
        assert 0 < admin.pttl("t:cas") <= 5000
    finally:
        admin.close()
        tier.close()


# -- configuration -------------------------------------------------------------------


def test_rejects_bad_settings(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="decode_responses"):
        RedisTier(redis.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(ConfigError, match="scheme"):
        RedisTier("localhost:6379")
    with pytest.raises(ConfigError, match="async_client"):
        RedisTier(redis.asyncio.Redis.from_url(redis_url))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="socket_timeout"):
        RedisTier(redis_url, socket_timeout=0)
    with pytest.raises(ConfigError, match="retries"):
        RedisTier(redis_url, retries=-1)
    with pytest.raises(ConfigError, match="prefix"):
        RedisTier(redis_url, prefix=b"x")  # type: ignore[arg-type]


async def test_given_clients_are_used_and_left_open(redis_url: str, namespace: str) -> None:
    sync = redis.Redis.from_url(redis_url)
    sync_only = RedisTier(sync, prefix=f"{namespace}:")
    sync_only.set("k", b"v")
    with pytest.raises(ConfigError, match="async_client"):
        await sync_only.aget("k")

    aclient = redis.asyncio.Redis.from_url(redis_url)
    both = RedisTier(sync, prefix=f"{namespace}:", async_client=aclient)
    try:
        assert await both.aget("k") == b"v"
        assert await both.acompare_and_set("new", ENVELOPE_LIKE, None, 0) is True
        await both.aclose()
        sync_only.close()
        # Still open: they belong to the caller.
        assert sync.get(f"{namespace}:k") == b"v"
        assert await aclient.get(f"{namespace}:k") == b"v"
    finally:
        await aclient.aclose()
        sync.close()
