"""The key holder's secret key at rest, sealed under a passphrase or a key-encryption key.

A sealed file is the bytes of :meth:`KeyHolder.to_bytes` encrypted with
AES-256-GCM. The 32-byte AES key is either derived from a passphrase with
scrypt (salted, memory-hard, so a stolen file resists guessing) or is a
key-encryption key kept elsewhere (a file, later an HSM). The file's header is
authenticated data: a changed parameter, salt or body fails to open.

Format: magic ``FPKHSEAL``, one kind byte (``p`` passphrase, ``k`` KEK),
scrypt ``log2 n``, ``r``, ``p`` (one byte each), a 16-byte salt, a 12-byte
nonce, then the ciphertext with its 16-byte tag.
"""

from __future__ import annotations

import os
import secrets
import struct
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import KeyFileError
from .keyholder import KeyHolder

_MAGIC = b"FPKHSEAL"
_HEADER = struct.Struct("<8scBBB16s12s")
#: scrypt cost: 2**15 x 8 x 1 takes about 32 MiB and a tenth of a second.
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
KEK_BYTES = 32
#: A sealed key file is a few hundred KiB; anything far larger is not one.
MAX_SEALED_BYTES = 64 << 20


def _aead_key(kind: bytes, secret: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    if kind == b"k":
        if len(secret) != KEK_BYTES:
            raise KeyFileError(f"a key-encryption key is {KEK_BYTES} bytes, got {len(secret)}")
        return secret
    if not secret:
        raise KeyFileError("an empty passphrase cannot seal a key")
    if not 10 <= log2_n <= 22 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise KeyFileError("the sealed key names scrypt costs outside the accepted range")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(secret)


def _secret(passphrase: str | bytes | None, kek: bytes | None) -> tuple[bytes, bytes]:
    if (passphrase is None) == (kek is None):
        raise KeyFileError("seal or open a key with a passphrase or a key-encryption key (one of them)")
    if kek is not None:
        return b"k", bytes(kek)
    assert passphrase is not None
    return b"p", passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)


def seal(holder: KeyHolder, *, passphrase: str | bytes | None = None, kek: bytes | None = None) -> bytes:
    """The holder's secret key, encrypted and authenticated."""
    kind, secret = _secret(passphrase, kek)
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = _HEADER.pack(_MAGIC, kind, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, salt, nonce)
    key = _aead_key(kind, secret, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P)
    return header + AESGCM(key).encrypt(nonce, holder.to_bytes(), header)


def unseal(
    data: bytes, *, passphrase: str | bytes | None = None, kek: bytes | None = None, what: str = "the sealed key",
    **options: Any,
) -> KeyHolder:
    """A key holder from :func:`seal` output; ``options`` as for :class:`KeyHolder`."""
    kind, secret = _secret(passphrase, kek)
    if len(data) < _HEADER.size + 16 or not data.startswith(_MAGIC):
        raise KeyFileError(f"{what} is not a sealed fpmatch key holder key")
    _, stored_kind, log2_n, r, p, salt, nonce = _HEADER.unpack_from(data)
    if stored_kind != kind:
        needs = "a passphrase" if stored_kind == b"p" else "a key-encryption key"
        raise KeyFileError(f"{what} is sealed under {needs}")
    key = _aead_key(kind, secret, salt, log2_n, r, p)
    try:
        plain = AESGCM(key).decrypt(nonce, data[_HEADER.size :], data[: _HEADER.size])
    except InvalidTag:
        raise KeyFileError(f"{what} does not open: wrong passphrase or key-encryption key, or the file was changed") from None
    return KeyHolder._parse(plain, what, authenticated=True, options=options)  # authenticated above


def write_sealed(path: str | os.PathLike[str], holder: KeyHolder, **how: Any) -> Path:
    """Seal the key into a new file readable by its owner only (0600); never overwrites."""
    target = Path(path)
    data = seal(holder, **how)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return target


def read_sealed(path: str | os.PathLike[str], **how: Any) -> KeyHolder:
    """Open a file written by :func:`write_sealed`; ``how``: passphrase or kek, and KeyHolder options."""
    source = Path(path)
    try:
        with open(source, "rb") as f:
            data = f.read(MAX_SEALED_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read the sealed key {source}: {exc}") from exc
    if len(data) > MAX_SEALED_BYTES:
        raise KeyFileError(f"{source} is too large to be a sealed key")
    return unseal(data, what=str(source), **how)


def new_kek(path: str | os.PathLike[str]) -> Path:
    """A random key-encryption key in a new 0600 file."""
    target = Path(path)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEK_BYTES))
    return target


def read_kek(path: str | os.PathLike[str]) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the key-encryption key {path}: {exc}") from exc
    if len(data) != KEK_BYTES:
        raise KeyFileError(f"{path} is not a key-encryption key ({KEK_BYTES} bytes)")
    return data


__all__ = ["KEK_BYTES", "new_kek", "read_kek", "read_sealed", "seal", "unseal", "write_sealed"]
