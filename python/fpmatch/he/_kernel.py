"""Encrypted scoring as every he gallery runs it: the native kernel by default.

:func:`combine` and :func:`multiply` call ``fpmatch._core.modular_combine`` and
``modular_multiply``: exact arithmetic mod q on the CPU's fastest path (AVX-512 IFMA, AVX-512
or portable, chosen at run time), every core, the GIL released, arrays checked before use and
ciphertext values out of range refused. Ciphertexts are in the packed form of
:mod:`fpmatch.he._packing`, which the kernel reads in place. Inside :func:`reference_scoring` they run the numpy
reference (:mod:`fpmatch.he._reference`) instead: tests pin the two to each other and
benchmarks time the reference as their baseline.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from .. import _core
from . import _reference

_use_reference = False


def combine(matrices: Sequence[np.ndarray], weights: np.ndarray, q: int, *, n_threads: int = 0) -> np.ndarray:
    """``out[i] = weights @ matrices[i] mod q`` in [0, q) for same-shape packed (d, 6k) uint8 matrices.

    ``weights`` (d,) gives (len(matrices), k); a batch (probes, d) is scored in one sweep over the
    matrices and gives (probes, len(matrices), k).
    """
    if _use_reference:
        return _reference.combine(matrices, weights, q)
    return _core.modular_combine(list(matrices), weights, q, n_threads=n_threads)


def multiply(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a * b mod q`` in [0, q), row by row: ``a`` (m, 6n) packed, ``b`` (n,) in [0, q)."""
    if _use_reference:
        return _reference.multiply(a, b, q)
    return _core.modular_multiply(a, b, q)


@contextmanager
def reference_scoring() -> Iterator[None]:
    """Score with the numpy reference in this block (process-wide: for tests and benchmarks)."""
    global _use_reference
    previous, _use_reference = _use_reference, True
    try:
        yield
    finally:
        _use_reference = previous


def using_reference() -> bool:
    """Whether this block scores with the numpy reference (:func:`reference_scoring`)."""
    return _use_reference
