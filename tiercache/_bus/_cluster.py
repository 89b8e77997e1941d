"""The Redis bus on a Redis Cluster: several streams, one follower each.

::

    RedisBus(cluster client or redis+cluster:// URL, streams=16)
      publish(items) ──> item for key k ──> XADD streams[crc32(k) % 16]
                         (one cluster pipeline: redis-py groups the XADDs
                         by node and sends each node its batch; one item:
                         a plain XADD to its node)
      streams  tiercache:v2:{ns:<tag>}:inv:0/16 ... :inv:15/16
               each tag chosen so the 16 slots spread over the 16384 (_message)
      listening ──> one _StreamFollower per stream, each a thread with its own
                    connection to the master serving that stream's slot:
                      follows it exactly as a single-server bus follows its
                      one stream (_listener: position, replay, gap per stream)
                    connection lost, MOVED, ASK, CLUSTERDOWN ──> unhealthy,
                      back off, refresh the topology, connect to the slot's
                      master now; a new run id there (a restart, a failover,
                      the slot moved by resharding) ──> that stream's gap
      healthy = every follower healthy; stats() sums them; close() unblocks
      each follower on its own node (CLIENT UNBLOCK is per node)

Why a thread per stream and not per node: ``XREAD`` over several streams
is a multi-key command, which a cluster refuses (``CROSSSLOT``) unless all
keys share one slot, which is what the streams are made not to do. A
follower costs a thread blocked in ``recv`` and a connection: ``streams=``
sets how many.

Why a moved stream counts as a gap: after a failover the new master is a
replica that may lack the last writes its old master acknowledged (the
replication is asynchronous), even when the reader's position is there;
after resharding the stream moved whole, but the reader cannot tell the
two apart from the new node. A spurious gap costs a revalidation.
"""

from __future__ import annotations

from typing import Any

import redis

from .._clock import Clock
from .._exceptions import ConfigError
from ._base import OnGap, OnMessages
from ._listener import _listener_like, _StreamListener
from ._message import cluster_stream_keys, stream_key

__all__ = ["DEFAULT_STREAMS", "FOLLOWER_OWN_PAUSE", "MAX_STREAMS"]

#: Streams per namespace on a cluster, by default: enough to spread over 16
#: masters, few enough that each process's followers (a thread and a
#: connection each) stay cheap.
DEFAULT_STREAMS = 16
MAX_STREAMS = 256
#: Seconds a follower waits after a read of only its own bus's entries (a
#: single-server listener: OWN_PAUSE, 5 ms). A process writing to a cluster
#: wakes each of its followers in turn, so with 5 ms nearly every write
#: woke one. Measured (2-core VM, noisy; medians of 3000 mutating scopes,
#: 3-master cluster): 16 streams with 5 ms, 630-660 us a scope; with 20 ms
#: 216-246 us; 80 ms no better; one stream 220 us (the write and the
#: publish: two round trips). The price: another process's entry on a
#: stream this one just wrote to may wait up to 20 ms.
FOLLOWER_OWN_PAUSE = 0.02


def check_streams(streams: object) -> int:
    """``streams=`` checked: an int in 1..MAX_STREAMS, else ConfigError."""
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= MAX_STREAMS:
        raise ConfigError(f"streams must be an int in 1..{MAX_STREAMS}, got {streams!r}")
    return streams


class _StreamFollower(_StreamListener):
    """One stream of a cluster bus, followed on a connection of its own to
    the master serving the stream's slot. Its counters and health are its
    own; the bus adds them up."""

    def __init__(self, owner: _ShardedListener, stream: str, index: int) -> None:
        super().__init__(
            owner.namespace,
            owner.origin,
            owner._clock,
            maxlen=owner._maxlen,
            block_ms=owner._block_ms,
        )
        self._stream = stream
        self._owner = owner
        self._thread_name = f"tiercache-bus-{owner.namespace}-{index}"
        #: ``host:port`` of the node the listener connects to (None: not found yet).
        self.node: str | None = None

    def _cluster_client(self) -> Any:
        # A redis.cluster.RedisCluster; Any: most of its node API is untyped.
        return self._owner._client()

    def _new_listener(self) -> redis.Redis:
        cluster = self._cluster_client()
        node = cluster.get_node_from_key(self._stream)
        self.node = node.name
        client: redis.Redis = cluster.get_redis_connection(node)
        return _listener_like(client.connection_pool, self._block_ms)

    def _reconnect(self) -> None:
        old, self._listener = self._listener, None
        if old is not None:
            old.close()
        # The slot may be another node's now (failover, resharding): ask the
        # cluster again. redis-py runs one refresh at a time for all threads.
        self._cluster_client().nodes_manager.initialize()
        self._listener = self._new_listener()

    def _own_pause(self) -> float:
        return FOLLOWER_OWN_PAUSE

    def _unblock(self, listener_id: int) -> bool:
        # At close, a node that did not answer one follower is not asked
        # again for the next: each try on a hung node waits a socket timeout.
        dead = self._owner._unanswered
        node = self.node
        if node in dead:
            return False
        if super()._unblock(listener_id):
            return True
        dead.add(node)
        return False

    def _client(self) -> redis.Redis:
        """The cluster client's connection to this follower's node, for
        ``CLIENT UNBLOCK`` (a client id is per node)."""
        cluster = self._cluster_client()
        host, _, port = (self.node or "").rpartition(":")
        node = cluster.get_node(host=host, port=int(port)) if host else None
        if node is None:
            raise redis.ConnectionError(f"node {self.node} is not in the cluster")
        client: redis.Redis = cluster.get_redis_connection(node)
        return client


class _ShardedListener(_StreamListener):
    """A stream listener that, on a cluster (``shards`` set), follows each
    of several streams with a :class:`_StreamFollower` instead of one
    stream itself, and reports their health and counters as its own. On a
    single server it is exactly :class:`_StreamListener`."""

    def __init__(
        self,
        namespace: str,
        origin: str | None,
        clock: Clock | None,
        *,
        maxlen: int,
        block_ms: int,
        shards: int | None,
    ) -> None:
        super().__init__(namespace, origin, clock, maxlen=maxlen, block_ms=block_ms)
        self._streams: tuple[str, ...] = (
            (stream_key(namespace),) if shards is None else cluster_stream_keys(namespace, shards)
        )
        self._on_cluster = shards is not None
        self._stream = self._streams[0]
        self._followers: list[_StreamFollower] = []
        #: Nodes that did not answer a CLIENT UNBLOCK during close().
        self._unanswered: set[str | None] = set()

    @property
    def cluster(self) -> bool:
        """Whether the bus is on a Redis Cluster (several streams)."""
        return self._on_cluster

    @property
    def streams(self) -> tuple[str, ...]:
        """The Redis keys of the bus's streams: one on a single server."""
        return self._streams

    @property
    def stream(self) -> str:
        """The stream's Redis key (on a cluster: the first of :attr:`streams`)."""
        return self._stream

    # -- listening -------------------------------------------------------------

    def _listen(self, on_messages: OnMessages, on_gap: OnGap, *, connect: bool = True) -> None:
        if not self._on_cluster:
            super()._listen(on_messages, on_gap, connect=connect)
            return
        self._followers = [
            _StreamFollower(self, stream, index) for index, stream in enumerate(self._streams)
        ]
        # Each syncs here, as a single-server bus does, unless one could not
        # reach the cluster: then the rest connect in their threads, so a
        # cluster that is down costs start() one connect timeout, not one each.
        reachable = connect
        for follower in self._followers:
            follower._listen(on_messages, on_gap, connect=reachable)
            reachable = reachable and follower._healthy

    def _stop_listener(self) -> None:
        if not self._on_cluster:
            super()._stop_listener()
            return
        self._unanswered = set()
        # All told first, so they wind down together: close() then waits
        # for the slowest, not for the sum.
        for follower in self._followers:
            follower._stop.set()
        for follower in self._followers:
            follower._stop_listener()
            follower._healthy = False

    def _after_fork(self) -> None:
        # The parent's followers have no thread here; _listen makes new ones
        # with the child's origin.
        self._followers = []
        super()._after_fork()

    # -- health and counters: the followers' -------------------------------------

    @property
    def healthy(self) -> bool:
        if not self._on_cluster:
            return self._healthy
        return bool(self._followers) and all(f._healthy for f in self._followers)

    @property
    def unhealthy_since(self) -> float | None:
        if not self._on_cluster:
            return self._unhealthy_since
        since = [f._unhealthy_since for f in self._followers if f._unhealthy_since is not None]
        return min(since, default=None)

    @property
    def last_id(self) -> str | None:
        """The id of the last stream entry read; None before the first sync
        (on a cluster, always None: each stream's is in ``stats()``)."""
        return None if self._on_cluster else self._last_id

    @property
    def received(self) -> int:
        return self._received + sum(f._received for f in self._followers)

    @property
    def gaps(self) -> int:
        """Times ``on_gap`` was called (on a cluster: once per stream with a gap)."""
        return self._gaps + sum(f._gaps for f in self._followers)

    @property
    def reconnects(self) -> int:
        return self._reconnects + sum(f._reconnects for f in self._followers)

    @property
    def errors(self) -> int:
        return self._errors + sum(f._errors for f in self._followers)

    def stats(self) -> dict[str, Any]:
        """A snapshot: health, position and counters, as plain values; on a
        cluster the sums over the streams, and ``streams``: each stream's
        node, health, position and gaps."""
        stats = super().stats()
        if not self._on_cluster:
            return stats
        stats.update(
            healthy=self.healthy,
            unhealthy_since=self.unhealthy_since,
            last_id=None,
            received=self.received,
            gaps=self.gaps,
            reconnects=self.reconnects,
            errors=self.errors,
            streams={
                f.stream: {
                    "node": f.node,
                    "healthy": f._healthy,
                    "last_id": f._last_id,
                    "gaps": f._gaps,
                }
                for f in self._followers
            },
        )
        return stats
