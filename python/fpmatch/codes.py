"""Distances between explicit pairs of hash codes, for decisions, calibration and evaluation.

Searches run in the native core's indexes; these helpers score given pairs.
"""

from __future__ import annotations

import numpy as np

from . import _core
from .errors import InvalidInputError

PAIR_CHUNK = 65536  # pairs scored per numpy step
_BYTE_BITS = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


def _popcount_rows(x: np.ndarray) -> np.ndarray:
    count = getattr(np, "bitwise_count", None)  # numpy >= 2.0
    if count is not None:
        return np.asarray(np.asarray(count(x)).sum(axis=1, dtype=np.int64))
    return np.asarray(_BYTE_BITS[x.view(np.uint8)].sum(axis=1, dtype=np.int64))


def _as_words(codes: np.ndarray) -> np.ndarray:
    # 64-bit words count bits several times faster than bytes.
    return codes.view(np.uint64) if codes.shape[1] % 8 == 0 else codes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distances between two uint8 code arrays of equal shape (int64)."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    b = np.ascontiguousarray(b, dtype=np.uint8)
    if a.shape != b.shape or a.ndim != 2:
        raise InvalidInputError(f"codes must be 2-D arrays of one shape, got {a.shape} and {b.shape}")
    return _popcount_rows(np.bitwise_xor(_as_words(a), _as_words(b)))


def hamming_pairs(codes_a: np.ndarray, rows_a: np.ndarray, codes_b: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """Hamming distances between ``codes_a[rows_a[i]]`` and ``codes_b[rows_b[i]]`` (int64), in chunks."""
    a = np.ascontiguousarray(codes_a, dtype=np.uint8)
    b = np.ascontiguousarray(codes_b, dtype=np.uint8)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidInputError("codes must be 2-D uint8 arrays of one code size")
    ra = np.asarray(rows_a, dtype=np.int64)
    rb = np.asarray(rows_b, dtype=np.int64)
    if ra.shape != rb.shape or ra.ndim != 1:
        raise InvalidInputError("rows_a and rows_b must be 1-D and of one length")
    a, b = _as_words(a), _as_words(b)
    out = np.empty(len(ra), dtype=np.int64)
    for start in range(0, len(ra), PAIR_CHUNK):
        stop = min(len(ra), start + PAIR_CHUNK)
        out[start:stop] = _popcount_rows(np.bitwise_xor(a[ra[start:stop]], b[rb[start:stop]]))
    return out


def weighted_pairs(
    probe_codes: np.ndarray, weights: np.ndarray, rows_a: np.ndarray, codes_b: np.ndarray, rows_b: np.ndarray
) -> np.ndarray:
    """Weighted Hamming distances (float32) between probe ``rows_a[i]`` (its code and
    bit reliabilities) and ``codes_b[rows_b[i]]``: a mismatch in bit j costs
    ``weights[rows_a[i], j]``. Bit-identical to the distances index searches return."""
    ra = np.ascontiguousarray(rows_a, dtype=np.int64)
    rb = np.ascontiguousarray(rows_b, dtype=np.int64)
    if ra.shape != rb.shape or ra.ndim != 1:
        raise InvalidInputError("rows_a and rows_b must be 1-D and of one length")
    return _core.weighted_distances(probe_codes, weights, ra, codes_b, rb)
