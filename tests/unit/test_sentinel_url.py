"""The ``redis+sentinel://`` URL: what it names, what is refused at
construction, and that its passwords never reach a repr (no server needed)."""

from __future__ import annotations

import pytest

from tiercache import ConfigError, RedisBus, RedisTier
from tiercache._redisclient import redact_url
from tiercache._sentinel import parse_sentinel_url


def test_a_sentinel_url_names_its_sentinels_service_db_and_credentials() -> None:
    t = parse_sentinel_url(
        "redis+sentinel://bot:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/my%20master/3"
        "?sentinel_password=sp&sentinel_username=su"
    )
    assert t.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (t.service, t.db, t.username, t.password) == ("my master", 3, "bot", "s@cret")
    assert t.sentinel_kwargs == {"password": "sp", "username": "su"}
    assert t.connection_kwargs == {}


def test_rediss_sentinel_carries_tls_to_the_master_and_the_sentinels() -> None:
    t = parse_sentinel_url(
        "rediss+sentinel://h:26379/m?ssl_ca_certs=ca.pem&ssl_check_hostname=false"
    )
    assert t.db == 0
    assert t.connection_kwargs == {
        "ssl": True,
        "ssl_ca_certs": "ca.pem",
        "ssl_check_hostname": False,
    }
    assert t.sentinel_kwargs == t.connection_kwargs


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h:26379", "names no service"),
        ("redis+sentinel://h:26379/", "names no service"),
        ("redis+sentinel:///mymaster", "names no sentinel"),
        ("redis+sentinel://h:port/mymaster", "bad sentinel port"),
        ("redis+sentinel://h:70000/mymaster", "bad sentinel port"),
        ("redis+sentinel://h/mymaster/x", "only a database number"),
        ("redis+sentinel://h/mymaster/0/1", "only a database number"),
        ("redis+sentinel://h/mymaster?ssl_ca_certs=ca.pem", "ssl_ca_certs not taken"),
        ("redis+sentinel://h/mymaster?socket_timeout=1", "socket_timeout not taken"),
        ("redis+sentinel://h/mymaster?max_connections=5", "pass max_connections= to"),
        ("rediss+sentinel://h/mymaster?ssl_cert_reqs=requried", "ssl_cert_reqs"),
    ],
)
def test_a_malformed_sentinel_url_is_a_config_error_for_tier_and_bus(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        RedisTier(url)
    with pytest.raises(ConfigError, match=says):
        RedisBus(url, namespace="n")


def test_sentinel_url_passwords_are_redacted_in_errors_and_reprs() -> None:
    url = "redis+sentinel://bot:s3cret@h1:1,h2:2/mymaster/0?sentinel_password=t0p"
    assert redact_url(url) == "redis+sentinel://bot:***@h1:1,h2:2/mymaster/0?sentinel_password=***"
    tier = RedisTier(url)
    assert "s3cret" not in repr(tier) and "t0p" not in repr(tier)
    with pytest.raises(ConfigError) as info:
        RedisTier(url.replace("/mymaster/0", "/mymaster/zero"))
    assert "s3cret" not in str(info.value) and "t0p" not in str(info.value)
