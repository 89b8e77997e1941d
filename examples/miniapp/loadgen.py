"""Load on the Mini App backend and the bot at once, as real processes on
one Redis; counts what each acknowledged change became.

    python examples/miniapp/loadgen.py --redis redis://127.0.0.1:6379/0 \\
        [--store tiercache|naive|naive-lock] [--balance counter|int] \\
        [--seconds 20] [--web 16] [--bot 6] [--pause 0]

It starts backend.py and bot.py (``TELEGRAM_OFFLINE=1``: no Bot API call
leaves the machine) on free loopback ports, then for ``--seconds``:

* ``--web`` clients, each in a loop: ``POST /api/note`` (its own note
  name, the next number) and ``POST /api/balance`` (+1);
* ``--bot`` senders posting Telegram updates to the webhook, each in a
  loop: ``/memo <its own name> <next number>``, ``/bonus`` (+1) and
  ``/session`` (what the bot process reads, with the version).

A change counts as acknowledged when its response said so (200 with the
reply; a 409 from the backend or a 500 from the webhook is a refused
change). At the end, the session as the backend reads it once it has seen
every acknowledged write: lost increments (acknowledged +1s missing from
the final balance), notes and memos whose last acknowledged value is
missing, and, with tiercache, the staleness of the bot's reads:
for each ``/session`` read, how long before it the oldest web write it
does not show had been acknowledged (0 when it shows every one).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import hmac
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

import aiohttp

HERE = Path(__file__).resolve().parent
#: Telegram's token format; the processes never call the Bot API with it.
TEST_TOKEN = "123456789:TEST-tiercache-miniapp-token-0123456789"
USER_ID = 4242


def sign_init_data(
    token: str, user_id: int = USER_ID, *, auth_date: int | None = None, **fields: str
) -> str:
    """initData as Telegram signs it for ``token`` (HMAC-SHA256 keyed by
    ``HMAC("WebAppData", token)`` over the sorted ``key=value`` lines)."""
    data = {
        "auth_date": str(int(time.time()) if auth_date is None else auth_date),
        "query_id": "AAH-tiercache",
        "user": json.dumps({"id": user_id, "first_name": "Ann"}, separators=(",", ":")),
        **fields,
    }
    check = "\n".join(f"{k}={v}" for k, v in sorted(data.items()))
    secret = hmac.new(b"WebAppData", token.encode(), hashlib.sha256).digest()
    data["hash"] = hmac.new(secret, check.encode(), hashlib.sha256).hexdigest()
    return urlencode(data)


_update_ids = itertools.count(1)


def update(text: str, user_id: int = USER_ID) -> dict[str, Any]:
    """A Telegram Update of a private message ``text`` from ``user_id``."""
    n = next(_update_ids)
    sender = {"id": user_id, "is_bot": False, "first_name": "Ann"}
    message = {
        "message_id": n,
        "date": int(time.time()),
        "chat": {"id": user_id, "type": "private"},
        "from": sender,
        "text": text,
    }
    if text.startswith("/"):
        length = len(text.split()[0])
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
    return {"update_id": n, "message": message}


async def send_update(
    http: aiohttp.ClientSession, bot_url: str, text: str, user_id: int = USER_ID
) -> str | None:
    """Post an update to the webhook; the text of the bot's reply (it
    comes back in the response body as a sendMessage call), None if none."""
    async with http.post(f"{bot_url}/webhook", json=update(text, user_id)) as resp:
        resp.raise_for_status()
        if not resp.content_type.startswith("multipart/"):
            return None
        fields = {}
        reader = aiohttp.MultipartReader.from_response(resp)
        async for part in reader:
            assert isinstance(part, aiohttp.BodyPartReader)
            fields[part.name] = await part.text()
        assert fields.get("method") == "sendMessage", fields
        return fields["text"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Apps:
    backend_url: str
    bot_url: str
    procs: list[subprocess.Popen[bytes]]
    #: Each process's stderr. A file, not a pipe: a pipe nobody reads fills
    #: up with logged tracebacks (a 500 logs two) and blocks the process.
    logs: list[IO[bytes]]

    def stderr(self, i: int, tail: int = 4000) -> str:
        log = self.logs[i]
        log.seek(0)
        return log.read().decode(errors="replace")[-tail:]

    def wait_ready(self, timeout: float = 60) -> None:
        """Until both answer /healthz (importing aiogram takes seconds)."""
        deadline = time.monotonic() + timeout
        for url in (self.backend_url, self.bot_url):
            while True:
                for i, p in enumerate(self.procs):
                    if p.poll() is not None:
                        raise RuntimeError(f"{p.args} exited {p.returncode}\n{self.stderr(i)}")
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url} not up after {timeout} s")
                time.sleep(0.05)

    def stop(self) -> list[str]:
        """SIGTERM both (each closes its cache on the way out); the stderr
        of any that did not exit 0."""
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        failures = []
        for i, p in enumerate(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.returncode != 0:
                failures.append(f"{p.args}: exit {p.returncode}\n{self.stderr(i)}")
        for log in self.logs:
            log.close()
        return failures


def app_env(
    redis_url: str,
    namespace: str,
    store: str = "tiercache",
    token: str = TEST_TOKEN,
    balance: str = "counter",
) -> dict[str, str]:
    """The environment backend.py and bot.py read (both the same)."""
    return {
        "BOT_TOKEN": token,
        "REDIS_URL": redis_url,
        "MINIAPP_STORE": store,
        "MINIAPP_NAMESPACE": namespace,
        "MINIAPP_BALANCE": balance,
        "TELEGRAM_OFFLINE": "1",
    }


def start_apps(
    redis_url: str,
    namespace: str,
    store: str = "tiercache",
    token: str = TEST_TOKEN,
    balance: str = "counter",
) -> Apps:
    """backend.py and bot.py as subprocesses on free loopback ports (not
    waited for: see :meth:`Apps.wait_ready`)."""
    env = {**os.environ, **app_env(redis_url, namespace, store, token, balance)}
    ports = {"backend": free_port(), "bot": free_port()}
    logs = [tempfile.TemporaryFile() for _ in ports]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / f"{name}.py"), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        for (name, port), log in zip(ports.items(), logs, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports.values()]
    return Apps(*urls, procs, logs)


@contextmanager
def running_apps(
    redis_url: str, namespace: str, store: str = "tiercache", balance: str = "counter"
) -> Iterator[Apps]:
    """:func:`start_apps`, ready; stopped on exit, which raises if one failed."""
    apps = start_apps(redis_url, namespace, store, balance=balance)
    try:
        apps.wait_ready()
        yield apps
    except BaseException:
        apps.stop()
        raise
    failures = apps.stop()
    if failures:
        raise RuntimeError("\n".join(failures))


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)


@dataclass
class Result:
    store: str
    seconds: float
    acked_increments: int = 0
    final_balance: int = 0
    web_acks: int = 0
    bot_acks: int = 0
    conflicts: int = 0  # 409s from the backend: refused, not acknowledged
    bot_refused: int = 0  # 500s from the webhook: the handler raised, nothing applied
    errors: int = 0
    fields: int = 0  # note and memo names written
    fields_lost: list[str] = field(default_factory=list)
    reads: int = 0
    staleness_ms: list[float] = field(default_factory=list)

    @property
    def lost_increments(self) -> int:
        return self.acked_increments - self.final_balance

    @property
    def lost_pct(self) -> float:
        return 100 * self.lost_increments / max(1, self.acked_increments)

    def summary(self) -> dict[str, Any]:
        st = self.staleness_ms
        return {
            "store": self.store,
            "seconds": round(self.seconds, 1),
            "requests_acknowledged": self.web_acks + self.bot_acks,
            "conflicts_409": self.conflicts,
            "bot_500": self.bot_refused,
            "errors": self.errors,
            "acknowledged_increments": self.acked_increments,
            "final_balance": self.final_balance,
            "lost_increments": self.lost_increments,
            "lost_pct": round(self.lost_pct, 1),
            "fields_lost": f"{len(self.fields_lost)} of {self.fields}",
            "bot_reads": self.reads,
            "stale_reads": sum(1 for x in st if x > 0),
            "staleness_ms_p50": percentile(st, 50),
            "staleness_ms_p99": percentile(st, 99),
            "staleness_ms_max": percentile(st, 100),
        }


async def load(
    apps: Apps,
    store: str,
    seconds: float,
    web: int,
    bots: int,
    user_id: int = USER_ID,
    pause: float = 0.0,
) -> Result:
    """Run the mixed load on ``user_id``'s session for ``seconds``; the
    counts and the staleness."""
    result = Result(store, seconds)
    auth = {"Authorization": f"tma {sign_init_data(TEST_TOKEN, user_id)}"}
    last_note: dict[str, str] = {}
    last_memo: dict[str, str] = {}
    web_acks: list[tuple[float, int]] = []  # (acknowledged at, version written)
    reads: list[tuple[float, int]] = []  # (bot read at, version read)
    max_version = 0
    deadline = time.monotonic() + seconds

    async def web_client(http: aiohttp.ClientSession, i: int) -> None:
        nonlocal max_version
        name = f"w{i}"
        for n in itertools.count():
            if time.monotonic() > deadline:
                return
            if pause:
                await asyncio.sleep(pause)
            note = n % 2 == 0
            path, body = (
                ("/api/note", {"slot": name, "text": str(n)}) if note else ("/api/balance", {})
            )
            async with http.post(apps.backend_url + path, json=body, headers=auth) as resp:
                if resp.status == 409:
                    result.conflicts += 1
                    continue
                if resp.status != 200:
                    result.errors += 1
                    continue
                reply = await resp.json()
            at = time.monotonic()
            result.web_acks += 1
            version = reply["version"]
            if version is not None:
                web_acks.append((at, version))
                max_version = max(max_version, version)
            if note:
                last_note[name] = str(n)
            else:
                result.acked_increments += 1

    async def bot_sender(http: aiohttp.ClientSession, j: int) -> None:
        nonlocal max_version
        name = f"b{j}"
        for n in itertools.count():
            if time.monotonic() > deadline:
                return
            if pause:
                await asyncio.sleep(pause)
            kind = n % 3
            text = (f"/memo {name} {n}", "/bonus", "/session")[kind]
            try:
                reply = await send_update(http, apps.bot_url, text, user_id)
            except aiohttp.ClientResponseError as exc:
                if exc.status != 500:
                    raise
                result.bot_refused += 1  # the handler raised (a ConflictError)
                continue
            result.bot_acks += 1
            if kind == 0:
                assert reply == f"saved memo {name}", reply
                last_memo[name] = str(n)
            elif kind == 1:
                assert reply is not None and reply.startswith("balance: "), reply
                result.acked_increments += 1
            else:
                assert reply is not None
                seen = json.loads(reply)
                if seen["version"] is not None:
                    reads.append((seen["read_at"], seen["version"]))
                    max_version = max(max_version, seen["version"])

    connector = aiohttp.TCPConnector(limit=web + bots + 4)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(
            *(web_client(http, i) for i in range(web)), *(bot_sender(http, j) for j in range(bots))
        )
        # The final state, as the backend reads it once it has seen every
        # acknowledged write: at_least the newest version the web clients
        # were told and the bot reads now (its own writes included; its
        # /bonus and /memo replies do not say their version).
        reply = await send_update(http, apps.bot_url, "/session", user_id)
        bot_version = json.loads(reply or "{}").get("version")
        max_version = max(max_version, bot_version or 0)
        query = f"?at_least={max_version}" if max_version else ""
        async with http.get(f"{apps.backend_url}/api/session{query}", headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            final = (await resp.json())["session"]
    result.final_balance = int(final.get("balance", 0))
    for kind, last in (("notes", last_note), ("memos", last_memo)):
        stored = final.get(kind, {})
        result.fields += len(last)
        result.fields_lost += [f"{kind}[{k}]" for k, v in last.items() if stored.get(k) != v]
    result.reads = len(reads)
    result.staleness_ms = staleness(web_acks, reads)
    return result


def staleness(acks: list[tuple[float, int]], reads: list[tuple[float, int]]) -> list[float]:
    """For each read (time, version), how long before it the oldest
    acknowledged write newer than what it read had been acknowledged
    (milliseconds; 0 when the read shows every acknowledged write).
    Versions of one key only grow, so "newer" is a bigger version."""
    acks = sorted(acks)
    # The newest version acknowledged so far, at each acknowledgement: the
    # first one above a read's version is the oldest write it misses.
    newest = list(itertools.accumulate((v for _, v in acks), max))
    out = []
    for read_at, version in reads:
        i = bisect.bisect_right(newest, version)
        missed = i < len(acks) and acks[i][0] < read_at
        out.append(1000 * (read_at - acks[i][0]) if missed else 0.0)
    return out


def run(
    redis_url: str,
    store: str = "tiercache",
    seconds: float = 6,
    web: int = 16,
    bots: int = 6,
    namespace: str | None = None,
    balance: str = "counter",
    pause: float = 0.0,
) -> Result:
    """Start both processes, run the load, stop them (each must exit 0).
    A fresh namespace unless one is given: every run starts from nothing."""
    namespace = namespace or f"miniapp-load-{uuid.uuid4().hex[:8]}"
    with running_apps(redis_url, namespace, store, balance) as apps:
        return asyncio.run(load(apps, store, seconds, web, bots, pause=pause))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument(
        "--store", choices=["tiercache", "naive", "naive-lock"], default="tiercache"
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--web", type=int, default=16)
    parser.add_argument("--bot", type=int, default=6)
    parser.add_argument(
        "--balance",
        choices=["counter", "int"],
        default="counter",
        help="the balance: a tiercache.Counter, or a plain int (races are 409s)",
    )
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds each client waits between requests"
    )
    args = parser.parse_args()
    result = run(
        args.redis,
        args.store,
        args.seconds,
        args.web,
        args.bot,
        balance=args.balance,
        pause=args.pause,
    )
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
