"""Secret keys for the cancellable hash.

A :class:`HashKey` is 32 random bytes. It derives the secret projection (and,
through separate sub-keys, the key that authenticates index files). Whoever
holds it together with stored codes can approximately reconstruct templates,
so it must live apart from the gallery: in a key file outside the gallery
directory, an HSM, or a separate key-holder process.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from . import _core
from .errors import KeyFileError

_FORMAT = "fpmatch-hash-key"
_KEY_BYTES = 32


@dataclass(frozen=True)
class HashKey:
    """A secret hashing key. Compare keys by :attr:`key_id`, never by printing them."""

    secret: bytes = field(repr=False)
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise KeyFileError("a hash key must be at least 16 bytes")

    @classmethod
    def generate(cls) -> "HashKey":
        """A fresh key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(_KEY_BYTES))

    @property
    def key_id(self) -> str:
        """A public fingerprint (16 hex digits) that names the key without revealing it."""
        return _core.hmac_sha256(self.secret, b"fpmatch.key-id.v1").hex()[:16]

    def subkey(self, purpose: str) -> bytes:
        """An independent 32-byte key for one purpose (e.g. ``"index-mac"``)."""
        return _core.derive_subkey(self.secret, purpose)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key to a new file readable by its owner only (mode 0600)."""
        target = Path(path)
        body = {
            "format": _FORMAT,
            "version": 1,
            "key_id": self.key_id,
            "secret": base64.b64encode(self.secret).decode("ascii"),
        }
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "HashKey":
        """Read a key file written by :meth:`save`; a damaged file raises KeyFileError."""
        source = Path(path)
        try:
            body = json.loads(source.read_text())
            if not isinstance(body, dict) or body.get("format") != _FORMAT or body.get("version") != 1:
                raise KeyFileError(f"{source} is not an fpmatch hash key file")
            key = cls(base64.b64decode(body["secret"], validate=True), path=source.resolve())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, KeyFileError):
                raise
            raise KeyFileError(f"cannot read hash key file {source}: {exc}") from exc
        if key.key_id != body.get("key_id"):
            raise KeyFileError(f"{source} is damaged: its key does not match its key_id")
        return key


def ensure_outside(key: HashKey, directory: str | os.PathLike[str]) -> None:
    """Refuse a key whose file lies inside ``directory`` (a stolen store must not carry its key)."""
    if key.path is None:
        return
    store = Path(directory).resolve()
    if store == key.path or store in key.path.parents:
        raise KeyFileError(
            f"the key file {key.path} is inside the gallery directory {store}; keep keys elsewhere"
        )
