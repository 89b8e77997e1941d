"""The invalidation bus against a real redis-server: delivery, replay, gaps, processes.

Every wait polls with a deadline (``wait_until``); outages are made long
enough to observe by raising the listener's backoff for that test, never by
sleeping and hoping.
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

from tiercache import ConfigError, InvalidKeyError, TierCacheError, TierError, _bus
from tiercache._bus import (
    LISTENER_NAME,
    MARK,
    Bus,
    Invalidation,
    LocalBus,
    LocalHub,
    RedisBus,
    _decode,
    _read_gap,
    _resume_gap,
    stream_key,
)
from tiercache.testing import RedisServer

pytestmark = pytest.mark.redis

WAIT = 10.0  # generous: a correctness bound, not a latency claim


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.002)


class Inbox:
    """Collects what a bus delivers, from the listener thread."""

    def __init__(self) -> None:
        self.messages: list[Invalidation] = []
        self.batches = 0
        self.gaps = 0
        self._lock = threading.Lock()

    def on_messages(self, batch: list[Invalidation]) -> None:
        with self._lock:
            self.messages.extend(batch)
            self.batches += 1

    def on_gap(self) -> None:
        with self._lock:
            self.gaps += 1

    def keys(self) -> list[str]:
        with self._lock:
            return [m.key for m in self.messages]

    def wait_count(self, n: int) -> None:
        wait_until(
            lambda: len(self.messages) >= n, what=f"{n} messages (have {len(self.messages)})"
        )


@pytest.fixture
def make_bus() -> Iterator[Callable[..., RedisBus]]:
    buses: list[RedisBus] = []

    def make(url: str, namespace: str, **kwargs: object) -> RedisBus:
        bus = RedisBus(url, namespace=namespace, **kwargs)  # type: ignore[arg-type]
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        bus.close()


def listener_ids(client: redis.Redis) -> list[int]:
    return [int(c["id"]) for c in client.client_list() if c.get("name") == LISTENER_NAME]


def slow_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make an outage last 0.5-1 s so a test can act inside it."""
    monkeypatch.setattr(_bus._listener, "BACKOFF_BASE", 1.0)


# -- delivery ----------------------------------------------------------------------


def test_publish_reaches_other_buses_of_the_namespace_only(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    other = make_bus(redis_url, namespace + "-other")
    got_a, got_b, got_other = Inbox(), Inbox(), Inbox()
    for bus, inbox in ((a, got_a), (b, got_b), (other, got_other)):
        bus.start(inbox.on_messages, inbox.on_gap)
        assert bus.healthy and bus.unhealthy_since is None
    assert isinstance(a, Bus)

    a.publish([("chat:1", "set", 5), ("chat:2", "del", 6)])
    got_b.wait_count(2)
    assert got_b.messages == [
        Invalidation(a.origin, "chat:1", "set", 5),
        Invalidation(a.origin, "chat:2", "del", 6),
    ]
    # a's own messages are skipped; b's reach a. A later message from b
    # arriving at a proves a already read past its own two.
    b.publish([("chat:3", "set", 1)])
    got_a.wait_count(1)
    assert got_a.messages == [Invalidation(b.origin, "chat:3", "set", 1)]
    assert got_other.messages == []
    assert a.origin != b.origin and len(a.origin) == 12
    assert (a.published, b.received, a.received) == (2, 2, 1)
    assert b.last_id is not None and b.stats()["last_id"] == b.last_id
    stats = b.stats()
    assert stats["healthy"] is True and stats["gaps"] == 0 and stats["errors"] == 0


def test_entries_carry_the_wire_fields_only(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    bus = make_bus(redis_url, namespace, maxlen=50)
    bus.publish([("chat:é", "set", 2**63)])
    with redis.Redis.from_url(redis_url) as raw:
        [(_, fields)] = raw.xrange(stream_key(namespace))
    assert bus.stream == f"tiercache:v1:{namespace}:inv"
    assert fields == {
        b"o": bus.origin.encode(),
        b"k": "chat:é".encode(),
        b"a": b"set",
        b"v": str(2**63).encode(),
    }


def test_a_batch_of_1000_is_one_round_trip_and_arrives_in_order(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("warm", "set", 0)])  # connect first: the handshake is round trips too
    inbox.wait_count(1)

    sends: list[int] = []
    real_send = redis.connection.AbstractConnection.send_packed_command
    publisher = threading.current_thread()

    def counting_send(
        self: redis.connection.AbstractConnection, *args: object, **kw: object
    ) -> None:
        if threading.current_thread() is publisher:
            sends.append(1)
        real_send(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    with redis.Redis.from_url(redis_url) as raw:
        raw.config_resetstat()
        items = [(f"k{i}", "set", i) for i in range(1000)]
        sends.clear()
        started = time.perf_counter()
        a.publish(items)
        elapsed = time.perf_counter() - started
        sent = len(sends)
        xadds = raw.info("commandstats")["cmdstat_xadd"]["calls"]
    monkeypatch.undo()

    assert sent == 1, "one publish call must be one write to the socket"
    assert xadds == 1000
    assert elapsed < 2.0  # typically ~10 ms; generous for a loaded CI box
    inbox.wait_count(1001)
    assert inbox.keys()[1:] == [f"k{i}" for i in range(1000)]
    assert [m.version for m in inbox.messages[1:]] == list(range(1000))
    assert inbox.batches <= 10  # delivered in batches, not one callback per message


async def test_apublish_on_two_event_loops(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    await a.apublish([("async:1", "set", 1)])
    # A second loop (in another thread) gets its own client, closed with it.
    await asyncio.to_thread(asyncio.run, a.apublish([("async:2", "del", 2)]))
    await asyncio.to_thread(inbox.wait_count, 2)
    assert inbox.keys() == ["async:1", "async:2"]
    await a.aclose()
    await b.aclose()
    await a.aclose()  # idempotent


def test_a_caller_owned_client_works_and_stays_open(redis_url: str, namespace: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        a = RedisBus(client, namespace=namespace)
        b = RedisBus(client, namespace=namespace)
        inbox = Inbox()
        b.start(inbox.on_messages, inbox.on_gap)
        a.publish([("k", "set", 1)])
        asyncio.run(a.apublish([("k", "del", 2)]))  # sync client: runs in a thread
        inbox.wait_count(2)
        assert [(m.action, m.version) for m in inbox.messages] == [("set", 1), ("del", 2)]
        a.close()
        b.close()
        assert client.ping()


def test_malformed_entries_are_skipped_and_counted(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    with redis.Redis.from_url(redis_url) as raw:
        raw.xadd(stream_key(namespace), {"o": "x", "k": "k", "a": "mutate", "v": "1"})
        raw.xadd(stream_key(namespace), {"junk": "1"})
    a.publish([("good", "set", 1)])
    inbox.wait_count(1)
    assert inbox.keys() == ["good"]
    assert b.errors == 2 and b.healthy


def test_a_raising_callback_does_not_stop_the_listener(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    seen: list[str] = []

    def on_messages(batch: list[Invalidation]) -> None:
        seen.extend(m.key for m in batch)
        if batch[0].key == "boom":
            raise RuntimeError("handler bug")

    b.start(on_messages, lambda: None)
    a.publish([("boom", "set", 1)])
    wait_until(lambda: seen == ["boom"])
    a.publish([("after", "set", 2)])
    wait_until(lambda: seen == ["boom", "after"])
    assert b.errors == 1 and b.healthy
    assert "on_messages raised" in caplog.text


# -- outages -----------------------------------------------------------------------


def test_killed_listener_connection_replays_what_it_missed(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_reconnects(monkeypatch)
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("before", "set", 1)])
    inbox.wait_count(1)

    with redis.Redis.from_url(redis_url) as raw:
        before = set(listener_ids(raw))
        mine = [cid for cid in before if cid == b._listener_id]
        assert mine, "the listener is findable by its client name"
        raw.client_kill_filter(_id=mine[0])
        wait_until(lambda: not b.healthy, what="the bus to notice")
        assert b.unhealthy_since is not None
        a.publish([(f"missed{i}", "set", i) for i in range(50)])
        assert not b.healthy, "published during the outage"
        wait_until(lambda: b.healthy, what="recovery")
        inbox.wait_count(51)
        assert mine[0] not in listener_ids(raw)
    assert inbox.keys() == ["before"] + [f"missed{i}" for i in range(50)]
    assert b.reconnects == 1 and b.errors >= 1 and b.unhealthy_since is None
    assert inbox.gaps == 0 and b.gaps == 0, "the stream still had everything: no gap"


def test_server_restart_is_a_gap_and_the_bus_keeps_working(
    redis_server: RedisServer, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a, b = make_bus(redis_server.url, namespace), make_bus(redis_server.url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("before", "set", 1)])
    inbox.wait_count(1)

    redis_server.restart()  # same port, data gone
    wait_until(lambda: inbox.gaps == 1 and b.healthy, what="gap and recovery")
    a.publish([("after", "set", 2)])  # the publisher's dead pooled connection heals
    inbox.wait_count(2)
    assert inbox.keys() == ["before", "after"]
    assert b.gaps == 1 and b.reconnects >= 1


def test_trimmed_past_the_reader_is_a_gap(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_reconnects(monkeypatch)
    a = make_bus(redis_url, namespace, maxlen=10)
    b = make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("before", "set", 1)])
    inbox.wait_count(1)

    with redis.Redis.from_url(redis_url) as raw:
        assert b._listener_id is not None
        raw.client_kill_filter(_id=b._listener_id)
        wait_until(lambda: not b.healthy, what="the bus to notice")
        # MAXLEN ~ trims whole radix-tree nodes (100 entries), so overshoot.
        a.publish([(f"lost{i}", "set", i) for i in range(1000)])
        assert raw.xlen(stream_key(namespace)) < 1000
    wait_until(lambda: inbox.gaps == 1 and b.healthy, what="gap and recovery")
    a.publish([("after", "set", 2)])
    inbox.wait_count(2)
    assert inbox.keys() == ["before", "after"], "after a gap the bus resumes at the end"


# -- entries lost while the reader stays connected ------------------------------------


def test_a_slow_callback_while_a_flood_trims_past_the_reader_is_a_gap(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a = make_bus(redis_url, namespace, maxlen=10)
    b = make_bus(redis_url, namespace)
    inbox = Inbox()
    inside, release = threading.Event(), threading.Event()

    def slow(batch: list[Invalidation]) -> None:
        inbox.on_messages(batch)
        if batch[0].key == "first":
            inside.set()
            release.wait(WAIT)

    b.start(slow, inbox.on_gap)
    try:
        a.publish([("first", "set", 1)])
        assert inside.wait(WAIT), "the callback was entered"
        # While the callback runs, the entries after "first" come and go.
        a.publish([(f"lost{i}", "set", i) for i in range(1000)])
        with redis.Redis.from_url(redis_url) as raw:
            key = stream_key(namespace)
            assert raw.xlen(key) < 1000
            assert b.last_id is not None and not raw.xrange(key, b.last_id, b.last_id)
    finally:
        release.set()
    wait_until(lambda: inbox.gaps == 1, what="the gap")
    a.publish([("after", "set", 2)])
    inbox.wait_count(2)
    assert inbox.keys() == ["first", "after"], "after a gap the bus resumes at the end"
    assert b.gaps == 1 and b.healthy and b.reconnects == 0 and b.errors == 0


def _xtrim_to_zero(raw: redis.Redis, key: str) -> None:
    raw.xtrim(key, maxlen=0, approximate=False)


def _delete(raw: redis.Redis, key: str) -> None:
    raw.delete(key)


EMPTIERS = pytest.mark.parametrize(
    "empty", [_xtrim_to_zero, _delete], ids=["xtrim-maxlen-0", "del"]
)


@EMPTIERS
def test_stream_emptied_by_another_client_while_idle_is_a_gap(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    empty: Callable[[redis.Redis, str], None],
) -> None:
    a = make_bus(redis_url, namespace)
    b = make_bus(redis_url, namespace, block_ms=50)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("before", "set", 1)])
    inbox.wait_count(1)

    key = stream_key(namespace)
    with redis.Redis.from_url(redis_url) as raw:
        empty(raw, key)
        # Nothing is published: the idle reader finds out at its next wake-up,
        # and anchors on a marker of its own (re-creating a deleted stream).
        wait_until(lambda: inbox.gaps == 1, what="the gap")
        [(marker_id, fields)] = raw.xrange(key)
        assert fields == {b"o": b.origin.encode(), b"a": MARK.encode()}
        assert b.last_id == marker_id.decode()
    a.publish([("after", "set", 2)])
    inbox.wait_count(2)
    assert inbox.keys() == ["before", "after"]
    assert b.gaps == 1 and b.healthy and b.reconnects == 0 and b.errors == 0


@EMPTIERS
def test_stream_emptied_then_published_to_is_a_gap(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    empty: Callable[[redis.Redis, str], None],
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("before", "set", 1)])
    inbox.wait_count(1)

    with redis.Redis.from_url(redis_url) as raw:
        empty(raw, stream_key(namespace))
    # The stream has entries again, but not the reader's: still a gap.
    a.publish([("after", "set", 2)])
    wait_until(lambda: inbox.gaps == 1, what="the gap")
    a.publish([("next", "set", 3)])
    wait_until(lambda: "next" in inbox.keys(), what="delivery after the gap")
    # "after" precedes the gap, so the cache's drop covers it; it is also
    # delivered only if the reader's block timed out between the two calls.
    assert inbox.keys() in (["before", "next"], ["before", "after", "next"])
    assert b.gaps == 1 and b.healthy and b.reconnects == 0 and b.errors == 0


# -- no spurious gaps ----------------------------------------------------------------


def test_no_gap_starting_on_a_missing_stream(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    key = stream_key(namespace)
    b, c = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    got_b, got_c = Inbox(), Inbox()
    with redis.Redis.from_url(redis_url) as raw:
        assert not raw.exists(key)
        b.start(got_b.on_messages, got_b.on_gap)
        # The position must be a real entry: b adds a marker of its own...
        [(marker_id, fields)] = raw.xrange(key)
        assert fields == {b"o": b.origin.encode(), b"a": MARK.encode()}
        assert b.last_id == marker_id.decode()
        # ...which a later reader anchors on instead of adding another.
        c.start(got_c.on_messages, got_c.on_gap)
        assert c.last_id == b.last_id and raw.xlen(key) == 1
        a = make_bus(redis_url, namespace)
        a.publish([("k", "set", 1)])
        got_b.wait_count(1)
        got_c.wait_count(1)
    for bus, inbox in ((b, got_b), (c, got_c)):
        assert inbox.keys() == ["k"], "markers are not delivered"
        assert inbox.gaps == 0 and bus.gaps == 0 and bus.errors == 0


def test_no_gap_starting_on_an_empty_stream(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    key = stream_key(namespace)
    with redis.Redis.from_url(redis_url) as raw:
        raw.xadd(key, {"o": "x", "k": "old", "a": "set", "v": "1"})
        raw.xtrim(key, maxlen=0, approximate=False)
        assert raw.exists(key) and raw.xlen(key) == 0
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("k", "set", 1)])
    inbox.wait_count(1)
    assert inbox.keys() == ["k"]
    assert inbox.gaps == 0 and b.gaps == 0 and b.errors == 0


def count_reads(bus: RedisBus, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch ``bus`` so each completed listener read appends its socket
    writes (calls to send the packed commands) to the returned list."""
    sends: list[int] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(
        self: redis.connection.AbstractConnection, *args: object, **kw: object
    ) -> None:
        if threading.current_thread() is bus._thread:
            sends.append(1)
        real_send(self, *args, **kw)  # type: ignore[arg-type]

    reads: list[int] = []
    real_read = bus._read

    def counting_read(on_messages: _bus.OnMessages, on_gap: _bus.OnGap) -> None:
        before = len(sends)
        real_read(on_messages, on_gap)
        reads.append(len(sends) - before)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(bus, "_read", counting_read)
    return reads


def test_no_gap_while_idle_for_several_block_periods(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace, block_ms=20)
    a.publish([("old", "set", 1)])
    inbox = Inbox()
    reads = count_reads(b, monkeypatch)
    b.start(inbox.on_messages, inbox.on_gap)
    wait_until(lambda: len(reads) >= 10, what="ten idle reads")
    assert b.gaps == 0 and b.healthy and b.errors == 0
    a.publish([("k", "set", 2)])
    inbox.wait_count(1)
    assert inbox.keys() == ["k"] and inbox.gaps == 0 and b.gaps == 0


def test_each_read_checks_for_a_gap_in_its_one_round_trip(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    reads = count_reads(b, monkeypatch)
    b.start(inbox.on_messages, inbox.on_gap)
    for i in range(20):
        a.publish([(f"k{i}", "set", i)])
        inbox.wait_count(i + 1)
    assert len(reads) >= 20
    assert set(reads) == {1}, "the wait, the check and the data share one write"


def test_no_gap_when_trimming_removes_only_entries_already_read(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    a = make_bus(redis_url, namespace, maxlen=100)
    b = make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    expected: list[str] = []
    for burst in range(30):
        items = [(f"k{burst}-{i}", "set", i) for i in range(20)]
        a.publish(items)
        expected += [key for key, _, _ in items]
        inbox.wait_count(len(expected))
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.xlen(stream_key(namespace)) < len(expected), "the stream was trimmed"
    assert inbox.keys() == expected
    assert inbox.gaps == 0 and b.gaps == 0 and b.errors == 0


def test_no_gap_reconnecting_when_nothing_was_lost(
    redis_url: str,
    namespace: str,
    make_bus: Callable[..., RedisBus],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_reconnects(monkeypatch)
    a, b = make_bus(redis_url, namespace), make_bus(redis_url, namespace)
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)
    a.publish([("before", "set", 1)])
    inbox.wait_count(1)
    with redis.Redis.from_url(redis_url) as raw:
        assert b._listener_id is not None
        raw.client_kill_filter(_id=b._listener_id)
    wait_until(lambda: not b.healthy, what="the bus to notice")
    wait_until(lambda: b.healthy, what="recovery")
    a.publish([("after", "set", 2)])
    inbox.wait_count(2)
    assert inbox.keys() == ["before", "after"]
    assert b.reconnects == 1 and inbox.gaps == 0 and b.gaps == 0


def test_started_while_redis_is_down_then_recovers_with_a_gap(
    redis_server: RedisServer, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    redis_server.stop()
    bus = make_bus(redis_server.url, namespace)
    inbox = Inbox()
    bus.start(inbox.on_messages, inbox.on_gap)  # does not raise: unhealthy is a state
    assert not bus.healthy and bus.unhealthy_since is not None
    with pytest.raises(TierError) as info:
        bus.publish([("k", "set", 1)])
    assert isinstance(info.value.__cause__, redis.ConnectionError)

    redis_server.start()
    wait_until(lambda: bus.healthy, what="recovery")
    assert inbox.gaps == 1 and bus.reconnects == 1


def test_close_is_prompt_and_idempotent(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    bus = make_bus(redis_url, namespace, block_ms=10_000)
    bus.start(lambda batch: None, lambda: None)
    thread = bus._thread
    assert thread is not None and thread.is_alive()
    time.sleep(0.05)  # let it block in XREAD
    started = time.perf_counter()
    bus.close()
    assert time.perf_counter() - started < 2.0  # CLIENT UNBLOCK, not a 10 s wait
    assert not thread.is_alive() and not bus.healthy
    bus.close()
    with pytest.raises(TierCacheError):
        bus.publish([("k", "set", 1)])
    with pytest.raises(TierCacheError):
        bus.start(lambda batch: None, lambda: None)


def test_close_while_redis_is_down_is_prompt(
    redis_server: RedisServer, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    bus = make_bus(redis_server.url, namespace)
    bus.start(lambda batch: None, lambda: None)
    redis_server.stop()
    wait_until(lambda: not bus.healthy)
    started = time.perf_counter()
    bus.close()
    assert time.perf_counter() - started < 3.0


# -- processes ---------------------------------------------------------------------

CHILD_PUBLISHER = """
import sys
from tiercache._bus import RedisBus
url, namespace = sys.argv[1], sys.argv[2]
bus = RedisBus(url, namespace=namespace)
bus.publish([("proc:1", "set", 1), ("proc:2", "del", 2)])
print(bus.origin)
bus.close()
"""


def test_a_publisher_in_another_process_reaches_this_one(
    redis_url: str, namespace: str, make_bus: Callable[..., RedisBus]
) -> None:
    bus = make_bus(redis_url, namespace)
    inbox = Inbox()
    bus.start(inbox.on_messages, inbox.on_gap)
    child = subprocess.run(
        [sys.executable, "-c", CHILD_PUBLISHER, redis_url, namespace],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    inbox.wait_count(2)
    origin = child.stdout.strip()
    assert origin != bus.origin
    assert inbox.messages == [
        Invalidation(origin, "proc:1", "set", 1),
        Invalidation(origin, "proc:2", "del", 2),
    ]


# -- settings and pure logic ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("http://x",), {"namespace": "n"}),
        ((42,), {"namespace": "n"}),
        (("redis://x",), {"namespace": ""}),
        (("redis://x",), {"namespace": "n", "maxlen": 0}),
        (("redis://x",), {"namespace": "n", "maxlen": True}),
        (("redis://x",), {"namespace": "n", "block_ms": 0}),
        (("redis://x",), {"namespace": "n", "origin": ""}),
    ],
)
def test_bad_settings_raise_config_error(args: tuple[object], kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RedisBus(*args, **kwargs)  # type: ignore[arg-type]


def test_bad_items_are_rejected_before_anything_is_sent(namespace: str) -> None:
    bus = RedisBus("redis://127.0.0.1:1/0", namespace=namespace)  # never connects
    with pytest.raises(InvalidKeyError):
        bus.publish([(b"k", "set", 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        bus.publish([("k", "update", 1)])
    with pytest.raises(ValueError):
        bus.publish([("k", "set", -1)])
    bus.publish([])  # nothing to do, no connection
    bus.close()


@pytest.mark.parametrize(
    ("last", "first", "gap"),
    [
        ("5-0", "5-0", False),  # our entry is still there, so is all after it
        ("5-0", "5-1", True),  # gone: trimmed past us (conservative: maybe only it)
        ("5-0", "9-0", True),
        ("5-0", "4-0", True),  # a re-created stream that does not hold our entry
        ("5-0", None, True),  # emptied or deleted
    ],
)
def test_read_gap_rules(last: str, first: str | None, gap: bool) -> None:
    assert (_read_gap(last, first) is not None) is gap


@pytest.mark.parametrize(
    ("last", "run", "now", "gap"),
    [
        ("5-0", "r1", "r1", False),  # same server: the next read checks the entry
        ("5-0", "r1", "r2", True),  # server restarted
        ("5-0", None, "r2", False),  # no run id known yet (never connected)
        (None, None, "r1", True),  # never synced
        (None, "r1", "r1", True),
    ],
)
def test_resume_gap_rules(last: str | None, run: str | None, now: str, gap: bool) -> None:
    assert (_resume_gap(last, run, now) is not None) is gap


def test_a_marker_is_what_an_older_reader_skips_as_malformed() -> None:
    # Readers from before markers decode every entry not of their origin;
    # _decode is unchanged, so this is what they see: skipped, counted.
    assert _decode({b"o": b"a1b2c3d4e5f6", b"a": MARK.encode()}) is None


# -- LocalBus ----------------------------------------------------------------------


def test_local_bus_delivers_synchronously_like_the_redis_bus() -> None:
    hub = LocalHub()
    a, b = LocalBus(hub, namespace="n"), LocalBus(hub, namespace="n")
    other = LocalBus(hub, namespace="m")
    got_a, got_b, got_other = Inbox(), Inbox(), Inbox()
    for bus, inbox in ((a, got_a), (b, got_b), (other, got_other)):
        bus.start(inbox.on_messages, inbox.on_gap)
    assert isinstance(a, Bus) and a.healthy

    a.publish([("k", "set", 1)])
    asyncio.run(a.apublish([("j", "del", 2)]))
    assert got_b.messages == [
        Invalidation(a.origin, "k", "set", 1),
        Invalidation(a.origin, "j", "del", 2),
    ]
    assert got_a.messages == [] and got_other.messages == []
    assert a.published == 2 and b.received == 2 and b.last_id == "2-0"
    with pytest.raises(ValueError):
        a.publish([("k", "nope", 1)])
    a.close()
    a.close()
    with pytest.raises(TierCacheError):
        a.publish([("k", "set", 1)])


def test_local_bus_fault_hooks() -> None:
    hub = LocalHub()
    a, b = LocalBus(hub, namespace="n"), LocalBus(hub, namespace="n")
    inbox = Inbox()
    b.start(inbox.on_messages, inbox.on_gap)

    b.drop_next(1)
    a.publish([("lost", "set", 1), ("kept", "set", 2)])
    assert inbox.keys() == ["kept"]

    b.disconnect()
    assert not b.healthy and b.unhealthy_since is not None
    a.publish([("held", "set", 3)])
    assert inbox.keys() == ["kept"]
    b.reconnect()
    assert inbox.keys() == ["kept", "held"] and b.healthy and b.reconnects == 1

    b.disconnect()
    a.publish([("gone", "set", 4)])
    b.reconnect(gap=True)
    assert inbox.keys() == ["kept", "held"] and inbox.gaps == 1 and b.gaps == 1
    a.publish([("next", "set", 5)])
    assert inbox.keys()[-1] == "next"
    assert b.stats()["reconnects"] == 2
