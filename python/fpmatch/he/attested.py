"""Attested scoring: template ciphertexts a capture edge made, and scores the key holder computes itself.

A capture edge with a signing key (:mod:`fpmatch.attestation`) encrypts each
template it enrols into one ring ciphertext of its own, template value i in
coefficient i (c0 as coefficients, c1 as NTT values, packed 6 bytes a value:
12N bytes), and signs it. The matching service stores it beside the subject.

A key holder in attested mode receives a signed probe and the signed
ciphertexts of the candidates (:class:`AttestedRequest`). It computes each
score as the service's rows do (:mod:`fpmatch.he.rows`): with
``P(X) = sum_i w_i X^-i``, coefficient 0 of c * P is the inner product, so it
forms c1 * P (NTT values) and the one coefficient of c0 * P it needs, then
decrypts that coefficient only; it never decrypts a template.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..attestation import SignedTemplate
from ..errors import KeyMismatchError, MessageFormatError
from ._packing import PACKED_BYTES, pack, unpack
from ._ring import Ring
from .context import PublicContext
from .errors import CiphertextFormatError
from .scores import EncryptedScores

_MAGIC = b"FPHEATC1"
_HEAD = struct.Struct("<8s8sIQ")  # magic, key id, n, q
_REQUEST_MAGIC = b"FPATREQ1"
_COUNT = struct.Struct("<I")


def encrypt_template(context: PublicContext, values: np.ndarray) -> bytes:
    """A fresh encryption of fixed-point template ``values`` (d,) in coefficients 0..d-1 (the edge's part)."""
    ring = context.ring
    c0, c1 = context.encrypt_zeros_here(1)
    c0 = c0[0].copy()
    c0[: len(values)] += np.asarray(values, dtype=np.int64)
    head = _HEAD.pack(_MAGIC, bytes.fromhex(context.key_id), ring.n, ring.q)
    return head + pack(c0, ring.q).tobytes() + pack(c1[0], ring.q).tobytes()


def read_template(data: bytes, *, key_id: str, n: int, q: int) -> tuple[np.ndarray, np.ndarray]:
    """(c0 coefficients, c1 NTT values), both in [0, q), of a template ciphertext made for this key and ring."""
    if len(data) < _HEAD.size or not data.startswith(_MAGIC):
        raise CiphertextFormatError("not an fpmatch template ciphertext (bad magic or truncated)")
    _, raw_id, got_n, got_q = _HEAD.unpack_from(data)
    if raw_id.hex() != key_id:
        raise KeyMismatchError(f"a template encrypted under key {raw_id.hex()}; this key holder has {key_id}")
    if got_n != n or got_q != q:
        raise KeyMismatchError(f"a template ciphertext for ring (N={got_n}, q={got_q}), expected (N={n}, q={q})")
    if len(data) != _HEAD.size + 2 * PACKED_BYTES * n:
        raise CiphertextFormatError(f"a template ciphertext of {len(data)} bytes; ring N={n} needs {_HEAD.size + 12 * n}")
    both = unpack(data[_HEAD.size :], q)  # refuses values out of range
    return np.mod(both[:n], q), np.mod(both[n:], q)


@dataclass(frozen=True)
class AttestedRequest:
    """A signed probe message (bytes of :class:`~fpmatch.edge.ProbeMessage`) and signed templates."""

    probe: bytes
    templates: list[bytes]  # SignedTemplate bytes, one per candidate

    def to_bytes(self) -> bytes:
        parts = [_REQUEST_MAGIC, _COUNT.pack(len(self.probe)), self.probe, _COUNT.pack(len(self.templates))]
        for template in self.templates:
            parts += [_COUNT.pack(len(template)), template]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, *, max_templates: int) -> "AttestedRequest":
        """Parse; every length is checked before use, and at most ``max_templates`` templates are read."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MessageFormatError(f"an attested request is bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data.startswith(_REQUEST_MAGIC):
            raise MessageFormatError("not an fpmatch attested request (bad magic)")
        offset = len(_REQUEST_MAGIC)

        def take() -> bytes:
            nonlocal offset
            if offset + _COUNT.size > len(data):
                raise MessageFormatError("an attested request is truncated")
            (size,) = _COUNT.unpack_from(data, offset)
            offset += _COUNT.size
            if offset + size > len(data):
                raise MessageFormatError("an attested request is truncated")
            offset += size
            return data[offset - size : offset]

        probe = take()
        if offset + _COUNT.size > len(data):
            raise MessageFormatError("an attested request is truncated")
        (count,) = _COUNT.unpack_from(data, offset)
        offset += _COUNT.size
        if not 1 <= count <= max_templates:
            raise MessageFormatError(f"an attested request carries 1 to {max_templates} templates, got {count}")
        templates = [take() for _ in range(count)]
        if offset != len(data):
            raise MessageFormatError("an attested request has trailing bytes")
        return cls(probe, templates)


def template_count(data: bytes) -> int:
    """How many templates a request says it carries (0 if it cannot be read): for budgets before parsing."""
    try:
        (size,) = _COUNT.unpack_from(data, len(_REQUEST_MAGIC))
        (count,) = _COUNT.unpack_from(data, len(_REQUEST_MAGIC) + _COUNT.size + size)
        return int(count) if data.startswith(_REQUEST_MAGIC) else 0
    except struct.error:
        return 0


def subject_label(data: bytes) -> str | None:
    """The per-subject budget label of an attested verification: its template's signed subject tag
    (None if the request cannot be read; it is then refused anyway). A caller cannot leave it out."""
    try:
        request = AttestedRequest.from_bytes(data, max_templates=1)
        tag = SignedTemplate.from_bytes(request.templates[0]).subject_tag
    except MessageFormatError:
        return None
    return tag_label(tag)


def tag_label(tag: bytes) -> str:
    """The per-subject budget label of a signed subject tag."""
    return "signed:" + tag[:16].hex()


def attested_scores(ring: Ring, key_id: str, scale_bits: int, weights: np.ndarray, templates: list[SignedTemplate]) -> EncryptedScores:
    """Encrypted scores (at ``scale_bits``) of fixed-point probe ``weights`` (d,) against the templates, in order.

    ``ring`` is the key holder's; each template's ciphertext is read (and checked) here.
    """
    n, q, d = ring.n, ring.q, len(weights)
    poly = np.zeros(n, dtype=np.int64)
    poly[0] = weights[0]
    poly[n - np.arange(1, d)] = -weights[1:]  # X^-i = -X^(N-i)
    p_hat = ring.ntt(poly)
    w = np.mod(weights, q)
    a = np.empty((len(templates), n), dtype=np.int64)
    b = np.empty(len(templates), dtype=np.int64)
    for i, template in enumerate(templates):
        c0, c1 = read_template(template.ciphertext, key_id=key_id, n=n, q=q)
        a[i] = ring.mulmod(c1, p_hat)  # c1 * P, NTT values
        b[i] = int(np.mod(ring.mulmod(c0[:d], w).sum(), q))  # coefficient 0 of c0 * P
    index = np.zeros(len(templates), dtype=np.int64)
    return EncryptedScores(key_id, scale_bits, q, a, b, index, np.arange(len(templates), dtype=np.int64))


__all__ = ["AttestedRequest", "attested_scores", "encrypt_template", "read_template", "subject_label", "template_count"]
