#!/usr/bin/env bash
# Time-boxed coverage-guided runs of every fuzz target (or of those named), on Python
# coverage and, where clang can be had, on the native core's edges under ASan:
#   FUZZ_SECONDS=300 bash scripts/fuzz.sh [TARGET ...]
# Working corpora grow in build/fuzz/TARGET (seeded from fuzz/corpus); findings are
# written to build/fuzz/findings/ and make the run fail. FUZZ_SEED fixes the mutation
# seed (CI uses one, so that a gate run repeats; exploratory runs leave it unset).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SECONDS_EACH=${FUZZ_SECONDS:-120}
seed_option=()
[ -n "${FUZZ_SEED:-}" ] && seed_option=(-seed="$FUZZ_SEED")
OUT=build/fuzz
mkdir -p "$OUT/findings"
# The targets write stores and files per input: in memory where the machine has it, fsync is free.
[ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ] && export TMPDIR=/dev/shm
# The instrumented core (clang, ASan, libFuzzer edges) when it can be built; see fuzz-native.sh.
native_env=$(PY="$PY" bash scripts/fuzz-native.sh) || exit 1
eval "$native_env"
[ -n "${LD_PRELOAD:-}" ] && "$PY" -c "import fpmatch._core as c; print('instrumented core:', c.__file__)"
[ -f "$OUT/seeds/keyholder.key" ] || "$PY" fuzz/seeds.py "$OUT/seeds" --public-context
export FPMATCH_FUZZ_KEYHOLDER="$OUT/seeds/keyholder.key"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && mapfile -t targets < <("$PY" -c "import sys; sys.path.insert(0, 'fuzz'); import targets; print('\n'.join(targets.TARGETS))")
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$OUT/$t"
  echo "== $t (${SECONDS_EACH}s)"
  seeds=(fuzz/corpus/"$t" "$OUT/seeds/$t")
  existing=()
  for d in "${seeds[@]}"; do [ -d "$d" ] && existing+=("$d"); done
  "$PY" fuzz/run.py "$t" -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -timeout=20 \
    -artifact_prefix="$OUT/findings/$t-" -print_final_stats=1 "${seed_option[@]}" "$OUT/$t" "${existing[@]}" 2>"$OUT/$t.log"
  status=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done)" "$OUT/$t.log" || true
  if [ $status -ne 0 ]; then
    failed=1
    echo "   FINDING in $t (exit $status): see $OUT/$t.log and $OUT/findings/" >&2
  fi
done
exit $failed
