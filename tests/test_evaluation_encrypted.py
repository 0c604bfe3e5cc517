"""The he and hybrid schemes in the evaluation report, and which error rates a run may claim."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from typing import Any

import numpy as np
import pytest

import fpmatch
from fpmatch import CancellableHash, FlatIndex, HashKey, estimate_offset
from fpmatch.errors import InvalidInputError
from fpmatch.eval import (
    EncryptedSizes,
    evaluate_encrypted,
    min_trials,
    report_summary,
    report_text,
    run_evaluation,
    synthetic_data,
    tar_points,
)

# -- the rule of 30 ----------------------------------------------------------------------------


def test_min_trials_and_tar_points() -> None:
    assert min_trials(1e-4) == 300_000 and min_trials(1e-3) == 30_000 and min_trials(3e-3) == 10_000
    assert min_trials(1e-4, min_errors=10) == 100_000
    rng = np.random.default_rng(0)
    genuine = rng.normal(3.0, 1.0, 1000)
    short = tar_points(genuine, rng.normal(0.0, 1.0, 299_999), [1e-3, 1e-4])
    assert short["1e-3"]["supported"] and 0.0 <= short["1e-3"]["tar"] <= 1.0
    assert not short["1e-4"]["supported"] and short["1e-4"]["tar"] is None
    assert "299,999 impostor pairs" in short["1e-4"]["reason"] and "300,000 pairs" in short["1e-4"]["reason"]
    enough = tar_points(genuine, rng.normal(0.0, 1.0, 300_000), [1e-4])["1e-4"]
    assert enough["supported"] and enough["far_achieved"] <= 1e-4 and "reason" not in enough
    with pytest.raises(InvalidInputError):
        min_trials(0.0)


# -- he and hybrid on a small run -----------------------------------------------------------


needs_tenseal = pytest.mark.skipif(
    importlib.util.find_spec("tenseal") is None, reason="the he and hybrid schemes need TenSEAL (pip install tenseal)"
)
N, PROBES, NONMATED, HYBRID_PAIRS = 300, 120, 300, 3000


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """One small run on the dlib-like profile (128-D, cheap to encrypt), shared by the tests below."""
    sizes = EncryptedSizes(probes=PROBES, nonmated=NONMATED, hybrid_impostor_pairs=HYBRID_PAIRS)
    return run_evaluation(
        N,
        profiles=("offset",),
        max_impostors=200_000,
        linkage_pairs=20_000,
        timing_queries=10,
        encrypted=sizes,
        inversion_pairs=50_000,
    )


@needs_tenseal
def test_report_holds_every_scheme_with_documented_keys(report: dict[str, Any]) -> None:
    json.dumps(report, allow_nan=False)
    assert report["schemes"] == ["plain", "hash", "he", "hybrid"]
    result = report["profiles"]["offset"]
    assert set(result["schemes"]) == set(result["det"]) == {"plain", "hash", "he", "hybrid"}
    for scheme in ("he", "hybrid"):
        figures = result["schemes"][scheme]
        for key in ("description", "genuine_pairs", "impostor_pairs", "tar_at_far", "eer", "eer_interval", "rank1",
                    "plain_same_pairs", "max_abs_error_vs_plain"):  # fmt: skip
            assert key in figures, (scheme, key)
        ident = result["identification"][scheme]
        for key in ("rank1", "at_fpir", "mated_searches", "nonmated_searches", "plain_same_searches",
                    "rank1_agreement_with_plain"):  # fmt: skip
            assert key in ident, (scheme, key)
        assert figures["genuine_pairs"] == ident["mated_searches"] == PROBES
        assert ident["nonmated_searches"] == NONMATED
    encrypted = result["parameters"]["encrypted"]
    # he: every mated probe against every other enrolled row (plain's pairs for those probes).
    assert encrypted["he_impostor_pairs"] == result["schemes"]["he"]["impostor_pairs"] == PROBES * (N - 1)
    # hybrid: whole probes of the 1:1 path until the requested pairs are reached.
    hybrid_pairs = result["schemes"]["hybrid"]["impostor_pairs"]
    assert encrypted["hybrid_impostor_pairs"] == hybrid_pairs and HYBRID_PAIRS <= hybrid_pairs < HYBRID_PAIRS + N
    assert encrypted["mated_searches"] == PROBES and encrypted["gallery_size"] == N
    assert "secret key" in encrypted["scores"] and encrypted["he_params"]["poly_modulus_degree"] == 4096
    summary = report_summary(report)["offset"]
    assert set(summary["verification"]) == set(summary["identification"]) == {"plain", "hash", "he", "hybrid"}
    text = report_text(report)
    assert "hybrid shortlist of 32" in text and "max |he - plain|" in text


@needs_tenseal
def test_he_follows_plain_cosine(report: dict[str, Any]) -> None:
    result = report["profiles"]["offset"]
    he, ident = result["schemes"]["he"], result["identification"]["he"]
    plain_same = he["plain_same_pairs"]
    assert he["max_abs_error_vs_plain"] < 2e-4  # CKKS with the default scales: about 1e-4 at most
    assert abs(he["eer"] - plain_same["eer"]) <= 2.0 / PROBES
    # FAR 1e-3 is supported by 35,880 impostor pairs, FAR 1e-4 is not.
    assert he["tar_at_far"]["1e-3"]["supported"] and he["tar_at_far"]["1e-4"]["tar"] is None
    assert abs(he["tar_at_far"]["1e-3"]["tar"] - plain_same["tar_at_far"]["1e-3"]["tar"]) <= 2.0 / PROBES
    assert he["rank1"] == pytest.approx(plain_same["rank1"], abs=2.0 / PROBES)
    assert ident["rank1_agreement_with_plain"] >= 1.0 - 2.0 / PROBES
    # 300 non-mated searches cannot support FPIR 3e-3 (10,000 needed): no FNIR is claimed.
    point = ident["at_fpir"]["3e-3"]
    assert point["fnir_rank1"] is None and "10,000 searches" in point["reason"]


@needs_tenseal
def test_hybrid_shows_its_shortlist(report: dict[str, Any]) -> None:
    ident = report["profiles"]["offset"]["identification"]["hybrid"]
    assert ident["shortlist"] == 32 and 0.0 <= ident["shortlist_recall"] <= 1.0
    assert ident["mates_outside_shortlist"] == round((1.0 - ident["shortlist_recall"]) * PROBES)
    assert ident["rank1"] <= ident["shortlist_recall"]  # a mate outside the shortlist is never found
    assert report["profiles"]["offset"]["schemes"]["hybrid"]["max_abs_error_vs_plain"] < 2e-4


@needs_tenseal
def test_hybrid_decisions_follow_the_hash_shortlist() -> None:
    data = synthetic_data("offset", 200, 50, seed=2)
    scheme = CancellableHash(HashKey(b"\x05" * 32), 128, offset=estimate_offset(data.offset_samples))
    found = {}
    for shortlist in (1, 32):
        sizes = EncryptedSizes(probes=200, nonmated=50, hybrid_impostor_pairs=500, shortlist=shortlist)
        found[shortlist] = evaluate_encrypted(data.enrolment, data.probes, data.strangers, scheme, sizes=sizes)
    one = found[1]["identification"]["hybrid"]
    # With one candidate, hybrid finds the mate exactly when the hash stage ranks it first.
    hash_top = FlatIndex(scheme.bits)
    hash_top.add(scheme.protect(data.enrolment), np.arange(200, dtype=np.int64))
    codes, reliability = scheme.protect_with_reliability(data.probes)
    hash_first = hash_top.search_weighted(codes, reliability, 1).labels[:, 0]  # as the gallery ranks
    hash_rank1 = np.mean(hash_first == np.arange(200))
    assert one["rank1"] == one["shortlist_recall"] == pytest.approx(hash_rank1)
    # A longer shortlist recovers mates the hash stage ranked lower; he, scoring everyone, is the ceiling.
    long = found[32]["identification"]
    assert long["hybrid"]["shortlist_recall"] >= one["shortlist_recall"]
    assert long["hybrid"]["rank1"] >= one["rank1"]
    assert long["hybrid"]["rank1"] <= long["he"]["rank1"] + 1.0 / 200
    # 1:1 does not go through the shortlist: its scores do not depend on it.
    first, second = (found[k]["schemes"]["hybrid"] for k in (1, 32))
    assert first["genuine_pairs"] == second["genuine_pairs"] and math.isclose(first["eer"], second["eer"], abs_tol=1e-9)


def test_without_tenseal_the_report_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fpmatch.he", None)  # importing it now fails, as without TenSEAL
    monkeypatch.delattr(fpmatch, "he", raising=False)
    report = run_evaluation(120, profiles=("offset",), max_impostors=20_000, linkage_pairs=5000, timing_queries=5)
    assert report["schemes"] == ["plain", "hash"] and "TenSEAL" in report["notes"][0]
    assert "encrypted" not in report["profiles"]["offset"]["parameters"]
    with pytest.raises(ImportError, match="TenSEAL"):
        data = synthetic_data("offset", 10, 5)
        evaluate_encrypted(data.enrolment, data.probes, data.strangers, CancellableHash(HashKey(b"\x01" * 32), 128))
