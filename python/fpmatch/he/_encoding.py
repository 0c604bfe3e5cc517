"""Fixed-point encoding of templates and probes, and the results both HE galleries return."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import as_template_rows
from ..errors import InvalidInputError


@dataclass(frozen=True)
class Verification:
    """Outcome of a 1:1 comparison decided by the key holder (no score is released)."""

    subject: str
    verified: bool
    threshold: float


@dataclass(frozen=True)
class Match:
    """One identification result, best first (rank 1)."""

    subject: str
    rank: int


def unit_rows(templates: object, dim: int, what: str = "templates") -> np.ndarray:
    """float32 templates (d,) or (n, d), checked and L2-normalised in float64."""
    rows = as_template_rows(templates, dim, what).astype(np.float64)
    if not np.isfinite(rows).all():
        raise InvalidInputError(f"{what} contain NaN or Inf")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidInputError(f"{what} contain a zero vector")
    return rows / norms


def quantise(unit: np.ndarray, bits: int) -> np.ndarray:
    """round(x * 2**bits) as int64."""
    return np.rint(unit * float(1 << bits)).astype(np.int64)


def check_threshold(threshold: float) -> float:
    """A finite cosine threshold in [-1, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise InvalidInputError(f"threshold must be a number, got {type(threshold).__name__}")
    value = float(threshold)
    if math.isnan(value) or not -1.0 <= value <= 1.0:
        raise InvalidInputError(f"a cosine threshold must lie in [-1, 1], got {threshold}")
    return value
