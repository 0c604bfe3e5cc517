"""Irreversibility: templates rebuilt from stored codes, naive and with the removed offset restored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fpmatch import CancellableHash, HashKey, estimate_offset
from fpmatch.errors import InvalidInputError
from fpmatch.hashing import DEFAULT_OFFSET_REMOVAL
from fpmatch.eval import evaluate_inversion, reconstruct_templates
from fpmatch.synthetic import FaceGenerator

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_security.py"


def attack(profile: str, n: int = 600, seed: int = 11) -> dict:
    faces = FaceGenerator(profile, seed)
    people = faces.identities(n)
    stored, fresh = faces.samples(people), faces.samples(people)
    offset = estimate_offset(faces.samples(faces.identities(2000)))
    dim = stored.shape[1]
    scheme = CancellableHash(HashKey(b"\x21" * 32), dim, offset=offset)
    other = CancellableHash(HashKey(b"\x42" * 32), dim, offset=offset)
    return evaluate_inversion(stored, fresh, scheme, other, impostor_pairs=100_000, seed=seed)


def test_strong_attacker_beats_the_naive_one_on_offset_data() -> None:
    result = attack("offset")
    assert result["offset_removed"] and result["offset_removal"] == pytest.approx(DEFAULT_OFFSET_REMOVAL)
    naive, strong = result["with_key"], result["with_key_offset_restored"]
    assert strong["cosine_to_original_mean"] > naive["cosine_to_original_mean"] + 0.05
    assert strong["cosine_to_original_min"] > naive["cosine_to_original_min"]
    assert strong["accepted_at_fmr_1e-3"] >= naive["accepted_at_fmr_1e-3"]
    # Restoring the offset beats the offset alone: the codes carry what identifies each person.
    assert strong["accepted_at_fmr_1e-3"] > result["offset_only"]["accepted_at_fmr_1e-3"]
    # Without the key, the codes add nothing to the offset: no better than the mean face, never accepted more.
    blind = result["without_key_offset_restored"]
    assert blind["cosine_to_original_mean"] < result["offset_only"]["cosine_to_original_mean"]
    assert abs(result["without_key"]["cosine_to_original_mean"]) < 0.1
    assert result["without_key"]["accepted_at_fmr_1e-3"] == 0.0
    assert result["plain_far_achieved"] <= 1e-3 and result["threshold_supported"]


def test_centred_data_has_nothing_to_restore() -> None:
    result = attack("centred", n=300)
    assert not result["offset_removed"] and "offset_only" not in result
    for key in ("cosine_to_original_mean", "cosine_to_original_min", "accepted_at_fmr_1e-3"):
        assert result["with_key"][key] == result["with_key_offset_restored"][key]
    assert result["with_key"]["cosine_to_original_mean"] > 0.5 > abs(result["without_key"]["cosine_to_original_mean"])


def test_restored_reconstruction_is_unit_and_moves_towards_the_offset() -> None:
    faces = FaceGenerator("offset", 3)
    templates = faces.samples(faces.identities(50))
    offset = estimate_offset(faces.samples(faces.identities(500)))
    scheme = CancellableHash(HashKey(b"\x09" * 32), 128, offset=offset)
    codes = scheme.protect(templates)
    naive = reconstruct_templates(codes, scheme)
    strong = reconstruct_templates(codes, scheme, restore_offset=True)
    np.testing.assert_allclose(np.linalg.norm(strong, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(naive, axis=1), 1.0, atol=1e-12)
    u = offset.astype(np.float64) / np.linalg.norm(offset)
    assert np.all(strong @ u > naive @ u)
    # The result lies in the plane of the naive reconstruction and the offset, on the naive side.
    residual = strong - np.outer(strong @ u, u)
    naive_part = naive - np.outer(naive @ u, u)
    cos = np.einsum("ij,ij->i", residual, naive_part) / (
        np.linalg.norm(residual, axis=1) * np.linalg.norm(naive_part, axis=1)
    )
    np.testing.assert_allclose(cos, 1.0, atol=1e-9)


def test_inversion_rejects_one_key() -> None:
    faces = FaceGenerator("centred", 1)
    people = faces.identities(10)
    scheme = CancellableHash(HashKey(b"\x07" * 32), 512)
    with pytest.raises(InvalidInputError, match="another key"):
        evaluate_inversion(faces.samples(people), faces.samples(people), scheme, scheme)


def test_bench_security_script(tmp_path: Path) -> None:
    out = tmp_path / "security.json"
    cmd = [sys.executable, str(SCRIPT), "--profile", "offset", "--n", "300", "--impostor-pairs", "50000",
           "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["profile"] == "offset" and result["n"] == 300 and result["impostor_pairs"] == 50_000
    for attacker in ("with_key", "with_key_offset_restored", "without_key", "without_key_offset_restored",
                     "offset_only"):  # fmt: skip
        figures = result[attacker]
        assert -1.0 <= figures["cosine_to_original_min"] <= figures["cosine_to_original_mean"] <= 1.0
        assert 0.0 <= figures["accepted_at_fmr_1e-3"] <= 1.0
    assert "--profile offset" in result["command"]
