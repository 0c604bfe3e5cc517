"""Smoke test: the search benchmark runs end to end on a small gallery and writes sane JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_search.py"

REQUIRED = [
    "n",
    "dim",
    "profile",
    "code_bits",
    "plain_ms_per_query",
    "hash_flat_ms_per_query",
    "hash_scalable_ms_per_query",
    "hash_flat_ms_per_query_incl_hashing",
    "hash_scalable_ms_per_query_incl_hashing",
    "hash_probe_ms",
    "rank1_agreement_flat",
    "rank1_agreement_scalable",
    "shortlist_recall_at_32",
    "shortlist_recall_at_32_scalable",
    "plain_rank1_accuracy",
    "hash_flat_rank1_accuracy",
    "tar_at_far_1e-4",
    "tar_at_far_1e-4_plain",
    "tar_at_far_1e-4_hash",
    "far_achieved_plain",
    "far_achieved_hash",
    "bytes_per_template",
    "plain_bytes_per_template",
    "scalable_serialized_bytes_per_template",
    "enrol_per_s",
    "scalable_build_s",
    "flat_speedup_vs_plain",
    "scalable_speedup_vs_plain",
    "parameters",
    "scan_kernel",
    "cpu_model",
    "numpy_version",
    "faiss_version",
    "timestamp",
]

FRACTIONS = [
    "rank1_agreement_flat",
    "rank1_agreement_scalable",
    "shortlist_recall_at_32",
    "shortlist_recall_at_32_scalable",
    "plain_rank1_accuracy",
    "hash_flat_rank1_accuracy",
    "hash_scalable_rank1_accuracy",
    "tar_at_far_1e-4_plain",
    "tar_at_far_1e-4_hash",
    "far_achieved_plain",
    "far_achieved_hash",
]


@pytest.mark.parametrize("profile", ["centred", "offset"])
def test_bench_search_small(tmp_path: Path, profile: str) -> None:
    out = tmp_path / f"bench_{profile}.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--n", "3000",
        "--queries", "50",
        "--profile", profile,
        "--impostor-pairs", "200000",
        "--genuine-pairs", "2000",
        "--nlist", "64",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "plain IndexFlatIP" in proc.stdout

    result = json.loads(out.read_text())
    missing = [key for key in REQUIRED if key not in result]
    assert not missing, missing
    assert result["n"] == 3000 and result["profile"] == profile and result["code_bits"] == 1024
    assert result["dim"] == (512 if profile == "centred" else 128)
    for key in FRACTIONS:
        assert 0.0 <= result[key] <= 1.0, (key, result[key])
    assert set(result["tar_at_far_1e-4"]) == {"plain", "hash"}
    assert result["tar_at_far_1e-4"]["plain"] == result["tar_at_far_1e-4_plain"]
    assert result["far_achieved_plain"] <= 1e-4 and result["far_achieved_hash"] <= 1e-4
    assert result["bytes_per_template"] == 128
    for key in ("plain_ms_per_query", "hash_flat_ms_per_query", "hash_scalable_ms_per_query", "enrol_per_s"):
        assert result[key] > 0, key
    if profile == "centred":
        assert result["shortlist_recall_at_32"] >= 0.9
        assert result["offset_used"] is False
    else:
        assert result["offset_used"] is True
