"""Serializer speed: tiercache's MsgpackSerializer against raw libraries.

Run: ``pytest benchmarks/bench_serializers.py --benchmark-only``

Two values: a typical ~2 KB bot session (20 keys, a list of 20 small dicts, a
nested dict, a set, a datetime) and a large ~300 KB one (5,000 keys). The
raw baselines are not equivalent: raw msgpack turns tuples into lists and
cannot store a set or datetime (given lists and ISO text here), orjson the
same; pickle runs code on load. They show what exactness costs.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgpack
import orjson
import pytest

from tiercache._serializers import MsgpackSerializer

SER = MsgpackSerializer()
NOW = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def session() -> dict[str, Any]:
    value: dict[str, Any] = {f"field_{i}": i * 7 for i in range(14)}
    value.update(
        user_id=123456789,
        lang="en",
        step="checkout",
        created=NOW,
        tags={"vip", "beta", "ru"},
        history=[
            {
                "id": i,
                "text": f"message number {i}: hello there, bot",
                "ok": i % 2 == 0,
                "score": i / 3,
            }
            for i in range(20)
        ],
        profile={"name": "Ada", "address": {"city": "London", "zip": "N1"}, "age": 36},
    )
    return value


def large() -> dict[str, Any]:
    return {
        f"user:{i}": {"n": i, "name": f"name-{i}", "seen": i * 1.5, "flags": [i % 3, i % 5]}
        for i in range(5000)
    }


class TrackedDict(dict):  # type: ignore[type-arg]
    """Stand-in for a tracked container: a dict subclass with an attribute."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tc_root = None


class TrackedList(list):  # type: ignore[type-arg]
    pass


def tracked(v: Any) -> Any:
    if type(v) is dict:
        return TrackedDict({k: tracked(x) for k, x in v.items()})
    if type(v) is list:
        return TrackedList([tracked(x) for x in v])
    return v


def jsonable(v: Any) -> Any:
    """What the raw baselines can store: sets as lists, datetimes as text."""
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, list | set | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, datetime):
        return v.isoformat()
    return v


VALUES = {"session": session(), "large": large()}
CODECS: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any], bool]] = {
    # name: (dumps, loads, takes the raw-compatible value)
    "tiercache": (SER.dumps, SER.loads, False),
    "tiercache-tracked": (SER.dumps, SER.loads, False),
    "msgpack": (
        lambda v: msgpack.packb(v),
        lambda b: msgpack.unpackb(b, strict_map_key=False),
        True,
    ),
    "orjson": (orjson.dumps, orjson.loads, True),
    "pickle": (
        lambda v: pickle.dumps(v, protocol=5),
        pickle.loads,
        False,
    ),
}


def _value(size: str, codec: str) -> Any:
    value = VALUES[size]
    if CODECS[codec][2]:
        return jsonable(value)
    if codec == "tiercache-tracked":
        return tracked(value)
    return value


def test_sizes() -> None:
    assert 1500 < len(SER.dumps(VALUES["session"])) < 2600
    assert 200_000 < len(SER.dumps(VALUES["large"])) < 400_000
    assert SER.dumps(tracked(VALUES["large"])) == SER.dumps(VALUES["large"])


@pytest.mark.parametrize("size", list(VALUES))
@pytest.mark.parametrize("codec", list(CODECS))
def test_dumps(benchmark: Any, size: str, codec: str) -> None:
    benchmark.group = f"dumps-{size}"
    value = _value(size, codec)
    benchmark(CODECS[codec][0], value)


@pytest.mark.parametrize("size", list(VALUES))
@pytest.mark.parametrize("codec", [c for c in CODECS if c != "tiercache-tracked"])
def test_loads(benchmark: Any, size: str, codec: str) -> None:
    benchmark.group = f"loads-{size}"
    dumps, loads, _ = CODECS[codec]
    data = dumps(_value(size, codec))
    benchmark(loads, data)
