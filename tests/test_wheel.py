"""The repaired wheel installs like any Python package: built with ``scripts/build-wheel.sh``
(``make wheel``), it holds every shared library its native module needs beyond glibc and the C++
runtime, and in a fresh virtual environment, with the build's system libraries hidden where the
machine allows, it runs the demo (``scripts/check-wheel.sh``, ``make check-wheel``)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="auditwheel repairs Linux wheels")
def test_repaired_wheel_runs_the_demo_in_a_fresh_environment(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    built = subprocess.run(["bash", "scripts/build-wheel.sh", str(tmp_path)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("fpmatch-*.whl")
    assert "manylinux" in wheel.name
    assert "consistent with" in built.stdout and "manylinux" in built.stdout  # auditwheel show
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    grafted = [n for n in names if n.startswith("fpmatch.libs/")]
    assert any("openblas" in n for n in grafted) and any("gomp" in n for n in grafted), grafted
    assert not any("faiss" in n or "crypto" in n for n in grafted)  # both are linked statically
    checked = subprocess.run(["bash", "scripts/check-wheel.sh", str(wheel), "--subjects", "300", "--probes", "30",
                              "--profile", "offset"],
                             cwd=ROOT, env={**env, "PYTHON": sys.executable}, capture_output=True, text=True,
                             timeout=1200)  # fmt: skip
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "fpmatch.libs" in output and "audit chain" in output and "hybrid scheme" in output, output
