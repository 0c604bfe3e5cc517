"""Smoke test: the key holder service benchmark runs end to end at tiny sizes and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tenseal", reason="the key holder needs TenSEAL")
pytest.importorskip("grpc", reason="the key holder service needs grpcio")
pytest.importorskip("cryptography", reason="the key holder service needs cryptography")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_keyholder.py"
REQUIRED = [
    "decide_ms_p50", "decide_ms_p95", "best_ms_p50", "requests_per_s", "hybrid_verify_ms_local",
    "hybrid_verify_ms_remote", "hybrid_verify_remote_minus_local_ms", "hybrid_verify_remote_over_local",
    "decide_ms_p50_local", "best_ms_p50_local", "command",
]  # fmt: skip


def test_bench_keyholder_tiny(tmp_path: Path) -> None:
    out = tmp_path / "kh.json"
    cmd = [
        sys.executable, str(SCRIPT), "--gallery", "100", "--requests", "10", "--callers", "2", "--seconds", "0.5",
        "--subjects", "60", "--verifications", "10", "--rounds", "2", "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert not [key for key in REQUIRED if key not in result]
    for key in REQUIRED[:6]:
        assert result[key] > 0, key
    assert result["best_scores"] == 100 and result["concurrent_callers"] == 2
    assert result["hybrid_match_rate_remote"] == result["hybrid_match_rate_local"] > 0.5
