"""Plain cosine and the hash scheme scored on the same verification pairs and open-set searches."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .._progress import ProgressFactory, silent
from ..codes import PAIR_CHUNK, weighted_pairs
from ..errors import InvalidInputError
from ..gallery import default_shortlist
from ..hashing import CancellableHash
from ..index import FlatIndex
from ._shared import unit
from .metrics import DEFAULT_CANDIDATES, DEFAULT_FPIRS, MIN_ERRORS, OpenSet, Scores, identification_figures


_CHUNK = 256


def score_pairs(
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
    gallery_plain = unit(enrolment.astype(np.float32))
    probe_plain = unit(probes.astype(np.float32))
    gallery_codes = scheme.protect(enrolment)
    probe_codes, probe_weights = scheme.protect_with_reliability(probes)
    columns = impostor_columns(n, max_impostors)
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


# -- pairwise scoring ------------------------------------------------------------------


def pair_cosines(x: np.ndarray, rows_x: np.ndarray, y: np.ndarray, rows_y: np.ndarray) -> np.ndarray:
    """Inner products of unit rows ``x[rows_x[i]]`` and ``y[rows_y[i]]``."""
    out = np.empty(len(rows_x), dtype=np.float64)
    for start in range(0, len(rows_x), PAIR_CHUNK):
        stop = min(len(rows_x), start + PAIR_CHUNK)
        out[start:stop] = np.einsum("ij,ij->i", x[rows_x[start:stop]], y[rows_y[start:stop]], dtype=np.float64)
    return out


def nonmated_pairs(n: int, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i != j: all of them when there are at most ``count``, else ``count`` at random."""
    if n * (n - 1) <= count:
        i, j = np.divmod(np.arange(n * n, dtype=np.int64), n)
        keep = i != j
        return i[keep], j[keep]
    i = rng.integers(0, n, count)
    j = rng.integers(0, n - 1, count)
    j += j >= i
    return i, j


def impostor_columns(n: int, max_impostors: int) -> int:
    """Enrolled rows each probe is paired with as an impostor: all, or the first ``max_impostors / (n - 1)``."""
    return max(1, min(n, max_impostors // max(1, n - 1)))


def impostor_layout(probes: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Impostor pairs (probe i, enrolled j) for i < ``probes``, j < ``columns``, j != i, probe by probe."""
    i, j = np.divmod(np.arange(probes * columns, dtype=np.int64), columns)
    keep = i != j
    return i[keep], j[keep]


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
    min_errors: int = MIN_ERRORS,
) -> dict[str, Any]:
    """Open-set 1:N figures of plain cosine and the hash scheme (exact :class:`FlatIndex`).

    Row i of ``mated_probes`` is a fresh sample of the person enrolled in row i of
    ``enrolment``; ``nonmated_probes`` are samples of people who are not enrolled.
    Each search asks for a candidate list of ``candidates`` entries.
    """
    searches = open_set_searches(enrolment, mated_probes, nonmated_probes, scheme, candidates, progress)
    return identification_report(searches, min(candidates, len(enrolment)), fpirs, min_errors)


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
    plain = [unit(x.astype(np.float32)) for x in (enrolment, mated_probes, nonmated_probes)]
    return {
        "plain": plain_open_set(*plain, bar),
        "hash": _hash_open_set(enrolment, mated_probes, nonmated_probes, scheme, min(candidates, n)),
    }


def identification_report(
    searches: dict[str, OpenSet], length: int, fpirs: Sequence[float], min_errors: int
) -> dict[str, Any]:
    """A report's identification entry: the decision rule, then each scheme's figures."""
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


def plain_open_set(
    gallery: np.ndarray, probes: np.ndarray, strangers: np.ndarray, bar: ProgressFactory = silent
) -> OpenSet:
    """Exact cosine searches of unit rows: mated probe i is a sample of gallery row i, strangers are
    not enrolled. Mate scores, mate ranks (ties count against the mate), top rows, best non-mated scores."""
    n, others = len(probes), len(strangers)
    result = OpenSet.empty(n, others)
    with bar("1:N plain searches", math.ceil(n / _CHUNK) + math.ceil(others / _CHUNK)) as progress:
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            scores = probes[start:stop] @ gallery.T
            own = scores[np.arange(stop - start), np.arange(start, stop)]
            result.mate_scores[start:stop] = own
            result.mate_ranks[start:stop] = np.count_nonzero(scores >= own[:, None], axis=1)
            result.top1[start:stop] = np.argmax(scores, axis=1)
            progress.update()
        for start in range(0, others, _CHUNK):
            stop = min(others, start + _CHUNK)
            result.nonmated_top[start:stop] = np.max(strangers[start:stop] @ gallery.T, axis=1)
            progress.update()
    return result


def _hash_open_set(
    enrolment: np.ndarray,
    mated: np.ndarray,
    nonmated: np.ndarray,
    scheme: CancellableHash,
    length: int,
    shortlist: int | None = None,
) -> OpenSet:
    """As :func:`plain_open_set` on the templates, searching as :meth:`Gallery.identify` does (a Hamming shortlist
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


__all__ = [
    "evaluate_identification",
    "identification_report",
    "impostor_columns",
    "impostor_layout",
    "nonmated_pairs",
    "open_set_searches",
    "pair_cosines",
    "plain_open_set",
    "score_pairs",
]
