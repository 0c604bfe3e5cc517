"""Evaluation metrics: known answers for EER, TAR, FNIR at FPIR, D_sys and KS; the hash scheme under two keys."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fpmatch
from fpmatch import CancellableHash, HashKey, estimate_offset
from fpmatch.codes import hamming_pairs
from fpmatch.errors import InvalidInputError
from fpmatch.eval import (
    D_SYS_TARGET,
    d_sys,
    eer_interval,
    equal_error_rate,
    evaluate_identification,
    evaluate_linkage,
    fnir_at_fpir,
    ks_statistic,
    local_linkability,
    speed_vs_gallery_size,
    tar_at_far,
    unlinkability,
    write_speed_png,
    write_unlinkability_png,
)
from fpmatch.synthetic import FaceGenerator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_eval.py"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_TENSEAL = importlib.util.find_spec("tenseal") is not None
PNG = b"\x89PNG\r\n\x1a\n"


def gaussian_d_sys(shift: float) -> float:
    """D_sys of mated N(shift, 1) against non-mated N(0, 1), by quadrature (omega = 1)."""
    s = np.linspace(-12.0, 12.0 + shift, 400_001)
    p_mated = np.exp(-0.5 * (s - shift) ** 2) / math.sqrt(2 * math.pi)
    log_lr = shift * s - shift * shift / 2  # log of N(shift,1)/N(0,1)
    local = np.where(log_lr > 0, np.tanh(log_lr / 2), 0.0)  # 2 LR/(1+LR) - 1 = tanh(log LR / 2)
    return float(np.sum(p_mated * local) * (s[1] - s[0]))


# -- verification ------------------------------------------------------------------------


def test_eer_known_answers() -> None:
    # Threshold 0.6 (accept > t): one impostor (0.65) passes, one genuine (0.6) fails.
    assert equal_error_rate(np.array([0.6, 0.7, 0.8, 0.9]), np.array([0.1, 0.2, 0.3, 0.65])) == pytest.approx(0.25)
    # No threshold equalises them: t1 = 0.2 (FNMR 1/3, FMR 1/2), t2 = 0.5 (FNMR 1/3, FMR 0);
    # t2 has the smaller sum, so the interval is [0, 1/3].
    low, high = eer_interval(np.array([0.2, 0.8, 0.9]), np.array([0.1, 0.5]))
    assert (low, high) == pytest.approx((0.0, 1 / 3))
    assert equal_error_rate(np.array([0.2, 0.8, 0.9]), np.array([0.1, 0.5])) == pytest.approx(1 / 6)
    assert equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2, 0.3])) == 0.0
    assert equal_error_rate(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == 1.0
    with pytest.raises(InvalidInputError):
        equal_error_rate(np.array([]), np.array([0.1]))


def test_tar_at_far_known_answer() -> None:
    impostor = np.arange(1000) / 1000  # 0.000 ... 0.999
    genuine = np.array([0.9985, 0.9995, 0.5, 0.99])
    point = tar_at_far(genuine, impostor, 1e-3)  # one impostor may pass: threshold 0.998
    assert point["threshold"] == pytest.approx(0.998)
    assert point["false_accepts"] == 1 and point["far_achieved"] == pytest.approx(1e-3)
    assert point["tar"] == pytest.approx(0.5)
    point = tar_at_far(genuine, impostor, 1e-4)  # none may pass
    assert point["threshold"] == pytest.approx(0.999) and point["false_accepts"] == 0
    assert point["tar"] == pytest.approx(0.25)


# -- identification ----------------------------------------------------------------------


def test_fnir_at_fpir_known_answer() -> None:
    nonmated_top = np.arange(1000) / 1000
    mate_scores = np.array([0.9995, 0.997, 0.9965, 0.5])
    mate_ranks = np.array([1, 1, 2, 1])
    # FPIR 0.003 of 1000: three searches may return someone (0.997, 0.998, 0.999): threshold just above 0.996.
    first = fnir_at_fpir(mate_scores, mate_ranks, nonmated_top, 0.003)
    assert first["false_positives"] == 3 and first["fpir_achieved"] == pytest.approx(0.003)
    assert 0.996 < first["threshold"] <= 0.997
    assert first["fnir"] == pytest.approx(0.5)  # the rank-2 mate and the low one are missed
    listed = fnir_at_fpir(mate_scores, mate_ranks, nonmated_top, 0.003, candidates=2)
    assert listed["fnir"] == pytest.approx(0.25)  # only the low one is missed
    # Ties at the boundary are rejected: FPIR never exceeds the target.
    tied = np.concatenate([np.full(10, 0.9), np.zeros(990)])
    point = fnir_at_fpir(np.array([0.9, 0.95]), np.array([1, 1]), tied, 0.003)
    assert point["false_positives"] == 0 and point["fnir"] == pytest.approx(0.5)
    with pytest.raises(InvalidInputError):
        fnir_at_fpir(mate_scores, mate_ranks, nonmated_top, 0.0)


def test_identification_on_synthetic_faces() -> None:
    faces = FaceGenerator("centred", 5)
    people = faces.identities(400)
    enrolment, probes = faces.samples(people), faces.samples(people)
    strangers = faces.samples(faces.identities(1000))
    scheme = CancellableHash(HashKey(b"\x01" * 32), enrolment.shape[1])
    # 1,000 non-mated searches allow 3 false positives at FPIR 3e-3: too few to claim it by the rule of 30.
    result = evaluate_identification(enrolment, probes, strangers, scheme, candidates=5)
    assert result["mated_searches"] == 400 and result["nonmated_searches"] == 1000
    for name in ("plain", "hash"):
        point = result[name]["at_fpir"]["3e-3"]
        assert not point["supported"] and point["fnir_rank1"] is None and point["fnir_candidate_list"] is None
        assert "10,000 searches" in point["reason"]
        assert result[name]["rank1"] > 0.99  # centred faces separate easily at this size
    result = evaluate_identification(enrolment, probes, strangers, scheme, candidates=5, min_errors=3)
    for name in ("plain", "hash"):
        point = result[name]["at_fpir"]["3e-3"]
        assert point["supported"] and point["fpir_achieved"] <= 0.003 and point["false_positives"] <= 3
        assert 0.0 <= point["fnir_candidate_list"] <= point["fnir_rank1"] <= 1.0
        assert point["fnir_rank1"] < 0.05


def test_hash_figures_score_as_the_gallery_decides() -> None:
    from fpmatch import Gallery
    from fpmatch._progress import silent
    from fpmatch.eval import evaluate_profile, open_set_searches, synthetic_data
    from fpmatch.eval.scoring import score_pairs

    data = synthetic_data("offset", 150, 40, seed=8)
    scheme = CancellableHash(HashKey(b"\x03" * 32), 128, offset=estimate_offset(data.offset_samples))
    gallery = Gallery(scheme)
    names = [f"s{i}" for i in range(150)]
    gallery.enrol(names, data.enrolment)
    _, hashed = score_pairs(data.enrolment, data.probes, scheme, 150 * 149, 150, silent)
    for i in (0, 7, 149):
        assert hashed.genuine[i] == pytest.approx(gallery.verify(names[i], data.probes[i], threshold=0.0).score, abs=1e-6)
    # Impostor pairs are laid out probe by probe: probe 0 against rows 1, 2, ...
    assert hashed.impostor[0] == pytest.approx(gallery.verify(names[1], data.probes[0], threshold=0.0).score, abs=1e-6)
    search = open_set_searches(data.enrolment, data.probes, data.strangers, scheme)["hash"]
    found = gallery.identify_many(data.probes, k=1, threshold=-1.0)
    np.testing.assert_array_equal(search.top1, [gallery.id_of(c[0].subject) for c in found])
    report = evaluate_profile(150, data=data, max_impostors=20_000, linkage_pairs=2000, inversion_pairs=2000)
    assert report["schemes"]["hash"]["rank1"] == report["identification"]["hash"]["rank1"]


# -- unlinkability -----------------------------------------------------------------------


def test_local_linkability_formula() -> None:
    p_mated = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    p_nonmated = np.array([0.4, 0.2, 0.1, 0.0, 0.3])
    local = local_linkability(p_mated, p_nonmated)
    # LR = 0.25, 1, 3, inf, 0: only LR > 1 counts; D = 2 LR / (1 + LR) - 1.
    assert local == pytest.approx([0.0, 0.0, 0.5, 1.0, 0.0])
    assert local_linkability(p_mated, p_nonmated, omega=2.0) == pytest.approx([0.0, 1 / 3, 5 / 7, 1.0, 0.0])


def test_d_sys_hand_made_histogram() -> None:
    mated = np.array([0] * 50 + [1] * 50)
    nonmated = np.array([0] * 75 + [1] * 25)
    edges = np.array([-0.5, 0.5, 1.5])
    # Bin 1: LR = 0.5 / 0.25 = 2, D = 1/3; D_sys = 0.5 * 1/3.
    assert d_sys(mated, nonmated, bins=edges) == pytest.approx(1 / 6)
    # omega = 2: w LR = 4/3 and 4, D = 1/7 and 3/5.
    assert d_sys(mated, nonmated, bins=edges, omega=2.0) == pytest.approx(0.5 / 7 + 0.5 * 3 / 5)


@pytest.mark.parametrize("method", ["histogram", "kde"])
def test_d_sys_identical_distributions(method: str) -> None:
    rng = np.random.default_rng(11)
    value = d_sys(rng.normal(0, 1, 20_000), rng.normal(0, 1, 200_000), method=method)
    assert 0.0 <= value < 0.02


@pytest.mark.parametrize("method", ["histogram", "kde"])
def test_d_sys_separated_distributions(method: str) -> None:
    rng = np.random.default_rng(12)
    high, low = rng.uniform(0.8, 0.9, 500), rng.uniform(0.0, 0.1, 5000)
    assert d_sys(high, low, method=method) > 0.999
    assert d_sys(low, high, method=method) > 0.999  # the direction does not matter


@pytest.mark.parametrize("method", ["histogram", "kde"])
@pytest.mark.parametrize("shift", [0.5, 1.0, 2.0])
def test_d_sys_matches_gaussian_quadrature(method: str, shift: float) -> None:
    rng = np.random.default_rng(int(shift * 10))
    estimate = d_sys(rng.normal(shift, 1, 20_000), rng.normal(0, 1, 200_000), method=method)
    assert estimate == pytest.approx(gaussian_d_sys(shift), abs=0.025)


def test_unlinkability_result_shapes() -> None:
    rng = np.random.default_rng(13)
    result = unlinkability(rng.normal(0, 1, 1000), rng.normal(0, 1, 10_000))
    assert len(result.edges) == len(result.p_mated) + 1 == len(result.local) + 1
    assert result.p_mated.sum() == pytest.approx(1.0) and result.p_nonmated.sum() == pytest.approx(1.0)
    assert result.d_sys == pytest.approx(float(np.sum(result.p_mated * result.local)))
    with pytest.raises(InvalidInputError):
        unlinkability(np.array([np.nan]), np.array([0.0]))
    with pytest.raises(InvalidInputError):
        unlinkability(np.array([0.0]), np.array([0.0]), method="other")


# -- two-sample statistics and pair scoring ---------------------------------------------------


def test_ks_statistic_known_answers() -> None:
    result = ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0]))
    assert result["statistic"] == pytest.approx(1 / 3) and result["a_above_b"] == 0.0
    assert ks_statistic(np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0]))["a_above_b"] == pytest.approx(1 / 3)
    same = ks_statistic(np.arange(100.0), np.arange(100.0))
    assert same["statistic"] == 0.0 and same["p_value"] == 1.0
    apart = ks_statistic(np.zeros(200), np.ones(200))
    assert apart["statistic"] == 1.0 and apart["p_value"] < 1e-10


@pytest.mark.parametrize("builtin_popcount", [True, False])
def test_hamming_pairs_matches_unpacked_bits(builtin_popcount: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not builtin_popcount:
        monkeypatch.delattr(np, "bitwise_count", raising=False)  # as on numpy < 2.0
    rng = np.random.default_rng(14)
    a = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 16), dtype=np.uint8)
    rows_a, rows_b = rng.integers(0, 50, 300), rng.integers(0, 40, 300)
    expected = np.unpackbits(a[rows_a] ^ b[rows_b], axis=1).sum(axis=1)
    assert np.array_equal(hamming_pairs(a, rows_a, b, rows_b), expected)
    odd = rng.integers(0, 256, (5, 3), dtype=np.uint8)  # a code size that is not whole words
    assert np.array_equal(hamming_pairs(odd, np.arange(5), odd, np.arange(5)), np.zeros(5))


# -- the hash scheme under two keys ------------------------------------------------------------


def two_key_linkage(profile: str, n: int, seed: int) -> dict[str, dict[str, Any]]:
    faces = FaceGenerator(profile, seed)
    people = faces.identities(n)
    first, second = faces.samples(people), faces.samples(people)
    offset = estimate_offset(faces.samples(faces.identities(2000)))
    dim = first.shape[1]
    key_a, key_b = HashKey(bytes([seed + 1]) * 32), HashKey(bytes([seed + 101]) * 32)
    scheme_a = CancellableHash(key_a, dim, offset=offset)
    scheme_b = CancellableHash(key_b, dim, offset=offset)
    return evaluate_linkage(first, second, scheme_a, scheme_b, pairs=300_000, seed=seed)


@pytest.mark.parametrize("profile", ["centred", "offset"])
def test_hash_scheme_unlinkable_across_keys(profile: str) -> None:
    result = two_key_linkage(profile, 3000, seed=2)["d_sys"]
    assert result["mated_pairs"] == 3000 and result["nonmated_pairs"] == 300_000
    assert result["value"] <= D_SYS_TARGET and result["meets_target"]
    # Without re-keying the same people link at once: plain templates and same-key codes.
    assert result["reference"]["plain_templates"] > 0.9
    assert result["reference"]["hash_same_key"] > 0.9


def test_renewed_codes_fall_among_impostors() -> None:
    renewal = two_key_linkage("centred", 4000, seed=3)["renewability"]
    assert renewal["ks_renewed_vs_impostor"]["statistic"] < 0.1
    assert renewal["ks_genuine_vs_impostor"]["statistic"] > 0.9
    assert abs(renewal["renewed_mated"]["mean"] - renewal["impostor_same_key"]["mean"]) < 0.01
    assert renewal["genuine_same_key"]["mean"] > 0.5
    for point in renewal["accepted_at_far"].values():
        assert point["genuine"] > 0.99 and point["renewed_mated"] <= 0.01


def test_linkage_rejects_one_key() -> None:
    faces = FaceGenerator("centred", 0)
    people = faces.identities(10)
    scheme = CancellableHash(HashKey(b"\x07" * 32), 512)
    with pytest.raises(InvalidInputError, match="different keys"):
        evaluate_linkage(faces.samples(people), faces.samples(people), scheme, scheme)


# -- speed and plots ----------------------------------------------------------------------------


def test_speed_vs_gallery_size_small() -> None:
    result = speed_vs_gallery_size([200, 100], profile="offset", queries=5, warmup=1, k=3)
    assert [point["n"] for point in result["points"]] == [100, 200]
    have_faiss = importlib.util.find_spec("faiss") is not None
    for point in result["points"]:
        assert point["hash_flat_ms"]["mean"] > 0 and point["hash_ivf_ms"]["mean"] > 0
        assert point["hash_identify_ms"]["mean"] >= point["hash_flat_ms"]["mean"]  # hashing included
        assert point["hash_verify_ms"]["mean"] > 0 and point["hash_enrol_per_s"] > 0
        assert ("plain_ms" in point) == ("plain_enrol_per_s" in point) == have_faiss
        assert point["ivf_nlist"] == 16 and point["ivf_nprobe"] == 8
        for scheme in ("he", "hybrid"):
            assert (f"{scheme}_identify_ms" in point) == (f"{scheme}_verify_ms" in point) == HAVE_TENSEAL
            if HAVE_TENSEAL:
                assert point[f"{scheme}_enrol_per_s"] > 0 and point[f"{scheme}_rank1"] >= 0.8
    # 128-D: 2 x 128 ciphertext values of 6 bytes each (fpmatch.he._packing), plus the code for hybrid.
    expected = {"plain": 512, "hash": 128} | ({"he": 1536, "hybrid": 1536 + 128} if HAVE_TENSEAL else {})
    assert result["bytes_per_template"] == expected
    assert result["threads"] == 1 and (result["notes"] == []) == (have_faiss and HAVE_TENSEAL)
    assert result["encrypted"]["timed_sizes"] == ([100, 200] if HAVE_TENSEAL else [])
    # A cap below the smallest size times no encrypted scheme.
    capped = speed_vs_gallery_size([100], profile="offset", queries=2, warmup=0, k=2, encrypted_max_n=50)
    assert "he_identify_ms" not in capped["points"][0] and capped["encrypted"]["timed_sizes"] == []
    with pytest.raises(InvalidInputError):
        speed_vs_gallery_size([8])


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed")
def test_plots(tmp_path: Path) -> None:
    speed = {"offset": speed_vs_gallery_size([100, 200], profile="offset", queries=3, warmup=0, k=2)}
    assert write_speed_png(speed, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").read_bytes()[:8] == PNG
    link = two_key_linkage("offset", 300, seed=4)["d_sys"]
    assert write_unlinkability_png({"offset": link}, tmp_path / "unlinkability.png")
    assert (tmp_path / "unlinkability.png").read_bytes()[:8] == PNG


def test_plots_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    assert not write_speed_png({}, tmp_path / "speed.png")
    assert not write_unlinkability_png({}, tmp_path / "unlinkability.png")
    assert not list(tmp_path.iterdir())


def test_bench_eval_script(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--n", "200", "--sizes", "100,200", "--queries", "5",
           "--linkage-pairs", "20000", "--he-probes", "40", "--he-nonmated", "60", "--hybrid-impostor-pairs", "1000",
           "--encrypted-max-n", "100", "--json", str(out), "--png-dir", str(tmp_path / "png")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    profiles = {"centred", "offset"}
    assert set(report["d_sys"]) == set(report["renewability"]) == set(report["speed"]) == profiles
    assert set(report["irreversibility"]) == set(report["summary"]) == profiles
    encrypted = HAVE_TENSEAL
    for profile, link in report["d_sys"].items():
        assert 0.0 <= link["value"] <= 1.0 and link["mated_pairs"] == 200
        assert report["renewability"][profile]["ks_genuine_vs_impostor"]["statistic"] > 0.9
        result = report["profiles"][profile]
        ident = result["identification"]
        assert ident["nonmated_searches"] == 200 and "3e-3" in ident["hash"]["at_fpir"]
        points = report["speed"][profile]["points"]
        assert [p["n"] for p in points] == [100, 200]
        assert ("he" in result["schemes"]) == ("hybrid" in ident) == encrypted
        assert ("he_identify_ms" in points[0]) == encrypted and "he_identify_ms" not in points[1]  # past the cap
        if encrypted:
            assert result["parameters"]["encrypted"]["mated_searches"] == 40
            assert report["speed"][profile]["encrypted"]["skipped_sizes"] == [200]
            assert "reason" in report["speed"][profile]["encrypted"]
        attackers = report["irreversibility"][profile]
        assert attackers["with_key"]["cosine_to_original_mean"] > attackers["without_key"]["cosine_to_original_mean"]
    assert report["parameters"]["quick"] is True and report["load_average"]["start"]
    for name in ("det", "speed", "unlinkability"):
        path = report["files"][name]
        assert (path is not None) == HAVE_MATPLOTLIB
        if path:
            assert Path(path).read_bytes()[:8] == PNG
    assert "D_sys" in done.stdout and "FNIR@3e-3" in done.stdout and "inversion" in done.stdout
    assert ("hybrid shortlist of 32" in done.stdout) == encrypted


def test_bench_eval_parts_make_one_report(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    common = [sys.executable, str(SCRIPT), "--quick", "--profiles", "offset", "--no-encrypted", "--json", str(out)]
    speed = [*common, "--part", "speed", "--update", "--sizes", "100", "--queries", "3"]
    refused = subprocess.run(speed, capture_output=True, text=True, timeout=60, cwd=SCRIPT.parents[1])
    assert refused.returncode != 0 and "--part accuracy first" in refused.stderr and not out.exists()
    accuracy = [*common, "--part", "accuracy", "--n", "150", "--linkage-pairs", "5000", "--inversion-pairs", "5000"]
    for cmd in (accuracy, speed):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=SCRIPT.parents[1])
        assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"accuracy", "speed"} and "--part speed" in report["runs"]["speed"]["command"]
    assert report["profiles"]["offset"]["parameters"]["n"] == 150 and report["parameters"]["sizes"] == [100]
    assert [p["n"] for p in report["speed"]["offset"]["points"]] == [100]
    assert report["summary"]["offset"]["speed"]["100"]["hash_verify_ms"] > 0


# --------------------------------------------------------------------------- user-supplied embeddings


def _labelled(tmp_path, n_people: int = 300, per_person: int = 3):
    from fpmatch.synthetic import make_faces

    faces = make_faces(n_people, per_person, profile="centred", seed=5)
    labels = faces.labels * 7 + 1000  # labels need not be 0..n-1
    return faces.embeddings, labels


def test_load_labelled_npz_and_npy(tmp_path) -> None:
    from fpmatch.eval import load_labelled

    x, y = _labelled(tmp_path)
    np.savez(tmp_path / "data.npz", embeddings=x, labels=y)
    got_x, got_y = load_labelled(tmp_path / "data.npz")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    got_x, got_y = load_labelled(tmp_path / "x.npy", tmp_path / "y.npy")
    np.testing.assert_array_equal(got_x, x)
    np.save(tmp_path / "x64.npy", x.astype(np.float64))
    with pytest.raises(fpmatch.DtypeError):
        load_labelled(tmp_path / "x64.npy", tmp_path / "y.npy")
    with pytest.raises(fpmatch.InvalidInputError):
        load_labelled(tmp_path / "x.npy")  # no labels
    np.save(tmp_path / "short.npy", y[:-1])
    with pytest.raises(fpmatch.InvalidInputError):
        load_labelled(tmp_path / "x.npy", tmp_path / "short.npy")


def test_split_labelled_keeps_people_apart(tmp_path) -> None:
    from fpmatch.eval import split_labelled

    x, y = _labelled(tmp_path)
    data = split_labelled(x, y, stranger_share=0.3, seed=1)
    assert len(data.enrolment) == len(data.probes) == 210 and len(data.strangers) == 90
    rows = {row.tobytes(): label for row, label in zip(x, y)}
    enrolled = [rows[r.tobytes()] for r in data.enrolment]
    assert enrolled == [rows[r.tobytes()] for r in data.probes]  # same person, row by row
    assert not np.array_equal(data.enrolment, data.probes)  # but a different sample
    strangers = {rows[r.tobytes()] for r in data.strangers} | {rows[r.tobytes()] for r in data.offset_samples}
    assert strangers.isdisjoint(enrolled)


def test_evaluation_runs_on_labelled_data(tmp_path) -> None:
    from fpmatch.eval import run_evaluation, split_labelled

    x, y = _labelled(tmp_path)
    data = split_labelled(x, y, name="mine", seed=1)
    report = run_evaluation(
        profiles=(), datasets=[data], max_impostors=20_000, linkage_pairs=20_000, timing_queries=20, encrypted=None
    )
    result = report["profiles"]["mine"]
    assert result["parameters"]["n"] == 210 and result["parameters"]["nonmated_searches"] == 90
    assert result["schemes"]["plain"]["rank1"] == 1.0 and result["schemes"]["hash"]["rank1"] >= 0.99
    assert "mine" in report["d_sys"]
