"""A simulated chat bot over memory + disk tiers (no server needed).

It feeds a stream of fake Telegram-like updates from a few hundred users
through handlers decorated with ``@cached_session``, then prints what the
bot did and ``cache.stats()``: how many reads the memory tier served, how
many writes tiercache avoided because a handler only read its session, and
how many flushes reached the disk.

Run it twice: sessions survive the restart (the disk tier is a directory).

    python examples/chat_bot.py [--dir ./.tiercache-demo] [--updates 5000]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass

from tiercache import DiskTier, MemoryTier, TieredCache, cached_session


@dataclass(frozen=True)
class Update:
    """What a bot framework hands a handler (trimmed to what we need)."""

    chat_id: int
    text: str


def fake_updates(n: int, users: int, seed: int = 7) -> list[Update]:
    """A Zipf-like stream: a few chats are busy, most are quiet; 90% of
    messages only read the session (/stats, /help), 10% change it."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(users)]
    chats = rng.choices(range(1, users + 1), weights=weights, k=n)
    texts = rng.choices(
        ["/stats", "/help", "/lang de", "/tag vip", "hello"], weights=[60, 30, 3, 2, 5], k=n
    )
    return [Update(chat, text) for chat, text in zip(chats, texts, strict=True)]


def build_bot(cache: TieredCache) -> tuple[dict[str, int], object]:
    counts = {"replies": 0, "changed": 0}

    @cached_session(cache, key=lambda update: f"chat:{update.chat_id}")
    def on_update(update: Update, session: dict | None = None) -> str:  # type: ignore[type-arg]
        assert session is not None
        counts["replies"] += 1
        if update.text == "/stats":
            return f"you sent {session.get('messages', 0)} messages"
        if update.text == "/help":
            return "commands: /stats /lang /tag"
        counts["changed"] += 1
        if update.text.startswith("/lang "):
            session["lang"] = update.text.split()[1]
        elif update.text.startswith("/tag "):
            session.setdefault("tags", set()).add(update.text.split()[1])
        else:
            session["messages"] = session.get("messages", 0) + 1
            session.setdefault("history", []).append(update.text)
            del session["history"][:-5]  # keep the last five
        return "ok"

    return counts, on_update


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="./.tiercache-demo", help="disk tier directory")
    parser.add_argument("--updates", type=int, default=5000)
    parser.add_argument("--users", type=int, default=300)
    args = parser.parse_args()

    with TieredCache(
        MemoryTier(maxsize=100),  # smaller than the user count: evictions happen
        DiskTier(args.dir),
        namespace="demo-bot",
    ) as cache:
        counts, on_update = build_bot(cache)
        updates = fake_updates(args.updates, args.users)
        start = time.perf_counter()
        for update in updates:
            on_update(update)  # type: ignore[operator]
        elapsed = time.perf_counter() - start
        stats = cache.stats()
        busiest = cache.get("chat:1")

        print(
            f"processed {len(updates)} updates from {args.users} chats in {elapsed:.2f} s"
            f" ({len(updates) / elapsed:,.0f} updates/s)"
        )
        print(
            f"handlers that assigned into their session: {counts['changed']},"
            f" that only read it: {counts['replies'] - counts['changed']}"
        )
        print(
            f"scopes that really changed something: {stats.flushes['exit']}"
            " (setting a value a session already had is no change: nothing written)"
        )
        print(f"the busiest chat's session: {busiest}")
        print(f"disk writes: {stats.tier('disk').writes}  writes avoided: {stats.writes_avoided}")
        print()
        print(stats)


if __name__ == "__main__":
    main()
