"""The Redis tier and bus behind Redis Sentinel: a ``redis+sentinel://``
URL and caller-owned ``master_for`` clients work end to end, and keep
working, on the new master, after a failover."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio.sentinel

from tests.integration._helpers import wait_until
from tests.integration.test_bus import Inbox
from tiercache import MemoryTier, RedisBus, RedisTier, TieredCache, TierError
from tiercache.testing import LocalSentinel

pytestmark = pytest.mark.redis


def _cache(url_or_client: object, namespace: str, **kwargs: object) -> TieredCache:
    return TieredCache(MemoryTier(), RedisTier(url_or_client, **kwargs), namespace=namespace)  # type: ignore[arg-type]


def test_a_sentinel_url_serves_tier_and_bus_across_a_failover(
    sentinel: LocalSentinel, namespace: str
) -> None:
    a, b = _cache(sentinel.url, namespace), _cache(sentinel.url, namespace)
    try:
        with a.session("chat:1") as s:
            s["n"] = 1
            s["big"] = "x" * 5000  # stored as fields: the fields scripts run too
        assert b.get("chat:1")["n"] == 1
        a.update("chat:1", lambda s: s.__setitem__("n", 2))
        wait_until(lambda: b.get("chat:1")["n"] == 2, "b to hear of n=2", 5)
        first = sentinel.master_port
        new = sentinel.failover()
        a.update("chat:1", lambda s: s.__setitem__("n", 3))
        # b's listener followed the master: the news of n=3 reaches it.
        wait_until(lambda: b.get("chat:1")["n"] == 3, "b to hear of n=3 after the failover", 10)
        b.update("chat:1", lambda s: s.__setitem__("m", 1))
        wait_until(lambda: a.get("chat:1").get("m") == 1, "a to hear of m=1", 10)
        assert sentinel.admin(new).exists(f"tc:{namespace}:chat:1")
        assert new != first

        async def async_side() -> object:
            c = _cache(sentinel.url, namespace)
            try:
                async with c.session("chat:1") as s:
                    s["async"] = True
                return await c.aget("chat:1")
            finally:
                await c.aclose()

        got = asyncio.run(async_side())
        assert isinstance(got, dict) and got["async"] is True and got["m"] == 1
        wait_until(lambda: a.get("chat:1").get("async") is True, "a to hear of the async write", 10)
    finally:
        a.close()
        b.close()


def test_caller_owned_master_for_clients_work_sync_and_async(
    sentinel: LocalSentinel, namespace: str
) -> None:
    sync = sentinel.client()
    other = _cache(sync, namespace)

    async def use() -> None:
        asentinel = redis.asyncio.sentinel.Sentinel(sentinel.sentinels, socket_timeout=2)
        aclient = asentinel.master_for(sentinel.service, socket_timeout=2)
        cache = _cache(sync, namespace, async_client=aclient)
        try:
            await cache.aset("a", {"v": 1})
            async with cache.session("a") as s:
                s["v"] += 1
            assert await asyncio.to_thread(other.get, "a") == {"v": 2}
            await asyncio.to_thread(sentinel.failover)
            # A client passed in keeps its own retry policy (the tier adds
            # none): the first write over the connection to the demoted
            # master fails, as an outage (transient: a ConnectionError that
            # may have been applied keeps the value pending), and a later
            # write goes to the new master once the circuit breaker lets it.
            for attempt in range(10):
                try:
                    # Redis 6.2 answers READONLY inside the script: refused,
                    # not applied, so aset itself raises (transient).
                    await cache.aset("a", {"v": 3})
                    await cache.aflush()
                    break
                except TierError as exc:
                    assert exc.transient and attempt < 9, exc
                    await asyncio.sleep(0.5)
            assert await cache.aget("a") == {"v": 3}
        finally:
            await cache.aclose()
            await aclient.aclose()
            for sentinel_client in asentinel.sentinels:
                await sentinel_client.aclose()

    try:
        asyncio.run(use())
        wait_until(lambda: other.get("a") == {"v": 3}, "the other cache to hear of v=3", 10)
        assert sentinel.admin(sentinel.master_port).exists(f"tc:{namespace}:a")
    finally:
        other.close()
        sync.close()


def test_a_bus_on_a_master_for_client_keeps_listening_after_a_failover(
    sentinel: LocalSentinel, namespace: str
) -> None:
    client = sentinel.client()
    a = RedisBus(client, namespace=namespace)
    b = RedisBus(client, namespace=namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    try:
        a.publish([("before", "set", 1)])
        inbox.wait_count(1)
        new = sentinel.failover()
        # The listener finds its server changed (the demoted master resynced):
        # a gap, reported (the cache revalidates), then it reads on from the
        # new master. Publish until a message from after the switch arrives.
        deadline = time.monotonic() + 10
        sent = 0
        while "after" not in inbox.keys():
            assert time.monotonic() < deadline, (inbox.keys(), inbox.gaps)
            try:
                a.publish([("after", "set", 2)])
                sent += 1
            except TierError:
                pass  # the publisher's pooled connection to the old master, once
            time.sleep(0.1)
        assert sent >= 1
        listeners = [
            c for c in sentinel.admin(new).client_list() if c["name"] == "tiercache-bus-listener"
        ]
        assert len(listeners) == 1
    finally:
        a.close()
        b.close()
        client.close()


def test_writes_leave_an_old_master_that_is_still_writable(
    sentinel: LocalSentinel, namespace: str
) -> None:
    cache = _cache(sentinel.url, namespace)
    try:
        cache.set("k", {"v": 1})
        old = sentinel.master_port
        new = sentinel.failover(demote=False)
        assert sentinel.role(old) == "master"  # the sentinels have not demoted it yet
        time.sleep(1.1)  # the tier's pool asks the sentinels again at most every second
        cache.set("k2", {"v": 2})
        assert sentinel.admin(new).exists(f"tc:{namespace}:k2")
        assert not sentinel.admin(old).exists(f"tc:{namespace}:k2")
    finally:
        cache.close()
