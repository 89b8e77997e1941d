"""``tiercache top``: every process of the namespace that publishes stats
(:func:`tiercache.publish_stats`), redrawn every ``--interval`` seconds.

::

    every interval: read every snapshot (SCAN MATCH <ns>\\0stats\\0*, MGET)
        ──> rates from the previous frame's counters, per process
        ──> a table (a terminal: redrawn in place) or one JSON line a frame
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ._output import CliError, table
from ._store import Store

__all__ = ["top"]

_COLUMNS = (
    "process",
    "age s",
    "hits/s",
    "hit %",
    "writes/s",
    "conflicts",
    "merges",
    "bus lag ms",
    "journal",
    "dirty",
    "state",
)


def _row(doc: dict[str, Any], before: dict[str, Any] | None, now: float) -> dict[str, Any]:
    def rate(field: str) -> float:
        if before is None or doc["at"] <= before["at"]:
            return 0.0
        return round(float(max(0, doc[field] - before[field]) / (doc["at"] - before["at"])), 1)

    reads = doc["hits"] + doc["misses"]
    if doc["degraded"]:
        state = "DEGRADED"
    elif doc["bus_healthy"] is False:
        state = "bus down"
    else:
        state = "ok"
    return {
        "process": f"{doc['host']}:{doc['pid']}",
        "origin": doc["origin"],
        "age_s": round(max(0.0, now - doc["at"]), 1),
        "hits": doc["hits"],
        "hits_per_s": rate("hits"),
        "hit_ratio": round(doc["hits"] / reads, 3) if reads else 0.0,
        "writes": doc["writes"],
        "writes_per_s": rate("writes"),
        "conflicts": doc["conflicts"],
        "merges": doc["merges"],
        "bus_lag_ms": round(doc["bus_lag_s"] * 1000, 1),
        "journal_depth": doc["journal_depth"],
        "dirty": doc["dirty"],
        "state": state,
    }


def top(store: Store, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise CliError("--interval must be > 0 seconds", 2)
    tty = sys.stdout.isatty() and not args.json
    previous: dict[str, dict[str, Any]] = {}
    frame = 0
    while args.iterations is None or frame < args.iterations:
        if frame:
            time.sleep(args.interval)
        frame += 1
        now = time.time()
        docs = sorted(store.snapshots(), key=lambda d: (d["host"], d["pid"], d["origin"]))
        rows = [_row(d, previous.get(d["origin"]), now) for d in docs]
        previous = {d["origin"]: d for d in docs}
        if args.json:
            line = {"at": now, "namespace": store.namespace, "processes": rows}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            continue
        if tty:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(
            f"tiercache top - namespace {store.namespace!r} on {store.where()} - "
            f"{len(rows)} process(es) - {time.strftime('%H:%M:%S')}"
        )
        if not rows:
            print(
                "no process publishes stats for this namespace: call "
                "tiercache.publish_stats(cache) in each"
            )
        else:
            table(
                [
                    (
                        r["process"],
                        r["age_s"],
                        r["hits_per_s"],
                        round(r["hit_ratio"] * 100, 1),
                        r["writes_per_s"],
                        r["conflicts"],
                        r["merges"],
                        r["bus_lag_ms"],
                        r["journal_depth"],
                        r["dirty"],
                        r["state"],
                    )
                    for r in rows
                ],
                _COLUMNS,
            )
        sys.stdout.flush()
    return 0
