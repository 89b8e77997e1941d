"""The ``tiercache`` command: look at and repair what a namespace stores.

::

    tiercache (--redis URL | --disk DIR) --namespace NS [--json] COMMAND
        keys [PATTERN]                         stream the namespace's keys
        inspect KEY                            the value as JSON and its envelope
        delete KEY                             as cache.delete: a tombstone, an invalidation
        quarantine list | show K | restore K | purge K... | purge --all
        journal DIR show | replay [--apply]    (replay: a dry run unless --apply)
        top [--interval S] [--iterations N]    every process publishing stats
        convert [--to fields|string]           the Redis layout of stored entries

Exit status: 0 done, 1 a failure with a one-line message (a missing key,
an unreachable server), 2 a usage error, 130 interrupted. stdlib
``argparse``: the tool has a handful of flat subcommands, and a dependency
(click, typer) would have to be installed with the library for no gain.
Nothing here is imported by ``import tiercache``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._exceptions import TierCacheError
from ._output import CliError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tiercache",
        description="Look at and repair what a tiercache namespace stores.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--redis",
        metavar="URL",
        help="a Redis URL (redis://, rediss://...?ssl_ca_certs=..., unix://); "
        "a password in the URL or --password",
    )
    where.add_argument("--disk", metavar="DIR", help="a DiskTier directory")
    p.add_argument("-n", "--namespace", help="the cache's namespace")
    p.add_argument("--prefix", default="tc:", help="the RedisTier prefix (default: tc:)")
    p.add_argument(
        "--password",
        default=os.environ.get("TIERCACHE_REDIS_PASSWORD"),
        help="the Redis password (default: $TIERCACHE_REDIS_PASSWORD)",
    )
    p.add_argument("--json", action="store_true", help="JSON output instead of tables")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = sub.add_parser("keys", help="list keys (streamed; safe on millions)")
    keys.add_argument("pattern", nargs="?", default="*", help="a glob of keys (default: *)")
    keys.add_argument("--limit", type=int, default=None, help="stop after this many")

    inspect = sub.add_parser("inspect", help="a key's value as JSON and its envelope")
    inspect.add_argument("key")

    delete = sub.add_parser("delete", help="delete a key as the cache does")
    delete.add_argument("key")

    q = sub.add_parser("quarantine", help="unreadable entries moved aside")
    qsub = q.add_subparsers(dest="action", required=True, metavar="ACTION")
    ql = qsub.add_parser("list", help="the quarantined keys")
    ql.add_argument("pattern", nargs="?", default="*")
    qsub.add_parser("show", help="why a quarantined entry is unreadable").add_argument("key")
    qsub.add_parser("restore", help="put the bytes back if the key has no value").add_argument(
        "key"
    )
    qp = qsub.add_parser("purge", help="delete quarantined bytes")
    qp.add_argument("keys", nargs="*")
    qp.add_argument("--all", action="store_true", help="every quarantined entry")

    j = sub.add_parser("journal", help="a Journal directory")
    j.add_argument("directory")
    jsub = j.add_subparsers(dest="action", required=True, metavar="ACTION")
    jsub.add_parser("show", help="the records waiting")
    jr = jsub.add_parser("replay", help="replay into the tier (a dry run unless --apply)")
    jr.add_argument("--apply", action="store_true", help="write, not just say what would be")

    top = sub.add_parser("top", help="a live view of the processes using the namespace")
    top.add_argument("--interval", type=float, default=2.0, help="seconds between frames")
    top.add_argument("--iterations", type=int, default=None, help="frames, then exit")

    conv = sub.add_parser("convert", help="convert stored entries between Redis layouts")
    conv.add_argument("--to", choices=("fields", "string"), default="fields")
    conv.add_argument(
        "--min-bytes",
        type=int,
        default=None,
        help="convert to fields only entries this large (default: RedisTier's, 8192)",
    )
    conv.add_argument("--cursor", type=int, default=0, help="resume from this SCAN cursor")
    conv.add_argument("--dry-run", action="store_true", help="count, change nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BrokenPipeError:  # `tiercache keys | head`: the reader had enough
        # Python would complain flushing stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CliError as exc:
        print(f"tiercache: {exc}", file=sys.stderr)
        return exc.code
    except TierCacheError as exc:
        print(f"tiercache: {exc}", file=sys.stderr)
        return 1
    except (OSError, _backend_errors()) as exc:  # unreachable server, unreadable directory
        print(f"tiercache: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tiercache: interrupted", file=sys.stderr)
        return 130


def _backend_errors() -> type[Exception]:
    import redis

    return redis.RedisError


def _run(args: argparse.Namespace) -> int:
    from . import _commands

    return _commands.run(args)
