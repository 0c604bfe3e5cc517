"""Smoke test: the HE benchmark runs end to end at reduced sizes and writes the agreed keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tenseal", reason="the he and hybrid schemes need TenSEAL (pip install tenseal)")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_he.py"
SCHEMES = {"plain", "hash", "he", "hybrid"}


def test_bench_he_quick(tmp_path: Path) -> None:
    out = tmp_path / "he.json"
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--profile", "offset",
        "--n-small", "1000", "--n-large", "3000", "--n-hash", "8000", "--queries", "10",
        "--impostor-pairs", "100000", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    for key in ("verify_ms", "packed_templates_per_s_per_core", "hybrid_ms_100k", "hybrid_ms_1m"):
        assert result[key] > 0, key
    assert set(result["bytes_per_template"]) == SCHEMES
    assert set(result["tar_at_far_1e-4"]) == SCHEMES
    assert result["bytes_per_template"]["he"] == result["he_bytes_per_template"] == 2 * 128 * 6  # 6 bytes a value
    for key in ("he_identify_batch_per_s_3k", "plain_flat_ms_3k", "memory_bandwidth_gb_s", "he_scan_gb_s", "he_enrol_per_s"):
        assert result[key] > 0, key
    assert result["he_batch"]["batch"] == 10 and result["he_batch"]["matching_side_per_s"] > 0
    assert result["he_gallery_rss"]["3000"]["ciphertext_bytes"] == 128 * 12 * 4096
    for scheme in SCHEMES:
        assert 0.0 <= result["tar_at_far_1e-4"][scheme] <= 1.0
    assert abs(result["tar_at_far_1e-4"]["he"] - result["tar_at_far_1e-4"]["plain"]) < 0.02
    assert max(result["max_abs_score_error"].values()) < 2e-4
    assert result["hybrid_1m"]["n"] == 8000 and set(result["packed"]) == {"1000", "3000"}
    # The one native call beside the Python path it replaced, same run (the bytes are checked there).
    assert result["hybrid_ms_1m_native"] > 0 and result["hybrid_1m"]["native"]["speedup"] > 0
    assert result["hybrid_100k"]["shortlist_and_scores_ms"]["speedup"] > 0


def test_bench_he_fewer_dimensions_and_a_smaller_modulus(tmp_path: Path) -> None:
    # The trade-offs below the default parameters are measured by the same benchmark.
    out = tmp_path / "he.json"
    cmd = [
        sys.executable, str(SCRIPT), "--quick", "--part", "he", "--profile", "hard", "--dim", "64",
        "--data-prime-bits", "32", "--template-scale-bits", "18", "--probe-scale-bits", "10",
        "--n-small", "500", "--n-large", "1000", "--queries", "10", "--impostor-pairs", "50000", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["dim"] == 64 and result["he_bytes_per_template"] == 2 * 64 * 6
    assert result["params"]["coeff_mod_bit_sizes"][0] == 32 and result["params"]["probe_scale_bits"] == 10
    assert 0.0 <= result["plain_tar_full_dim"]["tar"] <= 1.0
    assert max(result["max_abs_score_error"].values()) < 4e-3  # coarser scales: larger, still bounded errors
