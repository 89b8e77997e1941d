"""close_on_signals in this process: what it installs, what a signal does,
and what it puts back. Signals are raised with ``signal.raise_signal``, so
the handler runs here, in the main thread, as it would for a real one;
tests/integration/test_shutdown.py stops real worker processes."""

from __future__ import annotations

import asyncio
import math
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from tiercache import (
    ConfigError,
    MemoryTier,
    ShutdownSignals,
    TierCacheError,
    TieredCache,
    WriteBehind,
    close_on_signals,
)
from tiercache.testing import DictTier


@pytest.fixture(autouse=True)
def handlers_kept() -> Iterator[None]:
    """Every test leaves SIGTERM's and SIGINT's handlers as it found them."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in before.items():
        assert signal.getsignal(s) == h, f"{s.name} was left changed"
        signal.signal(s, h)


@pytest.fixture
def store() -> DictTier:
    return DictTier()


@pytest.fixture
def cache(store: DictTier, namespace: str) -> Iterator[TieredCache]:
    cache = TieredCache(MemoryTier(), store, namespace=namespace, flush=WriteBehind(3600))
    yield cache
    cache.close()


def stored(store: DictTier, namespace: str) -> Any:
    with TieredCache(MemoryTier(), store, namespace=namespace) as reader:
        return reader.get("k")


class Recorder:
    """A handler installed before ours."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.calls.append(signum)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    old = signal.signal(signal.SIGTERM, rec)
    yield rec
    signal.signal(signal.SIGTERM, old)


def test_sigterm_raises_system_exit_143_and_the_block_end_flushes(
    cache: TieredCache, store: DictTier, namespace: str
) -> None:
    with pytest.raises(SystemExit) as info, close_on_signals(cache) as shutdown:
        with cache.session("k") as s:
            s["v"] = 1  # acknowledged: pending under WriteBehind(3600)
        assert stored(store, namespace) is None
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("the signal stops the block")  # pragma: no cover
    assert info.value.code == 128 + signal.SIGTERM == 143
    assert shutdown.signal == signal.SIGTERM
    assert stored(store, namespace) == {"v": 1}, "written before the block's end let go"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the default is back"


def test_sigint_raises_keyboard_interrupt(cache: TieredCache) -> None:
    with pytest.raises(KeyboardInterrupt), close_on_signals(cache):
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_scope_the_signal_interrupts_is_rolled_back(
    cache: TieredCache, store: DictTier, namespace: str
) -> None:
    """No deadlock either: the scope ended (unwinding) before close ran."""
    with pytest.raises(SystemExit), close_on_signals(cache):
        with cache.session("k") as s:
            s["v"] = 1
        with cache.session("k") as s:
            s["v"] = 2
            signal.raise_signal(signal.SIGTERM)
    assert stored(store, namespace) == {"v": 1}


def test_later_signals_are_ignored_until_the_caches_are_closed(
    cache: TieredCache, store: DictTier, namespace: str
) -> None:
    shutdown = close_on_signals(cache)
    with pytest.raises(SystemExit):
        signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGTERM)  # the program is stopping: never interrupted again
    signal.raise_signal(signal.SIGINT)
    with cache.session("k") as s:
        s["v"] = 1
    with shutdown:  # what the end of the block does; at exit, atexit does it
        pass
    assert stored(store, namespace) == {"v": 1}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_handler_installed_before_is_chained_and_decides(
    cache: TieredCache, store: DictTier, namespace: str, recorder: Recorder
) -> None:
    with close_on_signals(cache) as shutdown:
        signal.raise_signal(signal.SIGTERM)  # the program's own handler: it goes on
        with cache.session("k") as s:
            s["v"] = 1
    assert recorder.calls == [signal.SIGTERM]
    assert shutdown.signal == signal.SIGTERM
    assert stored(store, namespace) == {"v": 1}
    assert signal.getsignal(signal.SIGTERM) is recorder, "put back"


def test_a_signal_while_the_block_end_closes_is_delivered_after(
    namespace: str, recorder: Recorder
) -> None:
    """It arrives mid-flush: noted, not acted on, then given to the handler
    of before once the caches are closed."""
    seen: list[Any] = []

    class Signalling(DictTier):
        def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
            signal.raise_signal(signal.SIGTERM)
            seen.append(list(recorder.calls))  # not yet: the flush goes on
            return super().compare_and_set(key, value, ttl, expected)

    store = Signalling()
    cache = TieredCache(MemoryTier(), store, namespace=namespace, flush=WriteBehind(3600))
    with close_on_signals(cache):
        with cache.session("k") as s:
            s["v"] = 1
    assert seen and seen[0] == []
    assert recorder.calls == [signal.SIGTERM]
    assert stored(store, namespace) == {"v": 1}


def test_an_ignored_signal_stays_ignored(cache: TieredCache) -> None:
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with close_on_signals(cache):
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


def test_uninstall_puts_back_what_was_there_and_leaves_the_caches_open(
    cache: TieredCache, recorder: Recorder
) -> None:
    shutdown = close_on_signals(cache, signals=[signal.SIGTERM])
    assert signal.getsignal(signal.SIGTERM) is not recorder
    shutdown.uninstall()
    shutdown.uninstall()  # idempotent
    now: Any = signal.getsignal(signal.SIGTERM)
    assert now is recorder
    signal.raise_signal(signal.SIGTERM)
    assert recorder.calls == [signal.SIGTERM]
    with cache.session("k") as s:  # still open
        s["v"] = 1


def test_a_handler_installed_over_ours_is_left_in_place(cache: TieredCache) -> None:
    shutdown = close_on_signals(cache, signals=[signal.SIGTERM])
    theirs = Recorder()
    signal.signal(signal.SIGTERM, theirs)
    shutdown.uninstall()
    assert signal.getsignal(signal.SIGTERM) is theirs
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_several_caches_are_all_closed_even_if_one_fails(store: DictTier, namespace: str) -> None:
    class Broken(DictTier):
        down = True

        def compare_and_set(self, key: str, value: bytes, ttl: float | None, expected: int) -> bool:
            if self.down:
                raise ConnectionError("down")
            return super().compare_and_set(key, value, ttl, expected)

    tier = Broken()
    broken = TieredCache(MemoryTier(), tier, namespace="b", flush=WriteBehind(3600))
    good = TieredCache(MemoryTier(), store, namespace=namespace, flush=WriteBehind(3600))
    for c in (broken, good):
        with c.session("k") as s:
            s["v"] = 1
    with pytest.raises(TierCacheError), close_on_signals(broken, good):
        pass
    assert stored(store, namespace) == {"v": 1}, "the good one was closed all the same"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "and the handlers put back"
    tier.down = False
    broken.close()  # it stayed open, its change pending: a retry writes it
    with TieredCache(MemoryTier(), tier, namespace="b") as reader:
        assert reader.get("k") == {"v": 1}


def test_outside_the_main_thread_it_says_why(cache: TieredCache) -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            close_on_signals(cache)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], TierCacheError)
    assert "main thread" in str(errors[0])


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((), {}, "one or more TieredCache"),
        (("not a cache",), {}, "one or more TieredCache"),
        (None, {"signals": [signal.SIGKILL]}, "SIGKILL cannot be caught"),
        (None, {"signals": []}, "at least one signal"),
        (None, {"signals": ["TERM"]}, "signal numbers"),
        (None, {"wait": -1}, "wait must be"),
        (None, {"wait": math.nan}, "wait must be"),
        (None, {"wait": True}, "wait must be"),
    ],
)
def test_bad_arguments_are_config_errors(
    cache: TieredCache, args: Any, kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        close_on_signals(*(args if args is not None else (cache,)), **kwargs)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "nothing was installed"


async def test_in_a_running_loop_it_uses_the_loop_and_async_with(
    cache: TieredCache, store: DictTier, namespace: str
) -> None:
    """The signal itself is tested in a real process (it ends the loop)."""
    shutdown = close_on_signals(cache)
    assert isinstance(shutdown, ShutdownSignals)
    with pytest.raises(TierCacheError, match="async with"), shutdown:
        pass  # pragma: no cover
    async with shutdown:
        async with cache.session("k") as s:
            s["v"] = 1
    assert stored(store, namespace) == {"v": 1}
    with pytest.raises(TierCacheError, match="closed"):
        async with cache.session("k"):
            pass  # pragma: no cover
    loop = asyncio.get_running_loop()
    assert not loop.remove_signal_handler(signal.SIGTERM), "taken off the loop"
