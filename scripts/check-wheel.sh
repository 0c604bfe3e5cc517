#!/usr/bin/env bash
# Installs a repaired wheel into a fresh virtual environment and runs the demo from it, with the
# system libraries the build linked against (FAISS, BLAS, LAPACK, OpenMP, the Fortran runtime)
# hidden where this machine allows a private mount namespace: the wheel must carry what it needs.
# Usage: scripts/check-wheel.sh dist/fpmatch-*-manylinux_*.whl [demo options]
set -euo pipefail
wheel=${1:?usage: scripts/check-wheel.sh WHEEL [demo options]}
shift
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$(realpath "$wheel")[he]"
core=$("$work/venv/bin/python" -c "import importlib.util as u; print(u.find_spec('fpmatch._core').origin)")

# Every shared library the native module loads is in the wheel, or is glibc's or the C++ runtime's.
echo "libraries of $(basename "$core"):"
ldd "$core" | awk '/=>/ {print $1, $3}' | while read -r name path; do
  echo "  $name => $path"
  case "$name" in
    libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|libstdc++.so.*|libgcc_s.so.*|ld-linux*) ;;
    *) case "$path" in
         "$work"/*) ;;
         *) echo "the wheel needs a system library: $name ($path)" >&2; exit 1 ;;
       esac ;;
  esac
done

hidden=()
for name in libfaiss.a libopenblas.so.0 libblas.so.3 liblapack.so.3 libgomp.so.1 libgfortran.so.5 libquadmath.so.0; do
  for path in /usr/lib/*-linux-gnu/"$name" /usr/lib/*-linux-gnu/openblas*/"$name"; do
    [ -e "$path" ] && hidden+=("$(readlink -f "$path")")
  done
done
if [ ${#hidden[@]} -gt 0 ]; then mapfile -t hidden < <(printf '%s\n' "${hidden[@]}" | sort -u); fi
demo=("$work/venv/bin/fpmatch" demo "$@")
if [ ${#hidden[@]} -gt 0 ] && unshare -m --propagation private true 2>/dev/null; then
  echo "hiding ${#hidden[@]} system libraries: ${hidden[*]}"
  # shellcheck disable=SC2016
  unshare -m --propagation private bash -c '
    n=$1; shift
    for f in "${@:1:$n}"; do mount --bind /dev/null "$f"; done
    shift "$n"
    cd / && exec "$@"' hide "${#hidden[@]}" "${hidden[@]}" "${demo[@]}"
else
  echo "no system libraries hidden (none found, or no private mount namespace here); the library check above stands"
  (cd / && "${demo[@]}")
fi
