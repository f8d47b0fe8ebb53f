#!/usr/bin/env bash
# Nsight Compute summary (tools/ncu_metrics.sh) of every GEMM kernel one `dg-moe bench gemm` case runs,
# dg_moe's and DeepGEMM's. GPU machine, after tools/gpu_session.sh set up the package.
#   usage: bash tools/ncu_case.sh "CASE LABEL" [CALL LABEL...]
set -uo pipefail
# shellcheck source=tools/ncu_metrics.sh
source "$(dirname "$0")/ncu_metrics.sh"
"$ncu" --profile-from-start off --clock-control none -k 'regex:fp8_gemm_kernel|sm90_fp8_gemm_1d2d' \
    --metrics "$metrics" python3 tools/ncu_case.py "$@" 2>&1 | summarize
