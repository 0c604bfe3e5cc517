"""Per-client API tokens, stored as salted scrypt hashes in a file; the tokens themselves are shown once.

A token is ``fpm_<id>_<secret>``: the id finds the client's entry, the 256-bit
secret is checked against its hash. The file (mode 0600) holds ids, client
names, salts and hashes: a stolen copy lets nobody call the API. It is read
again when it changes, so tokens issued or revoked while a server runs take
effect at its next request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, KeyFileError

PREFIX = "fpm"
#: scrypt cost for a 256-bit random secret: brute force is hopeless anyway; this keeps a stolen file's hashes slow.
SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32, "maxmem": 64 << 20}
MAX_FILE_BYTES = 4 << 20
_ID_CHARS = set("0123456789abcdef")


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT)  # type: ignore[arg-type]


def _client_name(client: object) -> str:
    if not isinstance(client, str) or not 1 <= len(client) <= 128 or not client.isprintable() or client.strip() != client:
        raise InvalidInputError(f"a client name is 1-128 printable characters without surrounding spaces, got {client!r}")
    return client


class TokenStore:
    """The API clients and their hashed tokens, in one JSON file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self._verified: dict[bytes, str] = {}  # SHA-256 of tokens already checked with scrypt -> client

    # -- reading and writing --------------------------------------------------

    def _load(self) -> None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries, self._verified = None, {}, {}
            return
        stamp = (status.st_mtime_ns, status.st_size)
        if stamp == self._stamp:
            return
        if status.st_size > MAX_FILE_BYTES:
            raise KeyFileError(f"token file {self.path} is larger than {MAX_FILE_BYTES >> 20} MiB")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = data["tokens"]
            if data.get("format") != "fpmatch-api-tokens-v1" or not isinstance(entries, dict):
                raise ValueError("unknown format")
            for token_id, entry in entries.items():
                if set(token_id) - _ID_CHARS or not isinstance(entry, dict):
                    raise ValueError(f"bad entry {token_id!r}")
                bytes.fromhex(entry["salt"]), bytes.fromhex(entry["hash"]), _client_name(entry["client"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"token file {self.path} is unreadable or damaged: {exc}") from None
        self._stamp, self._entries, self._verified = stamp, entries, {}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self.path.with_name(self.path.name + ".tmp")
        text = json.dumps({"format": "fpmatch-api-tokens-v1", "tokens": self._entries}, indent=1, sort_keys=True)
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, self.path)
        self._stamp = None  # read back at the next use

    # -- management -----------------------------------------------------------

    def issue(self, client: str) -> str:
        """A new token for ``client`` (a client may hold several); returned once, stored only hashed."""
        client = _client_name(client)
        with self._lock:
            self._load()
            token_id = secrets.token_hex(6)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            salt = secrets.token_bytes(16)
            self._entries[token_id] = {
                "client": client,
                "salt": salt.hex(),
                "hash": _hash(secret, salt).hex(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            self._save()
        return f"{PREFIX}_{token_id}_{secret}"

    def revoke(self, client: str) -> int:
        """Revoke every token of ``client``; returns how many there were."""
        with self._lock:
            self._load()
            doomed = [i for i, e in self._entries.items() if e["client"] == client]
            for token_id in doomed:
                del self._entries[token_id]
            if doomed:
                self._save()
        return len(doomed)

    def clients(self) -> list[dict[str, str]]:
        """Token ids, clients and creation times (no secrets or hashes)."""
        with self._lock:
            self._load()
            return [{"id": i, "client": e["client"], "created": e.get("created", "")} for i, e in sorted(self._entries.items())]

    # -- checking -------------------------------------------------------------

    def authenticate(self, token: str) -> str | None:
        """The client a token belongs to, or None."""
        parts = token.split("_", 2) if isinstance(token, str) and len(token) <= 200 else []
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        _, token_id, secret = parts
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            self._load()
            entry = self._entries.get(token_id)
            if entry is None:
                return None
            known = self._verified.get(digest)
            if known is not None:
                return known
        if not hmac.compare_digest(_hash(secret, bytes.fromhex(entry["salt"])), bytes.fromhex(entry["hash"])):
            return None
        with self._lock:
            if self._entries.get(token_id) is entry:  # not revoked meanwhile
                self._verified[digest] = entry["client"]
                return entry["client"]
        return None


__all__ = ["TokenStore"]
