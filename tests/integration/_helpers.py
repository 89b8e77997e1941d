"""Small helpers the integration tests share."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``predicate`` until it holds; AssertionError naming ``what``
    after ``timeout`` real seconds (a correctness bound, not a latency claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def messages(exc: BaseException | None) -> list[str]:
    """``str`` and ``repr`` of an exception and of everything it chains to."""
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return out
