"""The Redis bus's listener: a thread that follows the stream, replays what
a lost connection missed, and says when invalidations may have been lost.

::

    stream  tiercache:v1:{ns}:inv            (capped: XADD ... MAXLEN ~ maxlen)
      └──> one pipeline per read, from position L  (listener thread, own connection)
             XREAD COUNT 1 BLOCK ms STREAMS key L  (wait)
             XRANGE key L + COUNT 1001             (check + data)
           ├─ reply starts with L ──> on_messages([...])
           │    L = last id read (this bus's own entries and markers are skipped;
           │    a reply of only our own entries: pause OWN_PAUSE, so a burst
           │    of our writes is read back in a few reads, not one per write)
           └─ L is gone ──> L = stream's end, on_gap()
    connection lost ──> healthy=False, back off, reconnect:
                        same server ──> XRANGE from L replays what
                        was missed (or finds L gone ──> on_gap());
                        server restarted ──> L = stream's end, on_gap()

The reader's position L is always a real entry of the stream: the last one
it read, the stream's last entry when it started or lost track, or, when
the stream was empty or missing then, a *marker* entry of its own. Streams
lose entries only from the head or all at once, so "L is no longer in the
stream" is exactly when unread entries may have been lost: trimmed past a
slow or disconnected reader, ``XTRIM`` or ``DEL`` by someone else, a server
that came back without them. Every read checks it, in the same command
that fetches the entries after L, on every Redis version (6.2 records no
trim watermark, and 7.0 does not move its ``max-deleted-entry-id`` under
``MAXLEN ~``). Then the bus says so with ``on_gap()`` and carries on from
the stream's end; the cache revalidates instead of trusting its memory.
Where Redis cannot tell whether an unread entry went (see
:func:`_read_gap`) it counts a gap: a spurious one costs a revalidation, a
missed one would serve stale data.

**Latency and the GIL.** The listener is a thread: while it waits in
``XREAD`` it holds no GIL, but to handle a reply it must take the GIL back,
and each socket call on the way (poll, recv, the next XREAD's send) gives it
up again. If the process is CPU-bound in Python, the busy thread hands the
GIL over only every ``sys.getswitchinterval()`` (5 ms by default), so each
of those steps may wait one interval. Measured across processes
(``benchmarks/bench_bus.py``, 2-core VM, loopback): idle median 0.23 ms,
p99 0.75 ms; receiver CPU-bound median 5.4 ms, p99 28 ms (runs vary from
4 to 14 ms median); CPU-bound with the interval at 1 ms median 2.8 ms, p99
5.8 ms. The bus does not change the switch interval (it is process-wide):
an application that needs fresher invalidations while CPU-bound can.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError
from .._redisclient import BACKEND_ERRORS, error_text
from ._base import OnGap, OnMessages, _BusBase, log
from ._message import _MARK_B, MARK, Invalidation, _decode, stream_key

__all__ = ["BACKOFF_BASE", "BACKOFF_CAP", "LISTENER_NAME", "OWN_PAUSE", "READ_COUNT"]


LISTENER_NAME = "tiercache-bus-listener"
#: Entries per XREAD: large enough to drain a burst in a few round trips,
#: small enough that one callback batch stays bounded.
READ_COUNT = 1000
#: Reconnect backoff, seconds: capped exponential with jitter, so a fleet of
#: workers does not reconnect to a restarted server in lockstep.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0
#: Seconds the listener waits after a read that held only this bus's own
#: entries (see _read): another process's entry arriving then is delivered
#: at most this much later.
OWN_PAUSE = 0.005


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _listener_settings(block_ms: int) -> dict[str, Any]:
    """How a listener's connection is set up (see RedisBus._new_listener)."""
    # The socket timeout exceeds the block so only a dead or hung server
    # times out; no retries inside redis-py, the listener loop owns them;
    # RESP2 so the reply shape is fixed; a name so operators (and tests)
    # can find it in CLIENT LIST.
    return {
        "socket_timeout": block_ms / 1000 + 2.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(NoBackoff(), 0),
        "client_name": LISTENER_NAME,
        "decode_responses": False,
        "protocol": 2,
    }


#: Connection settings a listener does not copy from the pool it is made
#: like: the caller's retry policy, and redis-py's per-pool (or per-cluster)
#: bookkeeping (maintenance-notification handlers belong to that pool and
#: need RESP3; a cluster node's connect hook, cache and HIMPORT registry).
_NOT_COPIED = (
    "maint_notifications",
    "oss_cluster_maint_notifications",
    "orig_",
    "retry",
    "redis_connect_func",
    "himport_registry",
    "cache",
)


def _listener_like(pool: redis.ConnectionPool, block_ms: int) -> redis.Redis:
    """A client of one connection, outside every pool, to the server
    ``pool`` connects to, with its credentials and TLS, set up as a
    listener's. A pool of one, not single_connection_client, which would
    connect (and fail) here."""
    kwargs = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if not name.startswith(_NOT_COPIED)
    }
    kwargs.update(_listener_settings(block_ms))
    new_pool = redis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=1, **kwargs
    )
    return redis.Redis(connection_pool=new_pool)


def _resume_gap(last_id: str | None, run_id: str | None, server_run_id: str) -> str | None:
    """At a reconnect: why the position cannot be resumed from, or None.

    ``run_id`` is the server's as last seen, ``server_run_id`` the one now.
    A restarted server (or a failover to another) may have come back without
    the entries after ``last_id`` even when ``last_id`` itself is there (it
    was in the last snapshot, later ones were not), so a new run id is a gap
    whatever the stream holds.
    """
    if last_id is None:
        return "never synced (started while Redis was unreachable)"
    if run_id is not None and server_run_id != run_id:
        return "server restarted"
    return None


def _read_gap(last_id: str, first_id: str | None) -> str | None:
    """Why entries after ``last_id`` may have been lost unread, or None.

    ``first_id`` is the first id of ``XRANGE stream last_id + COUNT n``, one
    command run after the reader woke up (None: the reply was empty). The
    reader's position ``last_id`` is always a real entry: one it read, the
    stream's last entry when it anchored, or its own marker. A stream loses
    entries only from its head (``XADD MAXLEN``/``MINID``, ``XTRIM``) or all
    at once (``DEL``, a server that came back without them), and an entry
    once removed does not come back; so while ``last_id`` is in the stream,
    so is every entry after it, and this very reply lists them: nothing was
    lost. When ``last_id`` is gone the entries after it may have gone too:
    a gap.

    Conservative where Redis cannot tell: the entries removed may all have
    been ones the reader had read (an exact ``XTRIM`` cut right after
    ``last_id``, ``last_id`` the last entry of a radix-tree node that
    ``MAXLEN ~`` dropped, ``XTRIM MAXLEN 0`` or ``DEL`` after the reader had
    read everything). Redis 6.2 records nothing that tells those apart, and
    7.0's ``max-deleted-entry-id`` is not moved by ``MAXLEN ~`` trimming, so
    each counts as a gap: a spurious gap costs a revalidation, a missed one
    serves stale data. Not seen: an ``XDEL`` of an entry after ``last_id``
    by another client (tiercache never deletes single entries), and a
    stream re-created with explicit ids that reuse ``last_id``.

    >>> _read_gap("5-0", "5-0") is None
    True
    >>> _read_gap("5-0", "7-0")
    'stream trimmed past the reader'
    """
    if first_id is None:
        return "the stream was emptied or deleted since the last read"
    if first_id != last_id:
        return "stream trimmed past the reader"
    return None


class _StreamListener(_BusBase):
    """The listening half of :class:`~tiercache.RedisBus`: the stream and its
    settings, and the listener thread that follows it (start, read, replay,
    reconnect, stop). The bus provides the connections: :meth:`_client`
    (its own, which also sends ``CLIENT UNBLOCK``) and :meth:`_new_listener`.
    """

    def __init__(
        self,
        namespace: str,
        origin: str | None,
        clock: Clock | None,
        *,
        maxlen: int,
        block_ms: int,
    ) -> None:
        super().__init__(namespace, origin, clock)
        if isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 1:
            raise ConfigError(f"maxlen must be an int >= 1, got {maxlen!r}")
        if (
            isinstance(block_ms, bool)
            or not isinstance(block_ms, int)
            or not 1 <= block_ms <= 60_000
        ):
            raise ConfigError(f"block_ms must be an int in 1..60000, got {block_ms!r}")
        self._stream = stream_key(namespace)
        self._maxlen = maxlen
        self._block_ms = block_ms
        self._origin_b = self._origin.encode()
        #: Whether the last read held only this bus's own entries.
        self._own_only = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: redis.Redis | None = None
        self._listener_id: int | None = None
        self._run_id: str | None = None
        self._rng = random.Random()
        self._callbacks: tuple[OnMessages, OnGap] | None = None
        self._thread_name = f"tiercache-bus-{namespace}"

    def _after_fork(self) -> None:
        """In a forked child: a new origin (the parent and the child must
        each hear the other's invalidations) and a listener of its own,
        from the stream's end."""
        super()._after_fork()
        self._origin_b = self._origin.encode()
        self._stop = threading.Event()
        self._thread = None
        self._listener = None
        self._listener_id = None
        self._run_id = None
        self._last_id = None
        self._rng = random.Random()
        if self._callbacks is not None and not self._closed:
            self._listen(*self._callbacks)

    @property
    def stream(self) -> str:
        """The stream's Redis key."""
        return self._stream

    # -- what the bus provides -------------------------------------------------

    def _client(self) -> redis.Redis:
        """The bus's own client (opened on first use)."""
        raise NotImplementedError

    def _new_listener(self) -> redis.Redis:
        """A new client, of one connection, for the listener thread (it
        connects on first use; a cluster's follower may raise a backend
        error here, while finding its node)."""
        raise NotImplementedError

    def _reconnect(self) -> None:
        """Before a resync after a lost connection: nothing on one server
        (the listener's client reconnects itself to the same address); a
        cluster's follower finds the node now serving its stream."""

    # -- listen ----------------------------------------------------------------

    def start(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        """Start the listener thread; deliver only what is published from now on.

        The stream's current end is read here, before returning, so anything
        published after ``start`` returns is delivered (on an empty or missing
        stream the bus adds a marker entry to start from). If Redis is down the
        bus starts unhealthy and, once connected, calls ``on_gap`` (what was
        published in between is unknown). Raises if started twice or closed.
        """
        self._claim_start()
        self._callbacks = (on_messages, on_gap)
        self._listen(on_messages, on_gap)

    def _listen(self, on_messages: OnMessages, on_gap: OnGap, *, connect: bool = True) -> None:
        """Sync the position here (unless ``connect`` is False: then the
        thread connects, as after an outage), then start the thread."""
        if not connect:
            self._mark_unhealthy()
        else:
            try:
                self._listener = self._new_listener()
                self._sync_position(on_messages, on_gap)
            except BACKEND_ERRORS as exc:
                self._lost(exc)
        self._thread = threading.Thread(
            target=self._run,
            args=(on_messages, on_gap),
            name=self._thread_name,
            daemon=True,
        )
        self._thread.start()

    def _sync_position(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        """(Re)connect: resume from ``last_id``, replaying what was missed,
        or anchor at the stream's end (with ``on_gap`` when we lost track)."""
        listener = self._listener
        assert listener is not None
        with listener.pipeline(transaction=False) as pipe:
            pipe.client_id()
            pipe.info("server")
            client_id, info = pipe.execute()
        self._listener_id = int(client_id)
        server_run_id = _text(info["run_id"])
        recovering = self._unhealthy_since is not None
        if self._last_id is None and not recovering:
            reason = None  # start(): begin at the end, nothing was missed
        else:
            reason = _resume_gap(self._last_id, self._run_id, server_run_id)
        if reason is not None or self._last_id is None:
            self._anchor()
            if reason is not None:
                self._call_gap(on_gap, reason)
        else:
            # Replay before reporting healthy: the cache trusts its memory
            # again once we are, so what was missed must be in first.
            while self._take(self._range(), on_messages, on_gap) >= READ_COUNT:
                pass
        # Only now: a restart noticed above must not be forgotten if the
        # anchor failed half-way and we come back here.
        self._run_id = server_run_id
        if recovering:
            self._reconnects += 1
            log.info("bus %s: listener reconnected at %s", self._namespace, self._last_id)
        self._mark_healthy()

    def _anchor(self) -> None:
        """Make the position the stream's last entry, or a marker of ours
        when the stream is empty or missing, so it is a real entry whose
        disappearance :func:`_read_gap` can see."""
        listener = self._listener
        assert listener is not None
        last: Any = listener.xrevrange(self._stream, "+", "-", count=1)
        if last:
            self._last_id = _text(last[0][0])
            return
        # Entries added between the two calls end up before the marker: they
        # were published before start() returned (or before on_gap runs).
        marker: dict[Any, Any] = {"o": self._origin, "a": MARK}  # see _fields
        self._last_id = _text(
            listener.xadd(self._stream, marker, maxlen=self._maxlen, approximate=True)
        )

    def _range(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """``last_id`` and up to READ_COUNT entries after it, without blocking."""
        listener = self._listener
        assert listener is not None and self._last_id is not None
        reply: Any = listener.xrange(self._stream, self._last_id, "+", count=READ_COUNT + 1)
        return list(reply)

    def _lost(self, exc: BaseException) -> None:
        self._errors += 1
        if self._healthy or self._unhealthy_since is None:
            log.warning("bus %s: listener lost Redis: %s", self._namespace, error_text(exc))
        self._mark_unhealthy()

    def _run(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        synced = self._healthy
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    if not synced:
                        self._reconnect()
                        self._sync_position(on_messages, on_gap)
                        synced, attempt = True, 0
                    self._read(on_messages, on_gap)
                except BACKEND_ERRORS as exc:
                    if self._stop.is_set():
                        break
                    synced = False
                    self._lost(exc)
                    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
                    attempt = min(attempt + 1, 16)
                    # Equal jitter: at least half the delay, so a fleet of
                    # workers spreads out but none hammers a down server.
                    if self._stop.wait(delay * self._rng.uniform(0.5, 1.0)):
                        break
        finally:
            self._healthy = False
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()

    def _read(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        """Wait for news, then check the position and read what follows it,
        in one round trip."""
        listener = self._listener
        assert listener is not None and self._last_id is not None
        with listener.pipeline(transaction=False) as pipe:
            # Only a wake-up: it returns at the first entry after last_id,
            # at the block timeout, or at close()'s CLIENT UNBLOCK (the
            # pipeline then runs on). Its entry comes again below.
            pipe.xread({self._stream: self._last_id}, count=1, block=self._block_ms)
            # The check and the data in one command, so both describe the
            # same moment, after the wait: see _read_gap.
            pipe.xrange(self._stream, self._last_id, "+", count=READ_COUNT + 1)
            _, entries = pipe.execute()
        if not self._stop.is_set() and self._take(entries, on_messages, on_gap) and self._own_only:
            # Only our own writes came back: under a burst of them, a short
            # pause lets the next read take many at once instead of waking
            # (and taking the GIL from the writers) once per write.
            self._stop.wait(self._own_pause())

    def _own_pause(self) -> float:
        """Seconds to wait after a read of only this bus's own entries."""
        return OWN_PAUSE

    def _take(
        self,
        entries: list[tuple[bytes, dict[bytes, bytes]]],
        on_messages: OnMessages,
        on_gap: OnGap,
    ) -> int:
        """Check and deliver one XRANGE reply that starts at ``last_id``;
        return how many entries followed it."""
        assert self._last_id is not None
        reason = _read_gap(self._last_id, _text(entries[0][0]) if entries else None)
        if reason is not None:
            # Move to the stream's end first, then on_gap: what is published
            # after that point is delivered, what came before is covered by
            # the cache's drop. A reply that is not full ends at the end.
            if 0 < len(entries) <= READ_COUNT:
                self._last_id = _text(entries[-1][0])
            else:
                self._anchor()
            self._call_gap(on_gap, reason)
            return 0
        own = self._origin_b
        batch: list[Invalidation] = []
        for _, fields in entries[1:]:
            if fields.get(b"o") == own or fields.get(b"a") == _MARK_B:
                continue
            message = _decode(fields)
            if message is None:
                self._errors += 1
                log.warning("bus %s: skipped a malformed entry", self._namespace)
                continue
            batch.append(message)
        self._last_id = _text(entries[-1][0])
        self._own_only = not batch
        if batch:
            self._call_messages(on_messages, batch)
        return len(entries) - 1

    def _unblock(self, listener_id: int) -> bool:
        """``CLIENT UNBLOCK`` the listener; False when Redis did not answer."""
        try:
            self._client().client_unblock(listener_id)
        except BACKEND_ERRORS:
            return False
        return True

    def _stop_listener(self) -> None:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return  # never started, or close() called from a callback
        clock = SystemClock()
        deadline = clock.monotonic() + self._block_ms / 1000 + 3.0
        can_unblock = True
        while thread.is_alive() and clock.monotonic() < deadline:
            listener_id = self._listener_id
            if can_unblock and listener_id is not None:
                # Repeated: the first may land before the XREAD blocks.
                # Redis down: the thread is not blocked on it.
                can_unblock = self._unblock(listener_id)
            thread.join(0.05)
        if thread.is_alive():
            log.warning("bus %s: listener thread did not stop in time", self._namespace)
