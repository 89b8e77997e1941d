"""The persistent-tier contract, run against every tier, sync and async.

The contract is written down in ``tiercache/_tiers/_base.py``; the harness
and the list of tiers are in ``conftest.py`` beside this file.
"""

from __future__ import annotations

import asyncio
import random
import struct
import zlib

import pytest

from tiercache._envelope import MAX_VERSION, VERSION_OFFSET, Envelope, encode, peek_version
from tiercache._keys import KeyNames

from .conftest import Harness

KEYS = [
    "mybot:chat:42",
    "with space",
    "ключ:🙂:ü",
    "a:b::c:",
    "tab\tand\nnewline",
    "x" * 1000,
]


def envelope(version: int, payload: bytes = b"payload") -> bytes:
    return encode(
        Envelope(
            serializer_id=1,
            schema_version=0,
            version=version,
            created_ms=1,
            updated_ms=2,
            expires_ms=0,
            payload=payload,
        )
    )


# -- identity ------------------------------------------------------------------


async def test_has_a_name(harness: Harness) -> None:
    assert isinstance(harness.tier.name, str)
    assert harness.tier.name


# -- get / set -----------------------------------------------------------------


async def test_get_absent_is_none(harness: Harness) -> None:
    assert await harness.get("absent") is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"v", id="one"),
        pytest.param(bytes(range(256)), id="all-bytes"),
        pytest.param(bytes(range(256)) * 4096, id="1MiB"),
        pytest.param(random.Random(7).randbytes(100_003), id="random-100k"),
    ],
)
async def test_set_get_exact_bytes(harness: Harness, value: bytes) -> None:
    await harness.set("k", value)
    got = await harness.get("k")
    assert type(got) is bytes
    assert got == value


async def test_overwrite(harness: Harness) -> None:
    await harness.set("k", b"first")
    await harness.set("k", b"second")
    assert await harness.get("k") == b"second"
    await harness.set("k", b"")
    assert await harness.get("k") == b""


async def test_keys_with_unicode_colons_spaces(harness: Harness) -> None:
    for i, key in enumerate(KEYS):
        await harness.set(key, b"v%d" % i)
    for i, key in enumerate(KEYS):
        assert await harness.get(key) == b"v%d" % i
    # Similar keys stay distinct.
    assert await harness.get("mybot:chat:4") is None
    assert await harness.get("mybot:chat:42 ") is None


# -- batches -------------------------------------------------------------------


async def test_get_many_keeps_order_with_missing(harness: Harness) -> None:
    await harness.set("a", b"A")
    await harness.set("c", b"C")
    assert await harness.get_many(["c", "missing", "a", "a", "b"]) == [
        b"C",
        None,
        b"A",
        b"A",
        None,
    ]
    assert await harness.get_many([]) == []


async def test_set_many(harness: Harness) -> None:
    await harness.set("b", b"old")
    await harness.set_many([("a", b"A", None), ("b", b"B", 60.0), ("c", b"", 3600)])
    assert await harness.get_many(["a", "b", "c"]) == [b"A", b"B", b""]
    await harness.set_many([])


async def test_large_batch(harness: Harness) -> None:
    items = [(f"batch:{i}", b"%d" % i * (i % 50), None if i % 3 else 60.0) for i in range(2000)]
    await harness.set_many(items)
    got = await harness.get_many([key for key, _, _ in items])
    assert got == [value for _, value, _ in items]


# -- delete --------------------------------------------------------------------


async def test_delete_returns_whether_it_existed(harness: Harness) -> None:
    await harness.set("k", b"v")
    assert await harness.delete("k") is True
    assert await harness.get("k") is None
    assert await harness.delete("k") is False
    assert await harness.delete("never") is False


# -- expiry --------------------------------------------------------------------

TTL = 0.3  # real seconds for real backends; keep it short, waits are bounded


async def test_ttl_expires_never_early(harness: Harness) -> None:
    await harness.set("short", b"s", TTL)
    await harness.set("long", b"l", 600)
    await harness.set("forever", b"f", None)
    await harness.set_many([("batch-short", b"bs", TTL), ("batch-long", b"bl", 600)])
    assert await harness.get_many(["short", "batch-short"]) == [b"s", b"bs"]

    await harness.advance(TTL + 0.05)

    async def gone() -> bool:
        return await harness.get_many(["short", "batch-short"]) == [None, None]

    assert await harness.eventually(gone)
    assert await harness.get_many(["long", "batch-long", "forever"]) == [b"l", b"bl", b"f"]
    # An expired key no longer exists for delete and touch either.
    assert await harness.delete("short") is False
    assert await harness.touch("batch-short", 60) is False


async def test_ttl_zero_or_negative_is_already_expired(harness: Harness) -> None:
    await harness.set("zero", b"v", 0)
    await harness.set("neg", b"v", -5)
    await harness.set("kept", b"v", None)
    await harness.set("overwritten", b"v", None)
    await harness.set_many([("kept", b"w", -1), ("b0", b"v", 0)])
    await harness.set("overwritten", b"v2", 0)
    assert await harness.get_many(["zero", "neg", "kept", "b0", "overwritten"]) == [None] * 5


async def test_touch_returns_whether_it_existed(harness: Harness) -> None:
    assert await harness.touch("absent", 60) is False
    assert await harness.touch("absent", None) is False
    await harness.set("k", b"v")
    assert await harness.touch("k", 60) is True
    assert await harness.touch("k", None) is True
    assert await harness.get("k") == b"v"


async def test_touch_changes_only_the_expiry(harness: Harness) -> None:
    value = bytes(range(256)) * 200  # > 32 KiB: exercises file-backed entries too
    await harness.set("shorten", value, None)
    await harness.set("persist", b"p", TTL)
    await harness.set("extend", b"e", TTL)
    await harness.set("zero", b"z", None)
    assert await harness.touch("shorten", TTL) is True
    assert await harness.touch("persist", None) is True
    assert await harness.touch("extend", 600) is True
    assert await harness.touch("zero", 0) is True
    assert await harness.get("zero") is None
    # Touch never rewrites the value.
    assert await harness.get_many(["shorten", "persist", "extend"]) == [value, b"p", b"e"]

    await harness.advance(TTL + 0.05)

    async def gone() -> bool:
        return await harness.get("shorten") is None

    assert await harness.eventually(gone)
    assert await harness.get_many(["persist", "extend"]) == [b"p", b"e"]


# -- compare-and-set -----------------------------------------------------------


@pytest.fixture
def cas(harness: Harness) -> Harness:
    # Every tier here implements compare-and-set (the cache's versioned
    # writes need it on the shared tier). A tier added without it must say
    # so here, not be skipped silently.
    assert harness.tier.supports_cas, f"{harness.tier.name} lacks compare-and-set"
    return harness


async def test_cas_absent_with_zero_succeeds(cas: Harness) -> None:
    assert await cas.compare_and_set("k", envelope(1), None, 0) is True
    assert await cas.get("k") == envelope(1)


async def test_cas_absent_with_nonzero_fails(cas: Harness) -> None:
    assert await cas.compare_and_set("k", envelope(1), None, 1) is False
    assert await cas.get("k") is None


async def test_cas_wrong_version_fails_and_keeps_value(cas: Harness) -> None:
    await cas.set("k", envelope(3))
    for wrong in (0, 2, 4, 2**32 + 3):
        assert await cas.compare_and_set("k", envelope(9), None, wrong) is False
    assert await cas.get("k") == envelope(3)


async def test_cas_right_version_succeeds_and_is_visible(cas: Harness) -> None:
    await cas.set("k", envelope(3))
    assert await cas.compare_and_set("k", envelope(4, b"new"), 600, 3) is True
    assert await cas.get("k") == envelope(4, b"new")
    assert await cas.compare_and_set("k", envelope(5), None, 3) is False
    assert await cas.compare_and_set("k", envelope(5), None, 4) is True
    assert await cas.get("k") is not None
    assert peek_version(await cas.get("k") or b"") == 5


@pytest.mark.parametrize("version", [2**53, 2**53 + 1, 2**62 + 7, MAX_VERSION])
async def test_cas_is_exact_for_big_versions(cas: Harness, version: int) -> None:
    # Versions past 2**53 do not fit a double; the compare must still be exact.
    await cas.set("k", envelope(version))
    assert await cas.compare_and_set("k", envelope(1), None, version - 1) is False
    assert await cas.compare_and_set("k", envelope(1), None, version ^ 1) is False
    assert await cas.compare_and_set("k", envelope(1), None, version) is True


@pytest.mark.parametrize("version", [MAX_VERSION + 1, 2**63 + 7, 2**64 - 1])
async def test_cas_treats_versions_over_the_maximum_as_absent(cas: Harness, version: int) -> None:
    # CRC-valid bytes claiming a version no writer can follow are unreadable:
    # the cache's repair write (expected 0) must be able to replace them.
    data = bytearray(envelope(1))
    struct.pack_into("<Q", data, VERSION_OFFSET, version)
    data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
    await cas.set("k", bytes(data))
    assert await cas.compare_and_set("k", envelope(1), None, version) is False
    assert await cas.compare_and_set("k", envelope(2), None, 0) is True
    assert await cas.get("k") == envelope(2)


async def test_cas_treats_unreadable_bytes_as_absent(cas: Harness) -> None:
    await cas.set("short", b"garbage")
    await cas.set("foreign", b"XX" + envelope(7)[2:])
    assert await cas.compare_and_set("short", envelope(1), None, 7) is False
    assert await cas.compare_and_set("short", envelope(1), None, 0) is True
    assert await cas.compare_and_set("foreign", envelope(1), None, 7) is False
    assert await cas.compare_and_set("foreign", envelope(1), None, 0) is True
    assert await cas.get_many(["short", "foreign"]) == [envelope(1), envelope(1)]


async def test_cas_with_ttl(cas: Harness) -> None:
    assert await cas.compare_and_set("k", envelope(1), 0, 0) is True
    assert await cas.get("k") is None  # ttl 0: written as already expired
    assert await cas.compare_and_set("k", envelope(1), TTL, 0) is True
    assert await cas.get("k") == envelope(1)
    await cas.advance(TTL + 0.05)

    async def gone() -> bool:
        return await cas.get("k") is None

    assert await cas.eventually(gone)


async def test_cas_race_has_one_winner(cas: Harness) -> None:
    await cas.set("k", envelope(1))

    async def attempt(i: int) -> bool:
        if cas.is_async:
            return await cas.tier.acompare_and_set("k", envelope(2, b"%d" % i), None, 1)
        # Real threads for the sync API, each racing the others.
        return await asyncio.to_thread(
            cas.tier.compare_and_set, "k", envelope(2, b"%d" % i), None, 1
        )

    results = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert await cas.get("k") == envelope(2, b"%d" % winner)


# -- quarantine (every built-in tier moves atomically) ---------------------------

#: Names as the cache makes them (a cluster tier keeps one key's names in
#: one hash slot, which the quarantine script needs).
_NAMES = KeyNames("ns")
K, Q = _NAMES.value("k"), _NAMES.quarantine("k")
A, QA = _NAMES.value("absent"), _NAMES.quarantine("absent")


async def test_quarantine_moves_exactly_the_bad_bytes(harness: Harness) -> None:
    bad = b"TC\x01damaged" + bytes(range(256))
    await harness.set(K, bad)
    assert await harness.quarantine(K, bad, Q, 600) is True
    assert await harness.get(K) is None
    assert await harness.get(Q) == bad


async def test_quarantine_leaves_other_bytes_alone(harness: Harness) -> None:
    await harness.set(K, envelope(3))  # repaired since the bad read
    assert await harness.quarantine(K, b"garbage", Q, 600) is False
    assert await harness.get(K) == envelope(3)
    assert await harness.get(Q) is None
    assert await harness.quarantine(A, b"garbage", QA, 600) is False


async def test_quarantine_keep_zero_deletes(harness: Harness) -> None:
    await harness.set(K, b"garbage")
    assert await harness.quarantine(K, b"garbage", Q, 0) is True
    assert await harness.get_many([K, Q]) == [None, None]


async def test_quarantined_bytes_expire_after_keep(harness: Harness) -> None:
    await harness.set(K, b"garbage")
    assert await harness.quarantine(K, b"garbage", Q, TTL) is True
    await harness.advance(TTL + 0.05)

    async def gone() -> bool:
        return await harness.get(Q) is None

    assert await harness.eventually(gone)
