"""Evaluation of plain cosine and the protection schemes on synthetic faces (or labelled embeddings).

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

One module per concern: :mod:`.data` (the templates a run uses), :mod:`.metrics`
(error rates), :mod:`.scoring` (plain and hash scores on the same pairs and
searches), :mod:`.encrypted` (``he`` and ``hybrid``), :mod:`.linkage`
(unlinkability, renewability), :mod:`.inversion` (irreversibility),
:mod:`.speed`, :mod:`.runner` (one run, one report), :mod:`.report` (summary and
tables) and :mod:`.plots`. The matching library never imports this package.
"""

from __future__ import annotations

from .data import EvaluationData, load_labelled, split_labelled, synthetic_data
from .encrypted import EncryptedSizes, evaluate_encrypted
from .inversion import evaluate_inversion, reconstruct_templates
from .linkage import (
    D_SYS_TARGET,
    Unlinkability,
    d_sys,
    evaluate_linkage,
    ks_statistic,
    local_linkability,
    score_summary,
    unlinkability,
)
from .metrics import (
    DEFAULT_CANDIDATES,
    DEFAULT_FARS,
    DEFAULT_FPIRS,
    MIN_ERRORS,
    OpenSet,
    Scores,
    det_curve,
    eer_interval,
    equal_error_rate,
    far_label,
    fnir_at_fpir,
    identification_figures,
    min_trials,
    tar_at_far,
    tar_points,
    verification_figures,
)
from .plots import write_det_png, write_report_pngs, write_speed_png, write_unlinkability_png
from .report import report_summary, report_text
from .runner import evaluate_profile, run_evaluation
from .scoring import evaluate_identification, open_set_searches
from .speed import ENCRYPTED_MAX_N, ivf_lists, speed_vs_gallery_size

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_FARS",
    "DEFAULT_FPIRS",
    "D_SYS_TARGET",
    "ENCRYPTED_MAX_N",
    "EncryptedSizes",
    "EvaluationData",
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
    "identification_figures",
    "ivf_lists",
    "ks_statistic",
    "load_labelled",
    "local_linkability",
    "min_trials",
    "open_set_searches",
    "reconstruct_templates",
    "report_summary",
    "report_text",
    "run_evaluation",
    "score_summary",
    "speed_vs_gallery_size",
    "split_labelled",
    "synthetic_data",
    "tar_at_far",
    "tar_points",
    "unlinkability",
    "verification_figures",
    "write_det_png",
    "write_report_pngs",
    "write_speed_png",
    "write_unlinkability_png",
]
