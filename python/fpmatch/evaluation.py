"""Evaluation of plain cosine and the protection schemes on synthetic faces.

For each synthetic profile (by default both, ``centred`` and ``offset``), one
gallery sample and one fresh (mated) probe per identity are drawn with
:class:`fpmatch.synthetic.FaceGenerator`, plus samples of people never
enrolled. Plain cosine and the ``hash`` scheme score the same pairs and
searches; the encrypted ``he`` and ``hybrid`` schemes score a documented part
of them (:class:`EncryptedSizes`), with plain cosine on exactly that part
beside them:

* verification (ISO/IEC 19795-1): genuine pairs (each probe against its own
  enrolled sample) and impostor pairs (each probe against the other enrolled
  samples, all of them or the first ``m`` when ``n * m`` would exceed
  ``max_impostors``); TAR at fixed FAR values (threshold from the impostor
  scores, so the achieved FAR never exceeds the target), the EER, FMR/FNMR
  curves with their thresholds;
* identification (1:N, open set): rank-1 accuracy and FNIR at fixed FPIR, the
  threshold set on the best candidate scores of non-mated searches (probes of
  people not enrolled); the hash scheme searches a :class:`FlatIndex`, ``he``
  scores the whole gallery under encryption, ``hybrid`` re-scores the hash
  shortlist under encryption;
* a FAR or FPIR is claimed only where the trials allow :data:`MIN_ERRORS`
  errors at it; otherwise its figure is None with the reason;
* unlinkability: D_sys (Gomez-Barrero et al., "General framework to evaluate
  unlinkability in biometric template protection systems", IEEE TIFS 2018)
  between codes of one person under two keys, against codes of different
  people under the two keys;
* renewability: old codes against re-keyed codes of the same people, next to
  genuine and impostor scores under one key, with Kolmogorov-Smirnov distances;
* irreversibility (ISO/IEC 24745): templates rebuilt from the stored codes by an
  attacker with and without the hash key (:func:`evaluate_inversion`);
* speed against gallery size (:func:`speed_vs_gallery_size`): faiss
  ``IndexFlatIP``, hash flat and hash IVF, ``he`` and ``hybrid``, enrolment,
  verification and identification one at a time on one thread.

Keys are derived from the seed, so a run is reproducible; they protect nothing
real (the CKKS keys are drawn afresh, which moves encrypted scores by about 1e-6).
``benchmarks/bench_eval.py`` runs all of it; ``benchmarks/bench_search.py`` and
``benchmarks/bench_he.py`` measure large galleries in more depth.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._core import scan_kernel
from ._progress import ProgressFactory, silent
from ._validate import as_template_rows
from .codes import PAIR_CHUNK, hamming_pairs, weighted_pairs
from .errors import InvalidInputError
from .gallery import Gallery, default_shortlist
from .hashing import DEFAULT_BITS, CancellableHash, estimate_offset
from .index import FlatIndex, IVFIndex
from .keys import HashKey
from .synthetic import PROFILES, FaceGenerator

DEFAULT_FARS = (1e-3, 1e-4)
DEFAULT_FPIRS = (0.003,)
DEFAULT_CANDIDATES = 20
#: The unlinkability target: D_sys at most this.
D_SYS_TARGET = 0.05
#: An error rate (FAR, FPIR) is claimed only where the trials allow at least this
#: many errors at it: the "rule of 30" of ISO/IEC 19795-1 (then the true rate lies
#: within +-30% of the observed one with 90% confidence). Below that, the figure at
#: that rate is reported as None with the reason.
MIN_ERRORS = 30
#: Largest gallery the encrypted schemes are timed at by default: enrolment runs at
#: a few thousand templates a second and a template takes 8 KB (512-D).
ENCRYPTED_MAX_N = 100_000
_ZERO = np.zeros(1, dtype=np.int64)
#: Plain and hash enrolment rates in the speed sweep are timed on at most this many templates per size.
_RATE_SAMPLE = 20_000
_CHUNK = 256
_GENERATE_CHUNK = 65536
_DET_POINTS = 120
_OFFSET_SAMPLES = 2000

@dataclass
class Scores:
    """Genuine and impostor similarity scores of one scheme (higher: more alike)."""

    genuine: np.ndarray
    impostor: np.ndarray
    rank1_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class EncryptedSizes:
    """How much of an evaluation the encrypted schemes score.

    An encrypted search costs milliseconds, so ``he`` and ``hybrid`` score a
    documented part of the plain pairs and searches, and the report holds plain
    cosine on exactly that part beside them:

    * ``probes``: the first mated probes. ``he`` scores each against the whole
      gallery in one packed 1:N request: its genuine pair, its impostor pairs
      (the same as plain's) and its rank. ``hybrid`` runs a 1:1 request for its
      genuine pair and a 1:N search (hash shortlist, encrypted re-scoring);
    * ``nonmated``: the first non-mated searches (people never enrolled);
    * ``hybrid_impostor_pairs``: impostor pairs scored through the ``hybrid`` 1:1
      path, about this many, whole probes at a time (the first of the pairs ``he`` scores,
      at most :data:`_HYBRID_COLUMNS` per probe);
    * ``shortlist``: candidates the ``hybrid`` hash stage hands on for re-scoring.
    """

    probes: int = 2000
    nonmated: int = 10_000
    hybrid_impostor_pairs: int = 300_000
    shortlist: int = 32

    def __post_init__(self) -> None:
        for name in ("probes", "nonmated", "hybrid_impostor_pairs", "shortlist"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def _import_he() -> Any:
    """:mod:`fpmatch.he`, or None without TenSEAL."""
    try:
        from . import he
    except ImportError:
        return None
    return he


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


# -- unlinkability (Gomez-Barrero et al., IEEE TIFS 2018) --------------------------


@dataclass(frozen=True)
class Unlinkability:
    """D_sys and the binned estimate behind it (``p_*``: share of each score set per bin)."""

    d_sys: float
    edges: np.ndarray
    p_mated: np.ndarray
    p_nonmated: np.ndarray
    local: np.ndarray
    method: str


def local_linkability(p_mated: np.ndarray, p_nonmated: np.ndarray, omega: float = 1.0) -> np.ndarray:
    """D<->(s) per bin: 2 w LR / (1 + w LR) - 1 where w LR > 1, else 0; LR = p_mated / p_nonmated."""
    pm = np.asarray(p_mated, dtype=np.float64)
    pn = np.asarray(p_nonmated, dtype=np.float64)
    ratio = np.divide(omega * pm, pn, out=np.full_like(pm, np.inf), where=pn > 0)
    ratio[(pn <= 0) & (pm <= 0)] = 0.0
    finite = np.isfinite(ratio)
    local = np.ones_like(ratio)  # an infinite ratio: the score alone links
    local[finite] = np.where(ratio[finite] > 1.0, 2.0 * ratio[finite] / (1.0 + ratio[finite]) - 1.0, 0.0)
    return local


def unlinkability(
    mated: np.ndarray,
    nonmated: np.ndarray,
    *,
    bins: int | str | np.ndarray = "auto",
    method: str = "histogram",
    omega: float = 1.0,
) -> Unlinkability:
    """The global unlinkability measure D_sys = integral of p(s | mated) D<->(s) ds.

    0 means mated and non-mated scores are alike (fully unlinkable), 1 fully
    linkable. ``method="histogram"`` estimates both densities on shared bins:
    ``"auto"`` spans the mated scores with 2 N^(1/3) bins (Rice's rule, N mated
    scores) holding equal shares of them, plus a bin on either side for the
    rest; an int makes equal-width bins over all scores; an array gives edges.
    ``method="kde"`` smooths a fine histogram (``bins`` cells, 1024 for
    ``"auto"``) with Gaussian kernels of Silverman's bandwidth.
    Finite samples bias D_sys upwards a little; compare with two samples of
    one distribution of the same sizes.
    """
    m = _scores_1d(mated, "mated")
    n = _scores_1d(nonmated, "non-mated")
    if not omega > 0:
        raise InvalidInputError(f"omega must be positive, got {omega}")
    if method == "histogram":
        edges = _histogram_edges(m, n, bins)
        p_m = np.histogram(m, edges)[0] / len(m)
        p_n = np.histogram(n, edges)[0] / len(n)
    elif method == "kde":
        edges, p_m, p_n = _kde_masses(m, n, bins)
    else:
        raise InvalidInputError(f"method must be 'histogram' or 'kde', got {method!r}")
    local = local_linkability(p_m, p_n, omega)
    return Unlinkability(float(np.sum(p_m * local)), edges, p_m, p_n, local, method)


def d_sys(
    mated: np.ndarray,
    nonmated: np.ndarray,
    *,
    bins: int | str | np.ndarray = "auto",
    method: str = "histogram",
    omega: float = 1.0,
) -> float:
    """D_sys of mated vs. non-mated linkage scores (see :func:`unlinkability`)."""
    return unlinkability(mated, nonmated, bins=bins, method=method, omega=omega).d_sys


def _scores_1d(values: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).ravel()
    if len(scores) == 0:
        raise InvalidInputError(f"no {name} scores")
    if not np.isfinite(scores).all():
        raise InvalidInputError(f"{name} scores contain NaN or Inf")
    return scores


def _histogram_edges(mated: np.ndarray, nonmated: np.ndarray, bins: int | str | np.ndarray) -> np.ndarray:
    low = float(min(mated.min(), nonmated.min()))
    high = float(max(mated.max(), nonmated.max()))
    if high <= low:
        low, high = low - 0.5, high + 0.5
    if isinstance(bins, str):
        if bins != "auto":
            raise InvalidInputError(f"bins must be 'auto', a count or edges, got {bins!r}")
        # Equal shares of the mated scores between their lowest and highest value;
        # scores of either set beyond that range fall in two outer bins.
        count = max(2, int(math.ceil(2.0 * len(mated) ** (1.0 / 3.0))))
        top = float(np.nextafter(mated.max(), np.inf))
        inner = np.quantile(mated, np.arange(1, count) / count)
        edges = np.concatenate([[low, float(mated.min())], inner, [top, max(high, top)]])
        return np.unique(edges)
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise InvalidInputError(f"bins must be positive, got {bins}")
        return np.linspace(low, high, int(bins) + 1)
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not (np.diff(edges) > 0).all():
        raise InvalidInputError("bin edges must be a rising 1-D array of at least 2 values")
    return edges


def _silverman(scores: np.ndarray) -> float:
    spread = float(np.std(scores))
    q75, q25 = np.quantile(scores, [0.75, 0.25])
    iqr = float(q75 - q25) / 1.34
    sigma = min(spread, iqr) if iqr > 0 else spread
    return float(0.9 * sigma * len(scores) ** -0.2)


def _kde_masses(
    mated: np.ndarray, nonmated: np.ndarray, bins: int | str | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(bins, str) and bins == "auto":
        cells = 1024
    elif isinstance(bins, (int, np.integer)) and not isinstance(bins, bool) and bins >= 8:
        cells = int(bins)
    else:
        raise InvalidInputError("with method='kde', bins is 'auto' or a cell count of at least 8")
    widths = (_silverman(mated), _silverman(nonmated))
    pad = 5.0 * max(widths)
    low = float(min(mated.min(), nonmated.min())) - pad
    high = float(max(mated.max(), nonmated.max())) + pad
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, cells + 1)
    cell = edges[1] - edges[0]
    masses = []
    for scores, width in zip((mated, nonmated), widths):
        counts = np.histogram(scores, edges)[0].astype(np.float64)
        sigma = width / cell
        if sigma >= 0.5:
            reach = int(math.ceil(5.0 * sigma))
            offsets = np.arange(-reach, reach + 1, dtype=np.float64)
            kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
            counts = np.convolve(counts, kernel / kernel.sum())[reach : reach + cells]
        masses.append(counts / counts.sum())
    return edges, masses[0], masses[1]


# -- two-sample statistics ----------------------------------------------------------


def ks_statistic(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Two-sample Kolmogorov-Smirnov distance between score samples ``a`` and ``b``.

    ``statistic`` is max |F_a - F_b|; ``a_above_b`` is max(F_b - F_a, 0), how far
    ``a`` reaches above ``b``; ``p_value`` is the asymptotic two-sided value (with
    millions of scores even a negligible difference is significant).
    """
    x = np.sort(_scores_1d(a, "first"))
    y = np.sort(_scores_1d(b, "second"))
    points = np.concatenate([x, y])
    fx = np.searchsorted(x, points, side="right") / len(x)
    fy = np.searchsorted(y, points, side="right") / len(y)
    statistic = float(np.max(np.abs(fx - fy)))
    effective = len(x) * len(y) / (len(x) + len(y))
    return {
        "statistic": statistic,
        "a_above_b": float(max(0.0, np.max(fy - fx))),
        "p_value": _kolmogorov_tail((math.sqrt(effective) + 0.12 + 0.11 / math.sqrt(effective)) * statistic),
    }


def _kolmogorov_tail(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum (-1)^(k-1) exp(-2 k^2 lam^2)."""
    if lam < 0.2:
        return 1.0
    k = np.arange(1, 101, dtype=np.float64)
    total = 2.0 * float(np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k * k * lam * lam)))
    return min(1.0, max(0.0, total))


def score_summary(scores: np.ndarray) -> dict[str, float | int]:
    """Mean, standard deviation and count of a score sample."""
    values = np.asarray(scores, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std()), "count": int(len(values))}


def _bench_key(seed: int, role: str = "") -> HashKey:
    label = f"fpmatch.evaluation.{seed}" + (f".{role}" if role else "")
    return HashKey(hashlib.sha256(label.encode()).digest())


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _plain_search(gallery: np.ndarray, probe: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best inner products, best first (the unprotected baseline)."""
    scores = gallery @ probe
    top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
    return np.asarray(top[np.argsort(-scores[top])])


@dataclass(frozen=True, eq=False)
class EvaluationData:
    """Templates for one evaluation run.

    ``enrolment[i]`` and ``probes[i]`` are two samples of person i; ``strangers``
    are never enrolled (non-mated 1:N searches); ``offset_samples`` come from people
    never enrolled and serve only to estimate a model's shared offset direction.
    """

    name: str
    enrolment: np.ndarray
    probes: np.ndarray
    strangers: np.ndarray
    offset_samples: np.ndarray


def synthetic_data(profile: str, n: int, nonmated: int, seed: int = 0) -> EvaluationData:
    """Draw an evaluation set from a built-in synthetic profile."""
    if profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    faces = FaceGenerator(profile, seed)
    people = faces.identities(n)
    enrolment = faces.samples(people)
    probes = faces.samples(people)
    offset_samples = faces.samples(faces.identities(_OFFSET_SAMPLES))
    strangers = faces.samples(faces.identities(nonmated))
    return EvaluationData(profile, enrolment, probes, strangers, offset_samples)


def load_labelled(
    embeddings: str | os.PathLike[str], labels: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings (n, d) float32 and labels (n,) from an .npz holding arrays
    ``embeddings`` and ``labels``, or from an .npy of embeddings plus an .npy of labels.

    Nothing is cast: float64 embeddings raise :class:`~fpmatch.errors.DtypeError`.
    """
    path = Path(embeddings)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if "embeddings" not in archive or "labels" not in archive:
                raise InvalidInputError(f"{path} must hold arrays named 'embeddings' and 'labels'")
            x, y = archive["embeddings"], archive["labels"]
    else:
        if labels is None:
            raise InvalidInputError("an .npy of embeddings needs a labels file (or use an .npz)")
        x, y = np.load(path, allow_pickle=False), np.load(labels, allow_pickle=False)
    if x.ndim != 2:
        raise InvalidInputError(f"embeddings must be a 2-D array (n, d), got shape {x.shape}")
    x = as_template_rows(x, x.shape[1], "embeddings")
    if not np.isfinite(x).all():
        raise InvalidInputError(f"{path} holds NaN or Inf")
    if y.ndim != 1 or len(y) != len(x):
        raise InvalidInputError(f"labels must be 1-D with one label per embedding, got shape {y.shape}")
    return np.ascontiguousarray(x), y


def split_labelled(
    embeddings: np.ndarray, labels: np.ndarray, *, name: str = "labelled", stranger_share: float = 0.3, seed: int = 0
) -> EvaluationData:
    """Split labelled embeddings into an evaluation set.

    People are shuffled; a share ``stranger_share`` of those with two or more samples,
    and everyone with one sample, are never enrolled: their first samples are the
    non-mated probes and all their samples estimate the offset. The rest give their
    first sample to enrolment and their second to the mated probes.
    """
    if not 0.0 < stranger_share < 1.0:
        raise InvalidInputError(f"stranger_share must lie in (0, 1), got {stranger_share}")
    rng = np.random.default_rng(seed)
    people, counts = np.unique(labels, return_counts=True)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    paired = rng.permutation(np.flatnonzero(counts >= 2))
    enrolled = np.sort(paired[int(round(len(paired) * stranger_share)) :])
    if len(enrolled) < 2:
        raise InvalidInputError("need at least two people with two or more samples to enrol")
    others = np.setdiff1d(np.arange(len(people)), enrolled)
    if len(others) == 0:
        raise InvalidInputError("no people left to act as strangers; lower stranger_share or add people")

    def rows_of(group: np.ndarray, k: int) -> np.ndarray:  # the k-th sample of each person in group
        return order[starts[group] + k]

    stranger_rows = np.concatenate([order[starts[g] : starts[g] + counts[g]] for g in others])
    return EvaluationData(
        name,
        embeddings[rows_of(enrolled, 0)],
        embeddings[rows_of(enrolled, 1)],
        embeddings[rows_of(others, 0)],
        embeddings[stranger_rows],
    )


def run_evaluation(
    n: int = 2000,
    *,
    profiles: Sequence[str] = ("centred", "offset"),
    seed: int = 0,
    bits: int = DEFAULT_BITS,
    fars: Sequence[float] = DEFAULT_FARS,
    max_impostors: int = 4_000_000,
    rank1_probes: int = 2000,
    timing_queries: int = 200,
    nonmated_searches: int | None = None,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    candidates: int = DEFAULT_CANDIDATES,
    linkage_pairs: int = 1_000_000,
    encrypted: EncryptedSizes | None = EncryptedSizes(),
    inversion_pairs: int = 500_000,
    min_errors: int = MIN_ERRORS,
    progress: ProgressFactory | None = None,
    datasets: Sequence[EvaluationData] = (),
) -> dict[str, Any]:
    """Evaluate each synthetic profile and each given dataset; return the whole report (JSON-ready).

    Unlinkability, renewability and irreversibility results sit under the
    top-level keys ``d_sys``, ``renewability`` and ``irreversibility``, one entry
    per profile. ``encrypted`` sizes the ``he`` and ``hybrid`` part (None leaves
    it out; without TenSEAL it is left out with a note).
    """
    if not profiles and not datasets:
        raise InvalidInputError("name at least one profile or dataset")
    started = time.perf_counter()
    notes: list[str] = []
    if encrypted is not None and _import_he() is None:
        notes.append("TenSEAL is not installed: no he / hybrid figures (pip install fpmatch[he])")
        encrypted = None
    runs: list[tuple[str, EvaluationData | None]] = [(name, None) for name in dict.fromkeys(profiles)]
    runs += [(data.name, data) for data in datasets]
    results = {
        name: evaluate_profile(
            n,
            profile=name,
            data=data,
            seed=seed,
            bits=bits,
            fars=fars,
            max_impostors=max_impostors,
            rank1_probes=rank1_probes,
            timing_queries=timing_queries,
            nonmated_searches=nonmated_searches,
            fpirs=fpirs,
            candidates=candidates,
            linkage_pairs=linkage_pairs,
            encrypted=encrypted,
            inversion_pairs=inversion_pairs,
            min_errors=min_errors,
            progress=progress,
        )
        for name, data in runs
    }
    unlinkable = {name: result.pop("d_sys") for name, result in results.items()}
    renewal = {name: result.pop("renewability") for name, result in results.items()}
    inversion = {name: result.pop("irreversibility") for name, result in results.items()}
    return {
        "kind": "fpmatch built-in evaluation",
        "fpmatch_version": _version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key": "derived from the seed (evaluation only)",
        "schemes": list(next(iter(results.values()))["schemes"]),
        "min_errors": min_errors,
        "min_errors_note": f"a FAR or FPIR is reported only where the trials allow at least {min_errors} errors at "
        "it (the rule of 30, ISO/IEC 19795-1); otherwise its TAR or FNIR is null with the reason",
        "profiles": results,
        "d_sys": unlinkable,
        "renewability": renewal,
        "irreversibility": inversion,
        "notes": notes,
        "total_s": time.perf_counter() - started,
        "environment": _environment(),
    }


def _environment() -> dict[str, Any]:
    environment: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "scan_kernel": scan_kernel(),
    }
    try:
        import tenseal

        environment["tenseal"] = tenseal.__version__
    except ImportError:
        pass
    return environment


def evaluate_profile(
    n: int = 2000,
    *,
    profile: str = "centred",
    data: EvaluationData | None = None,
    seed: int = 0,
    bits: int = DEFAULT_BITS,
    fars: Sequence[float] = DEFAULT_FARS,
    max_impostors: int = 4_000_000,
    rank1_probes: int = 2000,
    timing_queries: int = 200,
    nonmated_searches: int | None = None,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    candidates: int = DEFAULT_CANDIDATES,
    linkage_pairs: int = 1_000_000,
    encrypted: EncryptedSizes | None = None,
    inversion_pairs: int = 500_000,
    min_errors: int = MIN_ERRORS,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Evaluate the schemes on one synthetic profile, or on ``data`` when given
    (then ``n`` and ``nonmated_searches`` come from it and ``profile`` is its name).

    Besides verification: open-set 1:N against ``nonmated_searches`` (default ``n``)
    probes of people not enrolled; unlinkability (D_sys) and renewability of the
    hash scheme under a second key; irreversibility (:func:`evaluate_inversion`);
    and, with ``encrypted``, the ``he`` and ``hybrid`` schemes on the part of the
    pairs and searches it names (:func:`evaluate_encrypted`).
    """
    if data is not None:
        profile, n, nonmated_searches = data.name, len(data.enrolment), len(data.strangers)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidInputError(f"n must be an integer of at least 2, got {n!r}")
    if data is None and profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    if not fars:
        raise InvalidInputError("name at least one FAR value")
    for far in fars:
        if not 0.0 < far < 1.0:
            raise InvalidInputError(f"FAR values must lie in (0, 1), got {far}")
    if max_impostors < 1 or rank1_probes < 1 or timing_queries < 1 or inversion_pairs < 1:
        raise InvalidInputError("max_impostors, rank1_probes, timing_queries and inversion_pairs must be positive")
    nonmated_count = n if nonmated_searches is None else nonmated_searches
    if isinstance(nonmated_count, bool) or not isinstance(nonmated_count, int) or nonmated_count < 1:
        raise InvalidInputError(f"nonmated_searches must be a positive integer, got {nonmated_searches!r}")
    make_bar = silent if progress is None else progress

    def bar(label: str, total: int) -> Any:
        return make_bar(f"{profile}: {label}", total)

    started = time.perf_counter()
    if data is None:
        data = synthetic_data(profile, n, nonmated_count, seed)
    enrolment, probes, strangers = data.enrolment, data.probes, data.strangers
    offset = estimate_offset(data.offset_samples)
    dim = enrolment.shape[1]
    scheme = CancellableHash(_bench_key(seed), dim, bits, offset=offset)
    rekeyed = CancellableHash(_bench_key(seed, "renewed"), dim, bits, offset=offset)
    names = [f"subject-{i:06d}" for i in range(n)]

    gallery = Gallery(scheme)
    begin = time.perf_counter()
    gallery.enrol(names, enrolment)
    enrol_s = time.perf_counter() - begin

    plain, hashed = _score_pairs(enrolment, probes, scheme, max_impostors, rank1_probes, bar)
    probes_r1 = min(n, rank1_probes)
    found = gallery.identify_many(probes[:probes_r1], k=1, threshold=-1.0)
    hashed.top1 = np.array([gallery.id_of(c[0].subject) if c else -1 for c in found], dtype=np.int64)
    hashed.rank1_hits = hashed.top1 == np.arange(probes_r1)

    descriptions = {
        "plain": "exact cosine similarity on unprotected float32 templates (the baseline)",
        "hash": f"{scheme.scheme} keyed cancellable codes, {bits} bits; score 1 - 2d, d the probe's "
        "reliability-weighted Hamming distance to the stored code (as Gallery.verify); 1:N re-ranks a "
        f"Hamming shortlist of {default_shortlist(scheme)} that way (as Gallery.identify)",
    }
    schemes = {
        name: verification_figures(scores, fars, descriptions[name], min_errors=min_errors)
        for name, scores in (("plain", plain), ("hash", hashed))
    }
    det = {name: det_curve(s.genuine, s.impostor) for name, s in (("plain", plain), ("hash", hashed))}

    length = min(candidates, n)
    searches = open_set_searches(enrolment, probes, strangers, scheme, candidates, bar)
    identification = _identification_report(searches, length, fpirs, min_errors)
    linkage = evaluate_linkage(enrolment, probes, scheme, rekeyed, pairs=linkage_pairs, fars=fars, seed=seed)
    inversion = evaluate_inversion(
        enrolment,
        probes,
        scheme,
        CancellableHash(_bench_key(seed, "attacker"), dim, bits, offset=offset),
        far=fars[0],
        impostor_pairs=inversion_pairs,
        seed=seed,
        min_errors=min_errors,
    )

    threshold = schemes["hash"]["tar_at_far"][far_label(fars[0])]["threshold"]
    timing = _time_queries(gallery, names, enrolment, probes, max(-1.0, min(1.0, threshold)), timing_queries, bar)
    timing["enrol_per_s"] = n / max(enrol_s, 1e-9)

    parameters: dict[str, Any] = {
        "n": n,
        "profile": profile,
        "dim": dim,
        "bits": bits,
        "seed": seed,
        "offset_removed": offset is not None,
        "far_targets": [far_label(f) for f in fars],
        "genuine_pairs": int(len(plain.genuine)),
        "impostor_pairs": int(len(plain.impostor)),
        "rank1_probes": probes_r1,
        "timing_queries": min(n, timing_queries),
        "nonmated_searches": nonmated_count,
        "fpir_targets": [far_label(f) for f in fpirs],
        "candidate_list_length": length,
        "min_errors": min_errors,
    }
    if encrypted is not None:
        part = evaluate_encrypted(
            enrolment,
            probes,
            strangers,
            scheme,
            sizes=encrypted,
            max_impostors=max_impostors,
            fars=fars,
            fpirs=fpirs,
            candidates=candidates,
            min_errors=min_errors,
            progress=bar,
        )
        schemes.update(part["schemes"])
        identification.update(part["identification"])
        det.update(part["det"])
        parameters["encrypted"] = part["parameters"]
        timing["encrypted"] = part["timing"]
    timing["total_s"] = time.perf_counter() - started

    return {
        "parameters": parameters,
        "schemes": schemes,
        "identification": identification,
        "d_sys": linkage["d_sys"],
        "renewability": linkage["renewability"],
        "irreversibility": inversion,
        "rank1_agreement": float(np.mean(plain.top1 == hashed.top1)),
        "timing": timing,
        "det": det,
    }


def _version() -> str:
    from . import __version__

    return __version__


def _score_pairs(
    enrolment: np.ndarray,
    probes: np.ndarray,
    scheme: CancellableHash,
    max_impostors: int,
    rank1_probes: int,
    bar: ProgressFactory,
) -> tuple[Scores, Scores]:
    """Genuine and impostor scores of plain cosine and the hash scheme, and plain rank-1 over the gallery.

    Hash scores are those :meth:`Gallery.verify` decides on: the probe (code and
    bit reliabilities) against the stored code, 1 - 2 d with d the weighted
    Hamming distance.
    """
    n = len(enrolment)
    gallery_plain = _unit(enrolment.astype(np.float32))
    probe_plain = _unit(probes.astype(np.float32))
    gallery_codes = scheme.protect(enrolment)
    probe_codes, probe_weights = scheme.protect_with_reliability(probes)
    columns = _impostor_columns(n, max_impostors)
    probes_r1 = min(n, rank1_probes)

    def hash_scores(rows: np.ndarray, enrolled: np.ndarray) -> np.ndarray:
        distances = weighted_pairs(probe_codes, probe_weights, rows, gallery_codes, enrolled)
        return np.asarray(scheme.weighted_score(distances))

    plain_imp: list[np.ndarray] = []
    hash_imp: list[np.ndarray] = []
    top1 = np.empty(probes_r1, dtype=np.int64)
    steps = math.ceil(n / _CHUNK)
    with bar("scoring pairs", steps) as progress:
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            rows = np.arange(start, stop)
            if start < probes_r1:
                full = probe_plain[start:stop] @ gallery_plain.T
                upto = min(stop, probes_r1)
                top1[start:upto] = np.argmax(full[: upto - start], axis=1)
                cos = full[:, :columns]
            else:
                cos = probe_plain[start:stop] @ gallery_plain[:columns].T
            keep = rows[:, None] != np.arange(columns)[None, :]
            plain_imp.append(cos[keep].astype(np.float64))
            pair_rows, pair_columns = np.nonzero(keep)  # row-major: the order of cos[keep]
            hash_imp.append(hash_scores(pair_rows + start, pair_columns))
            progress.update()

    every = np.arange(n, dtype=np.int64)
    genuine_cos = np.einsum("ij,ij->i", probe_plain, gallery_plain).astype(np.float64)
    plain = Scores(genuine_cos, np.concatenate(plain_imp), top1 == np.arange(probes_r1), top1)
    hashed = Scores(hash_scores(every, every), np.concatenate(hash_imp))
    return plain, hashed


def _time_queries(
    gallery: Gallery,
    names: list[str],
    enrolment: np.ndarray,
    probes: np.ndarray,
    threshold: float,
    queries: int,
    bar: ProgressFactory,
) -> dict[str, float]:
    """Mean single-query latency (ms): hash verify, hash identify (k=5), plain exact search (k=5)."""
    count = min(len(names), queries)
    plain_gallery = np.ascontiguousarray(enrolment)
    verify_s = identify_s = plain_s = 0.0
    with bar("timing queries", count) as progress:
        for i in range(count):
            probe = probes[i]
            t0 = time.perf_counter()
            gallery.verify(names[i], probe, threshold=threshold)
            t1 = time.perf_counter()
            gallery.identify(probe, k=5, threshold=threshold)
            t2 = time.perf_counter()
            _plain_search(plain_gallery, probe, 5)
            t3 = time.perf_counter()
            verify_s += t1 - t0
            identify_s += t2 - t1
            plain_s += t3 - t2
            progress.update()
    return {
        "hash_verify_ms": verify_s * 1000 / count,
        "hash_identify_ms": identify_s * 1000 / count,
        "plain_identify_ms": plain_s * 1000 / count,
    }


# -- pairwise scoring ------------------------------------------------------------------


def _pair_cosines(x: np.ndarray, rows_x: np.ndarray, y: np.ndarray, rows_y: np.ndarray) -> np.ndarray:
    """Inner products of unit rows ``x[rows_x[i]]`` and ``y[rows_y[i]]``."""
    out = np.empty(len(rows_x), dtype=np.float64)
    for start in range(0, len(rows_x), PAIR_CHUNK):
        stop = min(len(rows_x), start + PAIR_CHUNK)
        out[start:stop] = np.einsum("ij,ij->i", x[rows_x[start:stop]], y[rows_y[start:stop]], dtype=np.float64)
    return out


def _nonmated_pairs(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i != j: all of them when there are at most ``count``, else ``count`` at random."""
    if n * (n - 1) <= count:
        i, j = np.divmod(np.arange(n * n, dtype=np.int64), n)
        keep = i != j
        return i[keep], j[keep]
    i = rng.integers(0, n, count)
    j = rng.integers(0, n - 1, count)
    j += j >= i
    return i, j


# -- 1:N over both schemes -----------------------------------------------------------


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

    def head(self, mated: int, nonmated: int) -> "OpenSet":
        """The first ``mated`` mated and ``nonmated`` non-mated searches."""
        return OpenSet(
            self.mate_scores[:mated], self.mate_ranks[:mated], self.top1[:mated], self.nonmated_top[:nonmated]
        )


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


def evaluate_identification(
    enrolment: np.ndarray,
    mated_probes: np.ndarray,
    nonmated_probes: np.ndarray,
    scheme: CancellableHash,
    *,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    candidates: int = DEFAULT_CANDIDATES,
    progress: ProgressFactory | None = None,
    min_errors: int = MIN_ERRORS,
) -> dict[str, Any]:
    """Open-set 1:N figures of plain cosine and the hash scheme (exact :class:`FlatIndex`).

    Row i of ``mated_probes`` is a fresh sample of the person enrolled in row i of
    ``enrolment``; ``nonmated_probes`` are samples of people who are not enrolled.
    Each search asks for a candidate list of ``candidates`` entries.
    """
    searches = open_set_searches(enrolment, mated_probes, nonmated_probes, scheme, candidates, progress)
    return _identification_report(searches, min(candidates, len(enrolment)), fpirs, min_errors)


def open_set_searches(
    enrolment: np.ndarray,
    mated_probes: np.ndarray,
    nonmated_probes: np.ndarray,
    scheme: CancellableHash,
    candidates: int = DEFAULT_CANDIDATES,
    progress: ProgressFactory | None = None,
) -> dict[str, OpenSet]:
    """Raw open-set results of plain cosine and the hash scheme, as :func:`evaluate_identification` uses."""
    n = len(enrolment)
    if n < 2 or len(mated_probes) != n or len(nonmated_probes) < 1:
        raise InvalidInputError("need 2+ enrolled rows, one mated probe per row and non-mated probes")
    if candidates < 1:
        raise InvalidInputError(f"candidates must be positive, got {candidates}")
    bar = silent if progress is None else progress
    return {
        "plain": _plain_open_set(enrolment, mated_probes, nonmated_probes, bar),
        "hash": _hash_open_set(enrolment, mated_probes, nonmated_probes, scheme, min(candidates, n)),
    }


def _identification_report(
    searches: dict[str, OpenSet], length: int, fpirs: Sequence[float], min_errors: int
) -> dict[str, Any]:
    for fpir in fpirs:
        if not 0.0 < fpir < 1.0:
            raise InvalidInputError(f"FPIR values must lie in (0, 1), got {fpir}")
    first = next(iter(searches.values()))
    result: dict[str, Any] = {
        "mated_searches": int(len(first.mate_ranks)),
        "nonmated_searches": int(len(first.nonmated_top)),
        "candidate_list_length": length,
        "decision": "a search returns the candidates scoring at or above the threshold; the threshold is the "
        "lowest that lets at most FPIR of the non-mated searches return anyone",
        "fnir_rank1": "share of mated searches whose mate is not the top candidate at or above the threshold",
        "fnir_candidate_list": "share of mated searches whose mate is not within the candidate list at or above "
        "the threshold",
        "min_errors": min_errors,
    }
    for name, search in searches.items():
        result[name] = identification_figures(search, fpirs, length, min_errors=min_errors)
    return result


def _plain_open_set(enrolment: np.ndarray, mated: np.ndarray, nonmated: np.ndarray, bar: ProgressFactory) -> OpenSet:
    """Mate scores, mate ranks (ties count against the mate), top rows and best non-mated scores, exact cosine."""
    gallery = _unit(enrolment.astype(np.float32))
    probes = _unit(mated.astype(np.float32))
    others = _unit(nonmated.astype(np.float32))
    n = len(gallery)
    mate = np.empty(n, dtype=np.float64)
    rank = np.empty(n, dtype=np.int64)
    top1 = np.empty(n, dtype=np.int64)
    top = np.empty(len(others), dtype=np.float64)
    with bar("1:N plain searches", math.ceil(n / _CHUNK) + math.ceil(len(others) / _CHUNK)) as progress:
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            scores = probes[start:stop] @ gallery.T
            own = scores[np.arange(stop - start), np.arange(start, stop)]
            mate[start:stop] = own
            rank[start:stop] = np.count_nonzero(scores >= own[:, None], axis=1)
            top1[start:stop] = np.argmax(scores, axis=1)
            progress.update()
        for start in range(0, len(others), _CHUNK):
            stop = min(len(others), start + _CHUNK)
            top[start:stop] = np.max(others[start:stop] @ gallery.T, axis=1)
            progress.update()
    return OpenSet(mate, rank, top1, top)


def _hash_open_set(
    enrolment: np.ndarray,
    mated: np.ndarray,
    nonmated: np.ndarray,
    scheme: CancellableHash,
    length: int,
    shortlist: int | None = None,
) -> OpenSet:
    """As :func:`_plain_open_set`, searching as :meth:`Gallery.identify` does (a Hamming shortlist
    of an exact :class:`FlatIndex`, ranked by probe-weighted distance); a mate outside the list ranks n + 1."""
    shortlist = default_shortlist(scheme) if shortlist is None else shortlist
    n = len(enrolment)
    index = FlatIndex(scheme.bits)
    index.add(scheme.protect(enrolment), np.arange(n, dtype=np.int64))
    codes, weights = scheme.protect_with_reliability(mated)
    found = index.search_weighted(codes, weights, length, shortlist)
    hit = found.labels == np.arange(n, dtype=np.int64)[:, None]
    listed = hit.any(axis=1)
    position = np.argmax(hit, axis=1)
    rank = np.where(listed, position + 1, n + 1).astype(np.int64)
    distance = found.distances[np.arange(n), position]
    mate = np.where(listed, np.asarray(scheme.weighted_score(distance)), -np.inf)
    codes, weights = scheme.protect_with_reliability(nonmated)
    best = index.search_weighted(codes, weights, 1, shortlist).distances[:, 0]
    top = np.asarray(scheme.weighted_score(best))
    return OpenSet(mate, rank, found.labels[:, 0].astype(np.int64), top)


# -- unlinkability and renewability under two keys -------------------------------------


def evaluate_linkage(
    first: np.ndarray,
    second: np.ndarray,
    scheme_a: CancellableHash,
    scheme_b: CancellableHash,
    *,
    pairs: int = 1_000_000,
    fars: Sequence[float] = DEFAULT_FARS,
    bins: int | str | np.ndarray = "auto",
    method: str = "histogram",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Unlinkability (D_sys) and renewability of the hash scheme under two keys.

    ``first[i]`` and ``second[i]`` are two samples of subject i. Deployment A keeps
    codes of ``first`` under ``scheme_a``; deployment B (or A after re-keying) codes
    of ``second`` under ``scheme_b``. The linkage score is the scheme's own,
    cos(pi * h / bits). Returns ``{"d_sys": ..., "renewability": ...}``.
    """
    n = len(first)
    if n < 2 or first.shape != second.shape:
        raise InvalidInputError("first and second must hold two samples each of the same 2+ subjects")
    if scheme_a.bits != scheme_b.bits or scheme_a.dim != scheme_b.dim:
        raise InvalidInputError("both schemes must have one code length and template dimension")
    if scheme_a.key.key_id == scheme_b.key.key_id:
        raise InvalidInputError("the two schemes must use different keys")
    if pairs < 1:
        raise InvalidInputError(f"pairs must be positive, got {pairs}")
    rng = np.random.default_rng([seed, 0x11C4])
    rows = np.arange(n, dtype=np.int64)
    i, j = _nonmated_pairs(n, pairs, rng)
    a_first = scheme_a.protect(first)
    a_second = scheme_a.protect(second)
    b_second = scheme_b.protect(second)

    def scores(x: np.ndarray, rx: np.ndarray, y: np.ndarray, ry: np.ndarray) -> np.ndarray:
        return np.asarray(scheme_a.score(hamming_pairs(x, rx, y, ry)), dtype=np.float64)

    genuine = scores(a_first, rows, a_second, rows)
    impostor = scores(a_first, i, a_second, j)
    renewed = scores(a_first, rows, b_second, rows)
    cross = scores(a_first, i, b_second, j)

    link = unlinkability(renewed, cross, bins=bins, method=method)
    shuffled = rng.permutation(cross)
    size = min(len(renewed), len(cross) // 2)
    floor = d_sys(shuffled[:size], shuffled[size:], bins=bins, method=method)
    plain_first = _unit(first.astype(np.float32))
    plain_second = _unit(second.astype(np.float32))
    plain_mated = _pair_cosines(plain_first, rows, plain_second, rows)
    plain_nonmated = _pair_cosines(plain_first, i, plain_second, j)

    unlinkable = {
        "value": link.d_sys,
        "target": D_SYS_TARGET,
        "meets_target": bool(link.d_sys <= D_SYS_TARGET),
        "score": "cos(pi * h / bits), h the Hamming distance between a code under key A and one under key B",
        "mated": "two different samples of one subject, the first protected under key A, the second under key B",
        "nonmated": "samples of two different subjects, protected under key A and key B",
        "mated_pairs": int(len(renewed)),
        "nonmated_pairs": int(len(cross)),
        "method": method,
        "bins": int(len(link.edges) - 1),
        "omega": 1.0,
        "value_kde": d_sys(renewed, cross, method="kde") if method == "histogram" else link.d_sys,
        "sampling_floor": floor,
        "sampling_floor_note": "D_sys of two samples of the non-mated scores (sizes as above): what sampling "
        "noise alone gives",
        "reference": {
            "plain_templates": d_sys(plain_mated, plain_nonmated, bins=bins, method=method),
            "hash_same_key": d_sys(genuine, impostor, bins=bins, method=method),
        },
        "curve": {
            "edges": [float(v) for v in link.edges],
            "p_mated": [float(v) for v in link.p_mated],
            "p_nonmated": [float(v) for v in link.p_nonmated],
            "local": [float(v) for v in link.local],
        },
    }
    accepted: dict[str, dict[str, float]] = {}
    for far in fars:
        point = tar_at_far(genuine, impostor, far)
        accepted[far_label(far)] = {
            "threshold": float(point["threshold"]),
            "genuine": float(point["tar"]),
            "renewed_mated": float(np.mean(renewed > point["threshold"])),
            "impostor": float(point["far_achieved"]),
        }
    renewal = {
        "description": "old codes (key A) against re-keyed codes (key B) of fresh samples of the same people, "
        "next to genuine and impostor scores under key A alone",
        "genuine_same_key": score_summary(genuine),
        "impostor_same_key": score_summary(impostor),
        "renewed_mated": score_summary(renewed),
        "impostor_cross_key": score_summary(cross),
        "ks_renewed_vs_impostor": ks_statistic(renewed, impostor),
        "ks_genuine_vs_impostor": ks_statistic(genuine, impostor),
        "ks_renewed_vs_cross_key_impostor": ks_statistic(renewed, cross),
        "ks_note": "statistic: max |F_a - F_b|; a_above_b: how far the first set reaches above the second "
        "(0: never more similar than it)",
        "accepted_at_far": accepted,
    }
    return {"d_sys": unlinkable, "renewability": renewal}


# -- the encrypted schemes (he, hybrid) ----------------------------------------------------


def _he_parties(he: Any) -> tuple[Any, Any, Any]:
    """(key holder, secret-key audit, public context) for one run.

    The audit reads the key file the holder writes; it decrypts exactly the
    requests the key holder would decide on, which the holder never releases.
    """
    from tempfile import TemporaryDirectory

    from .he.audit import SecretKeyAudit

    limits = he.RateLimit(requests_per_second=1e9, burst=10**9, max_scores=1 << 23, max_k=100)
    holder = he.KeyHolder(limits=limits)
    with TemporaryDirectory(prefix="fpmatch-eval-") as tmp:
        audit = SecretKeyAudit(holder.save(Path(tmp) / "he.key"))
    return holder, audit, he.PublicContext(holder.public_context())


def _impostor_columns(n: int, max_impostors: int) -> int:
    """Enrolled rows each probe is paired with as an impostor: all, or the first ``max_impostors / (n - 1)``."""
    return max(1, min(n, max_impostors // max(1, n - 1)))


def _impostor_layout(probes: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Impostor pairs (probe i, enrolled j) for i < ``probes``, j < ``columns``, j != i, probe by probe."""
    i, j = np.divmod(np.arange(probes * columns, dtype=np.int64), columns)
    keep = i != j
    return i[keep], j[keep]


#: Impostors per ``hybrid`` 1:1 request (one probe against this many claimed subjects at most).
_HYBRID_COLUMNS = 400


def evaluate_encrypted(
    enrolment: np.ndarray,
    probes: np.ndarray,
    strangers: np.ndarray,
    scheme: CancellableHash,
    *,
    sizes: EncryptedSizes = EncryptedSizes(),
    max_impostors: int = 4_000_000,
    fars: Sequence[float] = DEFAULT_FARS,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    candidates: int = DEFAULT_CANDIDATES,
    min_errors: int = MIN_ERRORS,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """The ``he`` and ``hybrid`` schemes on a part of the evaluation (see :class:`EncryptedSizes`).

    Rows as for :func:`evaluate_identification`; impostor pairs are laid out as
    the plain ones are (probe i against the first enrolled rows, ``max_impostors``
    in all). Templates are encrypted and scored by :mod:`fpmatch.he` exactly as in
    service; each request is then decrypted with the secret key to get the score
    the key holder would compare with its threshold (it releases decisions only).
    Raises ImportError without TenSEAL.
    """
    he = _import_he()
    if he is None:
        raise ImportError("the he and hybrid schemes need TenSEAL: pip install fpmatch[he]")
    n, dim = enrolment.shape
    if n < 2 or probes.shape != enrolment.shape or len(strangers) < 1:
        raise InvalidInputError("need 2+ enrolled rows, one mated probe per row and non-mated probes")
    bar = silent if progress is None else progress
    count = min(n, sizes.probes)
    others = min(len(strangers), sizes.nonmated)
    if count < 2:
        raise InvalidInputError("the encrypted schemes need at least 2 mated probes")
    columns = _impostor_columns(n, max_impostors)
    names = [f"subject-{i:07d}" for i in range(n)]
    row_of = {name: i for i, name in enumerate(names)}
    # Plain cosine in float64: the reference every encrypted score is checked against.
    gallery_unit = _unit(enrolment.astype(np.float64))
    probe_unit = _unit(probes[:count].astype(np.float64))
    stranger_unit = _unit(strangers[:others].astype(np.float64))
    _, audit, public = _he_parties(he)
    started = time.perf_counter()

    # he: every search is one packed request over the whole gallery.
    packed = he.EncryptedGallery(public, dim)
    begin = time.perf_counter()
    packed.enrol(names, enrolment)
    he_enrol_s = time.perf_counter() - begin
    _, slots = packed.identification_request(probes[0])
    slot_rows = np.array([row_of[packed.subject_at(int(slot))] for slot in slots.tolist()], dtype=np.int64)

    def he_scores(probe: np.ndarray) -> np.ndarray:
        request, _ = packed.identification_request(probe)
        scores = np.empty(n, dtype=np.float64)
        scores[slot_rows] = audit.scores(request)
        return scores

    he_genuine = np.empty(count, dtype=np.float64)
    he_impostor: list[np.ndarray] = []
    he_search = _empty_open_set(count, others)
    he_error = 0.0
    with bar("he: packed encrypted searches", count + others) as step:
        for i in range(count):
            scores = he_scores(probes[i])
            he_error = max(he_error, float(np.max(np.abs(scores - gallery_unit @ probe_unit[i]))))
            he_genuine[i] = scores[i]
            he_impostor.append(np.delete(scores[:columns], i) if i < columns else scores[:columns])
            he_search.mate_scores[i] = scores[i]
            he_search.mate_ranks[i] = np.count_nonzero(scores >= scores[i])
            he_search.top1[i] = int(np.argmax(scores))
            step.update()
        for j in range(others):
            scores = he_scores(strangers[j])
            he_error = max(he_error, float(np.max(np.abs(scores - gallery_unit @ stranger_unit[j]))))
            he_search.nonmated_top[j] = float(scores.max())
            step.update()
    he_s = time.perf_counter() - begin
    del packed

    # hybrid: 1:1 requests for the verification pairs; 1:N through the hash shortlist.
    hybrid = he.HybridGallery(scheme, public, shortlist=sizes.shortlist)
    begin = time.perf_counter()
    hybrid.enrol(names, enrolment)
    hybrid_enrol_s = time.perf_counter() - begin
    hybrid_columns = min(columns, _HYBRID_COLUMNS)
    per_probe = hybrid_columns - 1 if hybrid_columns > 1 else 1
    impostor_probes = min(count, max(2, math.ceil(sizes.hybrid_impostor_pairs / per_probe)))
    length = min(candidates, n, sizes.shortlist)
    hybrid_genuine = np.empty(count, dtype=np.float64)
    hybrid_impostor: list[np.ndarray] = []
    hybrid_search = _empty_open_set(count, others)
    listed = np.zeros(count, dtype=bool)
    hybrid_error = 0.0

    def rescored(subjects: list[str], probe: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal hybrid_error
        rows = np.array([row_of[name] for name in subjects], dtype=np.int64)
        scores = audit.scores(hybrid.scores_for(subjects, probe))
        hybrid_error = max(hybrid_error, float(np.max(np.abs(scores - gallery_unit[rows] @ reference))))
        return rows, scores

    with bar("hybrid: encrypted 1:1 and shortlist searches", count + others) as step:
        for i in range(count):
            claims = [names[i]]
            if i < impostor_probes:
                claims += [names[j] for j in range(hybrid_columns) if j != i]
            _, scores = rescored(claims, probes[i], probe_unit[i])
            hybrid_genuine[i] = scores[0]
            if i < impostor_probes:
                hybrid_impostor.append(scores[1:])
            rows, scores = rescored(hybrid.shortlist_for(probes[i]), probes[i], probe_unit[i])
            hit = np.flatnonzero(rows == i)
            listed[i] = hit.size > 0
            mate = float(scores[hit[0]]) if listed[i] else -math.inf
            hybrid_search.mate_scores[i] = mate
            hybrid_search.mate_ranks[i] = np.count_nonzero(scores >= mate) if listed[i] else n + 1
            hybrid_search.top1[i] = rows[int(np.argmax(scores))]
            step.update()
        for j in range(others):
            _, scores = rescored(hybrid.shortlist_for(strangers[j]), strangers[j], stranger_unit[j])
            hybrid_search.nonmated_top[j] = float(scores.max())
            step.update()
    hybrid_s = time.perf_counter() - begin

    # Plain cosine on exactly the pairs and searches each encrypted scheme scored.
    he_i, he_j = _impostor_layout(count, columns)
    hy_i, hy_j = _impostor_layout(impostor_probes, hybrid_columns)
    plain_genuine = np.einsum("ij,ij->i", probe_unit, gallery_unit[:count])
    plain_search = _plain_search_subset(gallery_unit, probe_unit, stranger_unit)
    he_scores_all = Scores(he_genuine, np.concatenate(he_impostor), he_search.mate_ranks == 1, he_search.top1)
    hybrid_scores = Scores(
        hybrid_genuine, np.concatenate(hybrid_impostor), hybrid_search.mate_ranks == 1, hybrid_search.top1
    )
    plain_he = Scores(plain_genuine, _pair_cosines(probe_unit, he_i, gallery_unit, he_j), plain_search.mate_ranks == 1)
    plain_hybrid = Scores(plain_genuine, _pair_cosines(probe_unit, hy_i, gallery_unit, hy_j), plain_he.rank1_hits)
    params = public.params
    descriptions = {
        "he": f"CKKS-encrypted templates (N={params.poly_modulus_degree}, moduli "
        f"{'+'.join(str(b) for b in params.coeff_mod_bit_sizes)} bits), packed 1:N; scores decrypted by the key "
        "holder",
        "hybrid": f"hash shortlist of {sizes.shortlist} ({scheme.bits}-bit codes, exact flat index, ranked as "
        "Gallery.identify ranks), re-scored under CKKS encryption; 1:1 scores the claimed subject's ciphertext "
        "directly",
    }
    schemes: dict[str, Any] = {}
    for name, scores, plain, worst in (
        ("he", he_scores_all, plain_he, he_error),
        ("hybrid", hybrid_scores, plain_hybrid, hybrid_error),
    ):
        entry = verification_figures(scores, fars, descriptions[name], min_errors=min_errors)
        same = verification_figures(plain, fars, "plain cosine on the same pairs", min_errors=min_errors)
        entry["plain_same_pairs"] = {key: same[key] for key in ("tar_at_far", "eer", "rank1")}
        entry["max_abs_error_vs_plain"] = worst
        schemes[name] = entry
    identification: dict[str, Any] = {}
    for name, search in (("he", he_search), ("hybrid", hybrid_search)):
        entry = identification_figures(search, fpirs, length, min_errors=min_errors)
        same = identification_figures(plain_search, fpirs, length, min_errors=min_errors)
        entry["plain_same_searches"] = {key: same[key] for key in ("rank1", "at_fpir")}
        entry["rank1_agreement_with_plain"] = float(np.mean(search.top1 == plain_search.top1))
        identification[name] = entry
    identification["hybrid"].update(
        {
            "shortlist": sizes.shortlist,
            "shortlist_recall": float(np.mean(listed)),
            "mates_outside_shortlist": int(np.count_nonzero(~listed)),
            "note": "hybrid returns only shortlisted subjects: a mate the hash stage misses is not found, "
            "however high its encrypted score would be",
        }
    )
    return {
        "parameters": {
            "gallery_size": n,
            "mated_searches": count,
            "nonmated_searches": others,
            "genuine_pairs": count,
            "he_impostor_pairs": int(len(he_scores_all.impostor)),
            "hybrid_impostor_pairs": int(len(hybrid_scores.impostor)),
            "impostor_columns": {"he": columns, "hybrid": hybrid_columns},
            "shortlist": sizes.shortlist,
            "candidate_list_length": length,
            "subset": f"genuine pairs and mated searches: probes 0..{count - 1}; he impostor pairs: those probes "
            f"against enrolled rows 0..{columns - 1} (not their own), as plain's; hybrid impostor pairs: probes "
            f"0..{impostor_probes - 1} against rows 0..{hybrid_columns - 1}; non-mated searches: the first "
            f"{others} strangers; 1:N against the whole gallery of {n}",
            "scores": "each encrypted request decrypted with the secret key (fpmatch.he.audit.SecretKeyAudit): the "
            "value the key holder compares with its threshold, without its 1e-5 decision noise",
            "he_params": {
                "poly_modulus_degree": params.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(params.coeff_mod_bit_sizes),
                "template_scale_bits": params.template_scale_bits,
                "probe_scale_bits": params.probe_scale_bits_for(dim),
            },
        },
        "schemes": schemes,
        "identification": identification,
        "det": {
            "he": det_curve(he_scores_all.genuine, he_scores_all.impostor),
            "hybrid": det_curve(hybrid_scores.genuine, hybrid_scores.impostor),
        },
        "timing": {
            "he_enrol_per_s": n / max(he_enrol_s, 1e-9),
            "hybrid_enrol_per_s": n / max(hybrid_enrol_s, 1e-9),
            "he_s": he_s,
            "hybrid_s": hybrid_s,
            "total_s": time.perf_counter() - started,
        },
    }


def _empty_open_set(mated: int, nonmated: int) -> OpenSet:
    return OpenSet(
        np.empty(mated, dtype=np.float64),
        np.empty(mated, dtype=np.int64),
        np.empty(mated, dtype=np.int64),
        np.empty(nonmated, dtype=np.float64),
    )


def _plain_search_subset(gallery: np.ndarray, probes: np.ndarray, strangers: np.ndarray) -> OpenSet:
    """Exact open-set results for mated probes 0..len(probes)-1 (unit rows) and unit strangers."""
    result = _empty_open_set(len(probes), len(strangers))
    for start in range(0, len(probes), _CHUNK):
        stop = min(len(probes), start + _CHUNK)
        scores = probes[start:stop] @ gallery.T
        own = scores[np.arange(stop - start), np.arange(start, stop)]
        result.mate_scores[start:stop] = own
        result.mate_ranks[start:stop] = np.count_nonzero(scores >= own[:, None], axis=1)
        result.top1[start:stop] = np.argmax(scores, axis=1)
    for start in range(0, len(strangers), _CHUNK):
        stop = min(len(strangers), start + _CHUNK)
        result.nonmated_top[start:stop] = np.max(strangers[start:stop] @ gallery.T, axis=1)
    return result


# -- irreversibility: rebuilding templates from stored codes ------------------------------


def reconstruct_templates(codes: np.ndarray, scheme: CancellableHash, *, restore_offset: bool = False) -> np.ndarray:
    """Unit templates an attacker rebuilds from codes with ``scheme``'s projection (float64).

    The naive inversion is normalise(W (2c - 1)), W the projection with unit
    columns: it estimates the direction the scheme hashed, x' = x - a (x . u) u.
    With ``restore_offset`` the attacker also adds back what the scheme removed,
    using the offset u and share a the store keeps beside the codes: for a
    narrow-cone model x . u is close to 1, so x ~ a u + t r with r the naive
    reconstruction and t > 0 chosen so that |x| = 1. Without an offset both are the same.
    """
    weights = scheme.projection_matrix().astype(np.float64)
    weights /= np.linalg.norm(weights, axis=0, keepdims=True)
    signs = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, bitorder="little").astype(np.float64) * 2 - 1
    rebuilt = _unit(signs[:, : scheme.bits] @ weights.T)
    if not restore_offset or scheme.offset is None:
        return rebuilt
    u = np.asarray(scheme.offset, dtype=np.float64)
    u /= np.linalg.norm(u)
    share = float(scheme.offset_removal)
    along = rebuilt @ u
    # |a u + t r|^2 = 1 with |u| = |r| = 1: t^2 + 2 a (r.u) t + a^2 - 1 = 0, positive root.
    t = -share * along + np.sqrt((share * along) ** 2 + 1.0 - share * share)
    return np.asarray(_unit(share * u[None, :] + t[:, None] * rebuilt))


def evaluate_inversion(
    stored: np.ndarray,
    fresh: np.ndarray,
    scheme: CancellableHash,
    other: CancellableHash,
    *,
    far: float = 1e-3,
    impostor_pairs: int = 500_000,
    seed: int = 0,
    min_errors: int = MIN_ERRORS,
) -> dict[str, Any]:
    """Irreversibility (ISO/IEC 24745) of the hash scheme against attackers holding the store.

    ``stored[i]`` is enrolled (its code is what the attacker holds) and
    ``fresh[i]`` is another sample of the same person. Attackers: with the key
    (``scheme``'s projection) or without it (``other``, a different key), each
    naive and with the removed offset restored (:func:`reconstruct_templates`);
    and, where the scheme removes an offset, the stored offset direction alone
    used as everyone's template (no codes, no key). For each: cosine of the
    reconstructions to the originals, and the share a plain-cosine matcher
    accepts against the fresh sample at FMR ``far`` (threshold from impostor pairs
    of stored and fresh samples of different people).
    """
    n = len(stored)
    if n < 2 or stored.shape != fresh.shape or stored.shape[1] != scheme.dim:
        raise InvalidInputError("stored and fresh must hold one sample each of the same 2+ people")
    if other.key.key_id == scheme.key.key_id or other.bits != scheme.bits or other.dim != scheme.dim:
        raise InvalidInputError("the keyless attacker needs another key, with the same code length and dimension")
    stored_unit = _unit(stored.astype(np.float64))
    fresh_unit = _unit(fresh.astype(np.float64))
    rng = np.random.default_rng([seed, 0x1A7E])
    i, j = _nonmated_pairs(n, impostor_pairs, rng)
    impostor = _pair_cosines(stored_unit, i, fresh_unit, j)
    point = tar_at_far(np.zeros(1), impostor, far)
    threshold = float(point["threshold"])
    codes = scheme.protect(stored)
    label = far_label(far)

    def outcome(rebuilt: np.ndarray, description: str) -> dict[str, Any]:
        cosine = np.einsum("ij,ij->i", rebuilt, stored_unit)
        accepted = np.einsum("ij,ij->i", rebuilt, fresh_unit) > threshold
        return {
            "description": description,
            "cosine_to_original_mean": float(cosine.mean()),
            "cosine_to_original_min": float(cosine.min()),
            "cosine_to_original_p5": float(np.percentile(cosine, 5)),
            f"accepted_at_fmr_{label}": float(accepted.mean()),
        }

    attackers: dict[str, Any] = {
        "with_key": outcome(reconstruct_templates(codes, scheme), "store and hash key: normalise(W (2c - 1))"),
        "with_key_offset_restored": outcome(
            reconstruct_templates(codes, scheme, restore_offset=True),
            "store and hash key, adding back the offset share the scheme removed",
        ),
        "without_key": outcome(reconstruct_templates(codes, other), "store only: another key's projection"),
        "without_key_offset_restored": outcome(
            reconstruct_templates(codes, other, restore_offset=True),
            "store only: another key's projection, offset share added back",
        ),
    }
    if scheme.offset is not None:
        u = np.asarray(scheme.offset, dtype=np.float64)
        attackers["offset_only"] = outcome(
            np.tile(u / np.linalg.norm(u), (n, 1)),
            "no codes, no key: the stored offset direction (the model's mean face) as everyone's template",
        )
    return {
        "n": n,
        "dim": scheme.dim,
        "bits": scheme.bits,
        "offset_removed": scheme.offset is not None,
        "offset_removal": float(scheme.offset_removal) if scheme.offset is not None else 0.0,
        "far": far,
        f"plain_threshold_fmr_{label}": threshold,
        "plain_far_achieved": float(point["far_achieved"]),
        "impostor_pairs": int(len(impostor)),
        "threshold_supported": len(impostor) >= min_trials(far, min_errors),
        "accepted": "a reconstruction is accepted when its cosine with a fresh sample of the same person exceeds "
        "the plain threshold",
        **attackers,
    }


# -- summary and text of a report ----------------------------------------------------------


_SCHEMES = ("plain", "hash", "he", "hybrid")
#: Speed figures the summary keeps (means, or rates).
_SPEED_KEYS = (
    "plain_ms", "hash_flat_ms", "hash_identify_ms", "hash_ivf_ms", "he_identify_ms", "hybrid_identify_ms",
    "plain_verify_ms", "hash_verify_ms", "he_verify_ms", "hybrid_verify_ms",
    "plain_enrol_per_s", "hash_enrol_per_s", "he_enrol_per_s", "hybrid_enrol_per_s",
)  # fmt: skip


def report_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Headline figures per profile, for reading at a glance (None: not supported by the trials run)."""
    out: dict[str, Any] = {}
    for name, result in report["profiles"].items():
        schemes = result["schemes"]
        ident = result["identification"]
        link = report["d_sys"][name]
        renewal = report["renewability"][name]
        inversion = report["irreversibility"][name]
        accepted = f"accepted_at_fmr_{far_label(inversion['far'])}"
        speed = (report.get("speed") or {}).get(name, {"points": []})
        present = [scheme for scheme in _SCHEMES if scheme in schemes]
        out[name] = {
            "verification": {
                scheme: {
                    **{f"tar_at_far_{f}": v["tar"] for f, v in schemes[scheme]["tar_at_far"].items()},
                    "eer": schemes[scheme]["eer"],
                    "pairs": [schemes[scheme]["genuine_pairs"], schemes[scheme]["impostor_pairs"]],
                }
                for scheme in present
            },
            "identification": {
                scheme: {
                    "rank1": ident[scheme]["rank1"],
                    **{
                        f"fnir_at_fpir_{f}": {"rank1": v["fnir_rank1"], "candidate_list": v["fnir_candidate_list"]}
                        for f, v in ident[scheme]["at_fpir"].items()
                    },
                    "searches": [ident[scheme]["mated_searches"], ident[scheme]["nonmated_searches"]],
                }
                for scheme in present
            },
            "d_sys": {k: link[k] for k in ("value", "value_kde", "sampling_floor", "meets_target")},
            "renewability": {
                "genuine_mean_std": [renewal["genuine_same_key"]["mean"], renewal["genuine_same_key"]["std"]],
                "impostor_mean_std": [renewal["impostor_same_key"]["mean"], renewal["impostor_same_key"]["std"]],
                "renewed_mean_std": [renewal["renewed_mated"]["mean"], renewal["renewed_mated"]["std"]],
                "ks_renewed_vs_impostor": renewal["ks_renewed_vs_impostor"]["statistic"],
                "ks_genuine_vs_impostor": renewal["ks_genuine_vs_impostor"]["statistic"],
            },
            "irreversibility": {
                attacker: {
                    "cosine_to_original_mean": figures["cosine_to_original_mean"],
                    accepted: figures[accepted],
                }
                for attacker, figures in inversion.items()
                if isinstance(figures, dict)
            },
            "speed": {
                str(point["n"]): {
                    key: (point[key] if key.endswith("_per_s") else point[key]["mean"])
                    for key in _SPEED_KEYS
                    if key in point
                }
                for point in speed["points"]
            },
            "bytes_per_template": speed.get("bytes_per_template"),
        }
    return out


def _cell(value: float | None, width: int, digits: int = 4) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def report_text(report: dict[str, Any]) -> str:
    """The report's headline figures as plain-text tables (``-``: not supported by the trials run, or not run)."""
    lines: list[str] = []
    first = next(iter(report["profiles"].values()))["parameters"]
    fars = first["far_targets"]
    fpir = first["fpir_targets"][0]
    lines.append(
        f"{'profile':<9}{'scheme':<8}" + "".join(f"{'TAR@' + f:>10}" for f in fars)
        + f"{'EER':>8}{'rank-1':>8}{'FNIR@' + fpir:>11}{'(list)':>8}{'pairs gen/imp':>20}{'searches':>14}"
    )
    for name, result in report["profiles"].items():
        ident = result["identification"]
        for scheme in _SCHEMES:
            if scheme not in result["schemes"]:
                continue
            figures = result["schemes"][scheme]
            point = ident[scheme]["at_fpir"][fpir]
            lines.append(
                f"{name:<9}{scheme:<8}" + "".join(_cell(figures["tar_at_far"][f]["tar"], 10) for f in fars)
                + f"{figures['eer']:>8.4f}{ident[scheme]['rank1']:>8.4f}"
                + _cell(point["fnir_rank1"], 11) + _cell(point["fnir_candidate_list"], 8)
                + f"{figures['genuine_pairs']:>10,}/{figures['impostor_pairs']:<9,}"
                + f"{ident[scheme]['mated_searches']:>7,}/{ident[scheme]['nonmated_searches']:<6,}"
            )
        for scheme in ("he", "hybrid"):
            if scheme in result["schemes"]:
                same = result["schemes"][scheme]["plain_same_pairs"]
                same_ident = ident[scheme]["plain_same_searches"]
                lines.append(
                    f"{name:<9}{'~plain':<8}"
                    + "".join(_cell(same["tar_at_far"][f]["tar"], 10) for f in fars)
                    + f"{same['eer']:>8.4f}{same_ident['rank1']:>8.4f}"
                    + _cell(same_ident["at_fpir"][fpir]["fnir_rank1"], 11)
                    + f"{'':8}  plain cosine on the {scheme} pairs and searches; "
                    f"max |{scheme} - plain| {result['schemes'][scheme]['max_abs_error_vs_plain']:.1e}"
                )
        if "hybrid" in ident:
            hybrid = ident["hybrid"]
            lines.append(
                f"{name:<9}hybrid shortlist of {hybrid['shortlist']}: holds the mate in "
                f"{hybrid['shortlist_recall']:.4f} of mated searches; top-1 agrees with plain in "
                f"{hybrid['rank1_agreement_with_plain']:.4f}"
            )
    lines.append("")
    for name in report["profiles"]:
        link, renewal = report["d_sys"][name], report["renewability"][name]
        lines.append(
            f"{name}: D_sys {link['value']:.4f} (KDE {link['value_kde']:.4f}, sampling floor "
            f"{link['sampling_floor']:.4f}, target <= {link['target']}; plain templates "
            f"{link['reference']['plain_templates']:.3f})"
        )
        parts = [
            f"{label} {renewal[key]['mean']:+.4f} +/- {renewal[key]['std']:.4f}"
            for key, label in (("genuine_same_key", "genuine"), ("impostor_same_key", "impostor"),
                               ("renewed_mated", "renewed"))
        ]  # fmt: skip
        lines.append(
            f"{name}: scores " + ", ".join(parts)
            + f"; KS renewed/impostor {renewal['ks_renewed_vs_impostor']['statistic']:.4f}"
            f" (above {renewal['ks_renewed_vs_impostor']['a_above_b']:.4f}),"
            f" genuine/impostor {renewal['ks_genuine_vs_impostor']['statistic']:.4f}"
        )
        inversion = report["irreversibility"][name]
        accepted = f"accepted_at_fmr_{far_label(inversion['far'])}"
        lines.append(f"{name}: inversion, cosine to the original / accepted by plain matching at FMR "
                     f"{far_label(inversion['far'])}:")  # fmt: skip
        for attacker, figures in inversion.items():
            if isinstance(figures, dict):
                lines.append(
                    f"{'':4}{attacker:<30}{figures['cosine_to_original_mean']:>7.3f}{figures[accepted]:>8.3f}"
                )
    speed = report.get("speed") or {}
    if speed:
        lines.append("")
        columns = (("plain_ms", "plain"), ("hash_identify_ms", "hash"), ("hash_ivf_ms", "IVF"),
                   ("he_identify_ms", "he"), ("hybrid_identify_ms", "hybrid"))  # fmt: skip
        verifiers = ("plain", "hash", "he", "hybrid")
        lines.append(
            f"{'profile':<9}{'n':>10}" + "".join(f"{label + ' ms':>11}" for _, label in columns)
            + "".join(f"{label + ' 1:1':>11}" for label in verifiers)
            + "".join(f"{label + ' /s':>11}" for label in verifiers)
        )
        for name, result in speed.items():
            for point in result["points"]:
                cells = [point[key]["mean"] if key in point else None for key, _ in columns]
                cells += [point[f"{s}_verify_ms"]["mean"] if f"{s}_verify_ms" in point else None for s in verifiers]
                rates = [point.get(f"{s}_enrol_per_s") for s in verifiers]
                lines.append(
                    f"{name:<9}{point['n']:>10,}" + "".join(_cell(v, 11) for v in cells)
                    + "".join(_cell(v, 11, 0) for v in rates)
                )
            sizes = result.get("bytes_per_template", {})
            lines.append(f"{name}: bytes per template " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    return "\n".join(lines)


# -- speed against gallery size ----------------------------------------------------------


def ivf_lists(n: int) -> int:
    """IVF list count used for a gallery of ``n``: about sqrt(n), between 16 and 1024."""
    return int(min(1024, max(16, round(math.sqrt(n)))))


def speed_vs_gallery_size(
    sizes: Sequence[int] = (1000, 10_000, 100_000),
    *,
    profile: str = "centred",
    seed: int = 0,
    bits: int = DEFAULT_BITS,
    queries: int = 200,
    warmup: int = 10,
    k: int = 10,
    encrypted_max_n: int = ENCRYPTED_MAX_N,
    shortlist: int = 32,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Single-thread enrolment rate and verify / identify latency against gallery size, per scheme.

    Schemes: faiss ``IndexFlatIP`` on raw templates (the baseline), hash with an
    exact flat index and with IVF, ``he`` (packed encrypted gallery) and ``hybrid``
    (hash shortlist of ``shortlist``, encrypted re-scoring), the last two with an
    in-process key holder deciding, at the sizes up to ``encrypted_max_n`` (0: none).
    Galleries are nested prefixes of one synthetic draw, enrolled in increments:
    the rate at a size is that of the templates added since the previous size.
    Probes are fresh samples of ``queries`` enrolled people, one at a time;
    identification asks for the ``k`` best, verification claims the probe's own
    identity. The plain baseline is left out (with a note) when faiss is not
    importable, the encrypted ones when TenSEAL is not. IVF uses
    :func:`ivf_lists` lists and scans half of them.
    """
    chosen = sorted({int(v) for v in sizes})
    if not chosen or chosen[0] < 16:
        raise InvalidInputError("gallery sizes must be at least 16")
    if queries < 1 or warmup < 0 or k < 1 or shortlist < 1 or encrypted_max_n < 0:
        raise InvalidInputError("queries, k and shortlist must be positive, warmup and encrypted_max_n non-negative")
    if profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    bar = silent if progress is None else progress
    faiss = _import_faiss()
    notes = [] if faiss is not None else ["faiss is not importable: no plain IndexFlatIP baseline"]
    he = _import_he() if encrypted_max_n > 0 else None
    if encrypted_max_n > 0 and he is None:
        notes.append("TenSEAL is not installed: no he / hybrid timings (pip install fpmatch[he])")
    encrypted_sizes = [n for n in chosen if n <= encrypted_max_n] if he is not None else []
    load_start = _load_average()
    started = time.perf_counter()

    faces = FaceGenerator(profile, seed)
    rng = np.random.default_rng([seed, 0x5EED])
    probe_ids = {n: rng.choice(n, queries, replace=queries > n) for n in chosen}
    needed = np.unique(np.concatenate(list(probe_ids.values())))
    dim = faces.profile.dim
    largest = chosen[-1]
    gallery = np.empty((largest, dim), dtype=np.float32)
    kept = np.empty((len(needed), dim), dtype=np.float32)
    with bar(f"{profile}: drawing {largest:,} faces", math.ceil(largest / _GENERATE_CHUNK)) as step:
        for start in range(0, largest, _GENERATE_CHUNK):
            stop = min(largest, start + _GENERATE_CHUNK)
            people = faces.identities(stop - start)
            gallery[start:stop] = faces.samples(people)
            low, high = np.searchsorted(needed, [start, stop])
            kept[low:high] = people[needed[low:high] - start]
            step.update()
    offset = estimate_offset(faces.samples(faces.identities(_OFFSET_SAMPLES)))
    # One thread everywhere, enrolment included, so that schemes compare like for like.
    scheme = CancellableHash(_bench_key(seed), dim, bits, offset=offset, n_threads=1)
    bulk = CancellableHash(_bench_key(seed), dim, bits, offset=offset)  # the same codes, on every core
    galleries = _SpeedGalleries(gallery, scheme, bulk, faiss, he if encrypted_sizes else None, shortlist)

    points: list[dict[str, Any]] = []
    threads_before = faiss.omp_get_max_threads() if faiss is not None else 0
    try:
        if faiss is not None:
            faiss.omp_set_num_threads(1)
        with bar(f"{profile}: timing gallery sizes", len(chosen)) as step:
            for n in chosen:
                truth = probe_ids[n]
                probes = faces.samples(kept[np.searchsorted(needed, truth)])
                point = galleries.grow(n, encrypted=n in encrypted_sizes)
                point.update(_time_size(n, galleries, probes, truth, k, warmup))
                points.append(point)
                step.update()
    finally:
        if faiss is not None:
            faiss.omp_set_num_threads(threads_before)
    encrypted: dict[str, Any] = {"max_n": encrypted_max_n, "timed_sizes": encrypted_sizes}
    if he is not None:
        encrypted.update(
            {
                "skipped_sizes": [n for n in chosen if n > encrypted_max_n],
                "key_holder": "in-process KeyHolder: verify and identify include its decision",
                "identify_threshold": "-1 (the k best, as the other schemes' searches return)",
                "hybrid": f"flat hash index, shortlist {shortlist}",
            }
        )
        skipped = encrypted["skipped_sizes"]
        if skipped and not encrypted_sizes:
            encrypted["reason"] = f"every size is above encrypted_max_n ({encrypted_max_n:,})"
        elif skipped:
            last = next(p for p in reversed(points) if "he_enrol_per_s" in p)
            rate = min(last["he_enrol_per_s"], last["hybrid_enrol_per_s"])
            size = max(galleries.bytes_per_template["he"], galleries.bytes_per_template["hybrid"])
            encrypted["reason"] = (
                f"the slower encrypted enrolment ran at {rate:,.0f} templates/s (at {last['n']:,}) and a template "
                f"takes up to {size:,} bytes: "
                f"{skipped[-1]:,} would take about {skipped[-1] / rate / 60:.0f} min and "
                f"{skipped[-1] * size / 2**30:.1f} GiB per scheme; benchmarks/bench_he.py times hybrid "
                "identification at 1,000,000 codes (reports/he_*.json)"
            )
    return {
        "profile": profile,
        "dim": dim,
        "bits": bits,
        "k": k,
        "queries": queries,
        "warmup": warmup,
        "threads": 1,
        "plain": "faiss IndexFlatIP over raw float32 templates" if faiss is not None else None,
        "faiss_version": getattr(faiss, "__version__", "unknown") if faiss is not None else None,
        "ivf": "IVFIndex with about sqrt(n) lists (16 to 1024), half of them scanned, prefix 256 bits, re-rank 256",
        "bytes_per_template": galleries.bytes_per_template,
        "encrypted": encrypted,
        "timings": {
            "enrol_per_s": "templates enrolled per second growing the gallery from the previous size to n; "
            f"plain and hash time at most {_RATE_SAMPLE:,} of them (the rest are enrolled untimed, hashed on "
            "every core), he and hybrid all of them",
            "verify_ms": "probe in, decision out, for the probe's own identity: plain, an inner product with the "
            "stored template; hash, probe hashing (with bit reliabilities) and one weighted Hamming distance; "
            "he / hybrid, an encrypted score and the key holder's decision",
            "identify_ms": "probe in, k best out: plain and hash_flat_ms / hash_ivf_ms search only (a Hamming "
            "shortlist (Gallery's default: 1024 with an offset, else 128) re-ranked by probe-weighted "
            "distance, as Gallery.identify; "
            "hash_probe_ms hashes the probe; hash_identify_ms is both); he / hybrid, probe encoding, encrypted "
            "scoring and the key holder's choice",
        },
        "points": points,
        "notes": notes,
        "load_average": {"start": load_start, "end": _load_average()},
        "total_s": time.perf_counter() - started,
    }


class _SpeedGalleries:
    """Every scheme's gallery, grown through the sizes of :func:`speed_vs_gallery_size`."""

    def __init__(
        self, templates: np.ndarray, scheme: CancellableHash, bulk: CancellableHash, faiss: Any, he: Any, shortlist: int
    ) -> None:
        self.templates = templates
        self.scheme = scheme
        self.bulk = bulk
        self.faiss = faiss
        self.size = 0
        self.codes = np.empty((len(templates), scheme.code_size), dtype=np.uint8)
        self.flat = FlatIndex(scheme.bits)
        self.plain = faiss.IndexFlatIP(templates.shape[1]) if faiss is not None else None
        self.names = [f"subject-{i:07d}" for i in range(len(templates))]
        self.bytes_per_template: dict[str, int] = {"plain": 4 * templates.shape[1], "hash": scheme.code_size}
        self.holder: Any = None
        self.packed: Any = None
        self.hybrid: Any = None
        if he is not None:
            limits = he.RateLimit(requests_per_second=1e9, burst=10**9, max_scores=1 << 23, max_k=100)
            self.holder = he.KeyHolder(limits=limits)
            public = he.PublicContext(self.holder.public_context())
            self.packed = he.EncryptedGallery(public, templates.shape[1])
            self.hybrid = he.HybridGallery(scheme, public, shortlist=shortlist)
            self.bytes_per_template["he"] = self.packed.bytes_per_template
            self.bytes_per_template["hybrid"] = self.hybrid.bytes_per_template

    def grow(self, n: int, *, encrypted: bool) -> dict[str, Any]:
        """Enrol rows up to ``n`` into every gallery; enrolment rates of the increment."""
        rows = slice(self.size, n)
        added = n - self.size
        # Plain and hash rates come from a sample of the increment: hashing a
        # million templates on one thread would take minutes and say nothing more.
        timed = min(added, _RATE_SAMPLE)
        head, tail = slice(self.size, self.size + timed), slice(self.size + timed, n)
        point: dict[str, Any] = {"n": n}
        if self.plain is not None:
            begin = time.perf_counter()
            self.plain.add(np.ascontiguousarray(self.templates[head]))
            point["plain_enrol_per_s"] = timed / max(time.perf_counter() - begin, 1e-9)
            self.plain.add(np.ascontiguousarray(self.templates[tail]))
        begin = time.perf_counter()
        self.codes[head] = self.scheme.protect(self.templates[head])
        self.flat.add(self.codes[head], np.arange(head.start, head.stop, dtype=np.int64))
        point["hash_enrol_per_s"] = timed / max(time.perf_counter() - begin, 1e-9)
        if tail.stop > tail.start:
            for start in range(tail.start, tail.stop, _GENERATE_CHUNK):
                chunk = slice(start, min(tail.stop, start + _GENERATE_CHUNK))
                self.codes[chunk] = self.bulk.protect(self.templates[chunk])
            self.flat.add(self.codes[tail], np.arange(tail.start, tail.stop, dtype=np.int64))
        if encrypted:
            for name, target in (("he", self.packed), ("hybrid", self.hybrid)):
                begin = time.perf_counter()
                # In chunks: encoding a whole increment at once would hold several
                # float64 copies of it, more than the ciphertexts of a million.
                for start in range(rows.start, rows.stop, _GENERATE_CHUNK):
                    chunk = slice(start, min(rows.stop, start + _GENERATE_CHUNK))
                    target.enrol(self.names[chunk], self.templates[chunk])
                point[f"{name}_enrol_per_s"] = added / max(time.perf_counter() - begin, 1e-9)
            point["he_stored_bytes_per_template"] = self.packed.stored_bytes() / n
        elif self.packed is not None:
            self.holder = self.packed = self.hybrid = None  # past the cap: free the ciphertexts
        self.size = n
        return point

    def row(self, subject: str) -> int:
        return int(subject.rsplit("-", 1)[1])


def _time_size(
    n: int, galleries: _SpeedGalleries, probes: np.ndarray, truth: np.ndarray, k: int, warmup: int
) -> dict[str, Any]:
    """Latencies and rank-1 figures at one gallery size (the first ``n`` rows)."""
    scheme = galleries.scheme
    depth = min(k, n)
    hash_ns = np.empty(len(probes), dtype=np.int64)
    probe_codes = np.empty((len(probes), scheme.code_size), dtype=np.uint8)
    probe_weights = np.empty((len(probes), scheme.bits), dtype=np.float32)
    for q in range(len(probes)):
        t0 = time.perf_counter_ns()
        code, weights = scheme.protect_with_reliability(probes[q])
        hash_ns[q] = time.perf_counter_ns() - t0
        probe_codes[q], probe_weights[q] = code[0], weights[0]
    point: dict[str, Any] = {"hash_probe_ms": _latency(hash_ns)}

    if galleries.plain is not None:
        plain = galleries.plain
        ns, top = _timed_searches(lambda q: plain.search(probes[q : q + 1], depth)[1][0, 0], len(probes), warmup)
        point["plain_ms"] = _latency(ns)
        point["plain_rank1"] = float(np.mean(top == truth))
    stored = galleries.templates

    def plain_verify(q: int) -> int:
        return int(float(np.dot(stored[truth[q]], probes[q])) > 0.0)

    point["plain_verify_ms"] = _latency(_timed_searches(plain_verify, len(probes), warmup)[0])

    def hash_verify(q: int) -> int:  # as Gallery.verify: probe-weighted distance to the claimed code
        code, weights = scheme.protect_with_reliability(probes[q])
        distance = weighted_pairs(code, weights, _ZERO, galleries.codes, truth[q : q + 1])[0]
        return int(scheme.weighted_score(float(distance)) > 0.0)

    point["hash_verify_ms"] = _latency(_timed_searches(hash_verify, len(probes), warmup)[0])

    flat = galleries.flat
    ns, flat_top = _timed_searches(
        lambda q: flat.search_weighted(
            probe_codes[q : q + 1], probe_weights[q : q + 1], depth, default_shortlist(scheme), n_threads=1
        ).labels[0, 0],
        len(probes),
        warmup,
    )
    point["hash_flat_ms"] = _latency(ns)
    point["hash_identify_ms"] = _latency(ns + hash_ns)
    point["hash_flat_rank1"] = float(np.mean(flat_top == truth))

    codes = galleries.codes[:n]
    lists = ivf_lists(n)
    ivf = IVFIndex(scheme.bits, nlist=lists, nprobe=max(1, lists // 2))
    ivf.train(codes)
    ivf.add(codes, np.arange(n, dtype=np.int64))
    ns, ivf_top = _timed_searches(
        lambda q: ivf.search_weighted(
            probe_codes[q : q + 1], probe_weights[q : q + 1], depth, default_shortlist(scheme), n_threads=1
        ).labels[0, 0],
        len(probes),
        warmup,
    )
    point["hash_ivf_ms"] = _latency(ns)
    point["hash_ivf_rank1"] = float(np.mean(ivf_top == truth))
    point["ivf_top1_agreement_with_flat"] = float(np.mean(ivf_top == flat_top))
    point["ivf_nlist"] = lists
    point["ivf_nprobe"] = ivf.nprobe
    del ivf

    if galleries.packed is not None and galleries.size == n and "he" in galleries.bytes_per_template:
        holder, names = galleries.holder, galleries.names
        for name, target in (("he", galleries.packed), ("hybrid", galleries.hybrid)):

            def verify(q: int, target: Any = target) -> int:
                return int(target.verify(names[truth[q]], probes[q], holder, 0.5, caller="speed").verified)

            def identify(q: int, target: Any = target) -> int:
                found = target.identify(probes[q], holder, -1.0, depth, caller="speed")
                return galleries.row(found[0].subject) if found else -1

            point[f"{name}_verify_ms"] = _latency(_timed_searches(verify, len(probes), warmup)[0])
            ns, top = _timed_searches(identify, len(probes), warmup)
            point[f"{name}_identify_ms"] = _latency(ns)
            point[f"{name}_rank1"] = float(np.mean(top == truth))
    return point


def _timed_searches(search: Callable[[int], Any], count: int, warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``search(q)`` for every query after ``warmup`` untimed ones; (nanoseconds, top labels)."""
    for q in range(warmup):
        search(q % count)
    times = np.empty(count, dtype=np.int64)
    tops = np.empty(count, dtype=np.int64)
    for q in range(count):
        t0 = time.perf_counter_ns()
        tops[q] = search(q)
        times[q] = time.perf_counter_ns() - t0
    return times, tops


def _latency(ns: np.ndarray) -> dict[str, float]:
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def write_det_png(report: dict[str, Any], path: str | os.PathLike[str]) -> bool:
    """Plot the DET curves (one panel per profile) to a PNG with matplotlib's Agg backend.

    Returns False, writing nothing, when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    results = report["profiles"]
    figure = Figure(figsize=(5.6 * len(results), 4.8), dpi=110)
    FigureCanvasAgg(figure)
    for panel, result in enumerate(results.values(), start=1):
        _det_panel(figure.add_subplot(1, len(results), panel), result)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return True


#: Lines of the speed plot: (point key, label, marker, line style, colour); one colour per scheme.
_SPEED_LINES = {
    "identify": (
        ("plain_ms", "plain IndexFlatIP (faiss)", "o", "-", "C0"),
        ("hash_identify_ms", "hash, exact flat (incl. probe hashing)", "s", "-", "C1"),
        ("hash_ivf_ms", "hash, IVF (search only)", "^", "-", "C2"),
        ("he_identify_ms", "he, packed CKKS 1:N", "D", "--", "C3"),
        ("hybrid_identify_ms", "hybrid, shortlist + CKKS re-score", "v", "--", "C4"),
    ),
    "verify": (
        ("plain_verify_ms", "plain, one inner product", "o", "-", "C0"),
        ("hash_verify_ms", "hash, probe hashing + Hamming", "s", "-", "C1"),
        ("he_verify_ms", "he, CKKS score + decision", "D", "--", "C3"),
        ("hybrid_verify_ms", "hybrid, CKKS score + decision", "v", "--", "C4"),
    ),
    "enrol": (
        ("plain_enrol_per_s", "plain IndexFlatIP add", "o", "-", "C0"),
        ("hash_enrol_per_s", "hash, hashing + flat add", "s", "-", "C1"),
        ("he_enrol_per_s", "he, CKKS encryption", "D", "--", "C3"),
        ("hybrid_enrol_per_s", "hybrid, hashing + CKKS encryption", "v", "--", "C4"),
    ),
}


def write_speed_png(speed: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Log-log identify latency, verify latency and enrolment rate against gallery size.

    One column per profile (``speed``: profile -> :func:`speed_vs_gallery_size`
    result), one row per measure. Returns False, writing nothing, when matplotlib
    is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    columns = max(1, len(speed))
    figure = Figure(figsize=(6.0 * columns, 13.5), dpi=110)
    FigureCanvasAgg(figure)
    axis_labels = {
        "identify": "identify: ms per query (one thread)",
        "verify": "verify: ms per claim (one thread)",
        "enrol": "enrolment: templates/s (one thread)",
    }
    for column, (profile, result) in enumerate(speed.items()):
        for row, (measure, lines) in enumerate(_SPEED_LINES.items()):
            axes = figure.add_subplot(3, columns, row * columns + column + 1)
            for key, label, marker, style, colour in lines:
                shown = [
                    (p["n"], p[key] if measure == "enrol" else p[key]["mean"]) for p in result["points"] if key in p
                ]
                if shown:
                    sizes, values = zip(*shown)
                    axes.plot(sizes, values, marker=marker, linestyle=style, color=colour, label=label, linewidth=1.6)
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.set_xlabel("enrolled templates")
            axes.set_ylabel(axis_labels[measure])
            axes.grid(True, which="both", alpha=0.3)
            axes.legend(loc="best", fontsize=7)
            if row == 0:
                cap = result.get("encrypted", {}).get("max_n")
                title = f"'{profile}' synthetic faces ({result['dim']}-D, {result['bits']}-bit codes)"
                axes.set_title(title + (f"\nhe / hybrid up to {cap:,}" if cap else ""), fontsize=10)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return True


def write_unlinkability_png(unlinkable: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Mated and non-mated cross-key score densities with D<->(s), one panel per profile.

    ``unlinkable`` maps a profile to its ``d_sys`` result. Returns False, writing
    nothing, when matplotlib is not installed.
    """
    figure = _new_figure(len(unlinkable), (5.4, 4.6))
    if figure is None:
        return False
    for panel, (profile, result) in enumerate(unlinkable.items(), start=1):
        axes = figure.add_subplot(1, len(unlinkable), panel)
        curve = result["curve"]
        edges = np.asarray(curve["edges"], dtype=np.float64)
        widths = np.diff(edges)
        inside = widths > 0
        highest = 0.0
        for key, label in (("p_mated", "mated (same person, keys A and B)"), ("p_nonmated", "non-mated")):
            density = np.zeros_like(widths)
            density[inside] = np.asarray(curve[key])[inside] / widths[inside]
            axes.stairs(density, edges, label=label, linewidth=1.6)
            highest = max(highest, float(density.max()))
        axes.set_ylim(0, 1.4 * highest if highest > 0 else 1.0)
        axes.set_xlabel("linkage score, cos(pi h / bits)")
        axes.set_ylabel("density")
        twin = axes.twinx()
        twin.stairs(np.asarray(curve["local"]), edges, color="black", linestyle=":", label="D<->(s)")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("local linkability D<->(s)")
        axes.set_title(f"'{profile}': D_sys = {result['value']:.3f} (floor {result['sampling_floor']:.3f})")
        handles, labels = axes.get_legend_handles_labels()
        extra_handles, extra_labels = twin.get_legend_handles_labels()
        axes.legend(handles + extra_handles, labels + extra_labels, loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(Path(path), format="png")
    return True


def _new_figure(panels: int, size: tuple[float, float]) -> Any:
    """A matplotlib Agg figure with room for ``panels`` side by side, or None without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    figure = Figure(figsize=(size[0] * max(1, panels), size[1]), dpi=110)
    FigureCanvasAgg(figure)
    return figure


#: DET line styles per scheme: he follows plain within 1e-4, so it is dashed over it.
_DET_STYLES = {"plain": ("-", 2.4), "hash": ("-", 1.8), "he": ("--", 1.6), "hybrid": (":", 2.0)}


def _det_panel(axes: Any, result: dict[str, Any]) -> None:
    params = result["parameters"]
    fmr_floor = 1.0 / max(1, params["impostor_pairs"])
    fnmr_floor = 0.5 / max(1, params["genuine_pairs"])
    labels = {"plain": "plain cosine (unprotected)", "hash": f"hash scheme ({params['bits']} bits)"}
    encrypted = params.get("encrypted")
    if encrypted:
        pairs = f"{encrypted['genuine_pairs']:,} genuine"
        labels["he"] = f"he, CKKS ({pairs}, {encrypted['he_impostor_pairs']:,} impostor pairs)"
        labels["hybrid"] = f"hybrid 1:1 ({pairs}, {encrypted['hybrid_impostor_pairs']:,} impostor pairs)"
    clipped = False
    for name, curve in result["det"].items():
        fmr = np.asarray(curve["fmr"], dtype=np.float64)
        fnmr = np.asarray(curve["fnmr"], dtype=np.float64)
        keep = fmr > 0
        clipped |= bool(np.any(fnmr[keep] < fnmr_floor))
        style, width = _DET_STYLES.get(name, ("-", 1.6))
        axes.plot(
            fmr[keep],
            np.maximum(fnmr[keep], fnmr_floor),
            label=labels.get(name, name),
            linestyle=style,
            linewidth=width,
        )
    for far in params["far_targets"]:
        axes.axvline(float(far), color="grey", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(fmr_floor, 1.0)
    axes.set_ylim(fnmr_floor * 0.8, 1.0)
    axes.set_xlabel("false match rate (FMR)")
    axes.set_ylabel("false non-match rate (FNMR)")
    axes.set_title(f"'{params['profile']}' synthetic faces, {params['n']} identities")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right", fontsize=7)
    if clipped:
        axes.text(
            0.02, 0.02, "FNMR 0 (no errors seen) drawn at the floor", transform=axes.transAxes, fontsize=8
        )


def write_report_pngs(report: dict[str, Any], directory: str | os.PathLike[str]) -> dict[str, str | None]:
    """``det.png``, ``unlinkability.png`` and (with ``report["speed"]``) ``speed.png`` in ``directory``.

    Returns each plot's path, or None where it was not drawn (no matplotlib, or
    no speed results); a plot not drawn is removed, so no older run's plot stays
    beside a new report.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, Callable[[Any, Path], bool], Any]] = [
        ("det", write_det_png, report),
        ("unlinkability", write_unlinkability_png, report["d_sys"]),
    ]
    if report.get("speed"):
        plots.append(("speed", write_speed_png, report["speed"]))
    files: dict[str, str | None] = {}
    for name, writer, data in plots:
        path = folder / f"{name}.png"
        if writer(data, path):
            files[name] = str(path)
        else:
            path.unlink(missing_ok=True)
            files[name] = None
    return files


__all__ = [
    "D_SYS_TARGET",
    "DEFAULT_CANDIDATES",
    "DEFAULT_FARS",
    "DEFAULT_FPIRS",
    "ENCRYPTED_MAX_N",
    "EncryptedSizes",
    "MIN_ERRORS",
    "OpenSet",
    "Scores",
    "Unlinkability",
    "d_sys",
    "det_curve",
    "eer_interval",
    "equal_error_rate",
    "evaluate_encrypted",
    "evaluate_identification",
    "evaluate_inversion",
    "evaluate_linkage",
    "evaluate_profile",
    "far_label",
    "fnir_at_fpir",
    "hamming_pairs",
    "identification_figures",
    "ivf_lists",
    "ks_statistic",
    "local_linkability",
    "min_trials",
    "open_set_searches",
    "reconstruct_templates",
    "report_summary",
    "report_text",
    "run_evaluation",
    "score_summary",
    "speed_vs_gallery_size",
    "tar_at_far",
    "tar_points",
    "unlinkability",
    "verification_figures",
    "write_det_png",
    "write_report_pngs",
    "write_speed_png",
    "write_unlinkability_png",
]
