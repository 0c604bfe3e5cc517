"""Fixed-point encoding of templates and probes, and the results both HE galleries return."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..gallery import Match as Match  # re-exported: both encrypted galleries return it


@dataclass(frozen=True)
class Verification:
    """Outcome of a 1:1 comparison decided by the key holder (no score is released)."""

    subject: str
    verified: bool
    threshold: float


def quantise(unit: np.ndarray, bits: int) -> np.ndarray:
    """round(x * 2**bits) as int64."""
    scaled = unit * float(1 << bits)
    return np.rint(scaled, out=scaled).astype(np.int64)


def check_threshold(threshold: float) -> float:
    """A finite cosine threshold in [-1, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise InvalidInputError(f"threshold must be a number, got {type(threshold).__name__}")
    value = float(threshold)
    if math.isnan(value) or not -1.0 <= value <= 1.0:
        raise InvalidInputError(f"a cosine threshold must lie in [-1, 1], got {threshold}")
    return value
