"""Reclaiming erased slots of packed ciphertexts, with the key holder's help.

Erasure zeroes the c0 coefficients that held a template, so those
coefficients now decrypt to ``(c1 * s)[t]``: noise-free values of the secret
key's product that nobody may learn. To place a new template there, the
matching side sends the key holder the c1 halves (NTT values) and a mask of
the coefficients to reclaim; the key holder returns a fresh SEAL encryption of
the polynomial ``M`` with ``M[t] = -(c1 * s)[t]`` on the mask and 0 elsewhere.
Added to the ciphertext, it makes those coefficients encrypt zero again (plus
fresh noise everywhere, as any re-randomisation does), so the slots can take
new templates.

Nothing decrypted leaves the key holder: the reply is a ciphertext, and the
request carries c1 halves, which hold no template. A caller could submit
chosen c1 values, but the reply still only encrypts; learning from it needs
a decision, which a crafted score request already gives (see
:mod:`fpmatch.he.keyholder`). Requests are counted and rate limited like any.

Both messages are fixed-width little-endian and length-checked before any
array is built.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

from ..errors import KeyMismatchError
from .errors import CiphertextFormatError, RateLimitExceededError
from .scores import MAX_REQUEST_BYTES

if TYPE_CHECKING:
    from .context import PublicContext
    from .keyholder import ScoreDecider

_REQUEST = struct.Struct("<8s8sIQI")  # magic, key id, n, q, rows
_REPLY = struct.Struct("<8s8sIQI")
_REQUEST_MAGIC = b"FPHERC01"
_REPLY_MAGIC = b"FPHERR01"
#: Ciphertexts per request, so that a 512-D block (512 of them) travels in a few messages.
ROWS_PER_REQUEST = 64


def reclaim_request(key_id: str, q: int, c1: np.ndarray, mask: np.ndarray) -> bytes:
    """The request for c1 halves (r, N) (centred or reduced NTT values) and a boolean mask (r, N)."""
    rows, n = c1.shape
    header = _REQUEST.pack(_REQUEST_MAGIC, bytes.fromhex(key_id), n, q, rows)
    reduced = np.mod(np.asarray(c1, dtype=np.int64), q)
    return header + np.ascontiguousarray(reduced, dtype="<i8").tobytes() + np.packbits(mask, axis=1).tobytes()


def parse_request(data: bytes, *, key_id: str, n: int, q: int, max_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(c1 (r, N) in [0, q), mask (r, N) bool) from a request, checked for a key holder (key_id, n, q)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CiphertextFormatError(f"a reclaim request must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _REQUEST.size or len(data) > MAX_REQUEST_BYTES:
        raise CiphertextFormatError(f"reclaim request of {len(data)} bytes: truncated or too large")
    magic, raw_id, got_n, got_q, rows = _REQUEST.unpack_from(data)
    if magic != _REQUEST_MAGIC:
        raise CiphertextFormatError("not an fpmatch reclaim request (bad magic)")
    if raw_id.hex() != key_id:
        raise KeyMismatchError(f"ciphertexts under key {raw_id.hex()}; this key holder has {key_id}")
    if got_n != n or got_q != q:
        raise KeyMismatchError(f"these ciphertexts use ring (N={got_n}, q={got_q}), expected (N={n}, q={q})")
    if not 1 <= rows <= max_rows:
        raise CiphertextFormatError(f"a reclaim request holds 1 to {max_rows} ciphertexts, got {rows}")
    expected = _REQUEST.size + rows * (8 * n + n // 8)
    if len(data) != expected:
        raise CiphertextFormatError(f"reclaim request has {len(data)} bytes, the header says {expected}")
    c1 = np.frombuffer(data, dtype="<i8", count=rows * n, offset=_REQUEST.size).astype(np.int64).reshape(rows, n)
    bits = np.frombuffer(data, dtype=np.uint8, offset=_REQUEST.size + 8 * rows * n).reshape(rows, n // 8)
    if not ((c1 >= 0) & (c1 < q)).all():
        raise CiphertextFormatError("ciphertext values out of range for this modulus")
    return c1, np.unpackbits(bits, axis=1).astype(bool)


def reclaim_reply(key_id: str, q: int, c0: np.ndarray, c1: np.ndarray) -> bytes:
    """The key holder's answer: fresh ciphertexts as (c0 coefficients, c1 NTT values), centred."""
    rows, n = c0.shape
    header = _REPLY.pack(_REPLY_MAGIC, bytes.fromhex(key_id), n, q, rows)
    return header + np.ascontiguousarray(c0, dtype="<i8").tobytes() + np.ascontiguousarray(c1, dtype="<i8").tobytes()


def parse_reply(data: bytes, *, key_id: str, n: int, q: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The fresh (c0, c1) of a reply, checked against the request it answers."""
    if not isinstance(data, (bytes, bytearray, memoryview)):  # bytes(n) of an int would allocate n bytes
        raise CiphertextFormatError(f"a reclaim reply must be bytes, got {type(data).__name__}")
    data = bytes(data)
    expected = _REPLY.size + 16 * rows * n
    if len(data) != expected:
        raise CiphertextFormatError(f"reclaim reply has {len(data)} bytes, expected {expected}")
    magic, raw_id, got_n, got_q, got_rows = _REPLY.unpack_from(data)
    if magic != _REPLY_MAGIC or raw_id.hex() != key_id or (got_n, got_q, got_rows) != (n, q, rows):
        raise CiphertextFormatError("the key holder's reclaim reply does not answer this request")
    values = np.frombuffer(data, dtype="<i8", offset=_REPLY.size).astype(np.int64).reshape(2, rows, n)
    if (np.abs(values) > q // 2).any():
        raise CiphertextFormatError("the key holder's reclaim reply holds values out of range")
    return values[0], values[1]


def reclaim_through(
    decider: "ScoreDecider", caller: str, context: "PublicContext", c1: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Fresh ciphertexts that cancel ``(c1 * s)`` on ``mask``, or None if the key holder is busy.

    A busy key holder (rate limit) is not an error for enrolment: it then
    places templates in new slots and leaves the erased ones for later.
    """
    ring, key_id = context.ring, context.key_id
    c0_parts, c1_parts = [], []
    try:
        for start in range(0, len(c1), ROWS_PER_REQUEST):
            part = c1[start : start + ROWS_PER_REQUEST]
            reply = decider.reclaim(reclaim_request(key_id, ring.q, part, mask[start : start + len(part)]), caller=caller)
            fresh_c0, fresh_c1 = parse_reply(reply, key_id=key_id, n=ring.n, q=ring.q, rows=len(part))
            c0_parts.append(fresh_c0)
            c1_parts.append(fresh_c1)
    except RateLimitExceededError:
        return None
    return np.concatenate(c0_parts), np.concatenate(c1_parts)
