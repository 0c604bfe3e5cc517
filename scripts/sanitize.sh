#!/usr/bin/env bash
# Builds the native core with AddressSanitizer and UndefinedBehaviorSanitizer into
# build/sanitize (the installed package is left alone) and runs the whole test suite
# against that build (SANITIZE_TESTS names a part instead). The interpreter is not
# instrumented, so the sanitizer runtimes are preloaded into it; the processes the
# tests start (CLI, key holder, encryption workers, Ray workers) inherit them and the
# instrumented core. The wheel test is left out: it builds and runs its own wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUILD=build/sanitize
FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSKBUILD_PROJECT_NAME=fpmatch -DSKBUILD_PROJECT_VERSION=0.1.0 \
  -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
  -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$BUILD" -j "$(nproc)"

# The package from the source tree, with the instrumented module beside it.
rm -rf "$BUILD/pkg"
mkdir -p "$BUILD/pkg"
cp -r python/fpmatch "$BUILD/pkg/"
cp "$BUILD"/_core*.so "$BUILD/pkg/fpmatch/"

runtimes="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
# Leaks are not checked: the interpreter and numpy keep memory to the end by design.
# Reports go to files as well as stderr: pytest captures stderr, and an aborting process loses it.
reports="$PWD/$BUILD/reports"
rm -rf "$reports" && mkdir -p "$reports"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_init_order=1:log_path=$reports/asan:suppressions=$PWD/scripts/asan.supp
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan
show_reports() {
  if compgen -G "$reports/*" >/dev/null; then
    echo "sanitizer reports:" >&2
    head -c 20000 "$reports"/* >&2
    return 1
  fi
}
tests=${SANITIZE_TESTS:-tests --ignore=tests/test_wheel.py}
LD_PRELOAD="$runtimes" PYTHONPATH="$BUILD/pkg" "$PY" -c \
  "import fpmatch._core as c, sys; assert 'build/sanitize' in c.__file__, c.__file__; print('instrumented core:', c.__file__)"
# shellcheck disable=SC2086
status=0
LD_PRELOAD="$runtimes" PYTHONPATH="$BUILD/pkg" "$PY" -m pytest -q -p no:cacheprovider $tests "$@" || status=$?
show_reports || status=1
exit $status
