"""What the Redis tier and the Redis bus share in talking to redis-py: URL
checks, what an error means, and the per-event-loop async clients.

::

    a URL ──> check_url(): both redis-py clients take it, or ConfigError now
              redact_url(): the same URL without its passwords, for logs and reprs
    a redis-py error ──> error_text(): "Type: message", for TierError and logs
                         transient(): an outage (may heal) or a refusal (will not)

    first await on loop L ──> owner._aclient(): redis.asyncio.Redis for L
                                loops[L] = _LoopClient(client, ..., closer)
                                closer = _close_at_loop_shutdown(), parked on L
    L shuts down (asyncio.run) ──> shutdown_asyncgens() ──> closer: del loops[L], aclose()
    owner.close(), any thread  ──> close_loop_clients(loops): each closer on its own loop

A ``redis.asyncio`` connection belongs to the event loop that opened it, and
a program (or a test suite) may run several loops over its life, so the
tier and the bus (the owners) open one async client per loop, on first use.
Each client is closed by the loop's own shutdown (``asyncio.run`` and
``asyncio.Runner`` close async generators before the loop, and the owner
parks one there), by the owner's ``aclose()`` / ``close()``, or, if the
owner is dropped while its loop still runs, by the loop's async-generator
finalizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import AsyncGenerator
from typing import Any, TypeAlias

import redis
import redis.asyncio
from redis.exceptions import (
    AuthenticationError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from ._exceptions import ConfigError

__all__ = [
    "BACKEND_ERRORS",
    "AsyncClient",
    "SyncClient",
    "check_url",
    "close_loop_client",
    "close_loop_clients",
    "error_text",
    "redact_url",
    "transient",
]

SyncClient: TypeAlias = "redis.Redis"
AsyncClient: TypeAlias = "redis.asyncio.Redis"

#: What a call into redis-py raises when the backend fails.
BACKEND_ERRORS = (RedisError, OSError)


def redact_url(url: str) -> str:
    """A Redis URL fit for logs and reprs: any password replaced by ``***``,
    the user's and a TLS key's (``ssl_password=``).

    >>> redact_url("redis://bot:s3cret@10.0.0.1:6379/0")
    'redis://bot:***@10.0.0.1:6379/0'
    >>> redact_url("rediss://h:6380/0?ssl_keyfile=k.pem&ssl_password=s3cret")
    'rediss://h:6380/0?ssl_keyfile=k.pem&ssl_password=***'
    """
    url = re.sub(r"(?<=[:/])([^:/@]*):([^@]*)@", r"\1:***@", url, count=1)
    return re.sub(r"(?<=[?&]ssl_password=)[^&#]*", "***", url)


def check_url(url: str) -> None:
    """Raise :class:`ConfigError` unless redis-py, sync and asyncio, takes ``url``.

    Builds (without connecting) the connection each client would open, so
    a query parameter redis-py does not take fails here, at construction,
    instead of as a bare ``TypeError`` at first use: ``ssl_*`` on a
    ``redis://`` URL, a misspelling (``ssl_ca_cert``), a bad value
    (``ssl_cert_reqs=requried``), or one only the sync client knows
    (``ssl_validate_ocsp``). redis-py hands every query parameter it does
    not parse itself to the connection class, as a string; the error names it.

    >>> check_url("rediss://h:6380/0?ssl_ca_certs=ca.pem&ssl_cert_reqs=required")
    >>> check_url("redis://h:6379/0?ssl_ca_certs=ca.pem")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tiercache._exceptions.ConfigError: bad Redis URL 'redis://h:6379/0?ssl_ca_certs=ca.pem': ...
    """
    for pool_class in (redis.ConnectionPool, redis.asyncio.ConnectionPool):
        try:
            pool = pool_class.from_url(url)
            pool.connection_class(**pool.connection_kwargs)
        except (TypeError, ValueError, RedisError) as exc:
            text = str(exc)
            # A password with an unquoted "/", "?" or "#" cuts the URL short,
            # and urllib's "Port could not be cast" then quotes a piece of it.
            for secret in re.findall(r"(?<=[:/])[^:/@]*:([^@]*)@", url):
                for piece in re.split(r"[/?#]", secret):
                    if piece:
                        text = text.replace(piece, "***")
            # Not chained: the original's message may hold those fragments.
            raise ConfigError(
                f"bad Redis URL {redact_url(url)!r}: {type(exc).__name__}: {text}"
            ) from None


def transient(exc: BaseException) -> bool:
    """Whether a redis-py error means "unavailable now" rather than "the
    server refused this command": a permission (``NOPERM``), a wrong type
    or a bad argument is not fixed by waiting; a read-only replica (a
    failover in progress) or a full server (``OOM``) may be.

    >>> from redis.exceptions import ConnectionError, NoPermissionError, ReadOnlyError
    >>> transient(ConnectionError()), transient(ReadOnlyError()), transient(NoPermissionError())
    (True, True, False)
    >>> from redis.exceptions import AuthenticationError
    >>> transient(AuthenticationError())
    False
    """
    if isinstance(exc, ResponseError):
        return isinstance(exc, ReadOnlyError | OutOfMemoryError)
    # Credentials the server turns down are a refusal too, not an outage
    # (redis-py raises it as a ConnectionError, while connecting).
    return not isinstance(exc, AuthenticationError)


def error_text(exc: BaseException) -> str:
    """``"Type: message"`` of a backend error, for TierError messages and logs.

    Not ``repr``: redis-py 8's ``RedisError.__repr__`` is only the category
    and class (``network:ConnectionError``), without the message that says
    what failed (refused, or ``certificate verify failed``).
    """
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def close_loop_clients(
    loops: dict[asyncio.AbstractEventLoop, _LoopClient],
    closing: set[asyncio.Task[None]],
    timeout: float,
) -> None:
    """Close every per-loop async client, each on its own loop."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    # list(): each closer removes its own entry from the map as it runs.
    for loop, entry in list(loops.items()):
        close_loop_client(loop, entry, here, closing, timeout)


def close_loop_client(
    loop: asyncio.AbstractEventLoop,
    entry: _LoopClient,
    here: asyncio.AbstractEventLoop | None,
    closing: set[asyncio.Task[None]],
    timeout: float,
) -> None:
    """Close an async client on the loop it belongs to, from wherever
    ``close()`` runs (``here`` is the caller's running loop, if any)."""
    closer = entry.closer
    if closer is None or loop.is_closed():
        return
    if loop is here:
        # close() called from a coroutine on this loop: cannot wait here.
        task = loop.create_task(closer.aclose())
        closing.add(task)
        task.add_done_callback(closing.discard)
    elif loop.is_running():
        future = asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
        try:
            future.result(timeout=timeout)
        except (concurrent.futures.TimeoutError, *BACKEND_ERRORS):
            pass  # best effort: its loop's shutdown will try again
    elif here is None:
        loop.run_until_complete(closer.aclose())


class _LoopClient:
    """The async client of one event loop and the generator that closes it."""

    __slots__ = ("client", "closer", "script")

    def __init__(
        self,
        client: AsyncClient,
        script: Any,
        closer: AsyncGenerator[None, None] | None,
    ) -> None:
        self.client = client
        self.script = script
        self.closer = closer


async def _close_at_loop_shutdown(
    client: AsyncClient, loops: dict[asyncio.AbstractEventLoop, _LoopClient]
) -> AsyncGenerator[None, None]:
    """Park until the loop shuts its async generators down, then close ``client``.

    It must not hold the loop itself (the owner's map would then keep every
    loop alive); it looks the loop up when it runs, which is on that loop.
    """
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        entry = loops.get(loop)
        if entry is not None and entry.client is client:
            del loops[loop]
        await client.aclose()
