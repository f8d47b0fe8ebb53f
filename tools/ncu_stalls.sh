#!/usr/bin/env bash
# Nsight Compute summary (tools/ncu_metrics.sh) of one dg_moe FP8 GEMM per forced variant (GPU machine,
# wheels carried).
#   usage: bash tools/ncu_stalls.sh M N K "BM BN MC" ["BM BN MC" ...]
set -uo pipefail
m=$1 n=$2 k=$3; shift 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD DG_MOE_CACHE_DIR=/tmp/dg_moe_ncu
# shellcheck source=tools/ncu_metrics.sh
source "$(dirname "$0")/ncu_metrics.sh"
for variant in "$@"; do
  echo "== M=$m N=$n K=$k tile/cluster: $variant"
  python3 tools/profile_one.py "$m" "$n" "$k" $variant  # compile outside the profiled run
  "$ncu" --clock-control none -k regex:fp8_gemm_kernel -s 1 -c 1 --metrics "$metrics" \
      python3 tools/profile_one.py "$m" "$n" "$k" $variant 2>&1 |
    summarize
done
