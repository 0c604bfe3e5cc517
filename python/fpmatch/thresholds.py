"""Score thresholds for a target false-match rate (FMR), shared by every scheme."""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidInputError, NotCalibratedError

DEFAULT_TARGET_FMR = 1e-4


def threshold_at_fmr(scores: np.ndarray, fmr: float) -> float:
    """The lowest score threshold that at most ``floor(fmr * n)`` of ``n`` impostor scores reach.

    Needs at least ``10 / fmr`` scores (NotCalibratedError otherwise).
    """
    check_fmr(fmr)
    needed = math.ceil(10 / fmr)
    if len(scores) < needed:
        raise NotCalibratedError(
            f"{len(scores)} impostor pairs cannot estimate FMR {fmr:g} (need {needed}); "
            "enrol more subjects or calibrate with labelled templates"
        )
    allowed = int(math.floor(fmr * len(scores)))
    highest = np.partition(scores, len(scores) - 1 - allowed)[len(scores) - 1 - allowed]
    threshold = float(np.nextafter(highest, np.inf))
    if threshold > 1.0:
        raise NotCalibratedError(f"even identical templates exceed FMR {fmr:g} on this data")
    return threshold


def check_fmr(fmr: float) -> None:
    """A target false-match rate in (0, 1)."""
    if not 0.0 < fmr < 1.0:
        raise InvalidInputError(f"target FMR must lie in (0, 1), got {fmr}")


def check_score(score: float) -> None:
    """A score threshold in [-1, 1]."""
    if not -1.0 <= float(score) <= 1.0:
        raise InvalidInputError(f"a score threshold must lie in [-1, 1], got {score}")
