#!/usr/bin/env bash
# Per-instruction warp-stall samples (Nsight Compute's source page, SASS) of every GEMM kernel one benchmark
# case runs, dg_moe's and DeepGEMM's, as CSV under $OUT, with the details page beside it: where in each kernel
# the warps wait (K loop, promotion, epilogue, tile start), which the summary metrics of tools/ncu_case.sh
# cannot say. GPU machine, after tools/gpu_session.sh set up the package.
#   usage: bash tools/ncu_source.sh NAME "CASE LABEL" [ARG...]
#          -> $OUT/NAME.ncu-rep, $OUT/NAME.csv, $OUT/NAME.details.txt
# The case runs under tools/ncu_case.py (`dg-moe bench gemm` cases, FP8 GEMM kernels); with WGRAD=1 under
# tools/ncu_wgrad_case.py (tools/bench_wgrad.py cases, weight-gradient kernels; ARG may be --base DIR).
set -uo pipefail
name=$1; shift
# shellcheck source=tools/ncu_metrics.sh
source "$(dirname "$0")/ncu_metrics.sh"
if [[ ${WGRAD:-0} == 1 ]]; then
  kernels='regex:wgrad_kernel|sm90_fp8_gemm_1d1d' case_script=tools/ncu_wgrad_case.py
else
  kernels='regex:fp8_gemm_kernel|sm90_fp8_gemm_1d2d' case_script=tools/ncu_case.py
fi
"$ncu" --profile-from-start off --clock-control none -k "$kernels" --section SourceCounters \
    --section WarpStateStats --section SpeedOfLight --section MemoryWorkloadAnalysis -f -o "$OUT/$name" \
    python3 "$case_script" "$@" >"$OUT/$name.profile.log" 2>&1
tail -n 3 "$OUT/$name.profile.log"
"$ncu" --import "$OUT/$name.ncu-rep" --page source --csv --print-source sass >"$OUT/$name.csv" 2>&1
"$ncu" --import "$OUT/$name.ncu-rep" --page details >"$OUT/$name.details.txt" 2>&1
echo "$name: $(wc -l <"$OUT/$name.csv") lines of per-instruction samples"
