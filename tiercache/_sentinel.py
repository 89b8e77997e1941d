"""Redis Sentinel for the Redis tier and bus: the ``redis+sentinel://`` URL
and the clients opened for it (see :mod:`tiercache._redisclient`, which
hands such URLs here).

::

    redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db][?options]
    rediss+sentinel://...  (TLS to the data nodes and the sentinels)
        └─> parse_sentinel_url() ──> SentinelTarget, or ConfigError
              └─> open_sentinel_sync() / open_sentinel_async():
                  Sentinel(hosts).master_for(service), on a FollowingPool

``user:pass`` authenticate to the master (as in a ``redis://`` URL);
``sentinel_username`` / ``sentinel_password`` (query) to the sentinels.

A :class:`FollowingPool` asks the sentinels who the master is before
handing out a connection, at most every ``recheck`` seconds (1 s), not only
when it opens one: redis-py's own pool keeps writing over its pooled
connections to the old master until that one is demoted, which after a
manual ``SENTINEL FAILOVER`` takes the sentinels 10 s or more -- and its
resync then discards those writes. When the master moved, idle connections
are closed at once and busy ones when they come back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio.sentinel
import redis.sentinel
from redis.sentinel import MasterNotFoundError

from ._exceptions import ConfigError

__all__ = [
    "SENTINEL_SCHEMES",
    "FollowingPool",
    "SentinelTarget",
    "is_sentinel_url",
    "open_sentinel_async",
    "open_sentinel_sync",
    "parse_sentinel_url",
]

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
#: Seconds between two checks of who the master is, per pool.
RECHECK_SECONDS = 1.0

#: TLS settings a rediss+sentinel:// URL may carry (for every connection).
_SSL_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    #: For the connections to the sentinels (credentials, TLS).
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)
    #: For the connections to the master (TLS).
    connection_kwargs: dict[str, Any] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` names a Sentinel-watched master.

    >>> is_sentinel_url("redis+sentinel://h:26379/mymaster"), is_sentinel_url("redis://h")
    (True, False)
    """
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def _host(piece: str, redacted: str) -> tuple[str, int]:
    if piece.startswith("["):  # [::1]:26379
        host, _, rest = piece[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = piece.rpartition(":") if ":" in piece else (piece, "", "")
    if not host:
        raise ConfigError(f"bad Redis URL {redacted!r}: a sentinel address has no host")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad Redis URL {redacted!r}: bad sentinel port {port_text!r}")
    return host, int(port_text)


def parse_sentinel_url(url: str, redacted: str | None = None) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` URL; :class:`ConfigError` (naming the
    URL as ``redacted``, its passwords hidden) when it is malformed.

    >>> t = parse_sentinel_url("redis+sentinel://:pw@h1:26379,h2:26380/mymaster/2")
    >>> t.hosts, t.service, t.db, t.password
    ((('h1', 26379), ('h2', 26380)), 'mymaster', 2, 'pw')
    >>> parse_sentinel_url("redis+sentinel://h1:26379")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiercache._exceptions.ConfigError: bad Redis URL '...': it names no service: ...
    """
    redacted = redacted or url
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SENTINEL_SCHEMES:
        raise ConfigError(f"bad Redis URL {redacted!r}: not a redis+sentinel:// URL")
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    auth, _, hosts_text = netloc.rpartition("@")
    username = password = None
    if auth:
        user, colon, secret = auth.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if not hosts_text:
        raise ConfigError(f"bad Redis URL {redacted!r}: it names no sentinel")
    hosts = tuple(_host(piece, redacted) for piece in hosts_text.split(","))
    parts = [unquote(p) for p in path.split("/")] if path else []
    if not parts or not parts[0]:
        raise ConfigError(
            f"bad Redis URL {redacted!r}: it names no service: "
            "redis+sentinel://host:port[,host:port...]/service_name[/db]"
        )
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ConfigError(
            f"bad Redis URL {redacted!r}: after the service only a database number may follow"
        )
    db = int(parts[1]) if len(parts) == 2 else 0
    options = {name: values[-1] for name, values in parse_qs(query).items()}
    allowed = _SENTINEL_OPTIONS + (_SSL_OPTIONS if scheme == "rediss+sentinel" else ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"bad Redis URL {redacted!r}: {', '.join(unknown)} not taken here "
            f"(a {scheme}:// URL takes {', '.join(allowed)}; pass pool settings to the tier)"
        )
    sentinel_kwargs: dict[str, Any] = {}
    for name in _SENTINEL_OPTIONS:
        if name in options:
            sentinel_kwargs[name.removeprefix("sentinel_")] = options[name]
    connection_kwargs: dict[str, Any] = {}
    if scheme == "rediss+sentinel":
        connection_kwargs["ssl"] = True
        for name in _SSL_OPTIONS:
            if name in options:
                value: Any = options[name]
                if name == "ssl_check_hostname":
                    value = value.lower() in ("1", "true", "yes", "y", "on")
                connection_kwargs[name] = value
        # The sentinels speak TLS too: same certificates.
        sentinel_kwargs.update(connection_kwargs)
    return SentinelTarget(
        hosts, parts[0], db, username, password, sentinel_kwargs, connection_kwargs
    )


def _sentinel_kwargs(target: SentinelTarget, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of the connections to the sentinels: the tier's timeouts
    and retry policy, the URL's credentials and TLS."""
    out: dict[str, Any] = {
        name: settings[name]
        for name in ("socket_timeout", "socket_connect_timeout", "retry", "protocol")
        if name in settings
    }
    out.update(target.sentinel_kwargs)
    return out


def _ssl_free(kwargs: dict[str, Any]) -> dict[str, Any]:
    """SentinelConnectionPool picks its TLS class from ``ssl`` (and takes
    no other ``ssl`` keyword); the rest are the connection's."""
    return {k: v for k, v in kwargs.items() if k != "ssl"}


class FollowingPool(redis.sentinel.SentinelConnectionPool):
    """A sentinel pool that rechecks the master at most every ``recheck``
    seconds when a connection is taken (see the module docstring)."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        self.recheck = float(kwargs.pop("recheck", RECHECK_SECONDS))
        self._due = 0.0
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._due:
            self._due = now + self.recheck
            try:
                # Closes the idle connections when the master moved.
                self.get_master_address()  # type: ignore[no-untyped-call]
            except MasterNotFoundError:
                pass  # connecting will say so, if it must connect
        return super().get_connection(*args, **kwargs)

    def close_sentinels(self) -> None:
        for client in self.sentinel_manager.sentinels:
            client.close()


class AsyncFollowingPool(redis.asyncio.sentinel.SentinelConnectionPool):
    """:class:`FollowingPool` for ``redis.asyncio``."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        self.recheck = float(kwargs.pop("recheck", RECHECK_SECONDS))
        self._due = 0.0
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now >= self._due:
            self._due = now + self.recheck
            try:
                await self.get_master_address()  # type: ignore[no-untyped-call]
            except MasterNotFoundError:
                pass
        return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client closes: its sentinels' connections too
            for client in self.sentinel_manager.sentinels:
                await client.aclose()


class _ClosingRedis(redis.Redis):
    """A client whose close() also closes its sentinels' connections."""

    def close(self) -> None:
        super().close()
        pool = self.connection_pool
        if isinstance(pool, FollowingPool):
            pool.close_sentinels()


def open_sentinel_sync(url: str, max_connections: int, **settings: Any) -> redis.Redis:
    """A client of the master a ``redis+sentinel://`` URL names (closing its
    pool and its sentinels' connections with it). ``settings`` go to the
    connections; the timeouts and retry policy to the sentinels' too."""
    target = parse_sentinel_url(url)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, settings)
    )
    pool = FollowingPool(
        target.service,
        sentinel,
        is_master=True,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        ssl=bool(target.connection_kwargs.get("ssl")),
        **_ssl_free(target.connection_kwargs),
        **settings,
    )
    client = _ClosingRedis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def open_sentinel_async(url: str, max_connections: int, **settings: Any) -> redis.asyncio.Redis:
    """:func:`open_sentinel_sync` for ``redis.asyncio`` (one per event loop)."""
    target = parse_sentinel_url(url)
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, settings)
    )
    pool = AsyncFollowingPool(
        target.service,
        sentinel,
        is_master=True,
        db=target.db,
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        ssl=bool(target.connection_kwargs.get("ssl")),
        **_ssl_free(target.connection_kwargs),
        **settings,
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


def demoted(exc: BaseException) -> bool:
    """Whether a server refused a write because it is a replica now: a
    ``READONLY`` reply, which Redis 6.2 wraps in a script's error (redis-py
    then raises a plain ResponseError, and its sentinel connection, which
    only watches for ReadOnlyError, stays on the demoted master).

    >>> demoted(redis.ResponseError("Error running script (call to f_1): @user_script:22: "
    ...     "@user_script: 22: -READONLY You can't write against a read only replica."))
    True
    """
    return isinstance(exc, redis.ResponseError) and "READONLY You can't write" in str(exc)


def follow_master(pool: Any) -> None:
    """After :func:`demoted`: a sentinel pool asks who the master is now
    (closing its connections to the old one); other pools are left alone."""
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        try:
            pool.get_master_address()  # type: ignore[no-untyped-call]
        except redis.ConnectionError:
            pass  # no master named yet: the next call asks again


async def afollow_master(pool: Any) -> None:
    """:func:`follow_master` for ``redis.asyncio``."""
    if isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool):
        try:
            await pool.get_master_address()  # type: ignore[no-untyped-call]
        except redis.ConnectionError:
            pass


def check_sentinel_url(url: str, redacted: str) -> None:
    """Parse ``url`` and build (without connecting) the connections it
    would open: a bad TLS setting fails here, as for other URLs."""
    target = parse_sentinel_url(url, redacted)
    try:
        pool = redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            target.service,
            None,
            ssl=bool(target.connection_kwargs.get("ssl")),
            **_ssl_free(target.connection_kwargs),
        )
        pool.connection_class(**pool.connection_kwargs)
        pool.disconnect()
    except (TypeError, ValueError, redis.RedisError) as exc:
        raise ConfigError(f"bad Redis URL {redacted!r}: {type(exc).__name__}: {exc}") from None


def listener_pool(pool: Any, **settings: Any) -> FollowingPool | None:
    """For the bus's listener, given a client on a sentinel pool: a pool of
    one connection with the same service, sentinels and settings that
    follows the master; None for a pool that is not a sentinel pool."""
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return None
    kwargs = {
        name: value
        for name, value in pool.connection_kwargs.items()
        if name != "connection_pool" and not name.startswith(("maint_notifications", "orig_"))
    }
    kwargs.update(settings)
    return FollowingPool(
        pool.service_name,
        pool.sentinel_manager,
        is_master=pool.is_master,
        connection_class=pool.connection_class,
        max_connections=1,
        **kwargs,
    )
