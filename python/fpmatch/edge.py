"""The capture edge: the one place where plain embeddings exist.

A terminal, kiosk or app already sees the face and runs the face model. A
:class:`CaptureEdge` there holds the transform key (:class:`~fpmatch.HashKey`)
and, for the encrypted schemes, the key holder's public context. It turns an
embedding into an :class:`EnrolmentRecord` or a :class:`ProbeMessage` and
drops the floats; the matching service receives only those messages.

What a message carries, by scheme:

* ``hash``: the keyed code (and, in a probe, per-bit reliabilities: how far
  each secret projection lies from zero, normalised to sum 1).
* ``he``: the template after a secret rotation R (an orthogonal matrix derived
  from the transform key), as integers at the encryption scale; the service
  encrypts it into its packed blocks at once and keeps only ciphertexts. A
  probe is R times the probe, at the probe scale. Inner products are unchanged
  (R is orthogonal), so encrypted scores equal plain cosines, and without R the
  rotated vectors do not match anyone's template.
* ``hybrid``: both of the above.

Every message names the :class:`EdgeProfile` it was made under (scheme,
dimension, code width, transform key id, encryption key id); a service refuses
messages of any other profile.

An edge with a signing key (:mod:`fpmatch.attestation`) also encrypts each
enrolled template itself and signs that ciphertext, and signs each probe for one
use, for a key holder in attested mode. Such messages are written as version 2
(the version 1 parts, then the signed part); messages without it stay version 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import struct
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from ._validate import unit_rows
from .attestation import NONCE_BYTES, EdgeSigningKey, ProbeAttestation, SignedTemplate, subject_tag
from .codes import weighted_pairs
from .errors import InvalidInputError, KeyMismatchError, MessageFormatError
from .thresholds import check_fmr, threshold_at_fmr
from .hashing import DEFAULT_BITS, DEFAULT_OFFSET_REMOVAL, SCHEME, CancellableHash
from .hashing import SCHEMES as HASH_SCHEMES
from .keys import HashKey

if TYPE_CHECKING:
    from .he.context import PublicContext

#: The protection schemes a service can run.
SCHEMES = ("hash", "he", "hybrid")
_MAGIC = b"FPEDGE01"
_HEADER = struct.Struct("<8sc8sIII")  # magic, kind, profile id, code bytes, reliabilities, values
_MAGIC_V2 = b"FPEDGE02"  # a signed message: version 1's parts, then its attestation
_HEADER_V2 = struct.Struct("<8sc8sIIII")  # ... and the attestation's bytes
_CHUNK = 65536  # pairs scored per numpy step
#: Largest message accepted from the network (a 4096-D probe with 4096-bit codes is far below it).
MAX_MESSAGE_BYTES = 1 << 20


@dataclass(frozen=True)
class EdgeProfile:
    """What a matching service knows of the edges that feed it: public facts only."""

    scheme: str
    dim: int
    edge_key_id: str
    bits: int | None = None  # code width (hash, hybrid)
    hash_scheme: str | None = None  # code derivation (hash, hybrid)
    narrow_cone: bool = False  # the edge removes a shared offset before hashing
    he_key_id: str | None = None  # encryption key (he, hybrid)
    he_context: bytes | None = field(default=None, repr=False)  # public context (he, hybrid)
    template_scale_bits: int | None = None  # fixed point of enrolment values (he, hybrid)
    probe_scale_bits: int | None = None  # fixed point of probe values (he, hybrid)

    def __post_init__(self) -> None:
        """Refuse a profile no capture edge makes (it may come from a file or the network)."""
        problems = []
        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:
            problems.append(f"scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or not 2 <= self.dim <= 65536:
            problems.append(f"dim must be an integer in [2, 65536], got {self.dim!r}")
        if not _is_key_id(self.edge_key_id):
            problems.append(f"edge_key_id must be 16 hex digits, got {self.edge_key_id!r}")
        hashed, encrypted = self.scheme in ("hash", "hybrid"), self.scheme in ("he", "hybrid")
        if hashed != (self.bits is not None) or hashed != (self.hash_scheme is not None):
            problems.append(f"bits and hash_scheme are set exactly for hashed schemes ({self.scheme})")
        elif hashed and (isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits % 64 or not 64 <= self.bits <= 8192):
            problems.append(f"bits must be a multiple of 64 in [64, 8192], got {self.bits!r}")
        elif hashed and self.hash_scheme not in HASH_SCHEMES:
            problems.append(f"hash_scheme must be one of {', '.join(HASH_SCHEMES)}, got {self.hash_scheme!r}")
        if not isinstance(self.narrow_cone, bool):
            problems.append(f"narrow_cone must be a bool, got {self.narrow_cone!r}")
        he_facts = (self.he_key_id, self.he_context, self.template_scale_bits, self.probe_scale_bits)
        if any((fact is not None) != encrypted for fact in he_facts):
            problems.append(f"the encryption facts are set exactly for encrypted schemes ({self.scheme})")
        elif encrypted and not (_is_key_id(self.he_key_id) and isinstance(self.he_context, bytes)):
            problems.append("he_key_id must be 16 hex digits and he_context bytes")
        elif encrypted and not all(type(b) is int and 1 <= b <= 60 for b in he_facts[2:]):
            problems.append("template_scale_bits and probe_scale_bits must be integers in [1, 60]")
        if problems:
            raise InvalidInputError("invalid edge profile: " + "; ".join(problems))

    @property
    def hashed(self) -> bool:
        return self.scheme in ("hash", "hybrid")

    @property
    def encrypted(self) -> bool:
        return self.scheme in ("he", "hybrid")

    @cached_property
    def profile_id(self) -> str:
        """A public fingerprint of everything a message must agree with (computed once: every message checks it)."""
        facts = self.to_dict(with_context=False)
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self, *, with_context: bool = True) -> dict[str, Any]:
        facts = {
            "scheme": self.scheme,
            "dim": self.dim,
            "edge_key_id": self.edge_key_id,
            "bits": self.bits,
            "hash_scheme": self.hash_scheme,
            "narrow_cone": self.narrow_cone,
            "he_key_id": self.he_key_id,
            "template_scale_bits": self.template_scale_bits,
            "probe_scale_bits": self.probe_scale_bits,
        }
        if with_context:
            facts["he_context"] = None if self.he_context is None else self.he_context.hex()
        return facts

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> "EdgeProfile":
        """The profile :meth:`to_dict` wrote; anything else is an InvalidInputError, never converted."""
        if not isinstance(value, dict):
            raise InvalidInputError(f"invalid edge profile: expected a mapping, got {type(value).__name__}")
        missing = [name for name in ("scheme", "dim", "edge_key_id") if name not in value]
        if missing:
            raise InvalidInputError(f"invalid edge profile: {', '.join(missing)} missing")
        context = value.get("he_context")
        try:
            he_context = None if context is None else bytes.fromhex(context)
        except (TypeError, ValueError):
            raise InvalidInputError("invalid edge profile: he_context must be hex digits") from None
        narrow = value.get("narrow_cone", False)
        if not isinstance(narrow, bool):
            raise InvalidInputError(f"invalid edge profile: narrow_cone must be true or false, got {narrow!r}")
        return cls(  # __post_init__ checks every type and range
            scheme=value["scheme"],
            dim=value["dim"],
            edge_key_id=value["edge_key_id"],
            bits=value.get("bits"),
            hash_scheme=value.get("hash_scheme"),
            narrow_cone=narrow,
            he_key_id=value.get("he_key_id"),
            he_context=he_context,
            template_scale_bits=value.get("template_scale_bits"),
            probe_scale_bits=value.get("probe_scale_bits"),
        )


def _is_key_id(value: object) -> bool:
    return isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, eq=False)
class _Message:
    profile_id: str
    code: np.ndarray | None  # (bits/8,) uint8
    reliability: np.ndarray | None  # (bits,) float32, probes only
    values: np.ndarray | None  # (dim,) int64: the rotated template or probe, fixed point
    #: What a signing edge adds (:mod:`fpmatch.attestation`): a record's signed template ciphertext,
    #: a probe's signature. Messages with it are written as version 2; without it, as version 1.
    attestation: bytes | None = None

    _KIND: ClassVar[bytes]

    def to_bytes(self) -> bytes:
        """The message as bytes: fixed-width little-endian, no pickled objects.

        A part is written as its length and its bytes, so an empty part reads back as an
        absent one (None), which no service accepts where the part is needed.
        """
        parts = [
            None if self.code is None else np.ascontiguousarray(self.code, dtype=np.uint8).tobytes(),
            None if self.reliability is None else np.ascontiguousarray(self.reliability, dtype="<f4").tobytes(),
            None if self.values is None else np.ascontiguousarray(self.values, dtype="<i8").tobytes(),
        ]
        sizes = [0 if part is None else len(part) for part in parts]
        body = b"".join(part for part in parts if part)
        if self.attestation is None:  # version 1, as every message was before signing edges
            return _HEADER.pack(_MAGIC, self._KIND, bytes.fromhex(self.profile_id), *sizes) + body
        header = _HEADER_V2.pack(_MAGIC_V2, self._KIND, bytes.fromhex(self.profile_id), *sizes, len(self.attestation))
        return header + body + self.attestation

    def unsigned(self) -> bytes:
        """The message as version 1 bytes, without its attestation (what a probe signature covers)."""
        return replace(self, attestation=None).to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        """Parse bytes made by :meth:`to_bytes`; every length is checked before use."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MessageFormatError(f"a message must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not _HEADER.size <= len(data) <= MAX_MESSAGE_BYTES:
            raise MessageFormatError(f"a message of {len(data)} bytes is truncated or too large")
        signed = data.startswith(_MAGIC_V2)
        if signed:
            if len(data) < _HEADER_V2.size:
                raise MessageFormatError(f"a message of {len(data)} bytes is truncated")
            magic, kind, profile, code_len, rel_len, values_len, attest_len = _HEADER_V2.unpack_from(data)
        else:
            magic, kind, profile, code_len, rel_len, values_len = _HEADER.unpack_from(data)
            attest_len = 0
        if magic not in (_MAGIC, _MAGIC_V2):
            raise MessageFormatError("not an fpmatch capture-edge message (bad magic)")
        if kind != cls._KIND:
            raise MessageFormatError(f"expected a {cls.__name__}, got message kind {kind!r}")
        head = _HEADER_V2.size if signed else _HEADER.size
        if rel_len % 4 or values_len % 8 or head + code_len + rel_len + values_len + attest_len != len(data):
            raise MessageFormatError("message lengths do not add up")
        if signed and not attest_len:
            raise MessageFormatError("a signed message without its attestation")
        offset = head
        code = np.frombuffer(data, np.uint8, code_len, offset).copy() if code_len else None
        offset += code_len
        reliability = np.frombuffer(data, "<f4", rel_len // 4, offset).astype(np.float32) if rel_len else None
        offset += rel_len
        values = np.frombuffer(data, "<i8", values_len // 8, offset).astype(np.int64) if values_len else None
        offset += values_len
        return cls(profile.hex(), code, reliability, values, data[offset:] if signed else None)


@dataclass(frozen=True, eq=False)
class EnrolmentRecord(_Message):
    """One subject's protected template, as the capture edge sends it to the service."""

    _KIND = b"E"


@dataclass(frozen=True, eq=False)
class ProbeMessage(_Message):
    """One protected probe, as the capture edge sends it to the service. Never stored."""

    _KIND = b"P"


@dataclass(frozen=True)
class Calibration:
    """A decision threshold for a target FMR, computed at the edge from labelled templates.

    Hash scores are probe-weighted code scores; encrypted schemes' thresholds
    are plain cosines (what the key holder compares encrypted scores with).
    """

    profile_id: str
    target_fmr: float
    threshold: float
    impostor_pairs: int


class CaptureEdge:
    """Turns embeddings into enrolment records and probes for one service profile.

    ``offset`` (a shared direction of a narrow-cone model, see
    :func:`fpmatch.estimate_offset`) is partly removed before hashing. The
    encrypted schemes need ``public_context`` (:meth:`fpmatch.he.KeyHolder.public_context`).
    """

    def __init__(
        self,
        key: HashKey,
        dim: int,
        *,
        scheme: str = "hybrid",
        public_context: "bytes | PublicContext | None" = None,
        bits: int = DEFAULT_BITS,
        offset: np.ndarray | None = None,
        offset_removal: float = DEFAULT_OFFSET_REMOVAL,
        hash_scheme: str = SCHEME,
        n_threads: int = 0,
        signing_key: "EdgeSigningKey | None" = None,
    ) -> None:
        if signing_key is not None and not isinstance(signing_key, EdgeSigningKey):
            raise KeyMismatchError(f"signing_key must be an EdgeSigningKey, got {type(signing_key).__name__}")
        if signing_key is not None and scheme == "hash":
            raise InvalidInputError("only the encrypted schemes (he, hybrid) have an attested mode to sign for")
        self.signing_key = signing_key
        if not isinstance(key, HashKey):
            raise KeyMismatchError(f"a capture edge takes the transform key (a HashKey), got {type(key).__name__}")
        if scheme not in SCHEMES:
            raise InvalidInputError(f"scheme must be one of {', '.join(SCHEMES)}, got {scheme!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise InvalidInputError(f"dim must be an integer of at least 2, got {dim!r}")
        self.key_id = key.key_id
        self.dim = dim
        self._hash: CancellableHash | None = None
        self._context: PublicContext | None = None
        self._rotation: np.ndarray | None = None
        facts: dict[str, Any] = {"scheme": scheme, "dim": dim, "edge_key_id": key.key_id}
        if scheme in ("hash", "hybrid"):
            self._hash = CancellableHash(key, dim, bits, offset, n_threads, offset_removal, hash_scheme)
            facts.update(bits=bits, hash_scheme=hash_scheme, narrow_cone=offset is not None)
        if scheme in ("he", "hybrid"):
            if public_context is None:
                raise InvalidInputError(f"the {scheme} scheme needs the key holder's public context")
            from .he.context import PublicContext

            context = public_context if isinstance(public_context, PublicContext) else PublicContext(public_context)
            self._context = context
            self._rotation = rotation(key, dim)
            facts.update(
                he_key_id=context.key_id,
                he_context=context.to_bytes(),
                template_scale_bits=context.params.template_scale_bits,
                probe_scale_bits=context.params.probe_scale_bits_for(dim),
            )
        self.profile = EdgeProfile(**facts)

    @property
    def scheme(self) -> str:
        return self.profile.scheme

    def enrolments(self, templates: Any, subjects: "list[str] | None" = None) -> list[EnrolmentRecord]:
        """One record per template (rows of a (n, dim) float32 array) or per photo (a list of them).

        An edge with a signing key also encrypts each template itself and signs that ciphertext
        for its subject (``subjects``, one per template, needed then), for an attested key holder.
        """
        if self.signing_key is not None and subjects is None:
            raise InvalidInputError("a signing edge signs each template for its subject: pass subjects")
        embedded = self._embed(templates)
        try:
            codes, _, values = self._protect(embedded, "templates", probe=False)
        finally:
            _drop(embedded, templates)
        pid = self.profile.profile_id
        count = len(codes if codes is not None else values)  # type: ignore[arg-type]
        signed: list[bytes | None] = [None] * count
        if self.signing_key is not None:
            assert values is not None and self._context is not None and subjects is not None
            if isinstance(subjects, str) or len(subjects) != count:
                raise InvalidInputError(f"subjects must be a list of {count} names, one per template")
            from .he.attested import encrypt_template

            signed = [
                SignedTemplate.make(self.signing_key, pid, name, encrypt_template(self._context, v)).to_bytes()
                for name, v in zip(subjects, values)
            ]
        return [
            EnrolmentRecord(pid, None if codes is None else codes[i], None, None if values is None else values[i], signed[i])
            for i in range(count)
        ]

    def enrolment(self, template: Any, *, subject: str | None = None) -> EnrolmentRecord:
        """The record of one template (dim,) or (1, dim), or of the one person in a photo.

        A photo is a path, encoded bytes or a uint8 image array (:mod:`fpmatch.faces`);
        one with more than one face enrols nobody (``MultipleFacesError``). A signing
        edge needs the ``subject`` the record is for.
        """
        records = self.enrolments(template, None if subject is None else [subject])
        if len(records) != 1:
            raise InvalidInputError("enrolment takes one template; use enrolments() for a batch")
        return records[0]

    def probe(
        self,
        template: Any,
        *,
        face: Any = "largest",
        purpose: str | None = None,
        subject: str | None = None,
        identify: bool = False,
    ) -> ProbeMessage:
        """The probe message of one template (dim,) or (1, dim), or of one face in a photo.

        In a photo only the chosen ``face`` is embedded (``"largest"``, an index
        or a box from :func:`fpmatch.faces.detect`); the others never are.

        A signing edge signs the probe for one use: a verification (of ``subject``,
        when the edge knows who claims to be there) or, with ``identify``, an
        identification, for the consent ``purpose`` (needed then).
        """
        embedded = self._embed(template, face=face)
        try:
            codes, reliability, values = self._protect(embedded, "probe", probe=True)
        finally:
            _drop(embedded, template)
        n = len(codes if codes is not None else values)  # type: ignore[arg-type]
        if n != 1:
            raise InvalidInputError("a probe message holds one probe")
        message = ProbeMessage(
            self.profile.profile_id,
            None if codes is None else codes[0],
            None if reliability is None else reliability[0],
            None if values is None else values[0],
        )
        if self.signing_key is None:
            return message
        if purpose is None:
            raise InvalidInputError("a signing edge signs a probe for a purpose: pass purpose")
        if identify and subject is not None:
            raise InvalidInputError("an identification names no subject")
        pid = self.profile.profile_id
        unsigned = ProbeAttestation(
            self.signing_key.key_id, secrets.token_bytes(NONCE_BYTES), time.time(),
            "identify" if identify else "verify", subject_tag(pid, subject), purpose,
        )  # fmt: skip
        signature = self.signing_key.sign(unsigned.statement(pid, message.to_bytes()))
        return replace(message, attestation=replace(unsigned, signature=signature).to_bytes())

    def calibration(
        self,
        templates: Any,
        labels: np.ndarray,
        target_fmr: float,
        *,
        max_pairs: int = 2_000_000,
        seed: int = 0,
    ) -> Calibration:
        """The threshold for ``target_fmr`` from labelled embeddings (any people, enrolled or not).

        Impostor pairs are scored as the service will score them: probe-weighted
        code scores for ``hash``, plain cosines for the encrypted schemes. Every
        pair is used when there are at most ``max(max_pairs, 10 / target_fmr)``,
        else that many are drawn.
        """
        check_fmr(target_fmr)
        rows = unit_rows(self._embed(templates), self.dim)
        labels = np.asarray(labels)
        if labels.shape != (len(rows),):
            raise InvalidInputError("labels must be 1-D with one label per template")
        count = max(math.ceil(10 / target_fmr), max_pairs)
        n = len(rows)
        if n * (n - 1) // 2 <= count:  # every pair once
            a, b = np.triu_indices(n, 1)
            keep = labels[a] != labels[b]
            a, b = a[keep], b[keep]
        else:  # draw until ``count`` pairs of different people are in hand
            rng = np.random.default_rng(seed)
            a, b = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
            for _ in range(64):
                x, y = rng.integers(0, n, 2 * count), rng.integers(0, n, 2 * count)
                keep = labels[x] != labels[y]
                a, b = np.concatenate([a, x[keep]])[:count], np.concatenate([b, y[keep]])[:count]
                if len(a) == count:
                    break
        if self.scheme == "hash":
            assert self._hash is not None
            codes, reliability = self._hash.protect_with_reliability(rows.astype(np.float32))
            scores = np.asarray(self._hash.weighted_score(weighted_pairs(codes, reliability, a, codes, b)))
        else:
            scores = np.concatenate(
                [np.einsum("ij,ij->i", rows[a[i : i + _CHUNK]], rows[b[i : i + _CHUNK]]) for i in range(0, len(a), _CHUNK)]
                or [np.zeros(0)]
            )
        threshold = threshold_at_fmr(scores, target_fmr)
        return Calibration(self.profile.profile_id, float(target_fmr), threshold, int(len(scores)))

    def _embed(self, value: Any, *, face: Any = None) -> Any:
        """Embeddings as they are; a photo, or a list of photos, through the face model
        (probes with the chosen ``face``, enrolments refusing photos of several faces)."""
        if isinstance(value, np.ndarray) and not (value.dtype == np.uint8 and value.ndim == 3):
            return value
        from . import faces

        photos = isinstance(value, (list, tuple))
        if not (faces.is_photo(value) or (photos and value and all(faces.is_photo(p) for p in value))):
            return value  # not a photo: the template checks say what is wrong
        if self.dim != faces.DIM:
            raise InvalidInputError(f"this capture edge takes {self.dim}-D templates; the face model gives {faces.DIM}-D")
        if photos:
            return np.stack([faces.embed(p) for p in value])
        return faces.embed(value) if face is None else faces.embed_probe(value, face)

    def _protect(
        self, templates: np.ndarray, what: str, *, probe: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        unit = unit_rows(templates, self.dim, what)  # checks dtype, shape, NaN/Inf and zero vectors
        codes = reliability = values = None
        if self._hash is not None:
            if probe:
                codes, reliability = self._hash.protect_with_reliability(templates)
            else:
                codes = self._hash.protect(templates)
        if self._rotation is not None:
            assert self._context is not None
            bits = self.profile.probe_scale_bits if probe else self.profile.template_scale_bits
            assert bits is not None
            values = np.rint((unit @ self._rotation.T) * float(1 << bits)).astype(np.int64)
        unit.fill(0.0)
        return codes, reliability, values


def _drop(embedded: Any, given: Any) -> None:
    """Zero an embedding the edge computed from a photo (the caller's own arrays are theirs)."""
    if embedded is not given and isinstance(embedded, np.ndarray) and embedded.flags.writeable:
        embedded.fill(0)


def rotation(key: HashKey, dim: int) -> np.ndarray:
    """The secret orthogonal (dim, dim) matrix of ``key``: QR of a key-derived Gaussian matrix.

    The Gaussian entries come from SHAKE-256 of a purpose-bound subkey (Box-Muller
    on 53-bit uniforms); R's diagonal is made positive so the factor is unique.
    """
    count = dim * dim + (dim * dim) % 2
    stream = hashlib.shake_256(key.subkey(f"edge-rotation-v1:{dim}")).digest(8 * count)
    uniform = ((np.frombuffer(stream, dtype="<u8") >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(uniform[0::2]))
    angle = 2.0 * np.pi * uniform[1::2]
    gaussian = np.empty(count)
    gaussian[0::2] = radius * np.cos(angle)
    gaussian[1::2] = radius * np.sin(angle)
    q, r = np.linalg.qr(gaussian[: dim * dim].reshape(dim, dim))
    return q * np.sign(np.diag(r))


M = TypeVar("M", "EnrolmentRecord", "ProbeMessage")


def check_message(message: object, kind: type[M], profile: EdgeProfile) -> M:
    """``message`` itself if it is a ``kind`` made for ``profile`` with parts that fit it."""
    name = kind.__name__
    if not isinstance(message, kind):
        raise MessageFormatError(
            f"expected a {name} from a capture edge (fpmatch.CaptureEdge), got {type(message).__name__}"
        )
    if message.profile_id != profile.profile_id:
        raise KeyMismatchError(
            f"this {name} was made by a capture edge with another scheme, dimension, transform key "
            f"or encryption key (profile {message.profile_id}; this service takes {profile.profile_id})"
        )
    probe = kind is ProbeMessage
    _check_part(name, "code", message.code, profile.hashed, np.uint8, (profile.bits or 0) // 8)
    _check_part(name, "reliability", message.reliability, profile.hashed and probe, np.float32, profile.bits or 0)
    _check_part(name, "values", message.values, profile.encrypted, np.int64, profile.dim)
    if message.reliability is not None and (
        not np.isfinite(message.reliability).all() or (message.reliability < 0).any()
    ):
        raise MessageFormatError(f"{name} reliabilities must be finite and non-negative")
    if message.values is not None:
        scale = profile.probe_scale_bits if probe else profile.template_scale_bits
        assert scale is not None
        if np.abs(message.values).max() > (1 << scale) + 1:
            raise MessageFormatError(f"{name} values exceed the unit-norm range")
    return message


def _check_part(message: str, part: str, value: np.ndarray | None, wanted: bool, dtype: type, size: int) -> None:
    if not wanted:
        if value is not None:
            raise MessageFormatError(f"this service's scheme takes no {part} in a {message}")
        return
    if value is None:
        raise MessageFormatError(f"{message} lacks its {part}")
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != (size,):
        got = getattr(value, "shape", type(value).__name__)
        raise MessageFormatError(f"{message} {part} must be {np.dtype(dtype).name} of shape ({size},), got {got}")


__all__ = [
    "Calibration",
    "CaptureEdge",
    "EdgeProfile",
    "EnrolmentRecord",
    "MAX_MESSAGE_BYTES",
    "ProbeMessage",
    "SCHEMES",
    "check_message",
    "rotation",
]
