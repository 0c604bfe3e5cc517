"""Capture-edge signing keys and what they sign (the key holder's attested mode).

A capture edge may hold an Ed25519 signing key (through ``cryptography``). It
then signs every template ciphertext it makes at enrolment and every probe; a
key holder that knows the edges' public keys (:class:`EdgeKeys`) decides only
over scores it computes itself from such signed parts, so a caller can no
longer submit probes or ciphertexts it made up.

What a signature covers, and why:

* a template (:class:`SignedTemplate`): the edge profile id (so a template of
  one deployment is not scored under another's thresholds), the signer's key
  id, a tag of the enrolled subject (so a probe claimed for subject A is not
  paired with B's template) and the whole ciphertext (so no coefficient can be
  altered or scaled). The subject tag is a SHA-256 of the profile id and the
  subject's name: it hides nothing from someone who can guess names, which is
  why it only ever travels inside a request to the key holder.
* a probe (:class:`ProbeAttestation`): the probe message bytes (code,
  reliabilities and rotated values: nothing of the probe can change), the
  profile id, the key id, a fresh 16-byte nonce and the issue time (a probe is
  used once, and soon: the key holder keeps nonces for its freshness window),
  the kind of request (verify or identify: a probe captured for one is not
  spent on the other), the consent purpose (checked by the matching service
  against the request) and, for a verification where the edge knows who claims
  to be there, the claimed subject's tag.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ._validate import read_regular_file
from .errors import AttestationError, InvalidInputError, KeyFileError, MessageFormatError

_KEY_MAGIC = b"FPEDGESK1"
_TEMPLATE_MAGIC = b"FPATTT01"
_PROBE_MAGIC = b"FPATTP01"
_TEMPLATE_HEAD = struct.Struct("<8s8s8s32s64sI")  # magic, profile id, key id, subject tag, signature, ciphertext bytes
_PROBE_HEAD = struct.Struct("<8s8s16sdc32sH")  # magic, key id, nonce, issued (unix s), kind, subject tag, purpose bytes
_SIGNATURE_BYTES = 64
NONCE_BYTES = 16
#: The subject tag of a probe that names no subject.
NO_SUBJECT = bytes(32)
#: Request kinds a probe is signed for.
KINDS = {"verify": b"V", "identify": b"I"}
#: The largest template ciphertext accepted (a 16384-degree ring ciphertext is 256 KiB).
MAX_CIPHERTEXT_BYTES = 1 << 20


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ImportError("edge signing keys need cryptography: pip install 'fpmatch[keyholder]'") from None
    return ed25519


def key_id_of(public: bytes) -> str:
    """A public 16-hex-digit name of an edge's public key (raw 32 bytes)."""
    return hashlib.sha256(b"fpmatch.edge-signing-key.v1" + public).hexdigest()[:16]


def subject_tag(profile_id: str, subject: str | None) -> bytes:
    """What a signature says of a subject (:data:`NO_SUBJECT` for none)."""
    if subject is None:
        return NO_SUBJECT
    if not isinstance(subject, str) or not subject:
        raise InvalidInputError(f"a subject is a non-empty string, got {subject!r}")
    return hashlib.sha256(b"fpmatch.subject-tag.v1\0" + bytes.fromhex(profile_id) + subject.encode()).digest()


class EdgeSigningKey:
    """An Ed25519 private key held by one capture edge."""

    def __init__(self, private: Any) -> None:
        ed25519 = _ed25519()
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise KeyFileError("an edge signing key is an Ed25519 private key")
        self._private = private
        self.public_bytes = _raw_public(private.public_key())
        self.key_id = key_id_of(self.public_bytes)

    def __repr__(self) -> str:  # never print the private key
        return f"EdgeSigningKey(key_id={self.key_id!r})"

    def __reduce__(self) -> tuple:
        raise TypeError("an EdgeSigningKey holds a private key and cannot be pickled; use save()")

    @classmethod
    def generate(cls) -> "EdgeSigningKey":
        return cls(_ed25519().Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return bytes(self._private.sign(data))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key to a new file readable by its owner only (0600)."""
        from cryptography.hazmat.primitives import serialization

        raw = self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        target = Path(path)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_KEY_MAGIC + raw)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EdgeSigningKey":
        """Read a key written by :meth:`save`; a file others may read is refused."""
        source = Path(path)
        try:
            data = read_regular_file(source, "an fpmatch edge signing key")
            mode = source.stat().st_mode & 0o077
        except (OSError, InvalidInputError) as exc:
            raise KeyFileError(f"cannot read edge signing key {source}: {exc}") from exc
        if mode:
            raise KeyFileError(f"edge signing key {source} is readable by others (mode {oct(mode)}): chmod 600 it")
        if len(data) != len(_KEY_MAGIC) + 32 or not data.startswith(_KEY_MAGIC):
            raise KeyFileError(f"{source} is not an fpmatch edge signing key (bad magic or length)")
        return cls(_ed25519().Ed25519PrivateKey.from_private_bytes(data[len(_KEY_MAGIC) :]))


def _raw_public(public: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


@dataclass(frozen=True)
class RegisteredEdge:
    key_id: str
    public: bytes  # raw Ed25519 public key
    profile_id: str  # the only profile this edge signs for
    min_threshold: float | None = None  # the least threshold a decision on its probes may use


class EdgeKeys:
    """The edges a key holder in attested mode accepts signatures of, each bound to one profile.

    ``min_threshold`` (the profile's calibrated threshold, :meth:`CaptureEdge.calibration`)
    makes the key holder refuse decisions on the edge's probes at any lower threshold: whoever
    holds the edge's key can then only try faces at the calibrated threshold (a search, one
    decision per probe), never read which side of a made-up probe a template lies (a climb).

    File format (JSON): ``{"edges": [{"public_key": HEX, "profile_id": HEX, "min_threshold": X}, ...]}``
    (``min_threshold`` optional).
    """

    def __init__(self, edges: Iterable[RegisteredEdge] = ()) -> None:
        self._edges: dict[str, tuple[RegisteredEdge, Any]] = {}
        for edge in edges:
            self.add(edge.public, edge.profile_id, edge.min_threshold)

    def add(self, public: bytes, profile_id: str, min_threshold: float | None = None) -> str:
        """Register a public key (raw 32 bytes) for ``profile_id``; returns its key id."""
        if not isinstance(public, bytes) or len(public) != 32:
            raise InvalidInputError("an edge public key is 32 raw bytes")
        if not isinstance(profile_id, str) or len(profile_id) != 16 or any(c not in "0123456789abcdef" for c in profile_id):
            raise InvalidInputError(f"a profile id is 16 hex digits, got {profile_id!r}")
        if min_threshold is not None and (isinstance(min_threshold, bool) or not isinstance(min_threshold, (int, float))
                                          or not -1.0 <= min_threshold <= 1.0):  # fmt: skip
            raise InvalidInputError(f"min_threshold must be a number in [-1, 1], got {min_threshold!r}")
        verifier = _ed25519().Ed25519PublicKey.from_public_bytes(public)
        key_id = key_id_of(public)
        floor = None if min_threshold is None else float(min_threshold)
        self._edges[key_id] = (RegisteredEdge(key_id, public, profile_id, floor), verifier)
        return key_id

    def min_threshold(self, key_id: str) -> float | None:
        """The least threshold decisions on this edge's probes may use (None: any)."""
        found = self._edges.get(key_id)
        return None if found is None else found[0].min_threshold

    def __len__(self) -> int:
        return len(self._edges)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._edges

    def to_dict(self) -> dict[str, Any]:
        edges = []
        for edge, _ in self._edges.values():
            entry: dict[str, Any] = {"public_key": edge.public.hex(), "profile_id": edge.profile_id}
            if edge.min_threshold is not None:
                entry["min_threshold"] = edge.min_threshold
            edges.append(entry)
        return {"edges": edges}

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = Path(path)
        target.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "EdgeKeys":
        """Read a file written by :meth:`save`; anything else is a KeyFileError."""
        source = Path(path)
        try:
            value = json.loads(read_regular_file(source, "an fpmatch edge key list"))
            keys = cls()
            for entry in value["edges"]:
                keys.add(bytes.fromhex(entry["public_key"]), entry["profile_id"], entry.get("min_threshold"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"cannot read edge key list {source}: {exc}") from exc
        if not len(keys):
            raise KeyFileError(f"edge key list {source} registers no edge")
        return keys

    def check(self, key_id: str, profile_id: str, data: bytes, signature: bytes, what: str) -> None:
        """Raise AttestationError unless ``signature`` is a registered edge's, for ``profile_id``, over ``data``."""
        found = self._edges.get(key_id)
        if found is None:
            raise AttestationError(f"{what} is signed by edge key {key_id}, which this key holder does not know")
        edge, verifier = found
        if edge.profile_id != profile_id:
            raise AttestationError(f"{what} names profile {profile_id}; edge key {key_id} signs for {edge.profile_id} only")
        from cryptography.exceptions import InvalidSignature

        try:
            verifier.verify(signature, data)
        except InvalidSignature:
            raise AttestationError(f"{what} does not match its signature: altered or not made by edge {key_id}") from None


# -- signed templates ------------------------------------------------------------------


@dataclass(frozen=True)
class SignedTemplate:
    """A template ciphertext as its capture edge made and signed it at enrolment."""

    profile_id: str
    key_id: str
    subject_tag: bytes
    ciphertext: bytes
    signature: bytes

    @staticmethod
    def statement(profile_id: str, key_id: str, tag: bytes, ciphertext: bytes) -> bytes:
        return b"fpmatch.signed-template.v1\0" + bytes.fromhex(profile_id) + bytes.fromhex(key_id) + tag + ciphertext

    @classmethod
    def make(cls, key: EdgeSigningKey, profile_id: str, subject: str, ciphertext: bytes) -> "SignedTemplate":
        tag = subject_tag(profile_id, subject)
        return cls(profile_id, key.key_id, tag, ciphertext, key.sign(cls.statement(profile_id, key.key_id, tag, ciphertext)))

    def verify(self, keys: EdgeKeys) -> None:
        keys.check(self.key_id, self.profile_id, self.statement(self.profile_id, self.key_id, self.subject_tag, self.ciphertext),
                   self.signature, "a template ciphertext")  # fmt: skip

    def to_bytes(self) -> bytes:
        head = _TEMPLATE_HEAD.pack(_TEMPLATE_MAGIC, bytes.fromhex(self.profile_id), bytes.fromhex(self.key_id),
                                   self.subject_tag, self.signature, len(self.ciphertext))  # fmt: skip
        return head + self.ciphertext

    @classmethod
    def from_bytes(cls, data: bytes) -> "SignedTemplate":
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MessageFormatError(f"a signed template is bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _TEMPLATE_HEAD.size or not data.startswith(_TEMPLATE_MAGIC):
            raise MessageFormatError("not an fpmatch signed template (bad magic or truncated)")
        _, profile, key, tag, signature, size = _TEMPLATE_HEAD.unpack_from(data)
        if size > MAX_CIPHERTEXT_BYTES or len(data) != _TEMPLATE_HEAD.size + size:
            raise MessageFormatError("a signed template's length does not match its header")
        return cls(profile.hex(), key.hex(), tag, data[_TEMPLATE_HEAD.size :], signature)


# -- signed probes -------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeAttestation:
    """A capture edge's signature over one probe message, for one use."""

    key_id: str
    nonce: bytes
    issued: float  # unix seconds
    kind: str  # "verify" or "identify"
    subject_tag: bytes
    purpose: str
    signature: bytes = b""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or len(self.nonce) != NONCE_BYTES or len(self.subject_tag) != 32:
            raise MessageFormatError("a probe attestation needs a known kind, a 16-byte nonce and a 32-byte subject tag")
        if not isinstance(self.purpose, str) or not 0 < len(self.purpose.encode()) < 256:
            raise MessageFormatError("a probe attestation names a purpose of 1 to 255 bytes")

    def _fields(self) -> bytes:
        purpose = self.purpose.encode()
        return _PROBE_HEAD.pack(_PROBE_MAGIC, bytes.fromhex(self.key_id), self.nonce, self.issued, KINDS[self.kind],
                                self.subject_tag, len(purpose)) + purpose  # fmt: skip

    def statement(self, profile_id: str, probe: bytes) -> bytes:
        """What the signature covers: the fields above, the profile id and the unsigned probe message bytes."""
        return b"fpmatch.signed-probe.v1\0" + bytes.fromhex(profile_id) + self._fields() + probe

    def to_bytes(self) -> bytes:
        return self._fields() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> "ProbeAttestation":
        if len(data) < _PROBE_HEAD.size or not data.startswith(_PROBE_MAGIC):
            raise MessageFormatError("not an fpmatch probe attestation (bad magic or truncated)")
        _, key, nonce, issued, kind, tag, size = _PROBE_HEAD.unpack_from(data)
        if len(data) != _PROBE_HEAD.size + size + _SIGNATURE_BYTES:
            raise MessageFormatError("a probe attestation's length does not match its header")
        names = {v: k for k, v in KINDS.items()}
        if kind not in names:
            raise MessageFormatError(f"unknown probe kind {kind!r}")
        try:
            purpose = data[_PROBE_HEAD.size : _PROBE_HEAD.size + size].decode()
        except UnicodeDecodeError:
            raise MessageFormatError("a probe attestation's purpose is not UTF-8") from None
        return cls(key.hex(), nonce, issued, names[kind], tag, purpose, data[_PROBE_HEAD.size + size :])


__all__ = [
    "AttestationError",
    "EdgeKeys",
    "EdgeSigningKey",
    "KINDS",
    "NONCE_BYTES",
    "NO_SUBJECT",
    "ProbeAttestation",
    "RegisteredEdge",
    "SignedTemplate",
    "key_id_of",
    "subject_tag",
]
