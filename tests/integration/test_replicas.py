"""``RedisTier(replicas=n)``: every write path waits, in its own round trip,
for n replicas (WAIT); a write too few acknowledged is an outage, never an
acknowledgement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tiercache import ConfigError, Journal, MemoryTier, RedisTier, TieredCache, TierError
from tiercache._fields import Delta
from tiercache._keys import KeyNames
from tiercache.testing import LocalCluster, LocalSentinel, RedisServer

pytestmark = pytest.mark.redis


def env(version: int, payload: bytes = b"p") -> bytes:
    """Bytes with the entry version where the envelope keeps it."""
    from tiercache._envelope import Envelope, encode

    return encode(
        Envelope(
            serializer_id=1,
            schema_version=0,
            version=version,
            created_ms=1,
            updated_ms=1,
            expires_ms=0,
            payload=payload,
        )
    )


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"replicas": -1}, "replicas must be an int >= 0"),
        ({"replicas": True}, "replicas must be an int >= 0"),
        ({"replicas": "1"}, "replicas must be an int >= 0"),
        ({"replicas": 1, "replicas_timeout": 0}, "replicas_timeout must be"),
        ({"replicas": 1, "replicas_timeout": float("nan")}, "replicas_timeout must be"),
        ({"replicas": 1, "replicas_timeout": 2.0}, "shorter than socket_timeout"),
    ],
)
def test_replicas_settings_are_checked_at_construction(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        RedisTier("redis://127.0.0.1:1/0", **kwargs)


def writes(tier: RedisTier) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Every write path of the tier, once each (sync), in an order where
    each compare-and-set finds what it expects."""
    v1, v2, v3 = env(1), env(2), env(3)
    delta = Delta(b"h", [b"f", b"x"], [], full=True)
    yield "set", lambda: tier.set("a", v1, 60)
    yield "set_many", lambda: tier.set_many([("b", v1, None), ("c", v1, 60)])
    yield "touch", lambda: tier.touch("a", 120)
    yield "touch (persist, in MULTI)", lambda: tier.touch("a", None)
    yield "compare_and_set", lambda: tier.compare_and_set("a", v2, None, 1)
    yield "compare_and_set_many", lambda: tier.compare_and_set_many([("b", v2, None, 1)])
    yield "compare_and_set_fields", lambda: tier.compare_and_set_fields("f", v1, None, 0, delta)
    token: list[int] = []
    yield "acquire_lease", lambda: token.append(tier.acquire_lease("L", "F", 5)) or token[0]
    held = lambda: token[0] if token else 1  # noqa: E731 - the token once acquired
    yield (
        "compare_and_set_fenced",
        lambda: tier.compare_and_set_fenced("c", v3, None, 1, "L", held()),
    )
    yield "renew_lease", lambda: tier.renew_lease("L", held(), 5)
    yield "release_lease", lambda: tier.release_lease("L", held())
    yield "quarantine", lambda: tier.quarantine("b", v2, "q", 5)
    yield "delete", lambda: tier.delete("a")


def commandstats(client: redis.Redis, name: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


def test_every_write_path_waits_for_the_replica_in_its_round_trip(
    sentinel: LocalSentinel, namespace: str
) -> None:
    tier = RedisTier(sentinel.url, prefix=f"{namespace}:", replicas=1, replicas_timeout=1.0)
    master = sentinel.admin(sentinel.master_port)
    replica = sentinel.admin(next(p for p in sentinel.data_ports if p != sentinel.master_port))
    try:
        tier.get("warm")  # connects, learns the server's limits
        results = {}
        for name, write in writes(tier):
            master.config_resetstat()
            results[name] = write()
            # One WAIT per write, in its pipeline; a script the server did
            # not know yet is sent again after SCRIPT LOAD, WAIT and all.
            noscript = master.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)
            assert commandstats(master, "wait") == 1 + int(noscript), name
        assert results["compare_and_set"] is True
        assert results["compare_and_set_many"] == [True]
        assert results["compare_and_set_fields"] is True
        assert results["acquire_lease"] > 0 and results["compare_and_set_fenced"] == 1
        assert results["renew_lease"] is True and results["release_lease"] is True
        assert results["quarantine"] is True and results["delete"] is True
        assert results["touch"] is True and results["touch (persist, in MULTI)"] is True
        # Acknowledged means on the replica already, read from it directly.
        assert replica.get(f"{namespace}:c") == env(3)
        assert replica.exists(f"{namespace}:f") and not replica.exists(f"{namespace}:a")

        async def async_writes() -> list[Any]:
            out = [
                await tier.aset("x", env(1)),
                await tier.aset_many([("y", env(1), None)]),
                await tier.acompare_and_set("x", env(2), None, 1),
                await tier.acompare_and_set_many([("y", env(2), None, 1)]),
                await tier.atouch("x", None),
                await tier.aacquire_lease("L2", "F2", 5),
                await tier.adelete("y"),
            ]
            await tier.aclose()
            return out

        master.config_resetstat()
        got = asyncio.run(async_writes())
        assert got[:5] == [None, None, True, [True], True] and got[5] > 0 and got[6] is True
        noscript = master.info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0)
        assert commandstats(master, "wait") == 7 + int(noscript)
        assert replica.get(f"{namespace}:x") == env(2)
    finally:
        tier.close()


def test_a_write_no_replica_acknowledged_is_transient_and_sent(
    redis_server: RedisServer, namespace: str
) -> None:
    tier = RedisTier(redis_server.url, prefix=f"{namespace}:", replicas=1, replicas_timeout=0.02)
    try:
        for name, write in writes(tier):
            with pytest.raises(TierError, match="only 0 of the 1 replica") as info:
                write()
            assert info.value.transient and info.value.sent, name
            assert not getattr(info.value, "saturated", False)
        # Sent: the master applied them, only not durably.
        with redis.Redis.from_url(redis_server.url) as raw:
            assert raw.get(f"{namespace}:c") == env(1) and raw.exists(f"{namespace}:f")
            assert raw.exists(f"{namespace}:q") and not raw.exists(f"{namespace}:a")

        async def one() -> None:
            try:
                await tier.acompare_and_set("c", env(4), None, 1)
            finally:
                await tier.aclose()

        with pytest.raises(TierError, match="only 0 of the 1") as info:
            asyncio.run(one())
        assert info.value.transient and info.value.sent
    finally:
        tier.close()


def test_the_cache_journals_a_write_that_is_not_durable(
    redis_server: RedisServer, namespace: str, tmp_path: Any
) -> None:
    tier = RedisTier(redis_server.url, replicas=1, replicas_timeout=0.02)
    cache = TieredCache(
        MemoryTier(), tier, namespace=namespace, journal=Journal(tmp_path / "j"), bus=None
    )
    try:
        with cache.session("chat:1") as s:
            s["n"] = 1  # acknowledged by the journal, not by Redis
        assert cache.get("chat:1") == {"n": 1}
        assert cache.stats().journal_depth >= 1
    finally:
        cache.close()


def cluster_writes(tier: RedisTier) -> Iterator[tuple[str, Callable[[], Any]]]:
    """:func:`writes` with names as the cache makes them: a cluster keeps a
    key's names (value, lease, fence, quarantine) in one slot."""
    n = KeyNames("ns")
    a, b, c, f = n.value("a"), n.value("b"), n.value("c"), n.value("f")
    v1, v2, v3 = env(1), env(2), env(3)
    delta = Delta(b"h", [b"f", b"x"], [], full=True)
    yield "set", lambda: tier.set(a, v1, 60)
    yield "set_many", lambda: tier.set_many([(b, v1, None), (c, v1, 60)])
    yield "touch", lambda: tier.touch(a, 120)
    yield "touch (persist, in MULTI)", lambda: tier.touch(a, None)
    yield "compare_and_set", lambda: tier.compare_and_set(a, v2, None, 1)
    yield "compare_and_set_many", lambda: tier.compare_and_set_many([(b, v2, None, 1)])
    yield "compare_and_set_fields", lambda: tier.compare_and_set_fields(f, v1, None, 0, delta)
    token: list[int] = []
    lease, fence = n.lease("c"), n.fence("c")
    yield "acquire_lease", lambda: token.append(tier.acquire_lease(lease, fence, 5)) or token[0]
    held = lambda: token[0] if token else 1  # noqa: E731 - the token once acquired
    yield (
        "compare_and_set_fenced",
        lambda: tier.compare_and_set_fenced(c, v3, None, 1, lease, held()),
    )
    yield "renew_lease", lambda: tier.renew_lease(lease, held(), 5)
    yield "release_lease", lambda: tier.release_lease(lease, held())
    yield "quarantine", lambda: tier.quarantine(b, v2, n.quarantine("b"), 5)
    yield "delete", lambda: tier.delete(a)


def _cluster_waits(cluster: LocalCluster) -> int:
    masters = [node.port for node in cluster.nodes if node.role == "master"]
    return sum(commandstats(cluster.admin(port), "wait") for port in masters)


def _cluster_noscripts(cluster: LocalCluster) -> int:
    masters = [node.port for node in cluster.nodes if node.role == "master"]
    return sum(
        int(cluster.admin(p).info("errorstats").get("errorstat_NOSCRIPT", {}).get("count", 0))
        for p in masters
    )


def _reset(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        if node.role == "master":
            cluster.admin(node.port).config_resetstat()


def test_every_write_path_on_a_cluster_waits_for_its_masters_replica(
    killable_cluster: LocalCluster, namespace: str
) -> None:
    """On a cluster each write and its WAIT go to the master of the key it
    writes, on one connection: acknowledged means on that shard's replica."""
    cluster = killable_cluster
    tier = RedisTier(cluster.url, prefix=f"{namespace}:", replicas=1, replicas_timeout=1.0)
    try:
        tier.get("warm")
        results = {}
        n = KeyNames("ns")
        # set_many writes b and c: one WAIT on each one's master.
        masters = {cluster.master_of(tier._key(n.value(k))).port for k in "bc"}
        for name, write in cluster_writes(tier):
            _reset(cluster)
            results[name] = write()
            waits = len(masters) if name == "set_many" else 1
            assert _cluster_waits(cluster) == waits + _cluster_noscripts(cluster), name
        assert results["compare_and_set"] is True and results["compare_and_set_many"] == [True]
        assert results["compare_and_set_fields"] is True
        assert results["acquire_lease"] > 0 and results["compare_and_set_fenced"] == 1
        assert results["renew_lease"] is True and results["release_lease"] is True
        assert results["quarantine"] is True and results["delete"] is True
        assert results["touch"] is True and results["touch (persist, in MULTI)"] is True

        async def async_writes() -> list[Any]:
            x, y = n.value("x"), n.value("y")
            out = [
                await tier.aset(x, env(1)),
                await tier.aset_many([(y, env(1), None)]),
                await tier.acompare_and_set(x, env(2), None, 1),
                await tier.acompare_and_set_many([(y, env(2), None, 1)]),
                await tier.atouch(x, None),
                await tier.aacquire_lease(n.lease("x"), n.fence("x"), 5),
                await tier.adelete(y),
            ]
            await tier.aclose()
            return out

        _reset(cluster)
        got = asyncio.run(async_writes())
        assert got[:5] == [None, None, True, [True], True] and got[5] > 0 and got[6] is True
        assert _cluster_waits(cluster) == 7 + _cluster_noscripts(cluster)
        assert tier.get(n.value("x")) == env(2)
    finally:
        tier.close()


def test_a_cluster_write_no_replica_acknowledged_is_transient_and_sent(
    cluster: LocalCluster, namespace: str
) -> None:
    tier = RedisTier(cluster.url, prefix=f"{namespace}:", replicas=1, replicas_timeout=0.02)
    try:
        for name, write in cluster_writes(tier):
            if name == "compare_and_set_many":
                # A batch: each item carries its own node's error.
                (error,) = write()
                assert isinstance(error, TierError) and "only 0 of the 1 replica" in str(error)
                assert error.transient and error.sent
                continue
            with pytest.raises(TierError, match="only 0 of the 1 replica") as info:
                write()
            assert info.value.transient and info.value.sent, name

        async def one() -> None:
            try:
                await tier.acompare_and_set(KeyNames("ns").value("c"), env(4), None, 1)
            finally:
                await tier.aclose()

        with pytest.raises(TierError, match="only 0 of the 1") as info:
            asyncio.run(one())
        assert info.value.transient and info.value.sent
    finally:
        tier.close()
