"""Change tracking speed: tracked values against their plain twins.

Run: ``pytest benchmarks/bench_tracking.py --benchmark-only``

Each group pairs a tracked case with the same work on plain builtins, so
the ratio of medians is what tracking costs. Sub-microsecond operations are
unrolled (``UNROLL`` statements per call) so the timer and call overhead do
not swamp them; divide by ``UNROLL`` for one operation.

Values: a typical ~2 KB bot session (20 keys, a list of 20 small dicts, a
nested dict) and a large ~300 KB one (5,000 keys), both JSON-only so
``orjson.loads`` of the same bytes is the adoption baseline.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tiercache._tracking import is_dirty, mark_clean, track

UNROLL = 50


def session() -> dict[str, Any]:
    value: dict[str, Any] = {f"field_{i}": i * 7 for i in range(15)}
    value.update(
        user={"id": 123456789, "name": "Ann", "prefs": {"lang": "en", "tz": "UTC"}},
        state="checkout",
        step=3,
        cart={"items": 2, "total": 19.5},
        history=[
            {"id": i, "text": f"message number {i}: hello there, bot", "from_bot": i % 2 == 0}
            for i in range(20)
        ],
    )
    return value


def large_session() -> dict[str, Any]:
    value: dict[str, Any] = {}
    for i in range(5_000):
        kind = i % 4
        if kind == 0:
            value[f"key_{i}"] = i
        elif kind == 1:
            value[f"key_{i}"] = f"some text value number {i:06d} for the session"
        elif kind == 2:
            value[f"key_{i}"] = {"a": i, "b": "x" * 30, "c": [i, i + 1]}
        else:
            value[f"key_{i}"] = [{"id": i, "ok": True}, {"id": i + 1, "ok": False}]
    return value


SESSION_JSON = orjson.dumps(session())
LARGE_JSON = orjson.dumps(large_session())


def unrolled(stmt: str, **names: Any) -> Callable[[], None]:
    """A function running ``stmt`` UNROLL times with ``names`` bound."""
    src = "def run():\n" + f"    {stmt}\n" * UNROLL
    namespace = dict(names)
    exec(src, namespace)
    fn: Callable[[], None] = namespace["run"]
    return fn


def _pair(request: pytest.FixtureRequest) -> Any:
    plain = orjson.loads(SESSION_JSON)
    return track(plain) if request.param == "tracked" else plain


@pytest.fixture(params=["plain", "tracked"])
def value(request: pytest.FixtureRequest) -> Any:
    return _pair(request)


@pytest.mark.benchmark(group="read d[k] x50")
def test_item_read(benchmark: Any, value: Any) -> None:
    benchmark(unrolled("d['state']", d=value))


@pytest.mark.benchmark(group="nested read d[k][k] x50")
def test_nested_read(benchmark: Any, value: Any) -> None:
    benchmark(unrolled("d['user']['name']", d=value))


@pytest.mark.benchmark(group="iterate 20 history items x50")
def test_iterate(benchmark: Any, value: Any) -> None:
    benchmark(unrolled("for _ in d['history']: pass", d=value))


@pytest.mark.benchmark(group="first write of a clean root")
def test_first_write(benchmark: Any, value: Any) -> None:
    counter = itertools.count()
    tracked = type(value) is not dict

    def setup() -> None:
        if tracked:
            mark_clean(value)

    def write() -> None:
        value["step"] = next(counter)

    benchmark.pedantic(write, setup=setup, rounds=2000, warmup_rounds=10)


@pytest.mark.benchmark(group="first nested write of a clean root")
def test_first_nested_write(benchmark: Any, value: Any) -> None:
    counter = itertools.count()
    tracked = type(value) is not dict

    def setup() -> None:
        if tracked:
            mark_clean(value)

    def write() -> None:
        value["history"][3]["id"] = next(counter)

    benchmark.pedantic(write, setup=setup, rounds=2000, warmup_rounds=10)


@pytest.mark.benchmark(group="later write, dirty root x50")
def test_later_write(benchmark: Any, value: Any) -> None:
    value["step"] = -1  # the field is dirty now
    benchmark(unrolled("d['step'] = 1; d['step'] = 2", d=value))


@pytest.mark.benchmark(group="later nested write, dirty root x50")
def test_later_nested_write(benchmark: Any, value: Any) -> None:
    value["user"]["name"] = "x"
    benchmark(unrolled("u['name'] = 'a'; u['name'] = 'b'", u=value["user"]))


@pytest.mark.benchmark(group="later append, dirty root x50")
def test_later_append(benchmark: Any, value: Any) -> None:
    lst = value["user"].setdefault("log", [])
    lst.append(0)

    def run() -> None:
        for _ in range(UNROLL):
            lst.append(1)
        del lst[1:]

    benchmark(run)


@pytest.mark.benchmark(group="adopt typical session")
@pytest.mark.parametrize("how", ["orjson.loads", "orjson.loads+track"])
def test_adopt_typical(benchmark: Any, how: str) -> None:
    if how == "orjson.loads":
        benchmark(orjson.loads, SESSION_JSON)
    else:
        benchmark(lambda: track(orjson.loads(SESSION_JSON)))


@pytest.mark.benchmark(group="adopt large session")
@pytest.mark.parametrize("how", ["orjson.loads", "orjson.loads+track"])
def test_adopt_large(benchmark: Any, how: str) -> None:
    if how == "orjson.loads":
        benchmark(orjson.loads, LARGE_JSON)
    else:
        benchmark(lambda: track(orjson.loads(LARGE_JSON)))


@pytest.mark.benchmark(group="is_dirty x50")
@pytest.mark.parametrize("case", ["flag read (no-op baseline)", "clean", "clean, watched list"])
def test_is_dirty_clean(benchmark: Any, case: str) -> None:
    s = track(orjson.loads(SESSION_JSON))
    if case == "flag read (no-op baseline)":
        benchmark(unrolled("f(s)", f=lambda s: False, s=s))
        return
    if case == "clean, watched list":
        # a list of str could be a heap: checked against its clean copy
        s = track({**orjson.loads(SESSION_JSON), "tags": ["vip", "beta", "ru"]})
    assert not is_dirty(s)
    benchmark(unrolled("f(s)", f=is_dirty, s=s))


@pytest.mark.benchmark(group="mark_clean after one nested write")
def test_mark_clean(benchmark: Any) -> None:
    s = track(orjson.loads(SESSION_JSON))
    counter = itertools.count()

    def setup() -> None:
        s["history"][0]["id"] = next(counter)

    benchmark.pedantic(lambda: mark_clean(s), setup=setup, rounds=1000, warmup_rounds=10)
