#!/usr/bin/env bash
# Per-instruction warp-stall samples (Nsight Compute's source page, SASS) of every GEMM kernel one
# `dg-moe bench gemm` case runs, dg_moe's and DeepGEMM's, as CSV under $OUT: where in each kernel the warps
# wait (K loop, promotion, epilogue, tile start), which the summary metrics of tools/ncu_case.sh cannot say.
# GPU machine, after tools/gpu_session.sh set up the package.
#   usage: bash tools/ncu_source.sh NAME "CASE LABEL" [CALL LABEL...]   ->  $OUT/NAME.ncu-rep, $OUT/NAME.csv
set -uo pipefail
name=$1; shift
# shellcheck source=tools/ncu_metrics.sh
source "$(dirname "$0")/ncu_metrics.sh"
"$ncu" --profile-from-start off --clock-control none -k 'regex:fp8_gemm_kernel|sm90_fp8_gemm_1d2d' \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight -f -o "$OUT/$name" \
    python3 tools/ncu_case.py "$@" >"$OUT/$name.profile.log" 2>&1
tail -n 3 "$OUT/$name.profile.log"
"$ncu" --import "$OUT/$name.ncu-rep" --page source --csv --print-source sass >"$OUT/$name.csv" 2>&1
echo "$name: $(wc -l <"$OUT/$name.csv") lines of per-instruction samples"
