"""Stored key names: what a cache key is called in a persistent tier.

::

    value         esc(namespace) ":"    key          mybot:chat:42
    quarantine    esc(namespace) "\\0quarantine\\0" key
    lease, fence  esc(namespace) "\\0lease\\0" key, esc(namespace) "\\0fence\\0" key
    probe         esc(namespace) "\\0probe"
    stats         esc(namespace) "\\0stats\\0" origin   (publish_stats, for ``tiercache top``)

``esc`` doubles a backslash and escapes a colon (``\\:``), so the namespace
part always ends at the first unescaped colon: namespace ``x`` with key
``y:a`` (``x:y:a``) and namespace ``x:y`` with key ``a`` (``x\\:y:a``) are
different names, and a namespace without ``:`` or ``\\`` is stored as it
is. Internal names follow the namespace with a NUL instead of the colon;
namespaces cannot hold a NUL, so no user key, of any namespace, can name
them (``"\\0quarantine\\0victim"`` is the user key ``ns:\\0quarantine...``).
A tier adds its own prefix in front (RedisTier's ``tc:``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._exceptions import ConfigError, InvalidKeyError

__all__ = ["KeyNames", "check_key", "check_namespace", "glob_escape", "session_of"]


def _escape(namespace: str) -> str:
    return namespace.replace("\\", "\\\\").replace(":", "\\:")


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob (SCAN MATCH) that matches only itself."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def glob_match(pattern: str) -> Callable[[str], bool]:
    r"""A test of keys against the Redis glob ``pattern``, matching exactly
    what ``SCAN MATCH`` matches: ``*``, ``?``, ``[abc]``, ``[a-z]``,
    ``[^a]``, and ``\`` escaping the next character, over the key's UTF-8
    bytes as Redis sees them (``?`` is one byte), so one pattern means the
    same in memory, on disk and in Redis.

    >>> glob_match("user:[0-9]*")("user:42"), glob_match(r"a\*")("ab")
    (True, False)
    """
    rx = glob_regex(pattern)
    return lambda key: rx.fullmatch(key.encode("utf-8", "surrogateescape")) is not None


def _byte_range(a: int, b: int) -> list[bytes]:
    """Regex class parts for the Redis range ``a-b``: Redis compares C
    ``char``s, signed, so bytes from 0x80 come before 0x00 in a range."""
    lo, hi = sorted((a - 256 if a > 127 else a, b - 256 if b > 127 else b))
    spans = [(lo & 0xFF, hi & 0xFF)] if (lo < 0) == (hi < 0) else [(lo & 0xFF, 0xFF), (0, hi)]
    return [re.escape(bytes((x,))) + b"-" + re.escape(bytes((y,))) for x, y in spans]


def glob_regex(pattern: str) -> re.Pattern[bytes]:
    """The bytes regex of :func:`glob_match` (use ``fullmatch``)."""
    g = pattern.encode("utf-8", "surrogateescape")
    out: list[bytes] = []
    i, n = 0, len(g)

    def lit(b: int) -> bytes:
        return re.escape(bytes((b,)))

    while i < n:
        c = g[i]
        i += 1
        if c == 0x2A:  # *
            out.append(b".*")
        elif c == 0x3F:  # ?
            out.append(b".")
        elif c == 0x5C and i < n:  # backslash
            out.append(lit(g[i]))
            i += 1
        elif c == 0x5B:  # [
            negate = i < n and g[i] == 0x5E  # ^
            if negate:
                i += 1
            parts: list[bytes] = []
            while i < n and g[i] != 0x5D:  # ]
                if g[i] == 0x5C and i + 1 < n:
                    parts.append(lit(g[i + 1]))
                    i += 2
                elif i + 2 < n and g[i + 1] == 0x2D:  # a-z (Redis swaps z-a)
                    parts += _byte_range(g[i], g[i + 2])
                    i += 3
                else:
                    parts.append(lit(g[i]))
                    i += 1
            i += 1  # the "]" (Redis ends an unclosed class at the pattern's end)
            if parts:
                out.append((b"[^" if negate else b"[") + b"".join(parts) + b"]")
            else:
                out.append(b"." if negate else b"(?!)")  # "[^]": any byte; "[]": none
        else:
            out.append(lit(c))
    return re.compile(b"".join(out), re.DOTALL)


def check_namespace(namespace: object) -> str:
    """The namespace if it is usable, else :class:`ConfigError`."""
    if not isinstance(namespace, str) or not namespace or len(namespace) > 200:
        raise ConfigError(f"namespace must be a non-empty str of <= 200 chars, got {namespace!r}")
    if "\x00" in namespace:
        raise ConfigError(f"namespace must not contain NUL characters, got {namespace!r}")
    try:
        namespace.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"namespace must be encodable as UTF-8 (no lone surrogates), got {namespace!r}"
        ) from exc
    return namespace


def check_key(key: object, max_length: int) -> None:
    """Raise :class:`InvalidKeyError` unless ``key`` can be stored in every
    tier: a ``str`` of 1..``max_length`` characters that UTF-8 can encode
    (a lone surrogate cannot be sent to Redis nor written to SQLite)."""
    if type(key) is not str:
        raise InvalidKeyError(f"keys must be str, got {type(key).__name__}: {key!r:.80}")
    if not key or len(key) > max_length:
        raise InvalidKeyError(
            f"keys must be 1..{max_length} characters, got {len(key)}: {key!r:.80}"
        )
    if not key.isascii():
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidKeyError(
                f"keys must be encodable as UTF-8 (no lone surrogates), got {key!r:.80}"
            ) from None


def session_of(name: str) -> str:
    """The cache key a stored name belongs to (its value, quarantine, lease
    or fence), or the whole name for one of the namespace's own (the probe):
    what a Redis Cluster tier keeps in one hash slot.

    >>> n = KeyNames("x:y")
    >>> {session_of(n.value("a:b")), session_of(n.lease("a:b")), session_of(n.fence("a:b"))}
    {'a:b'}
    >>> session_of(n.probe) == n.probe
    True
    """
    i, end = 0, len(name)
    while i < end:
        c = name[i]
        if c == "\\":
            i += 2  # an escaped character of the namespace
        elif c == ":":
            return name[i + 1 :]
        elif c == "\x00":
            _kind, sep, key = name[i + 1 :].partition("\x00")
            return key if sep else name
        else:
            i += 1
    return name


class KeyNames:
    """The stored names of one namespace's keys.

    >>> n = KeyNames("x:y")
    >>> n.value("a"), KeyNames("x").value("y:a")
    ('x\\\\:y:a', 'x:y:a')
    >>> n.quarantine("a") == "x\\\\:y\\x00quarantine\\x00a"
    True
    """

    __slots__ = ("internal", "prefix")

    def __init__(self, namespace: str) -> None:
        esc = _escape(namespace)
        #: What every value's name starts with.
        self.prefix = esc + ":"
        #: What every internal name starts with (never a value's prefix).
        self.internal = esc + "\x00"

    def value(self, key: str) -> str:
        return self.prefix + key

    def quarantine(self, key: str) -> str:
        """Where a tier keeps the unreadable bytes of ``key``."""
        return self.internal + "quarantine\x00" + key

    def lease(self, key: str) -> str:
        """The strict-mode lease of ``key``."""
        return self.internal + "lease\x00" + key

    def fence(self, key: str) -> str:
        """The fencing-token counter of ``key``'s lease."""
        return self.internal + "fence\x00" + key

    def stats(self, origin: str) -> str:
        """Where one process publishes its stats snapshot (``tiercache top``)."""
        return self.internal + "stats\x00" + origin

    # -- stored names back to keys: every reader of stored names (the CLI)
    # parses them here, so a layout change (a cluster hash tag) is one edit.

    def key_of(self, name: str) -> str | None:
        """The user key a stored value's name stands for; None when ``name``
        is not one of this namespace's values.

        >>> KeyNames("x").key_of("x:y:a"), KeyNames("x").key_of("x\\:y:a")
        ('y:a', None)
        """
        return name[len(self.prefix) :] if name.startswith(self.prefix) else None

    def quarantined_key_of(self, name: str) -> str | None:
        """The user key whose bytes a quarantine name holds, else None."""
        lead = self.internal + "quarantine\x00"
        return name[len(lead) :] if name.startswith(lead) else None

    def value_glob(self, pattern: str = "*") -> str:
        """A Redis glob of the value names whose keys match ``pattern`` (a
        glob of user keys)."""
        return glob_escape(self.prefix) + pattern

    def quarantine_glob(self, pattern: str = "*") -> str:
        return glob_escape(self.internal + "quarantine\x00") + pattern

    def stats_glob(self) -> str:
        return glob_escape(self.internal + "stats\x00") + "*"

    @property
    def probe(self) -> str:
        """What the circuit breaker reads to see whether the tier is back."""
        return self.internal + "probe"
