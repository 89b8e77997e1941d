"""The cluster bus's stream names (wire v2): pure, no server."""

from __future__ import annotations

import random
import string

import pytest
from redis.crc import key_slot as redis_key_slot

from tiercache import ConfigError
from tiercache._bus import (
    CLUSTER_WIRE_VERSION,
    MAX_STREAMS,
    RedisBus,
    cluster_stream_keys,
    key_slot,
    stream_index,
)


def test_key_slot_is_redis_cluster_s() -> None:
    rng = random.Random(13)
    alphabet = string.ascii_letters + "{}:é"
    keys = ["", "{}", "{}a", "a{}b", "{a}", "x{a}y{b}", "{{a}}", "}{a}"]
    keys += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(2000)]
    for key in keys:
        assert key_slot(key) == redis_key_slot(key.encode()), key


@pytest.mark.parametrize("streams", [1, 2, 3, 16, 100, MAX_STREAMS])
def test_the_streams_spread_evenly_over_the_slots(streams: int) -> None:
    keys = cluster_stream_keys("mybot", streams)
    assert len(set(keys)) == streams
    assert all(k.startswith(f"tiercache:v{CLUSTER_WIRE_VERSION}:{{mybot:") for k in keys)
    assert all(k.endswith(f":inv:{i}/{streams}") for i, k in enumerate(keys))
    # The i-th stream's slot is in the i-th slice: 3 masters made by
    # `redis-cli --cluster create` get 16 streams as 5, 5 and 6.
    assert [key_slot(k) * streams // 16384 for k in keys] == list(range(streams))
    assert cluster_stream_keys("mybot", streams) == keys, "every process computes the same"


def test_a_namespace_whose_tag_cannot_vary_still_gets_distinct_streams() -> None:
    keys = cluster_stream_keys("a}b", 4)  # the hash tag is "a" whatever follows
    assert len(set(keys)) == 4 and len({key_slot(k) for k in keys}) == 1


def test_a_key_always_maps_to_the_same_stream_and_all_streams_are_used() -> None:
    assert stream_index("chat:42", 16) == stream_index("chat:42", 16) == 6
    used = {stream_index(f"chat:{i}", 16) for i in range(500)}
    assert used == set(range(16))


@pytest.mark.parametrize("streams", [0, -1, MAX_STREAMS + 1, True, 2.0, "16"])
def test_bad_streams_raise_config_error(streams: object) -> None:
    with pytest.raises(ConfigError, match=r"streams must be an int in 1\.\.256"):
        RedisBus("redis+cluster://127.0.0.1:1", namespace="n", streams=streams)  # type: ignore[arg-type]


def test_a_cluster_url_makes_a_cluster_bus_without_connecting() -> None:
    bus = RedisBus("redis+cluster://127.0.0.1:1", namespace="n", streams=4)
    assert bus.cluster and bus.streams == cluster_stream_keys("n", 4)
    assert not bus.healthy and bus.last_id is None and bus.stats()["streams"] == {}
    single = RedisBus("redis://127.0.0.1:1/0", namespace="n", streams=4)
    assert not single.cluster and single.streams == ("tiercache:v1:n:inv",)
    assert "streams" not in single.stats(), "a single server's stats are unchanged"
    bus.close()
    single.close()
