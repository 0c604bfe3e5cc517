"""Encrypted scores: what the matching side sends the key holder.

A request holds ``m`` ring elements ``a_r`` (NTT values) and ``k`` scores.
Score ``i`` decrypts as ``b_i + (a_{row_i} * s)[index_i]  (mod q)``, where
``s`` is the secret key: an LWE sample taken out of a ring ciphertext. Only
the coefficients named by ``index`` get a ``b`` value, so the key holder
learns nothing about any other coefficient of any ciphertext.

The byte format is fixed-width little-endian and fully length-checked before
any array is built; it carries no pickled objects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import KeyMismatchError
from .errors import CiphertextFormatError

if TYPE_CHECKING:
    from .context import PublicContext

_MAGIC = b"FPHESC01"
_HEADER = struct.Struct("<8s8sHIQII")  # magic, key id, scale bits, n, q, rows, scores
#: Largest request the parser accepts (bytes), so that a length field cannot
#: make the key holder allocate without bound.
MAX_REQUEST_BYTES = 1 << 28


@dataclass(frozen=True, eq=False)
class EncryptedScores:
    """Scores under encryption, for :meth:`fpmatch.he.KeyHolder.decide` and friends."""

    key_id: str
    scale_bits: int
    q: int
    a: np.ndarray  # (rows, n) int64 in [0, q): NTT values
    b: np.ndarray  # (k,) int64 in [0, q)
    index: np.ndarray  # (k,) int64 coefficient index in [0, n)
    row: np.ndarray  # (k,) int64 row of ``a`` in [0, rows)

    def __len__(self) -> int:
        return int(self.b.shape[0])

    @property
    def n(self) -> int:
        return int(self.a.shape[1])

    def to_bytes(self) -> bytes:
        """The request as bytes (see the module notes)."""
        header = _HEADER.pack(
            _MAGIC,
            bytes.fromhex(self.key_id),
            self.scale_bits,
            self.n,
            self.q,
            self.a.shape[0],
            len(self),
        )
        parts = [header]
        for array in (self.a, self.b, self.index, self.row):
            parts.append(np.ascontiguousarray(array, dtype="<i8").tobytes())
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes, *, key_id: str, n: int, q: int) -> "EncryptedScores":
        """Parse and check bytes for a key holder with key ``key_id`` and ring (n, q)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise CiphertextFormatError(f"encrypted scores must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size or len(data) > MAX_REQUEST_BYTES:
            raise CiphertextFormatError(f"encrypted scores of {len(data)} bytes: truncated or too large")
        _, raw_id, scale_bits, got_n, got_q, rows, count = _header(data)
        if raw_id.hex() != key_id:
            raise KeyMismatchError(f"scores encrypted under key {raw_id.hex()}; this key holder has {key_id}")
        if got_n != n or got_q != q:
            raise KeyMismatchError(f"these scores use ring (N={got_n}, q={got_q}), expected (N={n}, q={q})")
        if rows < 1 or count < 1 or not 0 < scale_bits < q.bit_length() - 1:
            raise CiphertextFormatError("encrypted scores hold no scores, or a bad scale")
        expected = _length(n, rows, count)
        if len(data) != expected:
            raise CiphertextFormatError(f"encrypted scores have {len(data)} bytes, the header says {expected}")
        offset = _HEADER.size
        arrays = []
        for size in (rows * n, count, count, count):
            arrays.append(np.frombuffer(data, dtype="<i8", count=size, offset=offset).astype(np.int64))
            offset += 8 * size
        a, b, index, row = arrays
        if not ((a >= 0) & (a < q)).all() or not ((b >= 0) & (b < q)).all():
            raise CiphertextFormatError("ciphertext values out of range for this modulus")
        if not ((index >= 0) & (index < n)).all() or not ((row >= 0) & (row < rows)).all():
            raise CiphertextFormatError("score positions out of range")
        return cls(key_id, int(scale_bits), q, a.reshape(rows, n), b, index, row)


def join_requests(parts: Sequence[bytes]) -> bytes:
    """One request holding every score of ``parts`` (requests as bytes, made under one key) in order.

    Only headers and lengths are checked here, and no array is built: the key
    holder parses and checks the joined request in full.
    """
    heads = [_head(part) for part in parts]
    if len(parts) == 1:
        return bytes(parts[0])
    first = heads[0]
    if any(head[:5] != first[:5] for head in heads):
        raise KeyMismatchError("encrypted scores made under different keys or scales cannot be joined")
    n = first[3]
    sections: list[list[Any]] = [[], [], [], []]  # a, b, index, row
    rows = 0
    for part, (*_, part_rows, count) in zip(parts, heads):
        view, offset = memoryview(part), _HEADER.size
        for i, size in enumerate((part_rows * n, count, count)):
            sections[i].append(view[offset : offset + 8 * size])
            offset += 8 * size
        sections[3].append(np.frombuffer(part, dtype="<i8", count=count, offset=offset) + rows)
        rows += part_rows
    header = _HEADER.pack(*first[:5], rows, sum(head[6] for head in heads))
    row = np.concatenate(sections[3]).astype("<i8").tobytes()
    return b"".join([header, *sections[0], *sections[1], *sections[2], row])


def _head(part: bytes) -> tuple[Any, ...]:
    """A request's header, checked against its length."""
    if len(part) < _HEADER.size:
        raise CiphertextFormatError(f"encrypted scores of {len(part)} bytes: truncated")
    head = _header(part)
    if len(part) != _length(head[3], head[5], head[6]):
        raise CiphertextFormatError(f"encrypted scores have {len(part)} bytes, the header says otherwise")
    return head


def _header(data: bytes) -> tuple[Any, ...]:
    """The header's fields (magic, key id, scale bits, n, q, rows, scores), the magic checked."""
    head = _HEADER.unpack_from(data)
    if head[0] != _MAGIC:
        raise CiphertextFormatError("not fpmatch encrypted scores (bad magic)")
    return head


def _length(n: int, rows: int, count: int) -> int:
    """Bytes of a request of ``rows`` ring elements of ``n`` values and ``count`` scores."""
    return _HEADER.size + 8 * (rows * n + 3 * count)


def scores_under(
    context: "PublicContext", probe_scale_bits: int, a: np.ndarray, b: np.ndarray, index: np.ndarray, row: np.ndarray
) -> EncryptedScores:
    """A request's parts as the scores of a probe at ``probe_scale_bits`` against templates under ``context``."""
    return EncryptedScores(
        key_id=context.key_id,
        scale_bits=context.params.template_scale_bits + probe_scale_bits,
        q=context.ring.q,
        a=a,
        b=np.asarray(b, dtype=np.int64),
        index=np.asarray(index, dtype=np.int64),
        row=np.asarray(row, dtype=np.int64),
    )
