"""An independent, type-strict canonical form for the tracking tests.

Written without tiercache._tracking's own comparison so the tests do not
grade the implementation with itself: two values have the same canonical
form exactly when a type-preserving serializer (msgpack with ext types)
would store them alike. Dict key order and set order do not count.
"""

from __future__ import annotations

import math
from typing import Any


def canon(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, (int, str, bytes)):
        return (type(v).__name__, v)
    if isinstance(v, float):
        if math.isnan(v):
            return ("float", "nan")
        return ("float", v.hex())
    if isinstance(v, dict):
        return ("dict", frozenset((canon(k), canon(x)) for k, x in v.items()))
    if isinstance(v, list):
        return ("list", tuple(canon(x) for x in v))
    if isinstance(v, tuple):
        return ("tuple", tuple(canon(x) for x in v))
    if isinstance(v, frozenset):
        return ("frozenset", frozenset(canon(x) for x in v))
    if isinstance(v, set):
        return ("set", frozenset(canon(x) for x in v))
    if isinstance(v, (bytearray, memoryview)):
        return ("bytearray", bytes(v))
    state = getattr(v, "__dict__", None)
    if state is not None:
        name = type(v).__mro__[1 if "_tc_orig" in type(v).__dict__ else 0].__qualname__
        return (
            name,
            frozenset((k, canon(x)) for k, x in state.items() if not k.startswith("_tc_")),
        )
    return (type(v).__qualname__, repr(v))


def strict_equal(a: Any, b: Any) -> bool:
    return bool(canon(a) == canon(b))


def test_canon_is_type_strict() -> None:
    assert canon(1) != canon(True) != canon(1.0)
    assert canon({1}) != canon(frozenset({1}))
    assert canon(0.0) != canon(-0.0)
    assert canon(float("nan")) == canon(float("nan"))
    assert canon({"a": 1, "b": 2}) == canon({"b": 2, "a": 1})
    assert canon([1, 2]) != canon((1, 2))
