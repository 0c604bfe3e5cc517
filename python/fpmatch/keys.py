"""Secret keys: the capture edge's transform key and the matching service's own key.

A :class:`HashKey` is 32 random bytes held by the capture edge. It derives the
secret projection of the cancellable hash and the secret rotation applied to
templates before encryption. Whoever holds it together with stored codes can
approximately reconstruct templates, so the matching service never holds it.

A :class:`ServiceKey` is the matching service's own secret: it authenticates
its files, signs the audit head, names subjects in the audit log and peppers
PINs. It transforms no template, so it inverts nothing. The two are different
types: a service opened with a hash key is refused.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from . import _core
from .errors import KeyFileError

_KEY_BYTES = 32
#: Largest key file read: a key file is a few hundred bytes, and a device or a huge file must not exhaust memory.
MAX_KEY_FILE_BYTES = 1 << 16
_K = TypeVar("_K", bound="_SecretKey")


@dataclass(frozen=True)
class _SecretKey:
    secret: bytes = field(repr=False)
    path: Path | None = field(default=None, compare=False)

    _FORMAT: ClassVar[str]
    _WHAT: ClassVar[str]
    _ID_LABEL: ClassVar[bytes]

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise KeyFileError(f"a {self._WHAT} must be at least 16 bytes")

    @classmethod
    def generate(cls: type[_K]) -> _K:
        """A fresh key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(_KEY_BYTES))

    @property
    def key_id(self) -> str:
        """A public fingerprint (16 hex digits) that names the key without revealing it."""
        return _core.hmac_sha256(self.secret, self._ID_LABEL).hex()[:16]

    def subkey(self, purpose: str) -> bytes:
        """An independent 32-byte key for one purpose (e.g. ``"index-mac"``)."""
        return _core.derive_subkey(self.secret, purpose)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key to a new file readable by its owner only (mode 0600)."""
        target = Path(path)
        body = {
            "format": self._FORMAT,
            "version": 1,
            "key_id": self.key_id,
            "secret": base64.b64encode(self.secret).decode("ascii"),
        }
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        return target

    @classmethod
    def load(cls: type[_K], path: str | os.PathLike[str]) -> _K:
        """Read a key file written by :meth:`save`; a damaged file raises KeyFileError."""
        source = Path(path)
        try:
            with open(source, "rb") as f:
                raw = f.read(MAX_KEY_FILE_BYTES + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read {cls._WHAT} file {source}: {exc}") from exc
        return cls.from_file_bytes(raw, source)

    @classmethod
    def from_file_bytes(cls: type[_K], raw: bytes, source: str | os.PathLike[str] | None = None) -> _K:
        """The key in the bytes of a key file (``source``, if given, is where they were read)."""
        name = "key file bytes" if source is None else str(source)
        if len(raw) > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{name} is not an fpmatch {cls._WHAT} file (over {MAX_KEY_FILE_BYTES} bytes)")
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or body.get("version") != 1:
                raise KeyFileError(f"{name} is not an fpmatch {cls._WHAT} file")
            if body.get("format") != cls._FORMAT:
                other = {k._FORMAT: k._WHAT for k in (HashKey, ServiceKey)}.get(str(body.get("format")))
                found = f"it holds a {other}" if other else "unknown format"
                raise KeyFileError(f"{name} is not an fpmatch {cls._WHAT} file ({found})")
            path = None if source is None else Path(source).resolve()
            key = cls(base64.b64decode(body["secret"], validate=True), path=path)
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # deep JSON nesting: RecursionError
            if isinstance(exc, KeyFileError):
                raise
            raise KeyFileError(f"cannot read {cls._WHAT} file {name}: {exc}") from exc
        if key.key_id != body.get("key_id"):
            raise KeyFileError(f"{name} is damaged: its key does not match its key_id")
        return key


class HashKey(_SecretKey):
    """The capture edge's transform key. Compare keys by :attr:`key_id`, never by printing them."""

    _FORMAT = "fpmatch-hash-key"
    _WHAT = "hash key"
    _ID_LABEL = b"fpmatch.key-id.v1"


class ServiceKey(_SecretKey):
    """The matching service's own key (file MACs, audit head and pseudonyms, PIN pepper)."""

    _FORMAT = "fpmatch-service-key"
    _WHAT = "service key"
    _ID_LABEL = b"fpmatch.service-key-id.v1"


def ensure_outside(key: _SecretKey, directory: str | os.PathLike[str]) -> None:
    """Refuse a key whose file lies inside ``directory`` (a stolen store must not carry its key)."""
    if key.path is None:
        return
    store = Path(directory).resolve()
    if store == key.path or store in key.path.parents:
        raise KeyFileError(
            f"the key file {key.path} is inside the gallery directory {store}; keep keys elsewhere"
        )
