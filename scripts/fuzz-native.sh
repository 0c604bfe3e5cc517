#!/usr/bin/env bash
# Makes what coverage-guided fuzzing of the native core needs, and prints the environment
# to run a fuzz target with (sourced by fuzz.sh):
#   - clang with libFuzzer and its sanitizer runtimes (installed with apt-get as root when missing),
#   - atheris built from source against that clang (its asan_with_fuzzer.so),
#   - the core built with -fsanitize=address,fuzzer-no-link into build/fuzz-native, beside a
#     copy of the package, so libFuzzer sees the core's edges and ASan its memory errors.
# Without clang (and no way to install it), fuzzing runs on Python coverage only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PIP="$PY -m pip"
BUILD=build/fuzz-native
LLVM=16

clang_bin=$(command -v clang-$LLVM || true)
if [ -z "$clang_bin" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "installing clang-$LLVM for native fuzzing" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    clang-$LLVM libclang-rt-$LLVM-dev libomp-$LLVM-dev >/dev/null
  clang_bin=$(command -v clang-$LLVM || true)
fi
if [ -z "$clang_bin" ]; then
  echo "clang-$LLVM is missing: fuzzing the Python side only (the core is not instrumented)" >&2
  $PIP install -q 'atheris>=2.3'
  exit 0
fi

site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if [ ! -f "$site/asan_with_fuzzer.so" ]; then
  echo "building atheris against $clang_bin" >&2
  CLANG_BIN=$clang_bin $PIP install -q --force-reinstall --no-deps --no-binary atheris 'atheris>=2.3'
fi

if [ ! -f "$BUILD/.built" ] || [ -n "$(find cpp CMakeLists.txt -newer "$BUILD/.built" | head -1)" ]; then
  FLAGS="-fsanitize=address,fuzzer-no-link -fno-omit-frame-pointer -g"
  CC=clang-$LLVM CXX=clang++-$LLVM cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSKBUILD_PROJECT_NAME=fpmatch -DSKBUILD_PROJECT_VERSION=0.1.0 \
    -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
    -DCMAKE_CXX_FLAGS="$FLAGS" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,fuzzer-no-link" >/dev/null
  cmake --build "$BUILD" -j "$(nproc)" >/dev/null
  touch "$BUILD/.built"
fi
rm -rf "$BUILD/pkg"
mkdir -p "$BUILD/pkg"
cp -r python/fpmatch "$BUILD/pkg/"
cp "$BUILD"/_core*.so "$BUILD/pkg/fpmatch/"
echo "export LD_PRELOAD=$site/asan_with_fuzzer.so"
echo "export PYTHONPATH=$PWD/$BUILD/pkg"
echo "export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1"
