"""Error rates: verification (TAR at FAR, EER, DET) and open-set identification (FNIR at FPIR),
each claimed only where the trials allow enough errors at it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidInputError


DEFAULT_FARS = (1e-3, 1e-4)
DEFAULT_FPIRS = (0.003,)
DEFAULT_CANDIDATES = 20
#: An error rate (FAR, FPIR) is claimed only where the trials allow at least this
#: many errors at it: the "rule of 30" of ISO/IEC 19795-1 (then the true rate lies
#: within +-30% of the observed one with 90% confidence). Below that, the figure at
#: that rate is reported as None with the reason.
MIN_ERRORS = 30
_DET_POINTS = 120


@dataclass
class Scores:
    """Genuine and impostor similarity scores of one scheme (higher: more alike)."""

    genuine: np.ndarray
    impostor: np.ndarray
    rank1_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True, eq=False)
class OpenSet:
    """Raw results of open-set searches by one scheme.

    Per mated search: the mate's score and rank (1 = best; score -inf and a rank
    past the gallery when the search did not return it) and the row of the best
    candidate. Per non-mated search: the best candidate's score.
    """

    mate_scores: np.ndarray
    mate_ranks: np.ndarray
    top1: np.ndarray
    nonmated_top: np.ndarray

    @classmethod
    def empty(cls, mated: int, nonmated: int) -> "OpenSet":
        """Room for ``mated`` mated and ``nonmated`` non-mated searches, filled in by the caller."""
        return cls(
            np.empty(mated, dtype=np.float64),
            np.empty(mated, dtype=np.int64),
            np.empty(mated, dtype=np.int64),
            np.empty(nonmated, dtype=np.float64),
        )

    def head(self, mated: int, nonmated: int) -> "OpenSet":
        """The first ``mated`` mated and ``nonmated`` non-mated searches."""
        return OpenSet(
            self.mate_scores[:mated], self.mate_ranks[:mated], self.top1[:mated], self.nonmated_top[:nonmated]
        )


def far_label(far: float) -> str:
    """``1e-3`` style name of a FAR value."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> dict[str, float | int]:
    """TAR when scores above a threshold are accepted and at most ``far`` of impostors pass."""
    ranked = np.sort(impostor)[::-1]
    allowed = int(math.floor(far * len(ranked)))
    threshold = float(ranked[allowed]) if allowed < len(ranked) else -math.inf
    accepted = int(np.count_nonzero(ranked > threshold))
    return {
        "tar": float(np.mean(genuine > threshold)),
        "threshold": threshold,
        "far_achieved": accepted / len(ranked),
        "false_accepts": accepted,
    }


def det_curve(genuine: np.ndarray, impostor: np.ndarray, points: int = _DET_POINTS) -> dict[str, list[float]]:
    """FMR and FNMR over thresholds (accept when score > threshold), dense in the low-FMR tail.

    At most ``points`` of them, ordered by FMR; ``threshold`` gives each point's threshold.
    """
    gen = np.sort(genuine)
    imp = np.sort(impostor)
    n_imp, n_gen = len(imp), len(gen)
    # Thresholds at impostor ranks spaced evenly in log(FMR), plus genuine quantiles.
    ranks = np.unique(np.geomspace(1, n_imp, points).astype(np.int64))
    candidates = np.concatenate([imp[n_imp - ranks], np.quantile(gen, np.linspace(0, 1, points // 4))])
    thresholds = np.unique(candidates)
    fmr = (n_imp - np.searchsorted(imp, thresholds, side="right")) / n_imp
    fnmr = np.searchsorted(gen, thresholds, side="right") / n_gen
    order = np.argsort(fmr, kind="stable")
    fmr, fnmr, thresholds = fmr[order], fnmr[order], thresholds[order]
    if len(fmr) > points:
        keep = np.unique(np.linspace(0, len(fmr) - 1, points).astype(np.int64))
        fmr, fnmr, thresholds = fmr[keep], fnmr[keep], thresholds[keep]
    return {
        "fmr": [float(v) for v in fmr],
        "fnmr": [float(v) for v in fnmr],
        "threshold": [float(v) for v in thresholds],
    }


def eer_interval(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """The interval [low, high] holding the equal error rate (accept when score > threshold).

    FMR and FNMR are step functions of the threshold, so they rarely meet exactly.
    With t1 the highest threshold where FNMR <= FMR and t2 the lowest where
    FNMR >= FMR, the interval is [FNMR(t1), FMR(t1)] if FMR + FNMR is no larger
    at t1 than at t2, else [FMR(t2), FNMR(t2)] (the FVC2000 convention).
    """
    gen = np.sort(np.asarray(genuine, dtype=np.float64))
    imp = np.sort(np.asarray(impostor, dtype=np.float64))
    if len(gen) == 0 or len(imp) == 0:
        raise InvalidInputError("the EER needs genuine and impostor scores")
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([gen, imp]))])
    fmr = (len(imp) - np.searchsorted(imp, thresholds, side="right")) / len(imp)
    fnmr = np.searchsorted(gen, thresholds, side="right") / len(gen)
    t1 = int(np.flatnonzero(fnmr <= fmr)[-1])  # exists: FNMR is 0 below every score
    t2 = int(np.flatnonzero(fnmr >= fmr)[0])  # exists: FMR is 0 at the highest score
    if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2]:
        return float(fnmr[t1]), float(fmr[t1])
    return float(fmr[t2]), float(fnmr[t2])


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The equal error rate: the middle of :func:`eer_interval`."""
    low, high = eer_interval(genuine, impostor)
    return (low + high) / 2


# -- how low a rate the trials support -------------------------------------------------


def min_trials(rate: float, min_errors: int = MIN_ERRORS) -> int:
    """Trials needed before an error rate as low as ``rate`` is claimed: ``min_errors / rate``."""
    if not 0.0 < rate < 1.0:
        raise InvalidInputError(f"a rate must lie in (0, 1), got {rate}")
    if min_errors < 1:
        raise InvalidInputError(f"min_errors must be positive, got {min_errors}")
    return int(math.ceil(min_errors / rate - 1e-9))


def tar_points(
    genuine: np.ndarray, impostor: np.ndarray, fars: Sequence[float], *, min_errors: int = MIN_ERRORS
) -> dict[str, dict[str, Any]]:
    """:func:`tar_at_far` at each FAR, as reported: ``tar`` is None (with a ``reason``)
    where the impostor pairs are too few to support the FAR (see :data:`MIN_ERRORS`)."""
    points: dict[str, dict[str, Any]] = {}
    for far in fars:
        point: dict[str, Any] = dict(tar_at_far(genuine, impostor, far))
        needed = min_trials(far, min_errors)
        point["supported"] = len(impostor) >= needed
        if not point["supported"]:
            point["tar"] = None
            point["reason"] = (
                f"{len(impostor):,} impostor pairs allow {far * len(impostor):.1f} false accepts at FAR "
                f"{far_label(far)}; at least {min_errors} ({needed:,} pairs) are needed"
            )
        points[far_label(far)] = point
    return points


def verification_figures(
    scores: Scores, fars: Sequence[float], description: str, *, min_errors: int = MIN_ERRORS
) -> dict[str, Any]:
    """A scheme's verification entry of the report: TAR at each FAR, EER, score means, pair counts."""
    return {
        "description": description,
        "genuine_pairs": int(len(scores.genuine)),
        "impostor_pairs": int(len(scores.impostor)),
        "tar_at_far": tar_points(scores.genuine, scores.impostor, fars, min_errors=min_errors),
        "eer": equal_error_rate(scores.genuine, scores.impostor),
        "eer_interval": list(eer_interval(scores.genuine, scores.impostor)),
        "rank1": float(np.mean(scores.rank1_hits)) if len(scores.rank1_hits) else None,
        "genuine_score_mean": float(np.mean(scores.genuine)),
        "impostor_score_mean": float(np.mean(scores.impostor)),
    }


# -- open-set identification (1:N) ------------------------------------------------


def fnir_at_fpir(
    mate_scores: np.ndarray,
    mate_ranks: np.ndarray,
    nonmated_top: np.ndarray,
    fpir: float,
    *,
    candidates: int = 1,
) -> dict[str, float | int]:
    """FNIR at a target FPIR in open-set identification.

    ``mate_scores[i]`` and ``mate_ranks[i]`` (1 = best) describe the mate of mated
    search i (score -inf and a large rank when it was not returned);
    ``nonmated_top[j]`` is the best candidate score of non-mated search j. A
    search returns candidates scoring at or above the threshold, which is the
    lowest one letting at most ``fpir`` of the non-mated searches return anyone
    (ties at the boundary are rejected). FNIR is the share of mated searches
    whose mate is not returned within the first ``candidates`` ranks.
    """
    if not 0.0 < fpir < 1.0:
        raise InvalidInputError(f"FPIR must lie in (0, 1), got {fpir}")
    if candidates < 1:
        raise InvalidInputError(f"candidates must be positive, got {candidates}")
    scores = np.asarray(mate_scores, dtype=np.float64)
    ranks = np.asarray(mate_ranks)
    top = np.sort(np.asarray(nonmated_top, dtype=np.float64))[::-1]
    if len(scores) == 0 or len(top) == 0 or scores.shape != ranks.shape:
        raise InvalidInputError("need mated searches (scores and ranks alike) and non-mated searches")
    allowed = int(math.floor(fpir * len(top) + 1e-9))
    threshold = float(np.nextafter(top[allowed], np.inf))
    false_positives = int(np.count_nonzero(top >= threshold))
    returned = (ranks <= candidates) & (scores >= threshold)
    return {
        "fnir": float(1.0 - np.mean(returned)),
        "threshold": threshold,
        "fpir_achieved": false_positives / len(top),
        "false_positives": false_positives,
    }


def identification_figures(
    search: OpenSet, fpirs: Sequence[float], length: int, *, min_errors: int = MIN_ERRORS
) -> dict[str, Any]:
    """Rank-1 and FNIR at each FPIR (at rank 1 and within ``length`` candidates) of one scheme.

    FNIR is None (with a ``reason``) where the non-mated searches are too few to
    support the FPIR (see :data:`MIN_ERRORS`).
    """
    points: dict[str, Any] = {}
    top = search.nonmated_top
    for fpir in fpirs:
        first = fnir_at_fpir(search.mate_scores, search.mate_ranks, top, fpir, candidates=1)
        listed = fnir_at_fpir(search.mate_scores, search.mate_ranks, top, fpir, candidates=length)
        needed = min_trials(fpir, min_errors)
        point: dict[str, Any] = {
            "threshold": first["threshold"],
            "fpir_achieved": first["fpir_achieved"],
            "false_positives": first["false_positives"],
            "fnir_rank1": first["fnir"],
            "fnir_candidate_list": listed["fnir"],
            "supported": len(top) >= needed,
        }
        if not point["supported"]:
            point["fnir_rank1"] = point["fnir_candidate_list"] = None
            point["reason"] = (
                f"{len(top):,} non-mated searches allow {fpir * len(top):.1f} false positives at FPIR "
                f"{far_label(fpir)}; at least {min_errors} ({needed:,} searches) are needed"
            )
        points[far_label(fpir)] = point
    return {
        "mated_searches": int(len(search.mate_ranks)),
        "nonmated_searches": int(len(top)),
        "rank1": float(np.mean(search.mate_ranks == 1)),
        "at_fpir": points,
        "nonmated_top_score_mean": float(np.mean(top)),
    }


__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_FARS",
    "DEFAULT_FPIRS",
    "MIN_ERRORS",
    "OpenSet",
    "Scores",
    "det_curve",
    "eer_interval",
    "equal_error_rate",
    "far_label",
    "fnir_at_fpir",
    "identification_figures",
    "min_trials",
    "tar_at_far",
    "tar_points",
    "verification_figures",
]
