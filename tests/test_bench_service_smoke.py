"""Smoke test: the service and cluster benchmarks (which share their data and parties in
``benchmarks/_common.py``) run end to end on a small gallery and write the keys their reports use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, out: Path, *argv: str) -> dict:
    command = [sys.executable, str(BENCHMARKS / script), "--scheme", "hash", "--n", "600", "--queries", "30",
               "--seconds", "0.5", "--threads", "2", *argv, "--json", str(out)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_bench_service_small(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    result = _run("bench_service.py", tmp_path / "service.json")
    assert result["n"] == 600 and result["queries"] == 30 and result["scheme"] == "hash"
    assert result["rank1_agreement_with_plain"] >= 0.9
    for key in ("consent_per_s", "enrol_per_s", "verify_ms_p50", "identify_ms_p50", "identify_qps_concurrent"):
        assert result[key] > 0, key


def test_bench_cluster_small(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (the cluster extra)")
    result = _run("bench_cluster.py", tmp_path / "cluster.json", "--shards", "2", "--replicas", "1", "--num-cpus", "2")
    (row,) = result["configurations"]
    wanted = {"shards", "replicas", "n", "identify_qps", "identify_ms_p50", "identify_ms_p95",
              "single_node_identify_ms_p50", "recovery_s", "agreement_with_single"}  # fmt: skip
    assert wanted <= set(row), wanted - set(row)
    assert (row["shards"], row["replicas"], row["n"]) == (2, 1, 600)
    assert row["agreement_with_single"] == 1.0
    assert row["recovery_s"] > 0 and row["identify_qps"] > 0
