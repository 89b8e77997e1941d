"""A Telegram Mini App backend: an aiohttp app that edits the same user
session as the bot (bot.py), through one Redis.

    BOT_TOKEN=123456:ABC... REDIS_URL=redis://127.0.0.1:6379/0 \\
        python examples/miniapp/backend.py --port 8080

::

    Telegram client ── GET / ──▶ page (reads window.Telegram.WebApp.initData)
         │
         └─ /api/* + "Authorization: tma <initData>" ─▶ HMAC check (bot token)
                                                        │ 401 forged / expired
                                                        ▼
                     cache.session("user:{id}") ─── one Redis ─── bot.py

The web app changes ``notes`` (the bot never does) and the shared
``balance``, a :class:`tiercache.Counter`: increments from this process and
the bot's add up with no lock and no conflict. Changes to different keys
merge across processes; a leaf both sides changed raises
:class:`tiercache.ConflictError`, answered with 409 (nothing was applied:
the page retries).

``MINIAPP_STORE=naive`` / ``naive-lock`` swaps the cache for the baseline
in naive.py (GET/SET of one JSON blob) to measure what that loses.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiogram.utils.web_app import safe_parse_webapp_init_data
from aiohttp import web

from tiercache import (
    ConflictError,
    Counter,
    TieredCache,
    TierError,
    VersionNotReachedError,
    to_plain,
)

#: The key both processes use for one Telegram user's session.
SESSION_KEY = "user:{}"
#: initData older than this (seconds since its auth_date) is refused.
DEFAULT_MAX_AGE = 3600.0

CACHE: web.AppKey[Any] = web.AppKey("cache", object)
SETTINGS: web.AppKey[dict[str, Any]] = web.AppKey("settings", dict)
USER: web.RequestKey[int] = web.RequestKey("user", int)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_cache(redis_url: str, namespace: str | None = None) -> Any:
    """The session store: tiercache (memory + Redis + the invalidation bus),
    or the naive baseline for benchmarks (``MINIAPP_STORE``)."""
    store = os.environ.get("MINIAPP_STORE", "tiercache")
    namespace = namespace or os.environ.get("MINIAPP_NAMESPACE", "miniapp")
    if store == "tiercache":
        return TieredCache.from_url(redis_url, namespace=namespace)
    sys.path.insert(0, str(Path(__file__).parent))
    from naive import NaiveCache

    return NaiveCache(redis_url, namespace=namespace, lock=store == "naive-lock")


def user_id_from(request: web.Request) -> int:
    """The Telegram user id the request's initData proves, else 401.

    The page sends ``Authorization: tma <initData>``; the data is signed
    by Telegram with a key derived from the bot token (aiogram checks the
    HMAC) and carries ``auth_date``, which must be recent: a stolen initData
    string is a credential until it expires.
    """
    settings = request.app[SETTINGS]
    scheme, _, init_data = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "tma" or not init_data:
        raise web.HTTPUnauthorized(text="missing initData")
    try:
        data = safe_parse_webapp_init_data(settings["token"], init_data)
    except ValueError:  # a bad signature or a malformed string
        raise web.HTTPUnauthorized(text="invalid initData") from None
    age = time.time() - data.auth_date.timestamp()
    if age > settings["max_age"]:
        raise web.HTTPUnauthorized(text="expired initData")
    if data.user is None:
        raise web.HTTPUnauthorized(text="initData names no user")
    return data.user.id


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every /api/ call; map the cache's errors to statuses."""
    if request.path.startswith("/api/"):
        request[USER] = user_id_from(request)
    try:
        return await handler(request)
    except ConflictError:
        # Both processes changed the same leaf at once: this request's
        # change was not applied (the stored value is kept). The page retries.
        return web.json_response({"error": "conflict, retry"}, status=409)
    except VersionNotReachedError:  # ?at_least= a version no write reached (yet)
        return web.json_response({"error": "version not reached"}, status=404)
    except TierError:
        return web.json_response({"error": "storage unavailable"}, status=503)


def view(session: Any, version: int | None) -> dict[str, Any]:
    """What the page shows: plain JSON (a Counter is an int)."""
    plain = to_plain(session) if session is not None else {}
    return {"session": plain, "balance": int(plain.get("balance", 0)), "version": version}


def add_one(session: Any) -> None:
    """+1 on the balance, here and in the bot's /bonus.

    A :class:`tiercache.Counter`: concurrent increments from both processes
    are added up, no lock, no conflict. ``MINIAPP_BALANCE=int`` (for the
    measurements in README.md) keeps a plain int instead: a race with the
    other process is then a same-leaf :class:`ConflictError` (409 here),
    refused rather than lost.
    """
    if os.environ.get("MINIAPP_BALANCE") == "int":
        session["balance"] = int(session.get("balance", 0)) + 1
    else:
        session.setdefault("balance", Counter())
        session["balance"] += 1


async def written(cache: Any, key: str, version: int | None) -> web.Response:
    """The answer to a write: the version it committed, and the session as
    stored after it (what the scope saw, merged with what the bot wrote
    meanwhile; a memory hit)."""
    return web.json_response(view(await cache.aget(key), version))


async def get_session(request: web.Request) -> web.Response:
    """The user's session; ``?at_least=V`` (a version the bot reported)
    waits until this process sees that write (read-your-writes)."""
    cache = request.app[CACHE]
    at_least = request.query.get("at_least", "")
    if at_least and not at_least.isdigit():
        raise web.HTTPBadRequest(text="at_least: a version (digits)")
    scope = cache.session(
        SESSION_KEY.format(request[USER]), at_least=int(at_least) if at_least else None
    )
    async with scope as s:  # reads only: writes nothing
        plain = to_plain(s)
    return web.json_response(view(plain, scope.version))


async def post_note(request: web.Request) -> web.Response:
    """Set a named note, ``{"slot": "main", "text": "..."}``: a web-only field."""
    payload = await request.json()
    slot, text = payload.get("slot", "main"), payload.get("text")
    if not isinstance(slot, str) or not 0 < len(slot) <= 32:
        raise web.HTTPBadRequest(text="slot: 1-32 characters")
    if not isinstance(text, str) or len(text) > 500:
        raise web.HTTPBadRequest(text="text: a string of at most 500 characters")
    cache, key = request.app[CACHE], SESSION_KEY.format(request[USER])
    scope = cache.session(key)
    async with scope as s:
        # Different slots are different keys of one nested dict: writes
        # from several processes merge instead of overwriting each other.
        s.setdefault("notes", {})[slot] = text
    return await written(cache, key, scope.version)


async def post_balance(request: web.Request) -> web.Response:
    """+1 on the balance the bot's /bonus also increments."""
    cache, key = request.app[CACHE], SESSION_KEY.format(request[USER])
    scope = cache.session(key)
    async with scope as s:
        add_one(s)
    return await written(cache, key, scope.version)


async def index(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def close_cache(app: web.Application) -> None:
    # web.run_app() stops on SIGTERM and runs the cleanup signal: everything
    # pending is written and the bus listener stops.
    await app[CACHE].aclose()


def create_app(
    token: str,
    redis_url: str,
    *,
    max_age: float = DEFAULT_MAX_AGE,
    namespace: str | None = None,
) -> web.Application:
    app = web.Application(middlewares=[api_errors])
    app[SETTINGS] = {"token": token, "max_age": max_age}
    app[CACHE] = make_cache(redis_url, namespace)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/session", get_session)
    app.router.add_post("/api/note", post_note)
    app.router.add_post("/api/balance", post_balance)
    app.on_cleanup.append(close_cache)
    return app


PAGE = """<!doctype html>
<html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tiercache Mini App</title>
<script src="https://telegram.org/js/telegram-web-app.js"></script>
<style>body{font-family:sans-serif;margin:1em}button{margin:.2em}</style>
</head><body>
<h3>Balance: <span id="balance">?</span></h3>
<button id="plus">+1</button>
<p><input id="note" placeholder="a note"> <button id="save">Save note</button></p>
<p>Memos from the bot: <span id="memos"></span></p>
<p id="status"></p>
<script>
const tg = (window.Telegram && window.Telegram.WebApp) || null;
const auth = "tma " + (tg ? tg.initData : "");
const $ = (id) => document.getElementById(id);
function show(body) {
  const s = body.session || {};
  $("balance").textContent = body.balance;
  $("note").value = (s.notes || {}).main || "";
  $("memos").textContent = JSON.stringify(s.memos || {});
  $("status").textContent = "version " + body.version;
}
async function api(method, path, data, tries) {
  const r = await fetch(path, {method: method, body: data ? JSON.stringify(data) : undefined,
    headers: {"Authorization": auth, "Content-Type": "application/json"}});
  if (r.status === 409 && (tries || 0) < 3) return api(method, path, data, (tries || 0) + 1);
  if (!r.ok) { $("status").textContent = "error " + r.status + ": " + await r.text(); return; }
  show(await r.json());
}
$("plus").onclick = () => api("POST", "/api/balance");
$("save").onclick = () => api("POST", "/api/note", {slot: "main", text: $("note").value});
if (tg) tg.ready();
api("GET", "/api/session");
</script>
</body></html>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    app = create_app(
        os.environ["BOT_TOKEN"],
        os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        max_age=float(os.environ.get("INIT_DATA_MAX_AGE", DEFAULT_MAX_AGE)),
    )
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
