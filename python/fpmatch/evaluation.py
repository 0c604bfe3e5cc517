"""A small built-in evaluation: plain cosine vs. the hash scheme on synthetic faces.

For each synthetic profile (by default both, ``centred`` and ``offset``), one
gallery sample and one fresh (mated) probe per identity are drawn with
:class:`fpmatch.synthetic.FaceGenerator`. Both schemes score the same pairs:

* genuine pairs: each probe against its own enrolled sample;
* impostor pairs: each probe against the other enrolled samples (all of them,
  or the first ``m`` when ``n * m`` would exceed ``max_impostors``).

The report gives TAR at fixed FAR values (threshold set from the impostor
scores, so the achieved FAR never exceeds the target), the equal error rate,
closed-set rank-1 accuracy, rank-1 agreement between the schemes, single-query
latencies and downsampled DET curves. The key is derived from the seed, so a
run is reproducible; it protects nothing real.

For large galleries and the faiss baseline use ``benchmarks/bench_search.py``.
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
from .errors import InvalidInputError
from .gallery import Gallery
from .hashing import DEFAULT_BITS, CancellableHash, estimate_offset
from .keys import HashKey
from .synthetic import PROFILES, FaceGenerator

DEFAULT_FARS = (1e-3, 1e-4)
_CHUNK = 256
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
    """(FMR, FNMR) pairs over thresholds, dense in the low-FMR tail; at most ``points`` of them."""
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
    fmr, fnmr = fmr[order], fnmr[order]
    if len(fmr) > points:
        keep = np.unique(np.linspace(0, len(fmr) - 1, points).astype(np.int64))
        fmr, fnmr = fmr[keep], fnmr[keep]
    return {"fmr": [float(v) for v in fmr], "fnmr": [float(v) for v in fnmr]}


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The rate where FMR and FNMR cross (their mean at the closest threshold)."""
    gen = np.sort(genuine)
    imp = np.sort(impostor)
    thresholds = np.unique(np.concatenate([gen, np.quantile(imp, np.linspace(0, 1, 4096))]))
    fmr = (len(imp) - np.searchsorted(imp, thresholds, side="right")) / len(imp)
    fnmr = np.searchsorted(gen, thresholds, side="right") / len(gen)
    best = int(np.argmin(np.abs(fmr - fnmr)))
    return float((fmr[best] + fnmr[best]) / 2)


def _silent(label: str, total: int) -> Progress:
    return Progress(label, total, enabled=False)


def _bench_key(seed: int) -> HashKey:
    return HashKey(hashlib.sha256(f"fpmatch.evaluation.{seed}".encode()).digest())


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
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Evaluate each synthetic profile and return the whole report (JSON-ready)."""
    if not profiles:
        raise InvalidInputError("name at least one profile")
    started = time.perf_counter()
    results = {
        name: evaluate_profile(
            n,
            profile=name,
            seed=seed,
            bits=bits,
            fars=fars,
            max_impostors=max_impostors,
            rank1_probes=rank1_probes,
            timing_queries=timing_queries,
            progress=progress,
        )
        for name in dict.fromkeys(profiles)
    }
    return {
        "kind": "fpmatch built-in evaluation",
        "fpmatch_version": _version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key": "derived from the seed (evaluation only)",
        "profiles": results,
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
    seed: int = 0,
    bits: int = DEFAULT_BITS,
    fars: Sequence[float] = DEFAULT_FARS,
    max_impostors: int = 4_000_000,
    rank1_probes: int = 2000,
    timing_queries: int = 200,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Evaluate both schemes on one synthetic profile."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidInputError(f"n must be an integer of at least 2, got {n!r}")
    if profile not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    if not fars:
        raise InvalidInputError("name at least one FAR value")
    for far in fars:
        if not 0.0 < far < 1.0:
            raise InvalidInputError(f"FAR values must lie in (0, 1), got {far}")
    if max_impostors < 1 or rank1_probes < 1 or timing_queries < 1:
        raise InvalidInputError("max_impostors, rank1_probes and timing_queries must be positive")
    make_bar = _silent if progress is None else progress

    def bar(label: str, total: int) -> Progress:
        return make_bar(f"{profile}: {label}", total)

    started = time.perf_counter()
    faces = FaceGenerator(profile, seed)
    people = faces.identities(n)
    enrolment = faces.samples(people)
    probes = faces.samples(people)
    offset = estimate_offset(faces.samples(faces.identities(_OFFSET_SAMPLES)))
    dim = enrolment.shape[1]
    scheme = CancellableHash(_bench_key(seed), dim, bits, offset=offset)
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
            "rank1": float(np.mean(scores.rank1_hits)),
            "genuine_score_mean": float(np.mean(scores.genuine)),
            "impostor_score_mean": float(np.mean(scores.impostor)),
        }

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
        },
        "schemes": schemes,
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
    "DEFAULT_FARS",
    "det_curve",
    "equal_error_rate",
    "evaluate_profile",
    "far_label",
    "run_evaluation",
    "tar_at_far",
    "write_det_png",
]
