"""The invalidation bus on a real 3-master Redis Cluster: streams spread over
the masters, delivery, per-stream gaps, a node restart, close, and a
cluster-backed cache.

One cluster for the module (it takes a few seconds to form); each test has
its own namespace, so its own streams. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from tiercache import MemoryTier, RedisTier, TieredCache, TierError, _bus
from tiercache._bus import LISTENER_NAME, RedisBus
from tiercache._bus._message import key_slot, stream_index
from tiercache._redisclient import cluster_url
from tiercache.testing import RedisServer

from ._cluster import Cluster, cluster
from .test_bus import Inbox, wait_until

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Cluster]:
    yield from cluster(3)


@pytest.fixture
def make_bus(redis_cluster: Cluster) -> Iterator[Callable[..., RedisBus]]:
    buses: list[RedisBus] = []

    def make(namespace: str, where: object = None, **kwargs: object) -> RedisBus:
        bus = RedisBus(where or redis_cluster.url, namespace=namespace, **kwargs)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def one_key_per_stream(streams: int) -> list[str]:
    """A key for each stream index, in index order."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < streams:
        keys.setdefault(stream_index(f"key{i}", streams), f"key{i}")
        i += 1
    return [keys[s] for s in range(streams)]


def raw_cluster(c: Cluster) -> redis.cluster.RedisCluster:
    plain = cluster_url(c.url)
    assert plain is not None
    return redis.cluster.RedisCluster.from_url(plain)


# -- delivery ----------------------------------------------------------------------


def test_invalidations_spread_over_every_stream_and_master_and_arrive_in_key_order(
    redis_cluster: Cluster,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = make_bus(namespace), make_bus(namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    assert b.healthy and b.cluster and len(b.streams) == 16
    nodes = {s["node"] for s in b.stats()["streams"].values()}
    assert len(nodes) == 3, "the 16 streams are spread over all 3 masters"

    keys = [f"chat:{i}" for i in range(200)]
    for version in (1, 2):  # several publishes: per-key order must hold across them
        a.publish([(key, "set", version) for key in keys])
    # The third, on connections now open: one write to each master's socket.
    sends: list[int] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(
        self: redis.connection.AbstractConnection, *args: object, **kw: object
    ) -> None:
        if threading.current_thread() is publisher:
            sends.append(self.port)  # type: ignore[attr-defined]
        real_send(self, *args, **kw)  # type: ignore[arg-type]

    publisher = threading.current_thread()
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    a.publish([(key, "set", 3) for key in keys])
    monkeypatch.undo()
    assert sorted(sends) == sorted(n.port for n in redis_cluster.nodes)
    inbox.wait_count(600)
    by_key: dict[str, list[int]] = {}
    for m in inbox.messages:
        assert m.origin == a.origin
        by_key.setdefault(m.key, []).append(m.version)
    assert by_key == {key: [1, 2, 3] for key in keys}

    with raw_cluster(redis_cluster) as raw:
        lengths = [raw.xlen(stream) for stream in b.streams]
    # 200 keys over 16 streams: each has entries (+ b's marker on a new stream).
    assert all(n > 1 for n in lengths), lengths
    assert sum(lengths) == 600 + 16
    stats = b.stats()
    assert stats["received"] == b.received == 600 and a.published == 600
    assert stats["gaps"] == 0 and stats["errors"] == 0 and stats["last_id"] is None
    assert all(s["healthy"] and s["last_id"] for s in stats["streams"].values())


def test_a_cluster_client_given_and_async_publish(
    redis_cluster: Cluster, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    listener = make_bus(namespace)  # by URL
    inbox = Inbox()
    listener.start(inbox.on_messages, inbox.on_gap)
    keys = one_key_per_stream(16)
    plain = cluster_url(redis_cluster.url)
    assert plain is not None

    async def publish_async(bus: RedisBus) -> None:
        await bus.apublish([(key, "del", 2) for key in keys])
        await bus.aclose()

    with raw_cluster(redis_cluster) as client:
        given = RedisBus(client, namespace=namespace)
        assert given.cluster and given.streams == listener.streams
        given.publish([(key, "set", 1) for key in keys])
        # No async client given: apublish runs the sync publish in a thread.
        asyncio.run(given.apublish([("sync-in-thread", "set", 1)]))
        given.close()
        assert client.ping(), "the caller's client stays open"

    async def with_async_client() -> None:
        async_client = redis.asyncio.cluster.RedisCluster.from_url(plain)
        try:
            bus = RedisBus(
                raw_cluster(redis_cluster), namespace=namespace, async_client=async_client
            )
            await publish_async(bus)
            assert await async_client.ping()
        finally:
            await async_client.aclose()

    asyncio.run(with_async_client())
    # A URL bus opens an async cluster client of its own on this loop.
    asyncio.run(publish_async(make_bus(namespace)))
    inbox.wait_count(2 * len(keys) + 1 + len(keys))
    got = [(m.key, m.version) for m in inbox.messages]
    assert sorted(got) == sorted(
        [(k, 1) for k in keys] + [("sync-in-thread", 1)] + [(k, 2) for k in keys] * 2
    )
    assert listener.gaps == 0 and listener.healthy


def test_the_streams_setting(
    redis_cluster: Cluster, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(namespace, streams=3), make_bus(namespace, streams=3)
    assert len(b.streams) == 3 and b.streams[0].startswith("tiercache:v2:{")
    sixteen = make_bus(namespace)
    assert not set(sixteen.streams) & set(b.streams), "another count, other streams"
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    assert sorted({s["node"] for s in b.stats()["streams"].values()}) == sorted(
        f"127.0.0.1:{n.port}" for n in redis_cluster.nodes
    ), "3 streams, one per master"
    a.publish([(key, "set", 1) for key in one_key_per_stream(3)])
    inbox.wait_count(3)
    # A single server keeps its one v1 stream whatever streams= says.
    single = RedisBus("redis://127.0.0.1:1/0", namespace=namespace, streams=3)
    assert not single.cluster and single.streams == (f"tiercache:v1:{namespace}:inv",)


# -- gaps and faults -----------------------------------------------------------------


def _delete(raw: redis.cluster.RedisCluster, key: str) -> None:
    raw.delete(key)


def _xtrim_to_zero(raw: redis.cluster.RedisCluster, key: str) -> None:
    raw.xtrim(key, maxlen=0, approximate=False)


@pytest.mark.parametrize("empty", [_delete, _xtrim_to_zero], ids=["del", "xtrim-maxlen-0"])
def test_one_stream_emptied_is_a_gap_of_that_stream_only(
    redis_cluster: Cluster,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    empty: Callable[[redis.cluster.RedisCluster, str], None],
) -> None:
    a, b = make_bus(namespace, streams=4), make_bus(namespace, streams=4, block_ms=50)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    keys = one_key_per_stream(4)
    a.publish([(key, "set", 1) for key in keys])
    inbox.wait_count(4)

    with raw_cluster(redis_cluster) as raw:
        empty(raw, b.streams[2])
    wait_until(lambda: inbox.gaps == 1, what="the gap")
    per_stream = {stream: s["gaps"] for stream, s in b.stats()["streams"].items()}
    assert per_stream == {stream: int(i == 2) for i, stream in enumerate(b.streams)}
    a.publish([(key, "set", 2) for key in keys])
    inbox.wait_count(8)
    assert sorted(inbox.keys()[4:]) == sorted(keys), "delivery goes on on every stream"
    assert b.gaps == 1 and b.healthy and b.errors == 0 and b.reconnects == 0


def test_a_killed_follower_connection_replays_without_a_gap(
    redis_cluster: Cluster,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_bus._listener, "BACKOFF_BASE", 1.0)  # an outage of 0.5-1 s
    a, b = make_bus(namespace, streams=4), make_bus(namespace, streams=4)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    follower = b._followers[1]
    assert follower._listener_id is not None and follower.node is not None
    host, _, port = follower.node.rpartition(":")
    with redis.Redis(host=host, port=int(port)) as node:
        names = {int(c["id"]): c["name"] for c in node.client_list()}
        assert names[follower._listener_id] == LISTENER_NAME
        node.client_kill_filter(_id=follower._listener_id)
    wait_until(lambda: not b.healthy, what="the bus to notice")
    keys = one_key_per_stream(4)
    a.publish([(key, "set", 1) for key in keys])
    assert not b.healthy, "published during the outage"
    wait_until(lambda: b.healthy, what="recovery")
    inbox.wait_count(4)
    assert sorted(inbox.keys()) == sorted(keys)
    assert inbox.gaps == 0 and b.gaps == 0 and b.reconnects == 1


def test_a_node_restart_is_a_gap_of_its_streams_then_delivery_resumes(
    redis_cluster: Cluster, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(namespace), make_bus(namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    keys = one_key_per_stream(16)
    a.publish([(key, "set", 1) for key in keys])
    inbox.wait_count(16)
    victim = redis_cluster.nodes[1]
    on_victim = [
        stream
        for stream, s in b.stats()["streams"].items()
        if s["node"] == f"127.0.0.1:{victim.port}"
    ]
    assert on_victim

    started = time.monotonic()
    redis_cluster.restart(1)  # same port and slots, its streams gone
    wait_until(lambda: b.gaps == len(on_victim) and b.healthy, timeout=20, what="gaps and recovery")
    per_stream = b.stats()["streams"]
    assert {s for s in per_stream if per_stream[s]["gaps"]} == set(on_victim)
    assert all(per_stream[s]["gaps"] == 1 for s in on_victim)
    # The publisher's cluster client heals too (after one failed publish at most).
    wait_until(lambda: _publishes(a, [(key, "set", 2) for key in keys]), what="publish")
    wait_until(
        lambda: sorted(m.key for m in inbox.messages if m.version == 2) == sorted(keys),
        what="delivery on every stream",
    )
    assert time.monotonic() - started < 20


def _publishes(bus: RedisBus, items: list[tuple[str, str, int]]) -> bool:
    try:
        bus.publish(items)
    except TierError:
        return False
    return True


def test_a_resharded_stream_is_followed_to_its_new_node_with_a_gap(
    redis_cluster: Cluster, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(namespace, streams=3), make_bus(namespace, streams=3)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    keys = one_key_per_stream(3)
    a.publish([(key, "set", 1) for key in keys])
    inbox.wait_count(3)
    moved = b.streams[0]
    slot = key_slot(moved)
    source = redis_cluster.node_of_slot(slot)
    target = (source + 1) % 3
    redis_cluster.move_slot(slot, target)
    try:
        # The follower's XREAD is answered MOVED: it finds the new master,
        # whose run id it has not seen, so the position is not trusted.
        wait_until(lambda: b.gaps == 1 and b.healthy, what="the gap and recovery")
        streams = b.stats()["streams"]
        assert streams[moved]["node"] == f"127.0.0.1:{redis_cluster.nodes[target].port}"
        assert [streams[s]["gaps"] for s in b.streams] == [1, 0, 0]
        a.publish([(key, "set", 2) for key in keys])  # the publisher follows MOVED
        wait_until(lambda: len(inbox.messages) == 6, what="delivery after the move")
        assert sorted(inbox.keys()[3:]) == sorted(keys)
    finally:
        redis_cluster.move_slot(slot, source)


@pytest.fixture
def replicated_cluster() -> Iterator[Cluster]:
    """3 masters with a replica each, for the one failover test."""
    yield from cluster(3, replicas=1)


def test_a_master_failover_is_a_gap_of_its_streams_then_its_replica_serves_them(
    replicated_cluster: Cluster, namespace: str
) -> None:
    url = replicated_cluster.url
    a, b = RedisBus(url, namespace=namespace), RedisBus(url, namespace=namespace)
    try:
        inbox = Inbox()
        b.start(inbox.on_messages, inbox.on_gap)
        keys = one_key_per_stream(16)
        a.publish([(key, "set", 1) for key in keys])
        inbox.wait_count(16)
        master = b.stats()["streams"][b.streams[0]]["node"]
        on_master = [s for s, st in b.stats()["streams"].items() if st["node"] == master]
        # A replica shows in CLUSTER NODES only once it has met its master
        # (the cluster is up before that): wait for it, do not assume it.
        found: list[str] = []

        def has_replica() -> bool:
            try:
                found.append(replicated_cluster.replica_of(master))
            except LookupError:
                return False
            return True

        wait_until(has_replica, timeout=20, what=f"a replica of {master}")
        replica = found[-1]

        replicated_cluster.nodes[replicated_cluster.index_of(master)].kill()
        # node timeout 2 s, then the replica's election: a few seconds.
        wait_until(lambda: b.gaps == len(on_master) and b.healthy, timeout=20, what="failover")
        streams = b.stats()["streams"]
        assert {s for s, st in streams.items() if st["gaps"]} == set(on_master)
        assert all(streams[s]["node"] == replica for s in on_master)
        wait_until(lambda: _publishes(a, [(key, "set", 2) for key in keys]), what="publish")
        wait_until(
            lambda: sorted(m.key for m in inbox.messages if m.version == 2) == sorted(keys),
            what="delivery on every stream",
        )
    finally:
        a.close()
        b.close()


def test_close_is_prompt(namespace: str, make_bus: Callable[..., RedisBus]) -> None:
    bus = make_bus(namespace, block_ms=10_000)
    bus.start(lambda batch: None, lambda: None)
    threads = [f._thread for f in bus._followers]
    assert len(threads) == 16 and all(t is not None and t.is_alive() for t in threads)
    time.sleep(0.05)  # let them block in XREAD
    started = time.perf_counter()
    bus.close()
    assert time.perf_counter() - started < 2.0  # CLIENT UNBLOCK on each node
    assert not any(t is not None and t.is_alive() for t in threads)
    assert not bus.healthy


def test_close_with_a_hung_node_waits_for_the_slowest_follower_not_the_sum(
    redis_cluster: Cluster, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    bus = make_bus(namespace, block_ms=200)
    bus.start(lambda batch: None, lambda: None)
    hung = redis_cluster.nodes[2]
    on_hung = [s for s in bus.stats()["streams"].values() if s["node"] == f"127.0.0.1:{hung.port}"]
    assert len(on_hung) >= 4
    hung.pause()  # SIGSTOP: its followers hang in XREAD, CLIENT UNBLOCK times out
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        bus.close()
        elapsed = time.perf_counter() - started
    finally:
        hung.resume()
    # One 2 s unblock timeout, then the followers' own 2.2 s socket
    # timeouts run out together: not one wait per follower.
    assert elapsed < 4.0, elapsed
    assert not any(f._thread is not None and f._thread.is_alive() for f in bus._followers)
    redis_cluster.wait_ok()


def test_started_while_the_cluster_is_unreachable_is_unhealthy(namespace: str) -> None:
    bus = RedisBus("redis+cluster://127.0.0.1:1", namespace=namespace, streams=2)
    try:
        bus.start(lambda batch: None, lambda: None)  # does not raise
        assert not bus.healthy and bus.unhealthy_since is not None
        with pytest.raises(TierError):
            bus.publish([("k", "set", 1)])
    finally:
        started = time.perf_counter()
        bus.close()
        assert time.perf_counter() - started < 3.0


def test_start_and_close_are_prompt_while_the_seed_node_hangs(namespace: str) -> None:
    with RedisServer() as seed:
        seed.pause()  # accepts connections, answers nothing: 2 s socket timeouts
        try:
            bus = RedisBus(f"redis+cluster://127.0.0.1:{seed.port}", namespace=namespace)
            started = time.perf_counter()
            bus.start(lambda batch: None, lambda: None)
            # One follower tries, the other 15 connect in their threads.
            assert time.perf_counter() - started < 3.5
            assert not bus.healthy and bus.unhealthy_since is not None
            started = time.perf_counter()
            bus.close()
            # Each follower's attempt runs out on its own, not one after another.
            assert time.perf_counter() - started < 3.5
            assert not any(f._thread is not None and f._thread.is_alive() for f in bus._followers)
        finally:
            seed.resume()


# -- a cache on the cluster ------------------------------------------------------------

CHILD_WRITER = """
import sys
from tiercache import MemoryTier, RedisTier, TieredCache
url, namespace = sys.argv[1], sys.argv[2]
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace)
for i in range(20):
    with cache.session(f"chat:{i}") as s:
        s["by"] = "child"
cache.close()
"""


def test_a_cluster_cache_is_told_of_another_process_writes_and_of_a_gap(
    redis_cluster: Cluster, namespace: str
) -> None:
    url = redis_cluster.url
    # max_stale=None: only the bus can make this cache drop a copy.
    cache = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, max_stale=None)
    try:
        assert not cache._s.tier_publishes, "no in-script publish on a cluster (CROSSSLOT)"
        keys = [f"chat:{i}" for i in range(20)]
        for key in keys:
            with cache.session(key) as s:
                s["by"] = "parent"
        subprocess.run(
            [sys.executable, "-c", CHILD_WRITER, url, namespace],
            timeout=60,
            check=True,
            capture_output=True,
        )
        wait_until(
            lambda: all(cache.get(key) == {"by": "child"} for key in keys),
            what="the child's writes heard",
        )

        # A writer without a bus: nothing is published. A gap on one stream
        # (deleted) must still make this cache drop what it holds.
        silent = TieredCache(MemoryTier(), RedisTier(url), namespace=namespace, bus=None)
        try:
            with silent.session(keys[0]) as s:
                s["by"] = "silent"
        finally:
            silent.close()
        assert cache.get(keys[0]) == {"by": "child"}, "a memory copy, not told"
        bus = cache._s.bus
        assert isinstance(bus, RedisBus) and bus.cluster
        with raw_cluster(redis_cluster) as raw:
            raw.delete(bus.streams[5])
        # The cache's count, not the bus's: the bus counts before it calls on_gap.
        wait_until(lambda: cache.stats().bus_gaps == 1, what="the gap")
        assert cache.get(keys[0]) == {"by": "silent"}, "revalidated after the gap"
        assert bus.gaps == 1
    finally:
        cache.close()


def test_a_cache_on_given_cluster_clients_publishes_after_its_sync_and_async_writes(
    redis_cluster: Cluster, namespace: str
) -> None:
    plain = cluster_url(redis_cluster.url)
    assert plain is not None
    listener = TieredCache(
        MemoryTier(), RedisTier(redis_cluster.url), namespace=namespace, max_stale=None
    )
    client = raw_cluster(redis_cluster)
    async_client = redis.asyncio.cluster.RedisCluster.from_url(plain)
    writer = TieredCache(
        MemoryTier(), RedisTier(client, async_client=async_client), namespace=namespace
    )

    async def write_async() -> None:
        async with writer.session("k") as s:
            s["v"] = 2

    async def close_async() -> None:
        await writer.aclose()
        await async_client.aclose()

    with asyncio.Runner() as runner:  # one loop: the async client is bound to it
        try:
            # The same client for tier and bus: one server by same_connection,
            # yet no in-script publish on a cluster.
            assert not writer._s.tier_publishes
            with writer.session("k") as s:
                s["v"] = 1
            assert listener.get("k") == {"v": 1}
            runner.run(write_async())
            wait_until(lambda: listener.get("k") == {"v": 2}, what="the async write heard")
        finally:
            runner.run(close_async())
            client.close()
            listener.close()
