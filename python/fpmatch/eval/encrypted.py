"""The encrypted ``he`` and ``hybrid`` schemes on a documented part of an evaluation, plain cosine beside them."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._progress import ProgressFactory, silent
from ..errors import InvalidInputError
from ..hashing import CancellableHash
from ._shared import import_he, run_key_holder, unit
from .metrics import (
    DEFAULT_CANDIDATES,
    DEFAULT_FARS,
    DEFAULT_FPIRS,
    MIN_ERRORS,
    OpenSet,
    Scores,
    det_curve,
    identification_figures,
    verification_figures,
)
from .scoring import impostor_columns, impostor_layout, pair_cosines, plain_open_set


#: Impostors per ``hybrid`` 1:1 request (one probe against this many claimed subjects at most).
_HYBRID_COLUMNS = 400


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


def _he_parties(he: Any) -> tuple[Any, Any, Any]:
    """(key holder, secret-key audit, public context) for one run.

    The audit reads the key file the holder writes; it decrypts exactly the
    requests the key holder would decide on, which the holder never releases.
    """
    from tempfile import TemporaryDirectory

    from ..he.audit import SecretKeyAudit

    holder = run_key_holder(he)
    with TemporaryDirectory(prefix="fpmatch-eval-") as tmp:
        audit = SecretKeyAudit(holder.save(Path(tmp) / "he.key"))
    return holder, audit, he.PublicContext(holder.public_context())


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
    he = import_he()
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
    columns = impostor_columns(n, max_impostors)
    names = [f"subject-{i:07d}" for i in range(n)]
    row_of = {name: i for i, name in enumerate(names)}
    # Plain cosine in float64: the reference every encrypted score is checked against.
    gallery_unit = unit(enrolment.astype(np.float64))
    probe_unit = unit(probes[:count].astype(np.float64))
    stranger_unit = unit(strangers[:others].astype(np.float64))
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
    he_search = OpenSet.empty(count, others)
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
    hybrid_search = OpenSet.empty(count, others)
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
    he_i, he_j = impostor_layout(count, columns)
    hy_i, hy_j = impostor_layout(impostor_probes, hybrid_columns)
    plain_genuine = np.einsum("ij,ij->i", probe_unit, gallery_unit[:count])
    plain_search = plain_open_set(gallery_unit, probe_unit, stranger_unit)
    he_scores_all = Scores(he_genuine, np.concatenate(he_impostor), he_search.mate_ranks == 1, he_search.top1)
    hybrid_scores = Scores(
        hybrid_genuine, np.concatenate(hybrid_impostor), hybrid_search.mate_ranks == 1, hybrid_search.top1
    )
    plain_he = Scores(plain_genuine, pair_cosines(probe_unit, he_i, gallery_unit, he_j), plain_search.mate_ranks == 1)
    plain_hybrid = Scores(plain_genuine, pair_cosines(probe_unit, hy_i, gallery_unit, hy_j), plain_he.rank1_hits)
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


__all__ = [
    "EncryptedSizes",
    "evaluate_encrypted",
]
