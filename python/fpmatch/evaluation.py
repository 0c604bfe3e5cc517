"""Evaluation of plain cosine vs. the hash scheme on synthetic faces.

For each synthetic profile (by default both, ``centred`` and ``offset``), one
gallery sample and one fresh (mated) probe per identity are drawn with
:class:`fpmatch.synthetic.FaceGenerator`, plus samples of people never
enrolled. Both schemes score the same pairs and searches:

* verification (ISO/IEC 19795-1): genuine pairs (each probe against its own
  enrolled sample) and impostor pairs (each probe against the other enrolled
  samples, all of them or the first ``m`` when ``n * m`` would exceed
  ``max_impostors``); TAR at fixed FAR values (threshold from the impostor
  scores, so the achieved FAR never exceeds the target), the EER, FMR/FNMR
  curves with their thresholds;
* identification (1:N, open set): rank-1 accuracy and FNIR at fixed FPIR, the
  threshold set on the best candidate scores of non-mated searches (probes of
  people not enrolled); the hash scheme searches a :class:`FlatIndex`;
* unlinkability: D_sys (Gomez-Barrero et al., "General framework to evaluate
  unlinkability in biometric template protection systems", IEEE TIFS 2018)
  between codes of one person under two keys, against codes of different
  people under the two keys;
* renewability: old codes against re-keyed codes of the same people, next to
  genuine and impostor scores under one key, with Kolmogorov-Smirnov distances;
* speed against gallery size (:func:`speed_vs_gallery_size`): faiss
  ``IndexFlatIP``, hash flat and hash IVF, one query at a time on one thread.

Keys are derived from the seed, so a run is reproducible; they protect nothing
real. ``benchmarks/bench_eval.py`` runs all of it; ``benchmarks/bench_search.py``
measures large galleries in more depth.
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
from ._progress import Progress
from ._validate import as_template_rows
from .codes import PAIR_CHUNK, hamming_pairs
from .errors import InvalidInputError
from .gallery import Gallery
from .hashing import DEFAULT_BITS, CancellableHash, estimate_offset
from .index import FlatIndex, IVFIndex
from .keys import HashKey
from .synthetic import PROFILES, FaceGenerator

DEFAULT_FARS = (1e-3, 1e-4)
DEFAULT_FPIRS = (0.003,)
DEFAULT_CANDIDATES = 20
#: The unlinkability target: D_sys at most this.
D_SYS_TARGET = 0.05
_CHUNK = 256
_GENERATE_CHUNK = 65536
_DET_POINTS = 120
_OFFSET_SAMPLES = 2000

#: Makes a progress bar: (label, total) -> Progress.
ProgressFactory = Callable[[str, int], Progress]


@dataclass
class Scores:
    """Genuine and impostor similarity scores of one scheme (higher: more alike)."""

    genuine: np.ndarray
    impostor: np.ndarray
    rank1_hits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    top1: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


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


def _silent(label: str, total: int) -> Progress:
    return Progress(label, total, enabled=False)


def _bench_key(seed: int, role: str = "") -> HashKey:
    label = f"fpmatch.evaluation.{seed}" + (f".{role}" if role else "")
    return HashKey(hashlib.sha256(label.encode()).digest())


def _signs(codes: np.ndarray) -> np.ndarray:
    """Codes as +-1 float32 rows: Hamming distance = (bits - a . b) / 2, exactly."""
    return np.unpackbits(codes, axis=1).astype(np.float32) * 2.0 - 1.0


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
    progress: ProgressFactory | None = None,
    datasets: Sequence[EvaluationData] = (),
) -> dict[str, Any]:
    """Evaluate each synthetic profile and each given dataset; return the whole report (JSON-ready).

    Unlinkability and renewability results sit under the top-level keys ``d_sys``
    and ``renewability``, one entry per profile.
    """
    if not profiles and not datasets:
        raise InvalidInputError("name at least one profile or dataset")
    started = time.perf_counter()
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
            progress=progress,
        )
        for name, data in runs
    }
    unlinkable = {name: result.pop("d_sys") for name, result in results.items()}
    renewal = {name: result.pop("renewability") for name, result in results.items()}
    return {
        "kind": "fpmatch built-in evaluation",
        "fpmatch_version": _version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key": "derived from the seed (evaluation only)",
        "profiles": results,
        "d_sys": unlinkable,
        "renewability": renewal,
        "total_s": time.perf_counter() - started,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "scan_kernel": scan_kernel(),
        },
    }


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
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Evaluate both schemes on one synthetic profile, or on ``data`` when given
    (then ``n`` and ``nonmated_searches`` come from it and ``profile`` is its name).

    Besides verification: open-set 1:N against ``nonmated_searches`` (default ``n``)
    probes of people not enrolled, and unlinkability (D_sys) and renewability of
    the hash scheme under a second key.
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
    if max_impostors < 1 or rank1_probes < 1 or timing_queries < 1:
        raise InvalidInputError("max_impostors, rank1_probes and timing_queries must be positive")
    nonmated_count = n if nonmated_searches is None else nonmated_searches
    if isinstance(nonmated_count, bool) or not isinstance(nonmated_count, int) or nonmated_count < 1:
        raise InvalidInputError(f"nonmated_searches must be a positive integer, got {nonmated_searches!r}")
    make_bar = _silent if progress is None else progress

    def bar(label: str, total: int) -> Progress:
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

    schemes: dict[str, dict[str, Any]] = {}
    descriptions = {
        "plain": "exact cosine similarity on unprotected float32 templates (the baseline)",
        "hash": f"{scheme.scheme} keyed cancellable codes, {bits} bits, score cos(pi * hamming / bits)",
    }
    for name, scores in (("plain", plain), ("hash", hashed)):
        schemes[name] = {
            "description": descriptions[name],
            "tar_at_far": {far_label(f): tar_at_far(scores.genuine, scores.impostor, f) for f in fars},
            "eer": equal_error_rate(scores.genuine, scores.impostor),
            "eer_interval": list(eer_interval(scores.genuine, scores.impostor)),
            "rank1": float(np.mean(scores.rank1_hits)),
            "genuine_score_mean": float(np.mean(scores.genuine)),
            "impostor_score_mean": float(np.mean(scores.impostor)),
        }

    identification = evaluate_identification(
        enrolment, probes, strangers, scheme, fpirs=fpirs, candidates=candidates, progress=bar
    )
    linkage = evaluate_linkage(enrolment, probes, scheme, rekeyed, pairs=linkage_pairs, fars=fars, seed=seed)

    threshold = schemes["hash"]["tar_at_far"][far_label(fars[0])]["threshold"]
    timing = _time_queries(gallery, names, enrolment, probes, max(-1.0, min(1.0, threshold)), timing_queries, bar)
    timing["enrol_per_s"] = n / max(enrol_s, 1e-9)
    timing["total_s"] = time.perf_counter() - started

    return {
        "parameters": {
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
            "candidate_list_length": identification["candidate_list_length"],
        },
        "schemes": schemes,
        "identification": identification,
        "d_sys": linkage["d_sys"],
        "renewability": linkage["renewability"],
        "rank1_agreement": float(np.mean(plain.top1 == hashed.top1)),
        "timing": timing,
        "det": {name: det_curve(s.genuine, s.impostor) for name, s in (("plain", plain), ("hash", hashed))},
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
    """Genuine and impostor scores of both schemes, and plain rank-1 over the whole gallery."""
    n = len(enrolment)
    bits = scheme.bits
    gallery_plain = _unit(enrolment.astype(np.float32))
    probe_plain = _unit(probes.astype(np.float32))
    gallery_signs = _signs(scheme.protect(enrolment))
    probe_signs = _signs(scheme.protect(probes))
    columns = max(1, min(n, max_impostors // max(1, n - 1)))
    probes_r1 = min(n, rank1_probes)

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
            dots = probe_signs[start:stop] @ gallery_signs[:columns].T
            distances = np.rint((bits - dots) / 2).astype(np.int64)
            keep = rows[:, None] != np.arange(columns)[None, :]
            plain_imp.append(cos[keep].astype(np.float64))
            hash_imp.append(np.asarray(scheme.score(distances[keep])))
            progress.advance()

    genuine_cos = np.einsum("ij,ij->i", probe_plain, gallery_plain).astype(np.float64)
    genuine_dots = np.einsum("ij,ij->i", probe_signs, gallery_signs)
    genuine_hash = np.asarray(scheme.score(np.rint((bits - genuine_dots) / 2).astype(np.int64)))
    plain = Scores(genuine_cos, np.concatenate(plain_imp), top1 == np.arange(probes_r1), top1)
    hashed = Scores(genuine_hash, np.concatenate(hash_imp))
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
            progress.advance()
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


def evaluate_identification(
    enrolment: np.ndarray,
    mated_probes: np.ndarray,
    nonmated_probes: np.ndarray,
    scheme: CancellableHash,
    *,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    candidates: int = DEFAULT_CANDIDATES,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Open-set 1:N figures of plain cosine and the hash scheme (exact :class:`FlatIndex`).

    Row i of ``mated_probes`` is a fresh sample of the person enrolled in row i of
    ``enrolment``; ``nonmated_probes`` are samples of people who are not enrolled.
    Each search asks for a candidate list of ``candidates`` entries.
    """
    n = len(enrolment)
    if n < 2 or len(mated_probes) != n or len(nonmated_probes) < 1:
        raise InvalidInputError("need 2+ enrolled rows, one mated probe per row and non-mated probes")
    for fpir in fpirs:
        if not 0.0 < fpir < 1.0:
            raise InvalidInputError(f"FPIR values must lie in (0, 1), got {fpir}")
    if candidates < 1:
        raise InvalidInputError(f"candidates must be positive, got {candidates}")
    bar = _silent if progress is None else progress
    length = min(candidates, n)
    searches = {
        "plain": _plain_open_set(enrolment, mated_probes, nonmated_probes, bar),
        "hash": _hash_open_set(enrolment, mated_probes, nonmated_probes, scheme, length),
    }
    result: dict[str, Any] = {
        "mated_searches": n,
        "nonmated_searches": int(len(nonmated_probes)),
        "candidate_list_length": length,
        "decision": "a search returns the candidates scoring at or above the threshold; the threshold is the "
        "lowest that lets at most FPIR of the non-mated searches return anyone",
        "fnir_rank1": "share of mated searches whose mate is not the top candidate at or above the threshold",
        "fnir_candidate_list": "share of mated searches whose mate is not within the candidate list at or above "
        "the threshold",
    }
    for name, (mate_scores, mate_ranks, top) in searches.items():
        points: dict[str, Any] = {}
        for fpir in fpirs:
            first = fnir_at_fpir(mate_scores, mate_ranks, top, fpir, candidates=1)
            listed = fnir_at_fpir(mate_scores, mate_ranks, top, fpir, candidates=length)
            points[far_label(fpir)] = {
                "threshold": first["threshold"],
                "fpir_achieved": first["fpir_achieved"],
                "false_positives": first["false_positives"],
                "fnir_rank1": first["fnir"],
                "fnir_candidate_list": listed["fnir"],
            }
        result[name] = {
            "rank1": float(np.mean(mate_ranks == 1)),
            "at_fpir": points,
            "nonmated_top_score_mean": float(np.mean(top)),
        }
    return result


def _plain_open_set(
    enrolment: np.ndarray, mated: np.ndarray, nonmated: np.ndarray, bar: ProgressFactory
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mate scores, mate ranks (ties count against the mate) and best non-mated scores, exact cosine."""
    gallery = _unit(enrolment.astype(np.float32))
    probes = _unit(mated.astype(np.float32))
    others = _unit(nonmated.astype(np.float32))
    n = len(gallery)
    mate = np.empty(n, dtype=np.float64)
    rank = np.empty(n, dtype=np.int64)
    top = np.empty(len(others), dtype=np.float64)
    with bar("1:N plain searches", math.ceil(n / _CHUNK) + math.ceil(len(others) / _CHUNK)) as progress:
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            scores = probes[start:stop] @ gallery.T
            own = scores[np.arange(stop - start), np.arange(start, stop)]
            mate[start:stop] = own
            rank[start:stop] = np.count_nonzero(scores >= own[:, None], axis=1)
            progress.advance()
        for start in range(0, len(others), _CHUNK):
            stop = min(len(others), start + _CHUNK)
            top[start:stop] = np.max(others[start:stop] @ gallery.T, axis=1)
            progress.advance()
    return mate, rank, top


def _hash_open_set(
    enrolment: np.ndarray, mated: np.ndarray, nonmated: np.ndarray, scheme: CancellableHash, length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`_plain_open_set`, from :class:`FlatIndex` searches; a mate outside the list ranks n + 1."""
    n = len(enrolment)
    index = FlatIndex(scheme.bits)
    index.add(scheme.protect(enrolment), np.arange(n, dtype=np.int64))
    found = index.search(scheme.protect(mated), length)
    hit = found.labels == np.arange(n, dtype=np.int64)[:, None]
    listed = hit.any(axis=1)
    position = np.argmax(hit, axis=1)
    rank = np.where(listed, position + 1, n + 1).astype(np.int64)
    distance = found.distances[np.arange(n), position]
    mate = np.where(listed, np.asarray(scheme.score(distance)), -np.inf)
    top = np.asarray(scheme.score(index.search(scheme.protect(nonmated), 1).distances[:, 0]), dtype=np.float64)
    return mate, rank, top


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
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Single-thread per-query latency against gallery size: faiss ``IndexFlatIP``, hash flat, hash IVF.

    Galleries are nested prefixes of one synthetic draw; probes are fresh samples of
    ``queries`` enrolled people, searched one at a time for the ``k`` best. The
    plain baseline is left out (with a note) when faiss is not importable. IVF
    uses :func:`ivf_lists` lists and scans half of them.
    """
    chosen = sorted({int(v) for v in sizes})
    if not chosen or chosen[0] < 16:
        raise InvalidInputError("gallery sizes must be at least 16")
    if queries < 1 or warmup < 0 or k < 1:
        raise InvalidInputError("queries and k must be positive, warmup non-negative")
    if profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    bar = _silent if progress is None else progress
    faiss = _import_faiss()
    notes = [] if faiss is not None else ["faiss is not importable: no plain IndexFlatIP baseline"]
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
            step.advance()
    offset = estimate_offset(faces.samples(faces.identities(_OFFSET_SAMPLES)))
    key = _bench_key(seed)
    enrol_scheme = CancellableHash(key, dim, bits, offset=offset)
    probe_scheme = CancellableHash(key, dim, bits, offset=offset, n_threads=1)
    codes = enrol_scheme.protect(gallery)

    points: list[dict[str, Any]] = []
    threads_before = faiss.omp_get_max_threads() if faiss is not None else 0
    try:
        if faiss is not None:
            faiss.omp_set_num_threads(1)
        with bar(f"{profile}: timing gallery sizes", len(chosen)) as step:
            for n in chosen:
                truth = probe_ids[n]
                probes = faces.samples(kept[np.searchsorted(needed, truth)])
                points.append(_time_size(n, gallery, codes, probes, truth, probe_scheme, faiss, k, warmup))
                step.advance()
    finally:
        if faiss is not None:
            faiss.omp_set_num_threads(threads_before)
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
        "points": points,
        "notes": notes,
        "load_average": {"start": load_start, "end": _load_average()},
        "total_s": time.perf_counter() - started,
    }


def _time_size(
    n: int,
    gallery: np.ndarray,
    codes: np.ndarray,
    probes: np.ndarray,
    truth: np.ndarray,
    scheme: CancellableHash,
    faiss: Any,
    k: int,
    warmup: int,
) -> dict[str, Any]:
    """Latencies and rank-1 figures at one gallery size (the first ``n`` rows)."""
    ids = np.arange(n, dtype=np.int64)
    depth = min(k, n)
    hash_ns = np.empty(len(probes), dtype=np.int64)
    probe_codes = np.empty((len(probes), scheme.code_size), dtype=np.uint8)
    for q in range(len(probes)):
        t0 = time.perf_counter_ns()
        probe_codes[q] = scheme.protect(probes[q])[0]
        hash_ns[q] = time.perf_counter_ns() - t0
    point: dict[str, Any] = {"n": n, "hash_probe_ms": _latency(hash_ns)}

    if faiss is not None:
        plain = faiss.IndexFlatIP(gallery.shape[1])
        plain.add(np.ascontiguousarray(gallery[:n]))
        ns, top = _timed_searches(lambda q: plain.search(probes[q : q + 1], depth)[1][0, 0], len(probes), warmup)
        point["plain_ms"] = _latency(ns)
        point["plain_rank1"] = float(np.mean(top == truth))
        del plain

    flat = FlatIndex(scheme.bits)
    flat.add(codes[:n], ids)
    ns, flat_top = _timed_searches(
        lambda q: flat.search(probe_codes[q : q + 1], depth, n_threads=1).labels[0, 0], len(probes), warmup
    )
    point["hash_flat_ms"] = _latency(ns)
    point["hash_flat_rank1"] = float(np.mean(flat_top == truth))
    del flat

    lists = ivf_lists(n)
    ivf = IVFIndex(scheme.bits, nlist=lists, nprobe=max(1, lists // 2))
    ivf.train(codes[:n])
    ivf.add(codes[:n], ids)
    ns, ivf_top = _timed_searches(
        lambda q: ivf.search(probe_codes[q : q + 1], depth, n_threads=1).labels[0, 0], len(probes), warmup
    )
    point["hash_ivf_ms"] = _latency(ns)
    point["hash_ivf_rank1"] = float(np.mean(ivf_top == truth))
    point["ivf_top1_agreement_with_flat"] = float(np.mean(ivf_top == flat_top))
    point["ivf_nlist"] = lists
    point["ivf_nprobe"] = ivf.nprobe
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


def write_speed_png(speed: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Log-log latency against gallery size, one panel per profile (``speed``: profile -> result).

    Returns False, writing nothing, when matplotlib is not installed.
    """
    figure = _new_figure(len(speed), (5.4, 4.6))
    if figure is None:
        return False
    lines = (
        ("plain_ms", "plain IndexFlatIP (faiss)", "o"),
        ("hash_flat_ms", "hash, exact flat", "s"),
        ("hash_ivf_ms", "hash, IVF", "^"),
    )
    for panel, (profile, result) in enumerate(speed.items(), start=1):
        axes = figure.add_subplot(1, len(speed), panel)
        sizes = [point["n"] for point in result["points"]]
        for key, label, marker in lines:
            values = [point[key]["mean"] for point in result["points"] if key in point]
            if len(values) == len(sizes):
                axes.plot(sizes, values, marker=marker, label=label, linewidth=1.8)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("enrolled templates")
        axes.set_ylabel("ms per query (one thread)")
        axes.set_title(f"'{profile}' synthetic faces ({result['dim']}-D, {result['bits']}-bit codes)")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(loc="upper left")
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


def _det_panel(axes: Any, result: dict[str, Any]) -> None:
    params = result["parameters"]
    fmr_floor = 1.0 / max(1, params["impostor_pairs"])
    fnmr_floor = 0.5 / max(1, params["genuine_pairs"])
    labels = {"plain": "plain cosine (unprotected)", "hash": f"hash scheme ({params['bits']} bits)"}
    clipped = False
    for name, curve in result["det"].items():
        fmr = np.asarray(curve["fmr"], dtype=np.float64)
        fnmr = np.asarray(curve["fnmr"], dtype=np.float64)
        keep = fmr > 0
        clipped |= bool(np.any(fnmr[keep] < fnmr_floor))
        axes.plot(fmr[keep], np.maximum(fnmr[keep], fnmr_floor), label=labels.get(name, name), linewidth=1.8)
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
    axes.legend(loc="upper right")
    if clipped:
        axes.text(
            0.02, 0.02, "FNMR 0 (no errors seen) drawn at the floor", transform=axes.transAxes, fontsize=8
        )


__all__ = [
    "D_SYS_TARGET",
    "DEFAULT_CANDIDATES",
    "DEFAULT_FARS",
    "DEFAULT_FPIRS",
    "Unlinkability",
    "d_sys",
    "det_curve",
    "eer_interval",
    "equal_error_rate",
    "evaluate_identification",
    "evaluate_linkage",
    "evaluate_profile",
    "far_label",
    "fnir_at_fpir",
    "hamming_pairs",
    "ivf_lists",
    "ks_statistic",
    "local_linkability",
    "run_evaluation",
    "score_summary",
    "speed_vs_gallery_size",
    "tar_at_far",
    "unlinkability",
    "write_det_png",
    "write_speed_png",
    "write_unlinkability_png",
]
