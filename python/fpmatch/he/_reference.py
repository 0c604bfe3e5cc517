"""The numpy reference of encrypted scoring: the specification the native kernel must equal.

Both functions take ciphertext values in the packed form (:mod:`fpmatch.he._packing`: uint8,
6 bytes a value) and return values in ``[0, q)``. :func:`combine` is exact while every weighted sum fits in int64,
which the scheme's parameters guarantee for honest probes (see
:meth:`fpmatch.he.params.HEParams.probe_scale_bits_for`); the native kernel is exact for any
int64 weights. Tests compare the two bit for bit, and benchmarks use this as their baseline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ._packing import unpack


def combine(matrices: Sequence[np.ndarray], weights: np.ndarray, q: int) -> np.ndarray:
    """``out[i] = weights @ matrices[i] mod q`` for same-shape packed (d, 6k) matrices: (len(matrices), k).

    Weights (probes, d) give (probes, len(matrices), k), one probe after another.
    """
    if np.ndim(weights) == 2:
        return np.stack([combine(matrices, w, q) for w in weights])
    # Integer einsum: several times faster than @ on int64.
    return np.stack([np.mod(np.einsum("j,jk->k", weights, unpack(m, q)), q) for m in matrices])


def multiply(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a * b mod q`` row by row, for ``a`` packed, ``b`` (one row) in ``[0, q)`` and q < 2**48.

    The quotient is estimated in float64 (off by at most one), and the remainder is computed in
    wrapping int64 arithmetic, which is exact because the true remainder lies in (-q, 2q).
    """
    a = np.mod(unpack(a, q), q)
    b = np.broadcast_to(b, a.shape)
    quotient = np.floor(a.astype(np.float64) * b.astype(np.float64) / q).astype(np.int64)
    with np.errstate(over="ignore"):
        remainder = a * b - quotient * q
    return np.mod(remainder, q)
