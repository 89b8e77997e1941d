"""Time, injected.

TTLs, flush intervals and staleness bounds read a :class:`Clock`, so tests
move time with :class:`tiercache.testing.FakeClock` instead of sleeping.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """Where tiercache reads the time.

    ``time()`` is wall-clock seconds since the epoch (stored in envelopes and
    compared across processes); ``monotonic()`` measures intervals.
    """

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock: :func:`time.time` and :func:`time.monotonic`.

    >>> SystemClock().time() > 1.7e9
    True
    """

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
