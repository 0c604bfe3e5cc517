"""One evaluation run: every scheme on each profile or dataset, gathered into one JSON-ready report."""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from .._core import scan_kernel
from .._progress import ProgressFactory, silent
from ..errors import InvalidInputError
from ..gallery import Gallery, default_shortlist
from ..hashing import DEFAULT_BITS, CancellableHash, estimate_offset
from ..synthetic import PROFILES
from ._shared import bench_key, import_he
from .data import EvaluationData, synthetic_data
from .encrypted import EncryptedSizes, evaluate_encrypted
from .inversion import evaluate_inversion
from .linkage import evaluate_linkage
from .metrics import (
    DEFAULT_CANDIDATES,
    DEFAULT_FARS,
    DEFAULT_FPIRS,
    MIN_ERRORS,
    det_curve,
    far_label,
    verification_figures,
)
from .scoring import identification_report, open_set_searches, score_pairs


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
    if encrypted is not None and import_he() is None:
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
    scheme = CancellableHash(bench_key(seed), dim, bits, offset=offset)
    rekeyed = CancellableHash(bench_key(seed, "renewed"), dim, bits, offset=offset)
    names = [f"subject-{i:06d}" for i in range(n)]

    gallery = Gallery(scheme)
    begin = time.perf_counter()
    gallery.enrol(names, enrolment)
    enrol_s = time.perf_counter() - begin

    plain, hashed = score_pairs(enrolment, probes, scheme, max_impostors, rank1_probes, bar)
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
    identification = identification_report(searches, length, fpirs, min_errors)
    linkage = evaluate_linkage(enrolment, probes, scheme, rekeyed, pairs=linkage_pairs, fars=fars, seed=seed)
    inversion = evaluate_inversion(
        enrolment,
        probes,
        scheme,
        CancellableHash(bench_key(seed, "attacker"), dim, bits, offset=offset),
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
    from .. import __version__

    return __version__


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


def _plain_search(gallery: np.ndarray, probe: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` best inner products, best first (the unprotected baseline)."""
    scores = gallery @ probe
    top = np.argpartition(-scores, min(k, len(scores)) - 1)[:k]
    return np.asarray(top[np.argsort(-scores[top])])


__all__ = [
    "evaluate_profile",
    "run_evaluation",
]
