#!/usr/bin/env bash
# dg_moe beside DeepGEMM on every serving GEMM shape, in one device call of under 10 minutes: build the
# DeepGEMM peer carried in .peer/deepgemm (while dg_moe's kernels compile beside it), warm both
# libraries' kernels in parallel processes (their chosen configurations go to warmup.log), then time
# every case in one process: `dg-moe bench gemm`. Logs and bench_gemm.json go to $OUT; tables last.
#   usage (device machine, repo root; carry .whl and .peer):
#     bash tools/gpu_gemm_vs_deepgemm.sh [--skip-build] [dg-moe bench gemm options, e.g. --quick]
#   --skip-build: keep the peer already built in this checkout (.peer/deepgemm/src/deep_gemm/_C*.so);
#   without .peer/deepgemm/build.sh the benchmark runs without DeepGEMM and its columns say why.
#   GPU_TESTS=1: also run `pytest -m gpu` (tests.log) beside the build and warm-up, finished before timing.
set -uo pipefail
skip_build=0
if [[ ${1:-} == --skip-build ]]; then skip_build=1; shift; fi
deadline=$((SECONDS + ${DEADLINE_S:-570}))  # the device call's 600 s, less the time to print
left() {  # left MAX RESERVE: seconds for the next step, at most MAX, keeping RESERVE for the steps after it
  local s=$((deadline - SECONDS - $2))
  ((s > $1)) && s=$1
  ((s < 1)) && s=1
  echo "$s"
}
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"

PEER=$PWD/.peer/deepgemm
peer_flag=()
if [[ ${GPU_TESTS:-0} == 1 ]]; then
  timeout "$(left 330 200)" python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider --timeout 240 -rf tests \
    >"$OUT/tests.log" 2>&1 &
  gpu_tests=$!
fi
# dg_moe's kernels need only nvcc: they compile on the spare cores while the peer's one C++ unit builds.
timeout "$(left 240 300)" python3 -m dg_moe.cli bench gemm --warmup --no-deepgemm "$@" >"$OUT/warmup_dg_moe.log" 2>&1 &
dg_moe_compile=$!
if [[ ! -f $PEER/build.sh ]]; then
  echo "no DeepGEMM peer at .peer/deepgemm (carry .peer): dg_moe is timed without it" | tee "$OUT/peer_build.log"
  peer_flag=(--no-deepgemm)
elif ((skip_build)) && compgen -G "$PEER/src/deep_gemm/_C*.so" >/dev/null; then
  echo "DeepGEMM peer already built: $(compgen -G "$PEER/src/deep_gemm/_C*.so")" | tee "$OUT/peer_build.log"
else
  step peer_build "$(left 240 300)" bash "$PEER/build.sh"
  ((STEP_RC != 0)) && tail -n 20 "$OUT/peer_build.log"
fi
wait "$dg_moe_compile"
tail -n 2 "$OUT/warmup_dg_moe.log"

# The peer's run-time environment (.peer/deepgemm/USE.md); the preload avoids a std::regex crash in its JIT.
export PYTHONPATH=$PEER/src:$PYTHONPATH CUDA_HOME=/usr/local/cuda DG_JIT_CACHE_DIR=/tmp/dg_jit_cache
export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6

step warmup "$(left 200 150)" env DG_PRINT_CONFIGS=1 DG_MOE_PRINT_CONFIGS=1 \
  python3 -m dg_moe.cli bench gemm --warmup "${peer_flag[@]}" "$@"
grep -E '^(dg_moe:|DeepGEMM|warm-up)' "$OUT/warmup.log"
grep -E '^\[warmup' "$OUT/warmup.log" | grep -v ', ok$'
if ((STEP_RC == 4)); then peer_flag=(--no-deepgemm); fi  # a library crashed in a warm-up process

if [[ -n ${gpu_tests:-} ]]; then
  wait "$gpu_tests"
  summary+=("tests      rc=$?  $(grep -E "passed|failed" "$OUT/tests.log" | tail -n 1)")
fi
step bench "$(left 300 10)" python3 -m dg_moe.cli bench gemm --json "$OUT/bench_gemm.json" "${peer_flag[@]}" "$@"
if ((STEP_RC != 0 && STEP_RC != 124)) && ((${#peer_flag[@]} == 0)) && (($(left 300 10) > 90)); then
  tail -n 5 "$OUT/bench.log"
  echo "bench failed (rc=$STEP_RC): again without DeepGEMM"
  step bench_nodg "$(left 300 10)" python3 -m dg_moe.cli bench gemm --json "$OUT/bench_gemm_nodg.json" --no-deepgemm "$@"
fi

# The tables (and the eager line) of the last benchmark that ran, then every step's outcome.
sed -n '/^Dense FP8 GEMM\|^Contiguous grouped\|^Masked grouped\|^Eager call/,$p' \
  "$OUT/$([[ -f $OUT/bench_nodg.log ]] && echo bench_nodg || echo bench).log"
printf '%s\n' "${summary[@]}"
