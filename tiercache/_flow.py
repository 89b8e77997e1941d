"""Flows: the core's I/O as data, and the two loops that perform it.

The core writes each algorithm once, as a generator that *yields* the tier
calls it needs and receives their results (or their exceptions)::

    core flow ──Call(tier, "get", args)──> run()  ──tier.get(*args)──────> tier
              <──────── result ───────────        <────────────────────────
                                            arun() ──await tier.aget(*args)─>

:func:`run` drives a flow with sync calls, :func:`arun` with the ``a``-
prefixed async ones. Both time every call into the tier's counters, so
stats are gathered in exactly one place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from ._exceptions import TierError
from ._stats import TierCounters
from ._tiers._base import PersistentTier

__all__ = ["Call", "Flow", "Pause", "Tracer", "arun", "run", "traced"]

T = TypeVar("T")


class Call(NamedTuple):
    """One tier (or bus) call a flow asks for."""

    #: A PersistentTier, or the invalidation bus: anything with the method
    #: and its ``a``-prefixed async twin.
    tier: PersistentTier | Any
    counters: TierCounters
    method: str
    args: tuple[Any, ...]


class Pause(NamedTuple):
    """A wait a flow asks for (backoff between compare-and-set retries):
    ``time.sleep`` for sync callers, ``asyncio.sleep`` for async ones."""

    seconds: float


Flow = Generator[Call | Pause, Any, T]


class Tracer(Protocol):
    """What traces a flow (tiercache.otel makes one; None: no tracing):
    ``start`` opens a span and returns it; the span's ``end(error,
    result)`` closes it with the flow's exception or result."""

    def start(self, name: str, attributes: dict[str, Any]) -> Any: ...


def traced(tracer: Tracer, name: str, attributes: dict[str, Any], flow: Flow[T]) -> Flow[T]:
    """``flow``, inside a span of ``tracer`` (sync or async alike: the span
    is started, not made current, so it never crosses a context)."""
    span = tracer.start(name, attributes)
    try:
        result = yield from flow
    except BaseException as exc:
        span.end(exc, None)
        raise
    span.end(None, result)
    return result


def _account(call: Call, result: Any, micros: float) -> None:
    c = call.counters
    m = call.method
    with c.lock:
        c.latency.record(micros)
        if m == "get":
            c.reads += 1
            if result is None:
                c.misses += 1
            else:
                c.hits += 1
                c.bytes_read += len(result)
        elif m == "get_many":
            c.reads += len(result)
            for r in result:
                if r is None:
                    c.misses += 1
                else:
                    c.hits += 1
                    c.bytes_read += len(r)
        elif m in ("set", "compare_and_set", "compare_and_set_fenced"):
            c.writes += 1
            c.bytes_written += len(call.args[1])
        elif m == "compare_and_set_many":
            c.writes += len(call.args[0])
            c.bytes_written += sum(len(item[1]) for item in call.args[0])
        elif m == "set_many":
            items: Sequence[tuple[str, bytes, float | None]] = call.args[0]
            c.writes += len(items)
            c.bytes_written += sum(len(v) for _, v, _ in items)
        elif m == "delete":
            c.deletes += 1
        elif m == "touch":
            c.touches += 1


def _failed(call: Call, exc: BaseException) -> TierError:
    with call.counters.lock:
        call.counters.errors += 1
    if isinstance(exc, TierError):
        return exc
    name = getattr(call.tier, "name", type(call.tier).__name__)
    err = TierError(f"{name} {call.method} failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def run(flow: Flow[T]) -> T:
    """Drive ``flow`` with the tiers' sync methods.

    An exception that lands here rather than in the flow (a signal's, while
    a tier call returns) closes the flow, so its ``finally`` blocks (which
    free key locks) run now, not whenever it is collected."""
    try:
        call = next(flow)
        while True:
            if isinstance(call, Pause):
                time.sleep(call.seconds)
                call = flow.send(None)
                continue
            start = time.perf_counter()
            try:
                result = getattr(call.tier, call.method)(*call.args)
            except Exception as exc:
                call = flow.throw(_failed(call, exc))
            else:
                _account(call, result, (time.perf_counter() - start) * 1e6)
                call = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except BaseException:
        flow.close()
        raise


async def arun(flow: Flow[T]) -> T:
    """Drive ``flow`` with the tiers' async (``a``-prefixed) methods."""
    try:
        call = next(flow)
        while True:
            if isinstance(call, Pause):
                await asyncio.sleep(call.seconds)
                call = flow.send(None)
                continue
            start = time.perf_counter()
            try:
                result = await getattr(call.tier, "a" + call.method)(*call.args)
            except Exception as exc:
                call = flow.throw(_failed(call, exc))
            else:
                _account(call, result, (time.perf_counter() - start) * 1e6)
                call = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except BaseException:
        flow.close()
        raise
