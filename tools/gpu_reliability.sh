#!/usr/bin/env bash
# One GPU session for issue 19 (reliability), within one 10-minute device command: warm the JIT and Triton
# caches (the sanitizer cases and the soak, in parallel), the JIT stampede (16 processes x 20 GEMM variants
# from an empty cache, entries corrupted mid-run), the 1000-replay CUDA-graph soak and a few replays of it
# under memcheck, then compute-sanitizer (tools/sanitize.sh) on as many cases as the remaining time allows.
# Logs under $OUT (sanitizer logs in $OUT/sanitize); the summary prints last.
#   usage (device machine, repo root, .whl carried): bash tools/gpu_reliability.sh [sanitize case...]
set -uo pipefail
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"
TOTAL=${RELIABILITY_SECONDS:-570}  # the device command's 600 s, less a margin for the summary
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)

step info 60 python3 -m dg_moe.cli info
# Every sanitizer case once, 12 at a time (each its own process; they share the JIT cache's key locks), and the
# soak's two layers once: every kernel the later steps run is compiled here, outside any sanitizer.
step warm 180 bash -c 'python3 tools/sanitize_cases.py --list | xargs -P 12 -n 1 python3 tools/sanitize_cases.py & a=$!
  python3 tools/graph_replay_soak.py --sample 1 & b=$!; wait $a && wait $b && echo "warm: every case ran"'
# Each phase its own limit: the first H100 run gave one 140 s budget to both; phase A took 75.7 s and left
# phase B (rebuilds of the corrupted entries, then every worker's remaining requests) 64 s, when two workers,
# still logging cache hits, were killed. A straggler is now killed at its own phase's limit with a report of
# what it was doing (the key lock it waited for and its holder, nvcc, its Python stack).
step stampede 260 python3 tools/jit_stampede.py --procs 16 --variants 20 --corrupt 3 --timeout-a 120 --timeout-b 120
step soak 120 python3 tools/graph_replay_soak.py --steps 1000
if [[ -n "$cs" ]]; then
  step soakmem 90 "$cs" --tool memcheck --error-exitcode 86 python3 tools/graph_replay_soak.py --sample 3
  left=$((TOTAL - SECONDS - 20))
  if ((left > 30)); then
    SANITIZE_WARM=0 SANITIZE_BUDGET=$((left - 30)) SANITIZE_CASE_LIMIT=$((left - 30 < 240 ? left - 30 : 240)) \
      SANITIZE_JOBS=${SANITIZE_JOBS:-6} step sanitize "$left" bash tools/sanitize.sh "$@"
  else
    summary+=("sanitize   not run: ${left}s left")
  fi
else
  summary+=("soakmem/sanitize not run: compute-sanitizer not found")
fi

cat "$OUT/info.log"
tail -n 3 "$OUT/warm.log"
grep -E "^(FAIL|jit_stampede|worker [0-9]+:|  (waiting|running|not in|innermost))" "$OUT/stampede.log" | tail -n 12
grep -E "replays ok|PASS|Error|assert" "$OUT/soak.log" | tail -n 5
[[ -f "$OUT/soakmem.log" ]] && grep -E "ERROR SUMMARY|PASS" "$OUT/soakmem.log" | tail -n 2
[[ -f "$OUT/sanitize.log" ]] && tail -n 6 "$OUT/sanitize.log"
printf '%s\n' "${summary[@]}"
