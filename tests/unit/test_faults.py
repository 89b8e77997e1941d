"""The fault-injecting wrappers of ``tiercache.testing``: each control of
:class:`Faults` against the reference tier, bus and serializer (sync and
async), then what a cache does when they fire."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tiercache import (
    Bus,
    ConfigError,
    CorruptEntryError,
    Invalidation,
    LocalBus,
    LocalHub,
    MemoryTier,
    MsgpackSerializer,
    PersistentTier,
    SerializationError,
    Serializer,
    TieredCache,
    TierError,
)
from tiercache.testing import (
    DictTier,
    FakeClock,
    Faults,
    FaultyBus,
    FaultySerializer,
    FaultyTier,
)

# Every PersistentTier method with arguments that DictTier accepts. Values
# need not be envelopes: DictTier reads non-envelope bytes as version 0.
TIER_CALLS: dict[str, tuple[Any, ...]] = {
    "get": ("k",),
    "get_many": (["k", "x"],),
    "set": ("k", b"v", None),
    "set_many": ([("k", b"v", None), ("j", b"w", 10.0)],),
    "delete": ("k",),
    "touch": ("k", 5.0),
    "compare_and_set": ("k", b"v", None, 0),
    "compare_and_set_many": ([("k", b"v", None, 0)],),
    "acquire_lease": ("lease", "fence", 5.0),
    "renew_lease": ("lease", 1, 5.0),
    "release_lease": ("lease", 1),
    "compare_and_set_fenced": ("k", b"v", None, 0, "lease", 1),
    "close": (),
}


def call(obj: Any, method: str, args: tuple[Any, ...], mode: str) -> Any:
    """``obj.method(*args)``, or its ``a``-prefixed twin run to completion."""
    if mode == "sync":
        return getattr(obj, method)(*args)
    return asyncio.run(getattr(obj, "a" + method)(*args))


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- Faults ------------------------------------------------------------------------


def test_fail_next_fails_exactly_n_calls_then_delegates(mode: str) -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.fail_next(2)
    for _ in range(2):
        with pytest.raises(TierError) as err:
            call(tier, "set", ("k", b"v", None), mode)
        assert isinstance(err.value.__cause__, ConnectionError)
    assert tier.tier.get("k") is None, "a failed call never reaches the wrapped tier"
    call(tier, "set", ("k", b"v", None), mode)
    assert tier.tier.get("k") == b"v"
    assert (faults.calls, faults.failures) == (3, 2)


def test_fail_next_replaces_and_zero_cancels() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.fail_next(5)
    faults.fail_next(1)
    with pytest.raises(TierError):
        tier.get("k")
    assert tier.get("k") is None
    faults.fail_next(3)
    faults.fail_next(0)
    assert tier.get("k") is None


def test_fail_next_uses_the_given_backend_error() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    boom = TimeoutError("read timed out")
    faults.fail_next(1, exc=boom)
    with pytest.raises(TierError, match="read timed out") as err:
        tier.get("k")
    assert err.value.__cause__ is boom
    faults.fail_next(1, exc=OSError)
    with pytest.raises(TierError) as err:
        tier.get("k")
    assert type(err.value.__cause__) is OSError
    mine = TierError("already wrapped")
    faults.fail_next(1, exc=mine)
    with pytest.raises(TierError) as err:
        tier.get("k")
    assert err.value is mine, "a TierError is raised as it is, not wrapped twice"


def test_fail_rate_is_deterministic_with_a_seed() -> None:
    def pattern(seed: int) -> list[bool]:
        faults = Faults()
        tier = FaultyTier(DictTier(), faults)
        faults.fail_rate(0.5, seed=seed)
        out = []
        for _ in range(200):
            try:
                tier.get("k")
            except TierError:
                out.append(True)
            else:
                out.append(False)
        assert faults.failures == sum(out)
        return out

    first = pattern(7)
    assert pattern(7) == first
    assert pattern(8) != first
    assert 60 < sum(first) < 140


def test_fail_rate_extremes() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.fail_rate(1.0)
    for _ in range(10):
        with pytest.raises(TierError):
            tier.get("k")
    faults.fail_rate(0.0)
    for _ in range(10):
        assert tier.get("k") is None


def test_down_fails_everything_until_up(mode: str) -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.fail_next(1)
    faults.down()
    assert faults.is_down
    for method in ("get", "set", "delete", "compare_and_set"):
        with pytest.raises(TierError):
            call(tier, method, TIER_CALLS[method], mode)
    faults.up()
    with pytest.raises(TierError):
        call(tier, "get", ("k",), mode)  # down did not use up the fail_next
    assert call(tier, "get", ("k",), mode) is None


def test_heal_clears_every_setting_but_keeps_the_counters() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.fail_next(1)
    with pytest.raises(TierError):
        tier.get("k")
    faults.fail_next(3)
    faults.fail_rate(1.0)
    faults.drop_next(2)
    faults.drop_rate(1.0)
    faults.latency(10.0)
    faults.down()
    faults.heal()
    assert repr(faults) == "Faults(calls=1, failures=1, dropped=0)"
    start = time.perf_counter()
    assert tier.get("k") is None
    assert time.perf_counter() - start < 1.0
    assert (faults.calls, faults.failures) == (2, 1)


def test_latency_sleeps_sync() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.latency(0.03)
    start = time.perf_counter()
    tier.get("k")
    assert time.perf_counter() - start >= 0.03


async def test_latency_awaits_without_blocking_the_loop() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.latency(0.05)
    start = time.perf_counter()
    # Ten slow calls at once take one latency, not ten: they only await.
    await asyncio.gather(*(tier.aget("k") for _ in range(10)))
    elapsed = time.perf_counter() - start
    assert 0.05 <= elapsed < 0.4
    assert faults.calls == 10


def test_methods_limit_what_is_affected(mode: str) -> None:
    faults = Faults(methods={"set", "compare_and_set"})
    assert faults.methods == frozenset({"set", "compare_and_set"})
    tier = FaultyTier(DictTier(), faults)
    faults.down()
    faults.latency(10.0)  # the test would time out if it applied to get
    assert call(tier, "get", ("k",), mode) is None
    assert call(tier, "delete", ("k",), mode) is False
    faults.latency(0)
    for method in ("set", "compare_and_set"):
        with pytest.raises(TierError, match=method):
            call(tier, method, TIER_CALLS[method], mode)
    assert faults.calls == 2, "only affected calls are counted"
    assert faults.affects("set") and not faults.affects("get")


@pytest.mark.parametrize(
    "bad",
    [
        lambda f: f.fail_next(-1),
        lambda f: f.fail_next(True),
        lambda f: f.fail_next(1.5),
        lambda f: f.fail_next(1, exc="boom"),
        lambda f: f.fail_rate(1.5),
        lambda f: f.fail_rate(-0.1),
        lambda f: f.drop_next(-1),
        lambda f: f.drop_rate(2),
        lambda f: f.latency(-1),
        lambda f: f.latency(float("inf")),
        lambda f: Faults(methods={"aset"}),
        lambda f: Faults(methods="set"),
    ],
)
def test_bad_settings_raise_config_error(bad: Callable[[Faults], Any]) -> None:
    with pytest.raises(ConfigError):
        bad(Faults())


def test_fail_next_is_exact_across_threads() -> None:
    faults = Faults()
    tier = FaultyTier(DictTier(), faults)
    faults.fail_next(100)
    failed = []
    lock = threading.Lock()

    def worker() -> None:
        n = 0
        for _ in range(50):
            try:
                tier.get("k")
            except TierError:
                n += 1
        with lock:
            failed.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(failed) == 100
    assert (faults.calls, faults.failures) == (400, 100)


# -- FaultyTier -----------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(TIER_CALLS))
def test_every_tier_method_fails_then_delegates(method: str, mode: str) -> None:
    faults = Faults()
    clock = FakeClock()  # lease tokens start from the clock: the same for both
    tier = FaultyTier(DictTier(clock=clock), faults)
    twin = DictTier(clock=clock)
    args = TIER_CALLS[method]
    faults.fail_next(1)
    with pytest.raises(TierError, match=f"dict tier: {method} failed") as err:
        call(tier, method, args, mode)
    assert isinstance(err.value.__cause__, ConnectionError)
    assert call(tier, method, args, mode) == call(twin, method, args, mode)
    assert (faults.calls, faults.failures) == (2, 1)


def test_tier_copies_the_wrapped_tiers_capabilities() -> None:
    class Plain(PersistentTier):
        name = "plain"

        def get(self, key: str) -> bytes | None:
            return None

        def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
            pass

        def delete(self, key: str) -> bool:
            return False

        def touch(self, key: str, ttl: float | None) -> bool:
            return False

    dict_tier = FaultyTier(DictTier())
    plain = FaultyTier(Plain())
    assert isinstance(dict_tier, PersistentTier)
    assert (dict_tier.name, dict_tier.supports_cas, dict_tier.supports_lease) == (
        "dict",
        True,
        True,
    )
    assert dict_tier.async_inline is True
    assert (plain.name, plain.supports_cas, plain.supports_lease, plain.async_inline) == (
        "plain",
        False,
        False,
        False,
    )
    with pytest.raises(NotImplementedError):
        plain.compare_and_set("k", b"v", None, 0)
    # The class defaults are untouched: only the instances differ.
    assert FaultyTier.name == "tier" and FaultyTier.supports_cas is False
    with pytest.raises(ConfigError):
        FaultyTier(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FaultyTier(DictTier(), faults="down")  # type: ignore[arg-type]


# -- FaultyBus ------------------------------------------------------------------------


@pytest.fixture
def buses() -> Iterator[tuple[FaultyBus, list[Invalidation]]]:
    """A faulty publisher and what a listener on the same hub received."""
    hub = LocalHub()
    got: list[Invalidation] = []
    listener = LocalBus(hub, namespace="t")
    listener.start(on_messages=got.extend, on_gap=lambda: None)
    bus = FaultyBus(LocalBus(hub, namespace="t"), Faults())
    yield bus, got
    bus.close()
    listener.close()


def test_bus_publish_fails_and_delivers_nothing(
    buses: tuple[FaultyBus, list[Invalidation]], mode: str
) -> None:
    bus, got = buses
    bus.faults.fail_next(1)
    with pytest.raises(TierError, match="bus: publish failed") as err:
        call(bus, "publish", ([("k", "set", 1)],), mode)
    assert isinstance(err.value.__cause__, ConnectionError)
    assert got == []
    call(bus, "publish", ([("k", "set", 2)],), mode)
    assert [(m.key, m.version) for m in got] == [("k", 2)]


def test_bus_drops_messages_silently(
    buses: tuple[FaultyBus, list[Invalidation]], mode: str
) -> None:
    bus, got = buses
    bus.faults.drop_next(2)
    call(bus, "publish", ([("a", "set", 1)],), mode)  # all dropped: returns normally
    call(bus, "publish", ([("b", "set", 1), ("c", "del", 2)],), mode)
    assert [m.key for m in got] == ["c"]
    assert bus.faults.dropped == 2
    assert bus.bus.stats()["published"] == 1, "dropped messages never reach the bus"


def test_bus_drop_rate_is_deterministic_with_a_seed() -> None:
    def kept(seed: int) -> list[str]:
        hub = LocalHub()
        got: list[Invalidation] = []
        LocalBus(hub, namespace="t").start(on_messages=got.extend, on_gap=lambda: None)
        bus = FaultyBus(LocalBus(hub, namespace="t"))
        bus.faults.drop_rate(0.5, seed=seed)
        bus.publish([(f"k{i}", "set", 1) for i in range(100)])
        assert bus.faults.dropped + len(got) == 100
        return [m.key for m in got]

    first = kept(3)
    assert kept(3) == first
    assert 25 < len(first) < 75


def test_bus_methods_filter_applies_to_drops(
    buses: tuple[FaultyBus, list[Invalidation]],
) -> None:
    publisher, got = buses
    bus = FaultyBus(publisher.bus, Faults(methods={"get"}))
    bus.faults.drop_next(1)
    bus.faults.down()
    bus.publish([("k", "set", 1)])
    assert len(got) == 1


def test_bus_delegates_the_rest() -> None:
    hub = LocalHub()
    clock = FakeClock()
    inner = LocalBus(hub, namespace="ns", origin="me", clock=clock)
    bus = FaultyBus(inner)
    assert isinstance(bus, Bus)
    assert (bus.origin, bus.namespace, bus.healthy, bus.unhealthy_since) == (
        "me",
        "ns",
        False,
        None,
    )
    bus.start(on_messages=lambda batch: None, on_gap=lambda: None)
    assert bus.healthy and bus.stats() == inner.stats()
    inner.disconnect()
    assert not bus.healthy and bus.unhealthy_since == clock.monotonic()
    bus.publish([])  # nothing to publish is never a fault
    bus.faults.down()
    bus.publish([])
    asyncio.run(bus.aclose())
    assert inner.stats()["healthy"] is False
    with pytest.raises(ConfigError):
        FaultyBus(object())


# -- FaultySerializer -----------------------------------------------------------------


def test_serializer_failures_are_serialization_and_corrupt_entry_errors() -> None:
    faults = Faults()
    s = FaultySerializer(MsgpackSerializer(), faults)
    assert isinstance(s, Serializer)
    assert (s.id, s.name) == (1, "msgpack")
    value = {"tags": {"vip"}, "pos": (1, 2)}
    faults.fail_next(1)
    with pytest.raises(SerializationError, match="dumps failed") as err:
        s.dumps(value)
    assert isinstance(err.value.__cause__, ValueError)
    data = s.dumps(value)
    faults.fail_next(1)
    with pytest.raises(CorruptEntryError, match="loads failed"):
        s.loads(data)
    assert s.loads(data) == value
    only_loads = FaultySerializer(MsgpackSerializer(), Faults(methods={"loads"}))
    only_loads.faults.down()
    assert only_loads.dumps(1) == MsgpackSerializer().dumps(1)
    with pytest.raises(ConfigError):
        FaultySerializer(object())  # type: ignore[arg-type]


# -- end to end: a cache over faulty parts --------------------------------------------


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def shared(clock: FakeClock) -> DictTier:
    return DictTier(clock=clock)


@pytest.fixture
def cache(
    faults: Faults, shared: DictTier, namespace: str, clock: FakeClock
) -> Iterator[TieredCache]:
    c = TieredCache(MemoryTier(), FaultyTier(shared, faults), namespace=namespace, clock=clock)
    yield c
    faults.heal()
    clock.advance(60)
    c.close()


# After a failure the cache may stop calling a tier for a while (a circuit
# breaker's backoff, on the cache's clock); a test that expects the next
# call to get through moves the fake clock past any such pause first.
RECOVER = 60.0


def test_a_write_that_failed_before_reaching_the_tier_is_rolled_back(
    cache: TieredCache, faults: Faults, shared: DictTier, clock: FakeClock
) -> None:
    """#10.18: the handler hears the error, so the change is not applied,
    not now and not by a later flush: memory goes back to the scope's start."""
    with cache.session("k") as s:
        s["v"] = 1
    with pytest.raises(TierError) as err:
        with cache.session("k") as s:
            s["v"] = 2
            faults.fail_next(1)  # after the load: the write at exit fails
    assert isinstance(err.value.__cause__, ConnectionError)
    assert cache.stats().dirty == 0
    assert cache.get("k") == {"v": 1}, "rolled back"
    clock.advance(RECOVER)
    assert cache.flush() == 0
    fresh = TieredCache(MemoryTier(), shared, namespace=cache.namespace, clock=clock)
    assert fresh.get("k") == {"v": 1}
    fresh.close()
    with cache.session("k") as s:  # the key works as before
        s["v"] = 3
    assert cache.get("k") == {"v": 3}


async def test_a_failed_async_write_is_rolled_back(
    cache: TieredCache, faults: Faults, clock: FakeClock
) -> None:
    with pytest.raises(TierError):
        async with cache.session("k") as s:
            s["v"] = 1
            faults.fail_next(1)
    assert cache.stats().dirty == 0
    assert await cache.aget("k") is None
    clock.advance(RECOVER)
    assert await cache.aflush() == 0


def test_a_write_whose_reply_was_lost_is_acknowledged_and_retried(
    cache: TieredCache, faults: Faults, shared: DictTier, clock: FakeClock
) -> None:
    """#10.18, the other half: a failure after the command was sent may have
    landed, so it is not an error; it stays pending until written."""
    from tiercache import TierError as TE

    with cache.session("k") as s:
        s["v"] = 1
    lost = TE("connection reset after sending")  # sent=True: may have landed
    faults.fail_next(1, lost)
    with cache.session("k") as s:
        s["v"] = 2  # returns: acknowledged
    assert cache.stats().dirty == 1
    clock.advance(RECOVER)
    assert cache.flush() == 1
    fresh = TieredCache(MemoryTier(), shared, namespace=cache.namespace, clock=clock)
    assert fresh.get("k") == {"v": 2}
    fresh.close()


def _pool_exhausted() -> TierError:
    """What a RedisTier raises when its connection pool stayed full."""
    err = TierError("redis tier: get 'k' not sent: this process's connection pool is exhausted")
    err.saturated = True
    err.sent = False
    return err


def test_a_full_connection_pool_never_opens_the_circuit(cache: TieredCache, faults: Faults) -> None:
    """#11.5: a call that waited in vain for one of this process's own
    connections says nothing about the server, so a burst that overflows
    the pool fails only the calls that waited too long: the next call is
    sent at once, with no backoff to wait out."""
    faults.fail_next(3, _pool_exhausted())
    for key in ("a", "b", "c"):
        with pytest.raises(TierError, match="exhausted"):
            cache.get(key)
    assert cache.stats().degraded is False
    assert cache.get("d") is None


def test_a_full_connection_pool_does_not_close_an_open_circuit(
    cache: TieredCache, faults: Faults, clock: FakeClock
) -> None:
    """Nor is it an answer: the probe that waited in vain leaves the circuit
    open, and the next call probes again."""
    faults.down()
    with pytest.raises(TierError):
        cache.get("a")
    faults.up()
    faults.fail_next(1, _pool_exhausted())
    clock.advance(RECOVER)
    with pytest.raises(TierError, match="exhausted"):
        cache.get("b")
    assert cache.stats().degraded is True
    assert cache.get("c") is None
    assert cache.stats().degraded is False


def test_reads_of_a_missing_key_fail_while_down(
    cache: TieredCache, faults: Faults, clock: FakeClock
) -> None:
    cache.set("held", 1)
    faults.down()
    with pytest.raises(TierError):
        cache.get("missing")
    assert cache.get("held") == 1, "a memory copy is still served"
    faults.up()
    clock.advance(RECOVER)
    assert cache.get("missing") is None


async def test_async_reads_of_a_missing_key_fail_while_down(
    cache: TieredCache, faults: Faults, clock: FakeClock
) -> None:
    faults.down()
    with pytest.raises(TierError):
        await cache.aget("missing")
    faults.up()
    clock.advance(RECOVER)
    assert await cache.aget("missing") is None


def test_a_serializer_failure_rolls_the_session_back(namespace: str) -> None:
    faults = Faults(methods={"dumps"})
    cache = TieredCache(
        MemoryTier(),
        DictTier(),
        namespace=namespace,
        serializer=FaultySerializer(MsgpackSerializer(), faults),
    )
    cache.set("k", {"v": 1})
    faults.fail_next(1)
    with pytest.raises(SerializationError, match="cannot store key 'k'"):
        with cache.session("k") as s:
            s["v"] = 2
    assert cache.get("k") == {"v": 1}
    assert cache.stats().dirty == 0
    cache.close()


def test_a_load_failure_is_a_counted_miss(namespace: str) -> None:
    shared = DictTier()
    writer = TieredCache(MemoryTier(), shared, namespace=namespace)
    writer.set("k", {"v": 1})
    faults = Faults(methods={"loads"})
    reader = TieredCache(
        MemoryTier(),
        shared,
        namespace=namespace,
        serializer=FaultySerializer(MsgpackSerializer(), faults),
    )
    faults.fail_next(2)  # bad bytes fail to decode every time
    assert reader.get("k") is None
    assert reader.stats().corrupt_entries == 1
    writer.close()
    reader.close()


def test_a_decode_failure_that_does_not_repeat_is_not_corruption(namespace: str) -> None:
    """An exception from elsewhere (a signal handler's) landing inside the
    decoder must not get good data quarantined (#10.15): decoding again
    tells it apart from bad bytes."""
    shared = DictTier()
    writer = TieredCache(MemoryTier(), shared, namespace=namespace)
    writer.set("k", {"v": 1})
    faults = Faults(methods={"loads"})
    reader = TieredCache(
        MemoryTier(),
        shared,
        namespace=namespace,
        serializer=FaultySerializer(MsgpackSerializer(), faults),
    )
    faults.fail_next(1)
    assert reader.get("k") == {"v": 1}
    assert reader.stats().corrupt_entries == 0 and reader.stats().quarantined == 0
    writer.close()
    reader.close()


# -- end to end: a lost invalidation --------------------------------------------------


@pytest.fixture
def pair(
    namespace: str, clock: FakeClock
) -> Iterator[Callable[..., tuple[TieredCache, TieredCache, Faults]]]:
    """Two caches over one shared tier; the writer publishes through a FaultyBus."""
    made: list[TieredCache] = []

    def make(*, reader_bus: bool) -> tuple[TieredCache, TieredCache, Faults]:
        hub, shared, faults = LocalHub(), DictTier(clock=clock), Faults()
        writer = TieredCache(
            MemoryTier(),
            shared,
            namespace=namespace,
            clock=clock,
            bus=FaultyBus(LocalBus(hub, namespace=namespace, clock=clock), faults),
        )
        reader = TieredCache(
            MemoryTier(),
            shared,
            namespace=namespace,
            clock=clock,
            max_stale=5,
            bus=LocalBus(hub, namespace=namespace, clock=clock) if reader_bus else None,
        )
        made.extend((writer, reader))
        return writer, reader, faults

    yield make
    for c in made:
        c.close()


def test_a_delivered_invalidation_drops_the_copy_at_once(
    pair: Callable[..., tuple[TieredCache, TieredCache, Faults]],
) -> None:
    writer, reader, _ = pair(reader_bus=True)
    writer.set("k", 1)
    assert reader.get("k") == 1
    writer.set("k", 2)
    assert reader.get("k") == 2


def test_a_failed_publish_does_not_fail_the_write(
    pair: Callable[..., tuple[TieredCache, TieredCache, Faults]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer, _, faults = pair(reader_bus=True)
    faults.fail_next(1)
    writer.set("k", 1)  # stored; only the message is lost, and logged
    assert "publishing 1 invalidation(s) failed" in caplog.text
    assert writer.stats().tier("bus").errors == 1


@pytest.mark.parametrize("lose", ["drop", "fail"])
def test_a_lost_message_is_bounded_by_max_stale_without_a_bus(
    pair: Callable[..., tuple[TieredCache, TieredCache, Faults]], clock: FakeClock, lose: str
) -> None:
    writer, reader, faults = pair(reader_bus=False)
    writer.set("k", 1)
    assert reader.get("k") == 1
    if lose == "drop":
        faults.drop_next(1)  # the publish "succeeds", the message is gone
    else:
        faults.fail_next(1)  # the publish fails; the cache logs it and moves on
    writer.set("k", 2)
    clock.advance(4)
    assert reader.get("k") == 1, "the old copy is served within max_stale"
    clock.advance(2)
    assert reader.get("k") == 2


@pytest.mark.parametrize("lose", ["drop", "fail"])
def test_a_lost_message_is_bounded_by_max_stale_with_a_healthy_bus(
    pair: Callable[..., tuple[TieredCache, TieredCache, Faults]], clock: FakeClock, lose: str
) -> None:
    writer, reader, faults = pair(reader_bus=True)
    writer.set("k", 1)
    assert reader.get("k") == 1
    if lose == "drop":
        faults.drop_next(1)  # the publish "succeeds", the message is gone
    else:
        faults.fail_next(1)  # the publish fails; the cache logs it and moves on
    writer.set("k", 2)
    assert reader.get("k") == 1, "the message was lost: the old copy stays for now"
    clock.advance(60)
    assert reader.get("k") == 2


@pytest.mark.parametrize("reader_bus", [False, True])
def test_a_remembered_miss_is_bounded_by_max_stale_too(
    pair: Callable[..., tuple[TieredCache, TieredCache, Faults]],
    clock: FakeClock,
    reader_bus: bool,
) -> None:
    """Found by the simulation: "no tier has this key" was believed for the
    cache TTL (forever without one), so a key another process created while
    its message was lost stayed missing for good."""
    writer, reader, faults = pair(reader_bus=reader_bus)
    assert reader.get("k") is None  # remembered as absent
    faults.drop_next(1)
    writer.set("k", 1)
    assert reader.get("k") is None, "within max_stale the miss may stand"
    clock.advance(6)
    assert reader.get("k") == 1


# -- the event-loop guard ------------------------------------------------------------


def test_no_blocking_names_a_callback_that_held_the_loop() -> None:
    from tiercache.testing import EventLoopBlocked, no_blocking

    async def blocks() -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - the point: a sync call on the loop

    with pytest.raises(EventLoopBlocked, match=r"more than 0.2 s: 0\.[3-9]\d s in"):
        with no_blocking(0.2):
            asyncio.run(blocks())


def test_no_blocking_passes_awaiting_code_and_restores_the_loop() -> None:
    from tiercache.testing import no_blocking

    real = asyncio.events.Handle._run

    async def awaits() -> None:
        for _ in range(5):
            await asyncio.sleep(0.05)

    with no_blocking(0.2) as slow:
        asyncio.run(awaits())
    assert slow == []
    assert asyncio.events.Handle._run is real
