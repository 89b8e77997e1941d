"""The Redis tier on a real local Redis Cluster (3 masters): one hash slot
per session, sessions over every shard, batches per node, and several
processes counting exactly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis.asyncio.cluster
import redis.cluster

from tiercache import (
    Expiry,
    Journal,
    Lease,
    MemoryTier,
    RedisTier,
    TieredCache,
    TierError,
    WriteBehind,
)
from tiercache._keys import session_of
from tiercache._tiers._redis_cluster import slot_tag
from tiercache.testing import LocalCluster

from ._helpers import wait_until

pytestmark = pytest.mark.redis


def _client(url: str) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster.from_url(url.replace("redis+cluster", "redis"))


def _stored(client: redis.cluster.RedisCluster, pattern: str) -> list[bytes]:
    found: list[bytes] = []
    for node in client.get_primaries():
        found += client.get_redis_connection(node).keys(pattern)
    return found


def _session_names(name: str, prefix: str) -> str:
    """The cache key a stored name (prefix, slot tag, internal name) is of."""
    rest = name[len(prefix) :]
    assert rest.startswith("{") and rest[9] == "}", rest
    assert slot_tag(rest[10:]) == rest[:10]
    return session_of(rest[10:])


def test_one_sessions_names_share_a_slot_and_sessions_spread_over_every_shard(
    cluster_url: str, namespace: str
) -> None:
    cache = TieredCache(MemoryTier(), RedisTier(cluster_url), namespace=namespace, bus=None)
    keys = [f"chat:{i}" for i in range(60)]
    for key in keys:
        with cache.session(key, lease=Lease(5)) as s:
            s["n"] = 1
    client = _client(cluster_url)
    names = [n.decode() for n in _stored(client, f"tc:*{namespace}*")]
    slots: dict[str, set[int]] = {}
    for name in names:
        slots.setdefault(_session_names(name, "tc:"), set()).add(client.keyslot(name))
    assert set(slots) == set(keys)
    # value and fence of every session (the lease is released at exit)
    assert len(names) >= 2 * len(keys)
    assert all(len(s) == 1 for s in slots.values()), "every session is in one slot"
    nodes = {client.get_node_from_key(name).name for name in names}
    assert len(nodes) == 3, "sessions spread over every master"
    cache.close()
    client.close()


def test_everything_of_a_single_redis_works_on_a_cluster(cluster_url: str, namespace: str) -> None:
    tier = RedisTier(cluster_url)
    cache = TieredCache(MemoryTier(), tier, namespace=namespace, bus=None)
    other = TieredCache(MemoryTier(), RedisTier(cluster_url), namespace=namespace, bus=None)
    with cache.session("u:1") as s:
        s["n"] = 1
    assert other.get("u:1") == {"n": 1}
    assert other.update("u:1", lambda v: {**v, "n": v["n"] + 1}) == {"n": 2}
    with cache.session("u:2", lease=Lease(5)) as s:  # strict mode: leases and fences
        s["strict"] = True
    assert other.get("u:2") == {"strict": True}
    # The fields layout: a big dict is a hash, one field changed is one block.
    big = {f"f{i}": "x" * 40 for i in range(400)}
    with cache.session("big") as s:
        s.update(big)
    with cache.session("big") as s:
        s["f7"] = "changed"
    assert client_type(cluster_url, tier, namespace, "big") == b"hash"
    with cache.session("big") as s:
        s["f8"] = "changed"
    big["f8"] = "changed"
    assert other.get("big") == {**big, "f7": "changed"}
    # A corrupt entry is quarantined in its own slot, and is a miss.
    client = _client(cluster_url)
    bad_name = tier._key(f"{namespace}:bad")
    client.set(bad_name, b"TC\x01garbage")
    assert other.get("bad") is None
    assert other.stats().corrupt_entries == 1
    quarantined = tier._key(f"{namespace}\x00quarantine\x00bad")
    assert client.get(quarantined) == b"TC\x01garbage"
    assert client.keyslot(quarantined) == client.keyslot(bad_name)
    assert cache.delete("u:1")
    fresh = TieredCache(MemoryTier(), RedisTier(cluster_url), namespace=namespace, bus=None)
    assert fresh.get("u:1") is None
    fresh.close()
    cache.close()
    other.close()
    client.close()


def client_type(url: str, tier: RedisTier, namespace: str, key: str) -> bytes:
    client = _client(url)
    try:
        return bytes(client.type(tier._key(f"{namespace}:{key}")))
    finally:
        client.close()


async def test_async_scopes_and_a_given_asyncio_cluster_client(
    cluster_url: str, namespace: str
) -> None:
    plain = cluster_url.replace("redis+cluster", "redis")
    sync = redis.cluster.RedisCluster.from_url(plain)
    aclient = redis.asyncio.cluster.RedisCluster.from_url(plain)
    tier = RedisTier(sync, async_client=aclient)
    assert tier.cluster
    cache = TieredCache(MemoryTier(), tier, namespace=namespace, bus=None)

    async def bump(i: int) -> None:
        async with cache.session(f"k{i % 20}") as s:
            s["n"] = s.get("n", 0) + 1

    await asyncio.gather(*(bump(i) for i in range(100)))
    reader = TieredCache(MemoryTier(), RedisTier(cluster_url), namespace=namespace, bus=None)
    values = await asyncio.gather(*(reader.aget(f"k{i}") for i in range(20)))
    assert [v["n"] for v in values] == [5] * 20
    stored = await tier.aget_many([f"{namespace}:k{i}" for i in range(20)])
    assert all(b is not None for b in stored)
    await cache.aclose()
    await reader.aclose()
    await aclient.aclose()
    sync.close()


def test_a_batched_flush_over_a_stopped_node_writes_the_other_nodes_keys(
    cluster: LocalCluster, namespace: str
) -> None:
    """One node that does not answer holds back only its own keys: the
    flush writes the rest, says the others failed (they stay pending), and
    the next flush once the node is back writes them."""
    tier = RedisTier(cluster.url, socket_timeout=0.3, retries=0)
    cache = TieredCache(MemoryTier(), tier, namespace=namespace, bus=None, flush=WriteBehind(60))
    keys = [f"k{i}" for i in range(30)]
    for key in keys:
        with cache.session(key) as s:
            s["v"] = key
    client = _client(cluster.url)
    node = client.get_node_from_key(tier._key(f"{namespace}:k0"))
    paused = cluster.node(node.port).pid
    assert paused is not None
    on_paused = [k for k in keys if client.get_node_from_key(tier._key(f"{namespace}:{k}")) == node]
    assert 0 < len(on_paused) < len(keys)
    os.kill(paused, signal.SIGSTOP)
    try:
        with pytest.raises(TierError) as failed:
            cache.flush()
        direct = {k: client.get(tier._key(f"{namespace}:{k}")) for k in keys if k not in on_paused}
    finally:
        os.kill(paused, signal.SIGCONT)
    assert failed.value.transient
    assert all(v is not None for v in direct.values()), "the other nodes' keys were written"
    assert cache.stats().tiers[0].size == len(keys)
    wait_until(lambda: _cluster_ok(client), "the cluster is whole again", 20)
    wait_until(lambda: _flushed(cache), "the paused node's keys were written", 20)
    reader = TieredCache(MemoryTier(), RedisTier(cluster.url), namespace=namespace, bus=None)
    assert [reader.get(k) for k in keys] == [{"v": k} for k in keys]
    cache.close()
    reader.close()
    client.close()


def _cluster_ok(client: redis.cluster.RedisCluster) -> bool:
    try:
        return all(
            client.get_redis_connection(n).execute_command("CLUSTER INFO")["cluster_state"] == "ok"
            for n in client.get_primaries()
        )
    except redis.RedisError:
        return False


def _flushed(cache: TieredCache) -> bool:
    try:
        cache.flush()
    except TierError:
        return False
    return True


WORKER = textwrap.dedent(
    """
    import sys
    from tiercache import MemoryTier, RedisTier, TieredCache

    url, namespace, n, keys = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)

    def bump(s):
        s["n"] = s.get("n", 0) + 1

    for i in range(n):
        cache.update(f"k{i % keys}", bump)
    cache.close()
    """
)


def test_four_processes_update_fifty_keys_over_every_shard_exactly(
    cluster_url: str, namespace: str
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, cluster_url, namespace, "300", "50"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    started = time.monotonic()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert time.monotonic() - started < 120
    cache = TieredCache(MemoryTier(), RedisTier(cluster_url), namespace=namespace, bus=None)
    assert [cache.get(f"k{i}") for i in range(50)] == [{"n": 24}] * 50
    cache.close()


def test_journal_replay_and_sliding_expiry_on_a_cluster(
    cluster_url: str, namespace: str, tmp_path: Path
) -> None:
    """Write-behind with a journal (every change journaled, the timer's
    replay writes them as merging compare-and-sets) and a sliding TTL
    (reads refresh it with PEXPIRE) across the masters."""
    tier = RedisTier(cluster_url)
    cache = TieredCache(
        MemoryTier(),
        tier,
        namespace=namespace,
        flush=WriteBehind(60),
        journal=Journal(tmp_path / "journal"),
        ttl=Expiry(30, sliding=True, touch_every=0.05),
    )
    keys = [f"u:{i}" for i in range(20)]
    for key in keys:
        with cache.session(key) as s:
            s["n"] = 1
    assert cache.stats().journal_depth > 0
    cache.flush()  # the journal's records go to the cluster
    assert cache.stats().journal_depth == 0
    client = _client(cluster_url)
    names = [tier._key(f"{namespace}:{k}") for k in keys]
    assert all(0 < client.pttl(n) <= 30_000 for n in names)
    for n in names:
        client.pexpire(n, 5_000)  # as if 25 s had passed
    time.sleep(0.1)
    for key in keys:
        assert cache.get(key) == {"n": 1}  # a read: the TTL slides back
    wait_until(lambda: all(client.pttl(n) > 20_000 for n in names), "every key's TTL to slide", 5)
    reader = TieredCache(MemoryTier(), RedisTier(cluster_url), namespace=namespace, bus=None)
    assert [reader.get(k) for k in keys] == [{"n": 1}] * len(keys)
    reader.close()
    cache.close()
    client.close()
