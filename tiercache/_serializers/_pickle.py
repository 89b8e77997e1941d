"""The signed pickle serializer, :class:`PickleSerializer`.

::

    dumps: value ──pickle.dumps──> body ──> HMAC-SHA256(secret, body) + body
    loads: tag + body ──> tag of secret or a fallback secret? ──no──> SignatureError
                                                              └─yes─> pickle.loads(body)

A body is never unpickled before its tag matches: unpickling runs code. A
failed dumps is explained by :func:`_locate_failure` with pickle's own
children (containers, then ``__dict__``) and probe (pickle the part alone).
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Iterable
from typing import Any, Final

from .._exceptions import ConfigError, CorruptEntryError, SerializationError, SignatureError
from ._locate import _container_children, _locate_failure

__all__ = ["PickleSerializer"]


class PickleSerializer:
    """Pickle, signed: stores anything pickle can, for trusted deployments.

    **Loading a pickle executes code.** Anyone who can write to your Redis or
    cache directory could otherwise run code in every process that reads
    the entry, so this serializer requires a secret, prefixes each payload
    with its HMAC-SHA256 and checks it with :func:`hmac.compare_digest`
    *before* unpickling; a mismatch raises :class:`SignatureError`. Prefer
    :class:`MsgpackSerializer` unless you need pickle's reach.

    ``fallback_secrets`` are accepted when verifying, never for signing, so
    a secret can be rotated without invalidating every entry at once.

    >>> s = PickleSerializer(secret="change me")
    >>> s.loads(s.dumps({"n": 1}))
    {'n': 1}
    >>> try:
    ...     PickleSerializer(secret="other").loads(s.dumps(1))
    ... except SignatureError as exc:
    ...     print(exc)
    pickle payload signature does not match (wrong secret or tampered)
    """

    id: int = 2
    name: str = "pickle"

    _TAG_SIZE: Final = hashlib.sha256().digest_size

    def __init__(
        self,
        secret: bytes | str,
        *,
        protocol: int = 5,
        fallback_secrets: Iterable[bytes | str] = (),
    ) -> None:
        self._key = self._check_secret("secret", secret)
        self._fallback_keys = tuple(
            self._check_secret("fallback_secrets", s) for s in fallback_secrets
        )
        if (
            not isinstance(protocol, int)
            or isinstance(protocol, bool)
            or not 2 <= protocol <= pickle.HIGHEST_PROTOCOL
        ):
            raise ConfigError(f"protocol must be in 2..{pickle.HIGHEST_PROTOCOL}, got {protocol!r}")
        self._protocol = protocol

    @staticmethod
    def _check_secret(setting: str, secret: bytes | str) -> bytes:
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ConfigError(
                f"{setting} must be a non-empty bytes or str (pickle runs code on load)"
            )
        return secret

    def __repr__(self) -> str:
        return f"PickleSerializer(secret=<hidden>, protocol={self._protocol})"

    def _sign(self, key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()

    def dumps(self, value: Any) -> bytes:
        """Pickle and sign ``value``; raise :class:`SerializationError` naming the path."""
        try:
            body = pickle.dumps(value, protocol=self._protocol)
        except Exception as exc:
            raise SerializationError(_pickle_failure(value, exc, self._protocol)) from exc
        return self._sign(self._key, body) + body

    def loads(self, data: bytes) -> Any:
        """Verify the signature, then unpickle."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptEntryError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < self._TAG_SIZE:
            raise CorruptEntryError("truncated pickle payload: shorter than its signature")
        tag, body = data[: self._TAG_SIZE], data[self._TAG_SIZE :]
        if not any(
            hmac.compare_digest(tag, self._sign(key, body))
            for key in (self._key, *self._fallback_keys)
        ):
            raise SignatureError(
                "pickle payload signature does not match (wrong secret or tampered)"
            )
        try:
            return pickle.loads(body)
        except Exception as exc:
            # Signed by us, so this is a class that moved or vanished.
            raise CorruptEntryError(f"cannot unpickle: {exc}") from exc


def _pickle_children(obj: Any, path: str) -> Iterable[tuple[str, Any]] | None:
    children = _container_children(obj, path)
    if children is None and isinstance(getattr(obj, "__dict__", None), dict):
        children = ((f"{path}.{k}", v) for k, v in vars(obj).items())
    return children


def _pickle_failure(value: Any, exc: Exception, protocol: int) -> str:
    def probe(obj: Any) -> str | None:
        try:
            pickle.dumps(obj, protocol=protocol)
        except Exception as e:
            return str(e)
        return None

    return _locate_failure(value, exc, _pickle_children, probe, cycles_ok=True)
