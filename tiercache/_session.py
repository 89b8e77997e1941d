"""Session scopes and the ``@cached_session`` decorator.

::

    handler(update) ──> key(update) ──> lock key ──> load or initial() ──> attach
                                                                            │
               session ◄──────────── live tracked value ◄───────────────────┘
                  │ body returns: changed? seal once, write (or timer) ; unchanged: no write
                  │ body raises:  revert in place, write nothing, re-raise
                  ▼
              detach (later writes through old references raise), unlock

A scope's lock is taken before the load, so two scopes on one key in this
process run one after the other; scopes on different keys run concurrently.
Stacked decorators take their locks in one global order (namespace, key), so
two handlers can never deadlock each other.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from ._exceptions import ConfigError
from ._policy import Expiry, Lease, Resolver, Schema
from ._scope import Scope

if TYPE_CHECKING:
    from ._cache import TieredCache

__all__ = ["LazySession", "Scope", "cached_session"]

P = ParamSpec("P")
R = TypeVar("R")
V = TypeVar("V")


class LazySession(Generic[V]):
    """A session that is loaded (and locked) only when first asked for.

    Injected by ``@cached_session(..., lazy=True)``: call :meth:`load` (sync
    handlers) or ``await`` :meth:`aload` (async handlers) to get the live
    value. A handler that never does so costs no I/O and takes no lock.
    Lazy sessions lock when first used, so they are outside the global lock
    order of stacked decorators: load at most one lazy session per handler
    if other handlers lock the same keys.
    """

    __slots__ = ("_scope", "_value", "loaded")

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._value: Any = None
        self.loaded = False

    @property
    def key(self) -> str:
        return self._scope.key

    def load(self) -> V:
        if not self.loaded:
            self._value = self._scope.__enter__()
            self.loaded = True
        return cast(V, self._value)

    async def aload(self) -> V:
        if not self.loaded:
            self._value = await self._scope.__aenter__()
            self.loaded = True
        return cast(V, self._value)

    def _exit(self, exc: BaseException | None) -> None:
        if self.loaded:
            self.loaded = False
            self._scope.__exit__(type(exc) if exc else None, exc, None)

    async def _aexit(self, exc: BaseException | None) -> None:
        if self.loaded:
            self.loaded = False
            await self._scope.__aexit__(type(exc) if exc else None, exc, None)


class _Spec:
    """One ``@cached_session`` decorator: its key function, argument name and
    the scope options, checked once when it decorates."""

    __slots__ = ("arg", "cache", "host", "key", "lazy", "opts")

    def __init__(
        self,
        cache: TieredCache,
        key: Callable[..., str],
        initial: Callable[[], Any],
        arg: str,
        lazy: bool,
        ttl: float | None,
        schema: Schema | None,
        commit_on_error: bool,
        conflict: Resolver | None,
        lease: Lease | None,
    ) -> None:
        self.cache = cache
        self.key = key
        self.arg = arg
        self.lazy = lazy
        # The decorator's own lease, else the cache-wide one, exactly as
        # cache.session() chooses.
        self.opts = cache._scope_options(initial, ttl, schema, commit_on_error, conflict, lease)
        #: What the scopes of this decorator talk to (the cache's narrow
        #: scope interface), bound once.
        self.host = cache._scope_host()

    def scope(self, key: str) -> Scope:
        return Scope(self.host, key, self.opts)


def _plan(
    specs: tuple[_Spec, ...], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[tuple[tuple[str, int, str], Scope, list[str]]], dict[str, LazySession[Any]]]:
    """Keys for every spec; eager scopes in global lock order (one scope per
    distinct cache+key, shared by the args that name it); lazy handles."""
    eager: dict[tuple[str, int, str], tuple[Scope, list[str]]] = {}
    lazy: dict[str, LazySession[Any]] = {}
    for spec in specs:
        key = spec.key(*args, **kwargs)
        if spec.lazy:
            lazy[spec.arg] = LazySession(spec.scope(key))
            continue
        order = (spec.cache.namespace, id(spec.cache), key)
        if order in eager:
            eager[order][1].append(spec.arg)
        else:
            eager[order] = (spec.scope(key), [spec.arg])
    return [(k, s, a) for k, (s, a) in sorted(eager.items(), key=lambda kv: kv[0])], lazy


def cached_session(
    cache: TieredCache,
    *,
    key: Callable[..., str],
    initial: Callable[[], Any] = dict,
    arg: str = "session",
    lazy: bool = False,
    ttl: float | None = None,
    schema: Schema | None = None,
    commit_on_error: bool = False,
    conflict: Resolver | None = None,
    lease: Lease | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Inject a session scope's live value into a handler as keyword ``arg``.

    ``key`` receives the handler's own arguments (for a method, ``self``
    too) and returns the session key. Works on sync and async functions;
    stacks (each decorator adds one session; all are locked in one global
    order). The injected parameter is removed from the wrapper's
    ``__signature__``, so frameworks that inspect handlers see the original
    parameters; give it a default (``session: dict = None``) to keep type
    checkers quiet at call sites.

    >>> from tiercache import TieredCache, MemoryTier, cached_session
    >>> cache = TieredCache(MemoryTier(), namespace="doc")
    >>> @cached_session(cache, key=lambda chat_id: f"chat:{chat_id}")
    ... def on_message(chat_id, session=None):
    ...     session["n"] = session.get("n", 0) + 1
    ...     return session["n"]
    >>> on_message(7), on_message(7)
    (1, 2)
    """
    if not callable(key):
        raise ConfigError(f"cached_session key must be a callable, got {key!r}")
    if not callable(initial):
        raise ConfigError(f"cached_session initial must be a callable (like dict), got {initial!r}")
    if not isinstance(arg, str) or not arg.isidentifier():
        raise ConfigError(f"cached_session arg must be an identifier, got {arg!r}")
    if ttl is not None:
        Expiry(ttl)  # validates: ConfigError names the setting
    spec = _Spec(cache, key, initial, arg, lazy, ttl, schema, commit_on_error, conflict, lease)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        inner: tuple[_Spec, ...] = getattr(fn, "__tiercache_specs__", ())
        original: Callable[..., Any] = getattr(fn, "__tiercache_original__", fn)
        specs = (spec, *inner)
        names = [s.arg for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"stacked cached_session decorators reuse an arg name: {names!r}")
        if inspect.iscoroutinefunction(original):
            wrapper: Callable[..., Any] = _async_wrapper(original, specs)
        else:
            wrapper = _sync_wrapper(original, specs)
        functools.update_wrapper(wrapper, original)
        wrapper.__tiercache_specs__ = specs  # type: ignore[attr-defined]
        wrapper.__tiercache_original__ = original  # type: ignore[attr-defined]
        try:
            sig = inspect.signature(original)
            injected = set(names)
            wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
                parameters=[p for p in sig.parameters.values() if p.name not in injected]
            )
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            pass
        return cast(Callable[P, R], wrapper)

    return decorate


def _sync_wrapper(fn: Callable[..., Any], specs: tuple[_Spec, ...]) -> Callable[..., Any]:
    if len(specs) == 1 and not specs[0].lazy:
        return _one_sync(fn, specs[0])

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scopes, lazies = _plan(specs, args, kwargs)
        opened: list[Scope] = []
        try:
            for _, scope, names in scopes:
                value = scope.__enter__()
                opened.append(scope)
                for name in names:
                    kwargs[name] = value
            kwargs.update(lazies)
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _close_all(opened, lazies, exc)
            raise
        _close_all(opened, lazies, None)
        return result

    return wrapper


def _one_sync(fn: Callable[..., Any], spec: _Spec) -> Callable[..., Any]:
    """The common case, one eager session: exactly what the general
    wrapper does for it (the key, then the scope around the call), flat."""
    key, arg, host, opts = spec.key, spec.arg, spec.host, spec.opts

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with Scope(host, key(*args, **kwargs), opts) as value:
            kwargs[arg] = value
            return fn(*args, **kwargs)

    return wrapper


def _one_async(fn: Callable[..., Coroutine[Any, Any, Any]], spec: _Spec) -> Callable[..., Any]:
    """:func:`_one_sync` for a coroutine function."""
    key, arg, host, opts = spec.key, spec.arg, spec.host, spec.opts

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        async with Scope(host, key(*args, **kwargs), opts) as value:
            kwargs[arg] = value
            return await fn(*args, **kwargs)

    return wrapper


def _close_all(
    opened: list[Scope], lazies: dict[str, LazySession[Any]], exc: BaseException | None
) -> None:
    # Unlock in reverse order; an error while closing one scope does not
    # keep the others locked: the first such error propagates.
    first: BaseException | None = None
    for handle in lazies.values():
        try:
            handle._exit(exc)
        except BaseException as err:
            first = first or err
    for scope in reversed(opened):
        try:
            scope.__exit__(type(exc) if exc else None, exc, None)
        except BaseException as err:
            first = first or err
    if first is not None and first is not exc:
        raise first


def _async_wrapper(
    fn: Callable[..., Coroutine[Any, Any, Any]], specs: tuple[_Spec, ...]
) -> Callable[..., Awaitable[Any]]:
    if len(specs) == 1 and not specs[0].lazy:
        return _one_async(fn, specs[0])

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        scopes, lazies = _plan(specs, args, kwargs)
        opened: list[Scope] = []
        try:
            for _, scope, names in scopes:
                value = await scope.__aenter__()
                opened.append(scope)
                for name in names:
                    kwargs[name] = value
            kwargs.update(lazies)
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            await _aclose_all(opened, lazies, exc)
            raise
        await _aclose_all(opened, lazies, None)
        return result

    return wrapper


async def _aclose_all(
    opened: list[Scope], lazies: dict[str, LazySession[Any]], exc: BaseException | None
) -> None:
    first: BaseException | None = None
    for handle in lazies.values():
        try:
            await handle._aexit(exc)
        except BaseException as err:
            first = first or err
    for scope in reversed(opened):
        try:
            await scope.__aexit__(type(exc) if exc else None, exc, None)
        except BaseException as err:
            first = first or err
    if first is not None and first is not exc:
        raise first
