#!/usr/bin/env bash
# One self-contained GPU session: install carried wheels, report the toolchain, run the GPU
# tests, measure the warm kernel load time, run the demo and the GEMM benchmark (without DeepGEMM:
# tools/gpu_gemm_vs_deepgemm.sh runs it beside DeepGEMM). Logs go to
# $OUT (the device tool brings them back); a short summary prints last.
#   usage (on the device machine, repo root): bash tools/gpu_check.sh [pytest -k expression]
set -uo pipefail
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"

step info 60 python3 -m dg_moe.cli info
step tests 600 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider --timeout 240 --timeout-method thread -rf ${1:+-k "$1"} tests
step loadtime 120 python3 -m dg_moe.jit.loadtime
step demo 300 python3 -m dg_moe.cli demo
step benchwarm 180 python3 -m dg_moe.cli bench gemm --warmup --no-deepgemm
step bench 300 python3 -m dg_moe.cli bench gemm --no-deepgemm --out "$OUT"

cat "$OUT/info.log"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 5
cat "$OUT/loadtime.log" "$OUT/demo.log"
tail -n 70 "$OUT/bench.log"
printf '%s\n' "${summary[@]}"
