"""What several evaluation modules share: keys derived from the seed, unit rows, the optional he package."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ..keys import HashKey


def import_he() -> Any:
    """:mod:`fpmatch.he`, or None without TenSEAL."""
    try:
        from .. import he
    except ImportError:
        return None
    return he


def run_key_holder(he: Any) -> Any:
    """An in-process key holder with a fresh CKKS key, its per-caller limits lifted: they guard
    against remote callers probing the key, and would only cut a run's many requests short."""
    limits = he.RateLimit(requests_per_second=1e9, burst=10**9, max_scores=1 << 23, max_k=100)
    return he.KeyHolder(limits=limits)


def bench_key(seed: int, role: str = "") -> HashKey:
    """A key derived from the seed, for reproducible runs; it protects nothing real.

    The label keeps the evaluation's first module name: a new label would change every report's figures.
    """
    label = f"fpmatch.evaluation.{seed}" + (f".{role}" if role else "")
    return HashKey(hashlib.sha256(label.encode()).digest())


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


__all__ = [
    "bench_key",
    "import_he",
    "run_key_holder",
    "unit",
]
