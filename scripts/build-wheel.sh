#!/usr/bin/env bash
# Builds the wheel and repairs it with auditwheel: the shared libraries the native core links
# (OpenBLAS, LAPACK, OpenMP, the Fortran runtime) are copied into it, so installing it needs no
# system package; FAISS and libcrypto are linked statically already.
# Usage: scripts/build-wheel.sh [OUTDIR]   (PYTHON: the interpreter whose environment has the build tools)
set -euo pipefail
out=${1:-dist}
python=${PYTHON:-.venv/bin/python}
bin=$(cd "$(dirname "$python")" && pwd)
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
"$python" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w "$raw" .
mkdir -p "$out"
rm -f "$out"/fpmatch-*.whl
PATH="$bin:$PATH" "$python" -m auditwheel repair -w "$out" "$raw"/fpmatch-*.whl
"$python" -m auditwheel show "$out"/fpmatch-*.whl
