"""The ``tiercache`` command, end to end: run as a subprocess (``python -m
tiercache``) against a real Redis and a real disk directory, its answers
checked against what the library itself reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import redis

from tiercache import (
    DiskTier,
    Journal,
    MemoryTier,
    RedisTier,
    TieredCache,
    WriteBehind,
    publish_stats,
)
from tiercache._cli import main
from tiercache._keys import KeyNames

from ._helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tiercache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if ok:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiercache: "), proc.stderr
    for w in words:
        assert w in lines[0]


def one_line_error_last(proc: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    """As one_line_error, after a progress bar's lines on stderr."""
    assert proc.returncode == code and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tiercache: ") and words in last, proc.stderr


@pytest.mark.redis
def test_keys_inspect_and_delete_on_redis(redis_url: str, namespace: str) -> None:
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    watcher = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    try:
        for i in range(1200):  # more than one SCAN batch
            cache.set(f"user:{i}", {"i": i})
        scope = cache.session("chat:1", ttl=600)
        with scope as s:
            s.update({"n": 1, "tags": {"vip"}, "blob": b"\x00\x01", "t": (1, 2)})
        version = scope.version
        cache.set("big", {f"field{i}": "x" * 40 for i in range(400)})
        for value in ("changed", "x" * 40):  # large: written again, it becomes a hash
            with cache.session("big") as s:
                s["field0"] = value
        cache.set("gone", 1)
        cache.delete("gone")  # a tombstone: not a key any more
        # Internal names are never listed as keys.
        names = KeyNames(namespace)
        raw = redis.Redis.from_url(redis_url)
        raw.set("tc:" + names.quarantine("chat:1"), b"bad")
        raw.set("tc:" + names.stats("p1"), b"{}")
        assert raw.type("tc:" + names.value("big")) == b"hash"
        assert watcher.get("chat:1")["n"] == 1  # a copy in another cache's memory

        base = ["--redis", redis_url, "--namespace", namespace]
        listed = cli(*base, "keys").stdout.split()
        assert sorted(listed) == sorted([f"user:{i}" for i in range(1200)] + ["chat:1", "big"])
        assert cli(*base, "keys", "chat:*").stdout.split() == ["chat:1"]
        assert len(cli(*base, "keys", "--limit", "10").stdout.split()) == 10
        lines = cli(*base, "--json", "keys", "b*").stdout.splitlines()
        assert [json.loads(line) for line in lines] == ["big"]

        doc = json.loads(cli(*base, "--json", "inspect", "chat:1").stdout)
        assert doc["value"] == {"n": 1, "tags": ["vip"], "blob": {"$bytes": "AAE="}, "t": [1, 2]}
        assert doc["version"] == version and doc["layout"] == "string"
        assert doc["serializer"] == "msgpack" and doc["schema"] == 0
        assert 590 < doc["ttl_s"] <= 600 and doc["expires"] is not None
        assert doc["bytes"] > doc["payload_bytes"] > 0 and doc["tombstone"] is False
        big = json.loads(cli(*base, "--json", "inspect", "big").stdout)
        assert big["layout"].startswith("fields (") and big["ttl_s"] is None
        assert big["value"] == {f"field{i}": "x" * 40 for i in range(400)}
        table = cli(*base, "inspect", "chat:1").stdout
        assert "version" in table and str(version) in table and '"vip"' in table

        one_line_error(cli(*base, "inspect", "nope", ok=False), 1, "no key 'nope'")
        one_line_error(cli(*base, "inspect", "gone", ok=False), 1, "deleted")

        cli(*base, "delete", "chat:1")
        assert cache.get("chat:1") is None
        # The delete went through the library: the other cache heard of it.
        wait_until(lambda: watcher.get("chat:1") is None, "the watcher to drop chat:1", 5)
        one_line_error(cli(*base, "delete", "chat:1", ok=False), 1, "no key")
    finally:
        cache.close()
        watcher.close()


@pytest.mark.redis
def test_keys_inspect_delete_and_quarantine_on_a_cluster(cluster_url: str, namespace: str) -> None:
    """The same commands on a Redis Cluster: every master is scanned, and
    the slot tag in front of each stored name is not part of a key."""
    tier = RedisTier(cluster_url)
    cache = TieredCache(MemoryTier(), tier, namespace=namespace)
    try:
        for i in range(300):
            cache.set(f"user:{i}", {"i": i})
        base = ["--redis", cluster_url, "--namespace", namespace]
        listed = cli(*base, "keys").stdout.split()
        assert sorted(listed) == sorted(f"user:{i}" for i in range(300))
        doc = json.loads(cli(*base, "--json", "inspect", "user:7").stdout)
        assert doc["value"] == {"i": 7} and doc["layout"] == "string"
        cli(*base, "delete", "user:7")
        assert cache.get("user:7") is None
        names = KeyNames(namespace)
        raw = tier._client()
        raw.set(tier._key(names.quarantine("user:8")), b"bad")
        rows = json.loads(cli(*base, "--json", "quarantine", "list").stdout)
        assert [r["key"] for r in rows] == ["user:8"]
        assert "user:7" not in cli(*base, "keys").stdout.split()
    finally:
        cache.close()


@pytest.mark.redis
def test_quarantine_list_show_restore_purge_on_redis(redis_url: str, namespace: str) -> None:
    base = ["--redis", redis_url, "--namespace", namespace]
    cache = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    raw = redis.Redis.from_url(redis_url)
    names = KeyNames(namespace)
    try:
        cache.set("good", {"a": 1})
        cache.set("bad", {"b": 2})
        cache.set("taken", {"c": 3})
        good = raw.get("tc:" + names.value("good"))
        assert good is not None
        # A readable entry set aside (a process with the wrong settings
        # quarantined it), and one truly damaged.
        raw.set("tc:" + names.quarantine("lost"), good)
        bad = bytearray(raw.get("tc:" + names.value("bad")) or b"")
        bad[-1] ^= 0xFF
        raw.set("tc:" + names.value("bad"), bytes(bad))
        cache2 = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
        assert cache2.get("bad") is None  # quarantined by the read
        cache2.close()
        raw.set("tc:" + names.quarantine("taken"), good)

        listed = json.loads(cli(*base, "--json", "quarantine", "list").stdout)
        assert {r["key"]: r["reason"] for r in listed} == {
            "lost": "readable now (a serializer or secret changed since?)",
            "bad": "checksum mismatch",
            "taken": "readable now (a serializer or secret changed since?)",
        }
        shown = json.loads(cli(*base, "--json", "quarantine", "show", "bad").stdout)
        assert shown["reason"] == "checksum mismatch" and shown["bytes"] == len(bad)

        cli(*base, "quarantine", "restore", "lost")
        assert cache.get("lost") == {"a": 1}
        assert raw.exists("tc:" + names.quarantine("lost")) == 0
        # Never over a value: the quarantined bytes stay.
        one_line_error(cli(*base, "quarantine", "restore", "taken", ok=False), 1, "has a value")
        assert cache.get("taken") == {"c": 3}
        assert raw.exists("tc:" + names.quarantine("taken")) == 1
        one_line_error(cli(*base, "quarantine", "show", "nope", ok=False), 1, "nothing quarantined")

        cli(*base, "quarantine", "purge", "bad")
        assert [
            r["key"] for r in json.loads(cli(*base, "--json", "quarantine", "list").stdout)
        ] == ["taken"]
        cli(*base, "quarantine", "purge", "--all")
        assert json.loads(cli(*base, "--json", "quarantine", "list").stdout) == []
    finally:
        cache.close()


def test_keys_inspect_delete_and_quarantine_on_disk(tmp_path: Path) -> None:
    directory = tmp_path / "disk"
    cache = TieredCache(MemoryTier(), DiskTier(directory), namespace="ns:x")
    cache.set("a", {"x": 1}, ttl=100)
    cache.set("b", [1, 2])
    cache.set("other", 1)
    cache.close()
    # Another namespace's keys in the same directory are not listed.
    other = TieredCache(MemoryTier(), DiskTier(directory), namespace="ns")
    other.set("x:c", 1)
    other.close()
    base = ["--disk", str(directory), "--namespace", "ns:x"]
    assert sorted(cli(*base, "keys").stdout.split()) == ["a", "b", "other"]
    doc = json.loads(cli(*base, "--json", "inspect", "a").stdout)
    assert doc["value"] == {"x": 1} and doc["tier"] == "disk" and 90 < doc["ttl_s"] <= 100
    tier = DiskTier(directory)
    names = KeyNames("ns:x")
    tier.set(names.quarantine("b"), tier.get(names.value("b")) or b"")
    tier.delete(names.value("b"))
    tier.close()
    assert [r["key"] for r in json.loads(cli(*base, "--json", "quarantine", "list").stdout)] == [
        "b"
    ]
    cli(*base, "quarantine", "restore", "b")
    cli(*base, "delete", "other")
    cache = TieredCache(MemoryTier(), DiskTier(directory), namespace="ns:x")
    assert cache.get("b") == [1, 2] and cache.get("other") is None
    cache.close()
    assert sorted(cli(*base, "keys").stdout.split()) == ["a", "b"]


WRITER = """
import os, sys
from tiercache import Journal, MemoryTier, RedisTier, TieredCache, WriteBehind
url, ns, journal_dir = sys.argv[1:]
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=ns,
                    flush=WriteBehind(3600), journal=Journal(journal_dir))
for i in range(5):
    for _ in range(i + 1):
        with cache.session(f"k{i}") as s:
            s["n"] = s.get("n", 0) + 1
print(cache.stats().journal_depth, flush=True)
os._exit(0)   # a crash: nothing flushed, everything journaled
"""


@pytest.mark.redis
def test_journal_show_and_replay(redis_url: str, namespace: str, tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    seed = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    seed.set("k0", {"n": 10})  # stored before the writer ran: it read and changed it
    proc = subprocess.run(
        [sys.executable, str(script), redis_url, namespace, str(journal_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == 15
    seed.set("k1", {"other": 1})  # written meanwhile: the replay merges into it
    seed.close()

    shown = json.loads(cli("--json", "journal", str(journal_dir), "show").stdout)
    assert len(shown["records"]) == 15 and shown["unreadable_bytes"] == 0
    assert {r["key"] for r in shown["records"]} == {f"k{i}" for i in range(5)}

    base = ["--redis", redis_url, "--namespace", namespace]
    dry = json.loads(cli(*base, "--json", "journal", str(journal_dir), "replay").stdout)
    assert dry["applied"] is False and dry["replayed"] == 0
    assert {p["key"]: p["records"] for p in dry["keys"]} == {f"k{i}": i + 1 for i in range(5)}
    assert {p["key"]: p["action"] for p in dry["keys"]} == {
        "k0": "write",
        "k1": "merge",
        "k2": "write",
        "k3": "write",
        "k4": "write",
    }
    reader = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    try:
        assert reader.get("k2") is None  # the dry run wrote nothing
        journal = Journal(journal_dir)
        assert len(journal.snapshot(reader._core.serializer)) == 15
        # While a process owns the journal, --apply refuses to take it.
        proc = cli(*base, "journal", str(journal_dir), "replay", "--apply", ok=False)
        one_line_error_last(proc, 1, "in use by another process")
        journal.close()
    finally:
        reader.close()

    done = cli(*base, "journal", str(journal_dir), "replay", "--apply")
    assert "replayed 15 record(s) of 5 key(s)" in done.stdout
    assert "replaying" in done.stderr  # the progress bar
    reader = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
    try:
        assert reader.get("k0") == {"n": 11}
        assert reader.get("k1") == {"n": 2, "other": 1}
        for i in range(2, 5):
            assert reader.get(f"k{i}") == {"n": i + 1}
    finally:
        reader.close()
    assert json.loads(cli("--json", "journal", str(journal_dir), "show").stdout)["records"] == []


WORKER = """
import os, sys, time
from tiercache import MemoryTier, RedisTier, TieredCache, publish_stats
url, ns, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
cache = TieredCache(MemoryTier(), RedisTier(url), namespace=ns)
publisher = publish_stats(cache, every=0.3)
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    with cache.session(f"{os.getpid()}:k{i % 20}") as s:
        if i % 4 == 0:
            s["n"] = s.get("n", 0) + 1
    i += 1
    time.sleep(0.002)
print("ready", flush=True)
publisher.stop()
cache.close()
"""


@pytest.mark.redis
def test_top_shows_two_worker_processes(redis_url: str, namespace: str, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), redis_url, namespace, "4"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        base = ["--redis", redis_url, "--namespace", namespace]
        # The workers start up first (~0.5 s each): wait until both publish.
        wait_until(
            lambda: (
                len(
                    json.loads(cli(*base, "--json", "top", "--iterations", "1").stdout)["processes"]
                )
                == 2
            ),
            "both workers to publish",
            10,
        )
        out = cli(*base, "--json", "top", "--interval", "0.4", "--iterations", "4").stdout
        frames = [json.loads(line) for line in out.splitlines()]
        assert len(frames) == 4
        last = frames[-1]["processes"]
        pids = {w.pid for w in workers}
        assert {int(p["process"].rsplit(":", 1)[1]) for p in last} == pids
        for p in last:
            assert p["hits"] > 0 and p["writes"] > 0 and p["state"] == "ok"
            assert p["hits_per_s"] > 0 and 0 < p["hit_ratio"] <= 1
            assert p["age_s"] < 2
        first = {p["origin"]: p["hits"] for p in frames[0]["processes"]}
        assert all(p["hits"] > first[p["origin"]] for p in last)
        table = cli(*base, "top", "--iterations", "1").stdout
        assert "2 process(es)" in table and "hits/s" in table
    finally:
        outs = [w.communicate(timeout=30)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers) and outs == ["ready\n"] * 2
    # Stopped publishers deleted their snapshots.
    gone = json.loads(cli(*base, "--json", "top", "--iterations", "1").stdout)
    assert gone["processes"] == []
    assert "publish_stats" in cli(*base, "top", "--iterations", "1").stdout


@pytest.mark.redis
def test_convert_to_fields_and_back_never_overwrites_a_writer(
    redis_url: str, namespace: str
) -> None:
    base = ["--redis", redis_url, "--namespace", namespace]
    # fields=None: every entry is written as one string, as by older processes.
    cache = TieredCache(MemoryTier(), RedisTier(redis_url, fields=None), namespace=namespace)
    raw = redis.Redis.from_url(redis_url)
    names = KeyNames(namespace)
    try:
        big = {f"f{i}": {"v": i, "s": "y" * 30} for i in range(300)}
        for i in range(5):
            cache.set(f"big{i}", {**big, "id": i}, ttl=3600 if i == 0 else None)
        cache.set("small", {"a": 1})
        cache.set("notamap", list(range(3000)))
        raw.rpush("tc:" + names.value("foreign"), b"x")  # not an entry at all
        versions = {k: _version(raw, names, k) for k in ("big0", "big1")}
        done = json.loads(cli(*base, "--json", "convert").stdout)
        assert done["converted"] == 5 and done["small"] == 1 and done["skipped"] == 2
        assert raw.type("tc:" + names.value("big0")) == b"hash"
        assert 3500 < raw.pttl("tc:" + names.value("big0")) <= 3600_000
        assert raw.pttl("tc:" + names.value("big1")) == -1
        fresh = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
        try:
            assert fresh.get("big3") == {**big, "id": 3}
            # The same version: no copy anywhere became stale.
            assert {k: _version(raw, names, k) for k in versions} == versions
            with fresh.session("big2") as s:  # a one-field write onto the hash
                s["id"] = 22
            assert (
                TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, bus=None).get(
                    "big2"
                )["id"]
                == 22
            )
        finally:
            fresh.close()
        again = json.loads(cli(*base, "--json", "convert").stdout)
        assert again["converted"] == 0 and again["already"] == 5  # a rerun resumes
        back = json.loads(cli(*base, "--json", "convert", "--to", "string").stdout)
        assert back["converted"] == 5
        assert raw.type("tc:" + names.value("big4")) == b"string"
        assert cache.get("big4") == {**big, "id": 4}

        # A writer racing the conversion is never overwritten: the last value
        # written is the one stored, whichever layout it ends in.
        stop = threading.Event()
        last: list[int] = []

        def writer() -> None:
            w = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace)
            n = 0
            while not stop.is_set():
                n += 1
                with w.session("big1") as s:
                    s["id"] = n
                last.append(n)
            w.close()

        t = threading.Thread(target=writer)
        t.start()
        try:
            for to in ("fields", "string", "fields", "string", "fields"):
                assert main([*base, "--json", "convert", "--to", to]) == 0
        finally:
            stop.set()
            t.join()
        check = TieredCache(MemoryTier(), RedisTier(redis_url), namespace=namespace, bus=None)
        assert check.get("big1")["id"] == last[-1] and len(last) > 1
        check.close()
    finally:
        cache.close()


def _version(raw: Any, names: KeyNames, key: str) -> int:
    tier = RedisTier(raw)
    from tiercache._envelope import peek_version

    data = tier.get(names.value(key))
    assert data is not None
    return peek_version(data)


def test_usage_and_failures_are_one_line_with_conventional_codes(tmp_path: Path) -> None:
    one_line_error(cli("keys", ok=False), 2, "--redis")
    one_line_error(cli("--disk", str(tmp_path), "keys", ok=False), 2, "--namespace")
    one_line_error(
        cli("--disk", str(tmp_path / "no"), "-n", "x", "keys", ok=False), 1, "no directory"
    )
    proc = cli("--redis", "redis://127.0.0.1:1/0", "-n", "x", "keys", ok=False)
    one_line_error(proc, 1, "onnect")
    one_line_error(cli("--redis", "redis://h/0?bogus=1", "-n", "x", "keys", ok=False), 2)
    proc = cli("--frobnicate", ok=False)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    one_line_error(cli("--disk", str(tmp_path), "-n", "x", "convert", ok=False), 2, "--redis")
    one_line_error(cli("journal", str(tmp_path / "none"), "show", ok=False), 1, "no journal")
    assert "keys" in cli("--help").stdout


def test_the_console_script_names_main() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"tiercache": "tiercache._cli:main"}
    assert callable(main)
    assert "publish_stats" in textwrap.dedent(WORKER) and WriteBehind and publish_stats


@pytest.mark.redis
def test_tls_and_a_password_through_the_url_and_the_option(tmp_path: Path) -> None:
    import ssl
    from urllib.parse import urlencode

    import trustme

    from tiercache.testing import RedisServer

    from ._tls_proxy import TlsProxy

    ca = trustme.CA()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    password = "pw-cli-7-horse"
    with (
        RedisServer(password=password) as server,
        TlsProxy(("127.0.0.1", server.port), context) as proxy,
    ):
        query = urlencode({"ssl_ca_certs": str(ca_pem), "ssl_cert_reqs": "required"})
        bare = f"rediss://127.0.0.1:{proxy.port}/0?{query}"
        with_password = f"rediss://:{password}@127.0.0.1:{proxy.port}/0?{query}"
        cache = TieredCache(MemoryTier(), RedisTier(with_password), namespace="tls")
        cache.set("chat:1", {"over": "tls"})
        cache.close()
        got = json.loads(
            cli("--redis", with_password, "-n", "tls", "--json", "inspect", "chat:1").stdout
        )
        assert got["value"] == {"over": "tls"}
        assert cli("--redis", bare, "--password", password, "-n", "tls", "keys").stdout.split() == [
            "chat:1"
        ]
        env_run = subprocess.run(
            [sys.executable, "-m", "tiercache", "--redis", bare, "-n", "tls", "keys"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TIERCACHE_REDIS_PASSWORD": password},
        )
        assert env_run.returncode == 0 and env_run.stdout.split() == ["chat:1"]
        wrong = cli("--redis", bare, "--password", "nope", "-n", "tls", "keys", ok=False)
        one_line_error(wrong, 1)
        assert password not in wrong.stderr and "nope" not in wrong.stderr
