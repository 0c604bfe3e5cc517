"""Unlinkability (D_sys, Gomez-Barrero et al., "General framework to evaluate unlinkability in
biometric template protection systems", IEEE TIFS 2018) and renewability of the hash scheme under two keys."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..codes import hamming_pairs
from ..errors import InvalidInputError
from ..hashing import CancellableHash
from ._shared import unit
from .metrics import DEFAULT_FARS, far_label, tar_at_far
from .scoring import nonmated_pairs, pair_cosines


#: The unlinkability target: D_sys at most this.
D_SYS_TARGET = 0.05


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


# -- the hash scheme under two keys -------------------------------------------------


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
    i, j = nonmated_pairs(n, pairs, rng)
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
    plain_first = unit(first.astype(np.float32))
    plain_second = unit(second.astype(np.float32))
    plain_mated = pair_cosines(plain_first, rows, plain_second, rows)
    plain_nonmated = pair_cosines(plain_first, i, plain_second, j)

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


__all__ = [
    "D_SYS_TARGET",
    "Unlinkability",
    "d_sys",
    "evaluate_linkage",
    "ks_statistic",
    "local_linkability",
    "score_summary",
    "unlinkability",
]
