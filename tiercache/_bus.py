"""The invalidation bus: tell other processes which keys changed, never the values.

::

    process A                         redis-server                     process B
    ─────────                         ────────────                     ─────────
    cache write acknowledged
      └─> RedisBus.publish(items) ──> XADD ... MAXLEN ~ N  (one pipeline)
                                      stream  tiercache:v1:{ns}:inv
                                      │  id-ordered, capped, replayable
                                      └──> one pipeline per read, from position L:
                                             XREAD COUNT 1 BLOCK ms STREAMS key L  (wait)
                                             XRANGE key L + COUNT 1001             (check + data)
                                           (listener thread, own connection)
                                             ├─ reply starts with L ──> on_messages([...])
                                             │    L = last id read (B's own entries
                                             │    and markers are skipped)
                                             └─ L is gone ──> L = stream's end, on_gap()
                    connection lost ──> healthy=False, back off, reconnect:
                                        same server ──> XRANGE from L replays what
                                        was missed (or finds L gone ──> on_gap());
                                        server restarted ──> L = stream's end, on_gap()

One capped Redis Stream gives both live delivery and replay: a listener that
lost its connection resumes from the last id it saw, so a short outage
loses nothing.

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

Each entry has four fields: ``o`` origin (random per bus), ``k`` the cache's
un-namespaced key, ``a`` ``"set"`` or ``"del"``, ``v`` the new entry version
as ASCII digits. A marker has only ``o`` and ``a`` = ``"mark"``; readers
skip it (a reader from before markers existed skips it as malformed: one
warning and one ``errors`` count per marker). The wire version is in the
stream's name.

:class:`LocalBus` is the same interface in one process, for unit tests, with
fault hooks. Example::

    hub = LocalHub()
    a, b = LocalBus(hub, namespace="bot"), LocalBus(hub, namespace="bot")
    b.start(on_messages=print, on_gap=lambda: print("gap"))
    a.publish([("chat:42", "set", 7)])
    # prints [Invalidation(origin='…', key='chat:42', action='set', version=7)]

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

import asyncio
import logging
import random
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ._clock import Clock, SystemClock
from ._exceptions import ConfigError, InvalidKeyError, TierCacheError, TierError
from ._redisclient import (
    _close_at_loop_shutdown,
    _LoopClient,
    check_url,
    close_loop_clients,
    error_text,
    redact_url,
)

__all__ = [
    "Bus",
    "Invalidation",
    "LocalBus",
    "LocalHub",
    "RedisBus",
    "stream_key",
]

log = logging.getLogger("tiercache.bus")

WIRE_VERSION = 1
LISTENER_NAME = "tiercache-bus-listener"
#: Entries per XREAD: large enough to drain a burst in a few round trips,
#: small enough that one callback batch stays bounded.
READ_COUNT = 1000
#: Reconnect backoff, seconds: capped exponential with jitter, so a fleet of
#: workers does not reconnect to a restarted server in lockstep.
BACKOFF_BASE = 0.05
BACKOFF_CAP = 2.0

Action: TypeAlias = Literal["set", "del"]
#: ``(key, action, version)``, as :meth:`RedisBus.publish` takes them.
PublishItem: TypeAlias = tuple[str, str, int]
OnMessages: TypeAlias = Callable[[list["Invalidation"]], None]
OnGap: TypeAlias = Callable[[], None]

_ACTIONS = frozenset({"set", "del"})
#: The action of a marker entry: a bus adds one, with its origin and no key,
#: when it needs a position and the stream is empty or missing. It carries
#: no invalidation; readers skip it.
MARK = "mark"
_MARK_B = MARK.encode()
_BACKEND_ERRORS = (RedisError, OSError)


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One message: ``origin`` wrote ``key`` (``action`` ``"set"`` or ``"del"``)
    and the entry is now at ``version``.

    >>> Invalidation("a1b2c3d4e5f6", "chat:42", "set", 7).version
    7
    """

    origin: str
    key: str
    action: str
    version: int


def stream_key(namespace: str) -> str:
    """The Redis key of a namespace's stream (the wire version is in it).

    >>> stream_key("mybot")
    'tiercache:v1:mybot:inv'
    """
    return f"tiercache:v{WIRE_VERSION}:{namespace}:inv"


# -- pure helpers (no I/O) -------------------------------------------------------


def _fields(origin: str, item: PublishItem) -> dict[Any, Any]:
    """The stream entry for one item, validated (the value is never sent).

    Typed ``dict[Any, Any]``: redis-py's field dict type is invariant, so a
    ``dict[str, str]`` would not pass its stubs.
    """
    key, action, version = item
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"bus keys are non-empty str, got {key!r}")
    if action not in _ACTIONS:
        raise ValueError(f"bus action must be 'set' or 'del', got {action!r}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"bus version must be an int >= 0, got {version!r}")
    return {"o": origin, "k": key, "a": action, "v": str(version)}


def _decode(fields: dict[bytes, bytes]) -> Invalidation | None:
    """An entry read back, or None when it is not one of ours (malformed)."""
    try:
        action = fields[b"a"].decode()
        if action not in _ACTIONS:
            return None
        return Invalidation(fields[b"o"].decode(), fields[b"k"].decode(), action, int(fields[b"v"]))
    except (KeyError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


# -- interface and shared state ---------------------------------------------------


@runtime_checkable
class Bus(Protocol):
    """What the cache needs from a bus; :class:`RedisBus` and :class:`LocalBus`."""

    @property
    def origin(self) -> str: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def unhealthy_since(self) -> float | None: ...

    def publish(self, items: Sequence[PublishItem]) -> None: ...

    async def apublish(self, items: Sequence[PublishItem]) -> None: ...

    def start(self, on_messages: OnMessages, on_gap: OnGap) -> None: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class _BusBase:
    """Settings, health and counters shared by both buses."""

    def __init__(self, namespace: str, origin: str | None, clock: Clock | None) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"namespace must be a non-empty str, got {namespace!r}")
        if origin is None:
            origin = secrets.token_hex(6)
        elif not isinstance(origin, str) or not 0 < len(origin) <= 64:
            raise ConfigError(f"origin must be a str of 1..64 characters, got {origin!r}")
        self._namespace = namespace
        self._origin = origin
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._healthy = False
        self._unhealthy_since: float | None = None
        self._last_id: str | None = None
        self._started = False
        self._closed = False
        self._received = self._published = self._gaps = self._reconnects = self._errors = 0

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def origin(self) -> str:
        """This bus's id on the wire; its own messages are not delivered back."""
        return self._origin

    @property
    def healthy(self) -> bool:
        """True while the listener is connected and caught up (False before start)."""
        return self._healthy

    @property
    def unhealthy_since(self) -> float | None:
        """``clock.monotonic()`` when the listener lost the stream, else None."""
        return self._unhealthy_since

    @property
    def last_id(self) -> str | None:
        """The id of the last stream entry read; None before the first sync."""
        return self._last_id

    @property
    def received(self) -> int:
        """Messages delivered to ``on_messages`` (others' only)."""
        return self._received

    @property
    def published(self) -> int:
        return self._published

    @property
    def gaps(self) -> int:
        """Times ``on_gap`` was called."""
        return self._gaps

    @property
    def reconnects(self) -> int:
        """Recoveries after a lost connection."""
        return self._reconnects

    @property
    def errors(self) -> int:
        """Connection errors, malformed entries and callbacks that raised."""
        return self._errors

    def stats(self) -> dict[str, Any]:
        """A snapshot: health, position and counters, as plain values."""
        return {
            "namespace": self._namespace,
            "origin": self._origin,
            "healthy": self._healthy,
            "unhealthy_since": self._unhealthy_since,
            "last_id": self._last_id,
            "received": self._received,
            "published": self._published,
            "gaps": self._gaps,
            "reconnects": self._reconnects,
            "errors": self._errors,
        }

    def _count_published(self, n: int) -> None:
        with self._lock:  # publish runs on any thread
            self._published += n

    def _mark_unhealthy(self) -> None:
        if self._unhealthy_since is None:
            self._unhealthy_since = self._clock.monotonic()
        self._healthy = False

    def _mark_healthy(self) -> None:
        self._healthy = True
        self._unhealthy_since = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._origin = secrets.token_hex(6)
        self._healthy = False
        self._unhealthy_since = None

    def _claim_start(self) -> None:
        with self._lock:
            if self._closed:
                raise TierCacheError("bus is closed")
            if self._started:
                raise TierCacheError("bus already started")
            self._started = True

    def _call_gap(self, on_gap: OnGap, reason: str) -> None:
        self._gaps += 1
        log.warning("bus %s: invalidation gap (%s); revalidating", self._namespace, reason)
        try:
            on_gap()
        except Exception:
            self._errors += 1
            log.exception("bus %s: on_gap raised", self._namespace)

    def _call_messages(self, on_messages: OnMessages, batch: list[Invalidation]) -> None:
        self._received += len(batch)
        try:
            on_messages(batch)
        except Exception:
            # The entries were read; replaying them would not fix the callback.
            self._errors += 1
            log.exception("bus %s: on_messages raised", self._namespace)


# -- Redis ---------------------------------------------------------------------------


class RedisBus(_BusBase):
    """The invalidation bus over a capped Redis Stream.

    ``url_or_client`` is a URL (the bus opens its own clients) or a
    ``redis.Redis`` the caller owns and closes (then the listener opens its
    own connection with the same settings, and ``apublish`` runs the sync
    publish in a worker thread). ``maxlen`` caps the stream (approximately,
    ``MAXLEN ~``): it is how much a disconnected listener can miss and still
    replay. ``block_ms`` is how long one ``XREAD`` waits (``close``
    unblocks it); it bounds how soon an idle listener notices that its
    stream was emptied or deleted with nothing published since. A URL is
    checked as :class:`~tiercache.RedisTier` checks it (``rediss://`` works
    the same).

    ``on_messages`` and ``on_gap`` run on the listener thread: keep them
    short and thread-safe.

    >>> bus = RedisBus("redis://127.0.0.1:6379/0", namespace="mybot")  # doctest: +SKIP
    >>> bus.start(on_messages=print, on_gap=lambda: None)              # doctest: +SKIP
    >>> bus.publish([("chat:42", "set", 7), ("chat:7", "del", 3)])      # doctest: +SKIP
    >>> bus.healthy, bus.stats()["published"]                           # doctest: +SKIP
    (True, 2)
    >>> bus.close()                                                     # doctest: +SKIP
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        *,
        namespace: str,
        maxlen: int = 100_000,
        block_ms: int = 1000,
        origin: str | None = None,
        clock: Clock | None = None,
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
        self._url: str | None = None
        self._sync: redis.Redis | None = None
        self._owns_sync = False
        if isinstance(url_or_client, str):
            if urlsplit(url_or_client).scheme not in ("redis", "rediss", "unix"):
                raise ConfigError(
                    f"bad Redis URL {redact_url(url_or_client)!r}: the scheme must be redis://, "
                    "rediss:// or unix://"
                )
            check_url(url_or_client)
            self._url = url_or_client
            self._owns_sync = True
        elif isinstance(url_or_client, redis.Redis):
            self._sync = url_or_client
        else:
            raise ConfigError(
                "RedisBus needs a URL or a redis.Redis, got " + type(url_or_client).__name__
            )
        self._stream = stream_key(namespace)
        self._maxlen = maxlen
        self._block_ms = block_ms
        self._origin_b = self._origin.encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: redis.Redis | None = None
        self._listener_id: int | None = None
        self._run_id: str | None = None
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._callbacks: tuple[OnMessages, OnGap] | None = None

    def __repr__(self) -> str:
        where = redact_url(self._url) if self._url is not None else "client"
        return f"RedisBus({where!r}, namespace={self._namespace!r})"

    def _after_fork(self) -> None:
        """In a forked child: a new origin (the parent and the child must
        each hear the other's invalidations) and a listener of its own,
        from the stream's end. The parent's clients are left to it."""
        super()._after_fork()
        self._origin_b = self._origin.encode()
        self._stop = threading.Event()
        self._thread = None
        self._listener = None
        self._listener_id = None
        self._run_id = None
        self._last_id = None
        self._loops = {}
        self._closing = set()
        self._rng = random.Random()
        if self._callbacks is not None and not self._closed:
            self._listen(*self._callbacks)

    @property
    def stream(self) -> str:
        """The stream's Redis key."""
        return self._stream

    # -- clients ---------------------------------------------------------------

    def _client(self) -> redis.Redis:
        client = self._sync
        if client is None:
            with self._lock:
                client = self._sync
                if client is None:
                    assert self._url is not None  # no URL means a client was given
                    # One retry heals a pooled connection that a server
                    # restart cut. A retried pipeline may add an entry
                    # twice: harmless, invalidations are idempotent.
                    client = self._sync = redis.Redis.from_url(
                        self._url,
                        socket_timeout=2.0,
                        socket_connect_timeout=1.0,
                        retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1),
                    )
        return client

    def _new_listener(self) -> redis.Redis:
        # Its own connection: XREAD BLOCK holds a connection for block_ms.
        # The socket timeout exceeds the block so only a dead or hung server
        # times out; no retries inside redis-py, the listener loop owns them;
        # RESP2 so the reply shape is fixed; a name so operators (and tests)
        # can find it in CLIENT LIST. A pool of one, not
        # single_connection_client, which would connect (and fail) here.
        settings: dict[str, Any] = {
            "socket_timeout": self._block_ms / 1000 + 2.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 0),
            "client_name": LISTENER_NAME,
            "decode_responses": False,
            "protocol": 2,
        }
        if self._url is not None:
            return redis.Redis.from_url(self._url, max_connections=1, **settings)
        assert self._sync is not None
        pool = self._sync.connection_pool
        # Same server, credentials and TLS; not the caller's retry policy nor
        # redis-py's per-pool bookkeeping (maintenance-notification handlers
        # belong to that pool and need RESP3).
        kwargs = {
            name: value
            for name, value in pool.connection_kwargs.items()
            if not name.startswith(("maint_notifications", "orig_", "retry"))
        }
        kwargs.update(settings)
        new_pool = redis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=1, **kwargs
        )
        return redis.Redis(connection_pool=new_pool)

    async def _aclient(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        entry = self._loops.get(loop)
        if entry is not None:
            return entry
        assert self._url is not None  # callers check
        client = redis.asyncio.Redis.from_url(
            self._url,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=redis.asyncio.retry.Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1),
        )
        # As RedisTier does: one client per running loop, closed by that
        # loop's shutdown_asyncgens() (asyncio.run does it) or by aclose().
        closer = _close_at_loop_shutdown(client, self._loops)
        entry = _LoopClient(client, None, closer)
        with self._lock:
            for old in [lp for lp in self._loops if lp.is_closed()]:
                del self._loops[old]
            self._loops[loop] = entry
        await closer.__anext__()
        return entry

    # -- publish ---------------------------------------------------------------

    def publish(self, items: Sequence[PublishItem]) -> None:
        """Append ``(key, action, version)`` items to the stream in one round trip.

        Call it after the write it announces was acknowledged. Raises
        :class:`~tiercache.TierError` when Redis fails (the cause attached).
        """
        if not items:
            return
        if self._closed:
            raise TierCacheError("bus is closed")
        entries = [_fields(self._origin, item) for item in items]
        try:
            # Not MULTI: the batch needs one round trip, not isolation.
            with self._client().pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
                pipe.execute()
        except _BACKEND_ERRORS as exc:
            raise TierError(
                f"bus: publishing {len(entries)} invalidations failed: {error_text(exc)}"
            ) from exc
        self._count_published(len(entries))

    async def apublish(self, items: Sequence[PublishItem]) -> None:
        """:meth:`publish` with ``redis.asyncio`` (one client per event loop)."""
        if not items:
            return
        if self._closed:
            raise TierCacheError("bus is closed")
        if self._url is None:
            await asyncio.to_thread(self.publish, items)
            return
        entries = [_fields(self._origin, item) for item in items]
        entry = await self._aclient()
        try:
            async with entry.client.pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
                await pipe.execute()
        except _BACKEND_ERRORS as exc:
            raise TierError(
                f"bus: publishing {len(entries)} invalidations failed: {error_text(exc)}"
            ) from exc
        self._count_published(len(entries))

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

    def _listen(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        self._listener = self._new_listener()
        try:
            self._sync_position(on_messages, on_gap)
        except _BACKEND_ERRORS as exc:
            self._lost(exc)
        self._thread = threading.Thread(
            target=self._run,
            args=(on_messages, on_gap),
            name=f"tiercache-bus-{self._namespace}",
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
                        self._sync_position(on_messages, on_gap)
                        synced, attempt = True, 0
                    self._read(on_messages, on_gap)
                except _BACKEND_ERRORS as exc:
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
        if not self._stop.is_set():
            self._take(entries, on_messages, on_gap)

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
        if batch:
            self._call_messages(on_messages, batch)
        return len(entries) - 1

    # -- close -----------------------------------------------------------------

    def close(self) -> None:
        """Stop the listener and close the clients the bus opened; idempotent.

        The listener is woken with ``CLIENT UNBLOCK`` rather than waited
        for, so this returns in milliseconds while Redis is up, and within
        about ``block_ms`` + 3 s when it hangs.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._stop_listener()
        with self._lock:
            sync = self._sync if self._owns_sync else None
            self._sync = None if self._owns_sync else self._sync
            loops, self._loops = self._loops, {}
        if sync is not None:
            sync.close()
        close_loop_clients(loops, self._closing, 3.0)
        self._healthy = False

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
                try:
                    self._client().client_unblock(listener_id)
                except _BACKEND_ERRORS:
                    can_unblock = False  # Redis is down: the thread is not blocked on it
            thread.join(0.05)
        if thread.is_alive():
            log.warning("bus %s: listener thread did not stop in time", self._namespace)

    async def aclose(self) -> None:
        """:meth:`close`, awaiting this loop's async client."""
        here = asyncio.get_running_loop()
        with self._lock:
            entry = self._loops.pop(here, None)
        if entry is not None and entry.closer is not None:
            await entry.closer.aclose()
        # The rest blocks for a few milliseconds at most (thread join).
        await asyncio.to_thread(self.close)


# -- in-process ----------------------------------------------------------------------


class LocalHub:
    """The shared medium of :class:`LocalBus` instances: a stand-in for Redis.

    Delivery is synchronous: ``publish`` on one bus calls every other started
    bus's ``on_messages`` (same namespace, other origin) in the publisher's
    thread before it returns, under the hub's re-entrant lock, so every bus
    sees messages in one global order and a test needs no waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._buses: list[LocalBus] = []
        self._seq = 0

    def _attach(self, bus: LocalBus) -> None:
        with self._lock:
            self._buses.append(bus)

    def _detach(self, bus: LocalBus) -> None:
        with self._lock:
            if bus in self._buses:
                self._buses.remove(bus)

    def _publish(self, sender: LocalBus, entries: list[Invalidation]) -> None:
        with self._lock:
            first = self._seq + 1
            self._seq += len(entries)
            for bus in list(self._buses):
                if bus.namespace == sender.namespace:
                    bus._offer(first, entries)


class LocalBus(_BusBase):
    """The bus interface within one process, for unit tests (see :class:`LocalHub`).

    Fault hooks simulate what Redis can do to a listener:

    * :meth:`drop_next` — lose the next ``n`` messages silently (what a
      stream prevents; useful to prove what revalidation covers);
    * :meth:`disconnect` — the listener loses its connection: unhealthy,
      messages are held (publishing still works, as with Redis, where the
      publisher has its own connection);
    * :meth:`reconnect` — recover, replaying what was held, or with
      ``gap=True`` dropping it and calling ``on_gap``.

    >>> hub = LocalHub()
    >>> a, b = LocalBus(hub, namespace="t"), LocalBus(hub, namespace="t")
    >>> got = []
    >>> b.start(on_messages=got.extend, on_gap=lambda: None)
    >>> a.publish([("k", "del", 3)]); [(m.key, m.action, m.version) for m in got]
    [('k', 'del', 3)]
    """

    def __init__(
        self,
        hub: LocalHub,
        *,
        namespace: str,
        origin: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(namespace, origin, clock)
        if not isinstance(hub, LocalHub):
            raise ConfigError(f"hub must be a LocalHub, got {type(hub).__name__}")
        self._hub = hub
        self._on_messages: OnMessages | None = None
        self._on_gap: OnGap | None = None
        self._connected = True
        self._held: list[tuple[int, Invalidation]] = []
        self._drop = 0

    def __repr__(self) -> str:
        return f"LocalBus(namespace={self._namespace!r}, origin={self._origin!r})"

    def publish(self, items: Sequence[PublishItem]) -> None:
        """Deliver to the hub's other buses now, in this thread."""
        if not items:
            return
        if self._closed:
            raise TierCacheError("bus is closed")
        for item in items:
            _fields(self._origin, item)  # the same validation as RedisBus
        entries = [Invalidation(self._origin, *item) for item in items]
        self._hub._publish(self, entries)
        self._count_published(len(entries))

    async def apublish(self, items: Sequence[PublishItem]) -> None:
        self.publish(items)

    def start(self, on_messages: OnMessages, on_gap: OnGap) -> None:
        self._claim_start()
        self._on_messages, self._on_gap = on_messages, on_gap
        self._last_id = f"{self._hub._seq}-0"
        self._mark_healthy()
        self._hub._attach(self)

    def _offer(self, first: int, entries: list[Invalidation]) -> None:
        numbered = [(first + i, m) for i, m in enumerate(entries) if m.origin != self._origin]
        if not numbered:
            self._last_id = f"{first + len(entries) - 1}-0"
            return
        if not self._connected:
            self._held.extend(numbered)
            return
        self._deliver(numbered)

    def _deliver(self, numbered: list[tuple[int, Invalidation]]) -> None:
        if self._drop:
            lost, numbered = numbered[: self._drop], numbered[self._drop :]
            self._drop -= len(lost)
        if not numbered:
            return
        self._last_id = f"{numbered[-1][0]}-0"
        assert self._on_messages is not None
        self._call_messages(self._on_messages, [m for _, m in numbered])

    def drop_next(self, n: int) -> None:
        """Lose the next ``n`` messages addressed to this bus, without a gap."""
        with self._hub._lock:
            self._drop += n

    def disconnect(self) -> None:
        """Simulate a lost listener connection: unhealthy, messages held."""
        with self._hub._lock:
            self._connected = False
            self._errors += 1
            self._mark_unhealthy()

    def reconnect(self, gap: bool = False) -> None:
        """Recover: replay held messages, or drop them and call ``on_gap``."""
        with self._hub._lock:
            held, self._held = self._held, []
            self._connected = True
            if self._unhealthy_since is not None:
                self._reconnects += 1
            if gap:
                self._last_id = f"{self._hub._seq}-0"
                assert self._on_gap is not None
                self._call_gap(self._on_gap, "simulated")
            elif held:
                self._deliver(held)
            self._mark_healthy()

    def close(self) -> None:
        """Leave the hub; idempotent."""
        with self._lock:
            self._closed = True
        self._hub._detach(self)
        self._healthy = False

    async def aclose(self) -> None:
        self.close()
