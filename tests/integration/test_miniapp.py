"""examples/miniapp: a Mini App backend and an aiogram webhook bot, real OS
processes (forked from one that imported them: see FORK_SERVER) on one
real redis-server, editing one user's session.

* initData is checked on every API call: valid 200; forged, expired,
  signed with another token, or missing 401. A same-leaf race is a 409.
* Under load from 16 web clients and 6 update senders (different fields
  and one shared ``Counter``), every acknowledged change survives; the
  staleness of the bot's reads after the web's acknowledgements is printed.
* The naive baseline (GET/SET of one JSON blob, with and without a
  per-process lock) run the same way loses acknowledged increments.
* A headless chromium loads the page with a signed initData, clicks +1,
  and the bot process sees the click.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parents[2]
MINIAPP = ROOT / "examples" / "miniapp"
sys.path.insert(0, str(MINIAPP))

import backend  # noqa: E402
import loadgen  # noqa: E402
from loadgen import TEST_TOKEN, USER_ID, send_update, sign_init_data  # noqa: E402

pytestmark = pytest.mark.redis

CHROMIUM = "/usr/bin/chromium"


def tma(init_data: str) -> dict[str, str]:
    return {"Authorization": f"tma {init_data}"}


async def test_init_data_is_checked_on_every_api_call(redis_url: str, namespace: str) -> None:
    app = backend.create_app(TEST_TOKEN, redis_url, max_age=60, namespace=namespace)
    valid = sign_init_data(TEST_TOKEN)
    forged = valid.replace("hash=", "hash=0")[: len(valid)]  # a hash, not the signature
    tampered = sign_init_data(TEST_TOKEN).replace("Ann", "Bob")  # the user, after signing
    old = sign_init_data(TEST_TOKEN, auth_date=int(time.time()) - 61)
    other_bot = sign_init_data("987654321:another-bot-token")
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/api/balance", headers=tma(valid))
        assert resp.status == 200
        assert (await resp.json())["balance"] == 1
        resp = await client.post("/api/note", headers=tma(valid), json={"text": "hi"})
        assert resp.status == 200
        assert (await resp.json())["session"]["notes"] == {"main": "hi"}
        resp = await client.get("/api/session", headers=tma(valid))
        assert resp.status == 200
        body = await resp.json()
        assert body["session"] == {"balance": 1, "notes": {"main": "hi"}}
        assert body["version"] > 0
        refused = {
            "forged hash": tma(forged),
            "user changed after signing": tma(tampered),
            "expired": tma(old),
            "another bot's token": tma(other_bot),
            "missing": {},
            "no tma scheme": {"Authorization": valid},
            "empty": tma(""),
        }
        for what, headers in refused.items():
            for method, path in [("GET", "/api/session"), ("POST", "/api/balance")]:
                resp = await client.request(method, path, headers=headers, json={})
                assert resp.status == 401, (what, method, path, resp.status)
        resp = await client.post("/api/note", headers=tma(valid), json={"text": 5})
        assert resp.status == 400
        resp = await client.get(f"/api/session?at_least={body['version']}", headers=tma(valid))
        assert resp.status == 200  # read-your-writes: a version the bot reported
        resp = await client.get("/api/session?at_least=soon", headers=tma(valid))
        assert resp.status == 400
        page = await client.get("/")  # the page itself needs no initData
        assert page.status == 200 and "Telegram.WebApp" in await page.text()
        # Nothing refused was applied.
        resp = await client.get("/api/session", headers=tma(valid))
        assert (await resp.json())["session"] == {"balance": 1, "notes": {"main": "hi"}}


class Interleaved:
    """The backend's cache, with ``meanwhile`` run just before each of its
    scopes writes: another process's write lands between read and write."""

    def __init__(self, cache: Any, meanwhile: Any) -> None:
        self.cache, self.meanwhile = cache, meanwhile

    def session(self, key: str, **options: Any) -> Any:
        outer = self

        class Scope:
            inner = self.cache.session(key, **options)

            async def __aenter__(self) -> Any:
                return await self.inner.__aenter__()

            async def __aexit__(self, *exc: Any) -> Any:
                await outer.meanwhile()
                return await self.inner.__aexit__(*exc)

            @property
            def version(self) -> int:
                return int(self.inner.version)

        return Scope()

    def __getattr__(self, name: str) -> Any:  # aget, aclose: the cache's own
        return getattr(self.cache, name)


async def test_the_same_leaf_changed_by_both_processes_is_a_409(
    redis_url: str, namespace: str
) -> None:
    """A ConflictError (the default resolver) reaches the client as 409 and
    applies nothing, while a change to another field merges (200)."""
    app = backend.create_app(TEST_TOKEN, redis_url, namespace=namespace)
    bot = backend.make_cache(redis_url, namespace)  # stands for the bot's process
    key = backend.SESSION_KEY.format(USER_ID)
    headers = tma(sign_init_data(TEST_TOKEN))
    bot_writes: list[str] = []

    async def bot_writes_the_note() -> None:
        if bot_writes:
            async with bot.session(key) as t:
                t.setdefault("notes", {})["main"] = bot_writes.pop()

    app[backend.CACHE] = Interleaved(app[backend.CACHE], bot_writes_the_note)
    try:
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/api/note", headers=headers, json={"text": "first"})
            assert resp.status == 200
            bot_writes.append("the bot's")
            resp = await client.post("/api/note", headers=headers, json={"text": "the web's"})
            assert resp.status == 409
            assert await resp.json() == {"error": "conflict, retry"}
            bot_writes.append("the bot's again")
            resp = await client.post("/api/balance", headers=headers)  # another field: merged
            assert resp.status == 200
            assert (await resp.json())["session"] == {
                "balance": 1,
                "notes": {"main": "the bot's again"},
            }
            assert (await bot.aget(key))["notes"] == {"main": "the bot's again"}
    finally:
        await bot.aclose()


#: Starts each backend and bot of the module's fixture as a forked child of
#: one process that imported them once: importing aiogram (its pydantic
#: types) costs a process 4-5 s of CPU, six of them most of this file's
#: time. Each child is a real OS process with its own environment, event
#: loop and cache, running the script's main(); the fork server prints each
#: child's PID, then "exit PID CODE" as each one ends.
FORK_SERVER = """
import json, os, sys, traceback
sys.path.insert(0, sys.argv[1])
import backend, bot

for spec in json.loads(sys.argv[2]):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.environ.update(spec["env"])
            sys.argv = [spec["role"] + ".py", "--port", str(spec["port"])]
            (backend if spec["role"] == "backend" else bot).main()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
sys.stdout.flush()
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    print("exit", pid, os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.fixture(scope="module")
def apps(redis_url: str) -> Iterator[dict[str, loadgen.Apps]]:
    """A backend and a bot for each store, on free loopback ports, started
    together and stopped together (SIGTERM, by PID): each must exit 0, its
    cache closed."""
    specs, pairs = [], {}
    for store in ("tiercache", "naive", "naive-lock"):
        env = loadgen.app_env(redis_url, f"miniapp-{store}-{uuid.uuid4().hex[:8]}", store)
        ports = {"backend": loadgen.free_port(), "bot": loadgen.free_port()}
        specs += [{"role": role, "port": port, "env": env} for role, port in ports.items()]
        urls = [f"http://127.0.0.1:{port}" for port in ports.values()]
        pairs[store] = loadgen.Apps(*urls, procs=[], logs=[])
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER, str(MINIAPP), json.dumps(specs)],
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert server.stdout is not None
    pids = []
    try:
        pids = [int(server.stdout.readline()) for _ in specs]
        for pair in pairs.values():
            pair.wait_ready()
        yield pairs
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        try:
            out, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, _ = server.communicate()
        log.seek(0)
        errors = log.read().decode(errors="replace")[-4000:]
        log.close()
    exits = [line.split() for line in out.decode().splitlines() if line.startswith("exit ")]
    assert sorted(int(pid) for _, pid, _ in exits) == sorted(pids), errors
    assert all(code == "0" for _, _, code in exits), errors


def test_every_acknowledged_change_survives_bot_and_web_under_load(
    apps: dict[str, loadgen.Apps],
) -> None:
    result = asyncio.run(loadgen.load(apps["tiercache"], "tiercache", 5, web=16, bots=6))
    summary = result.summary()
    print("\ntiercache:", json.dumps(summary))
    assert result.errors == 0
    assert result.conflicts == 0, "different fields and a Counter never conflict"
    assert result.acked_increments > 200, "the load ran"
    assert result.final_balance == result.acked_increments, "no acknowledged +1 lost"
    assert result.fields_lost == [], "every note's and memo's last acknowledged value is there"
    assert result.fields == 16 + 6
    assert result.reads > 20, "the bot read the session under load"
    # Measured, not promised: the bus invalidates in about a millisecond;
    # max_stale (10 s) is the bound if it stopped.
    assert summary["staleness_ms_p50"] < 50
    assert max(result.staleness_ms) < 10_000


@pytest.mark.parametrize("store", ["naive", "naive-lock"])
def test_the_naive_json_blob_baseline_loses_acknowledged_updates(
    apps: dict[str, loadgen.Apps], store: str
) -> None:
    result = asyncio.run(loadgen.load(apps[store], store, 2.5, web=16, bots=6))
    print(f"\n{store}:", json.dumps(result.summary()))
    assert result.errors == 0
    assert result.acked_increments > 200
    assert result.lost_increments > 0, "GET/SET of a blob loses acknowledged increments"


def test_a_click_in_the_mini_app_is_seen_by_the_bot(apps: dict[str, loadgen.Apps]) -> None:
    from playwright import sync_api  # the test extra's

    if not Path(CHROMIUM).exists():
        # CI installs Debian's chromium (.ci/run) and says it must be there.
        if os.environ.get("TIERCACHE_BROWSER_REQUIRED"):
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    pair, user = apps["tiercache"], 777  # not the load test's user
    init_data = sign_init_data(TEST_TOKEN, user)
    telegram = "window.Telegram = {WebApp: {initData: " + json.dumps(init_data) + ", ready() {}}};"

    def ask_bot(*texts: str) -> list[str | None]:
        # In a thread of its own: the sync Playwright API runs an event loop here.
        async def send() -> list[str | None]:
            async with aiohttp.ClientSession() as http:
                return [await send_update(http, pair.bot_url, t, user) for t in texts]

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, send()).result(timeout=30)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            # Telegram's own script is not fetched: the init script stands in for it.
            page.route("**/telegram-web-app.js", lambda route: route.fulfill(body="", status=200))
            page.add_init_script(telegram)
            page.goto(pair.backend_url + "/")
            page.wait_for_selector("#status:has-text('version')")
            assert page.text_content("#balance") == "0"
            with page.expect_response(lambda r: r.url.endswith("/api/balance")) as clicked:
                page.click("#plus")
            assert clicked.value.status == 200
            page.wait_for_selector("#balance:has-text('1')")
            page.fill("#note", "from the page")
            with page.expect_response(lambda r: r.url.endswith("/api/note")) as saved:
                page.click("#save")
            version = saved.value.json()["version"]

            balance, seen, bonus = ask_bot("/balance", "/session", "/bonus")
            assert balance == "balance: 1", "the bot sees the click"
            session = json.loads(seen or "{}")
            assert session["session"]["notes"] == {"main": "from the page"}
            assert session["version"] >= version
            assert bonus == "balance: 2"
            page.reload()  # and the page sees the bot's /bonus
            page.wait_for_selector("#balance:has-text('2')")
        finally:
            browser.close()
