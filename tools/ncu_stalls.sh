#!/usr/bin/env bash
# Nsight Compute summary of one dg_moe FP8 GEMM per variant: duration, clock, SM / L2 / L1-shared /
# tensor-pipe throughput and the warp stall reasons above 0.05 warps per issue (GPU machine, wheels carried).
#   usage: bash tools/ncu_stalls.sh M N K "BM BN MC" ["BM BN MC" ...]
set -uo pipefail
m=$1 n=$2 k=$3; shift 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD DG_MOE_CACHE_DIR=/tmp/dg_moe_ncu
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
stalls="barrier long_scoreboard wait math_pipe_throttle membar short_scoreboard sleeping dispatch_stall misc
selected not_selected branch_resolving no_instruction imc_miss lg_throttle mio_throttle tex_throttle drain"
metrics="gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",lts__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed"
metrics+=",sm__cycles_elapsed.avg.per_second,l1tex__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed"
metrics+=",l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed"
for s in $stalls; do metrics+=",smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"; done
for variant in "$@"; do
  echo "== M=$m N=$n K=$k tile/cluster: $variant"
  python3 tools/profile_one.py "$m" "$n" "$k" $variant  # compile outside the profiled run
  "$ncu" --clock-control none -k regex:fp8_gemm_kernel -s 1 -c 1 --metrics "$metrics" \
      python3 tools/profile_one.py "$m" "$n" "$k" $variant 2>&1 |
    grep -E "^\s+(sm__|lts__|gpu__|smsp__|l1tex__)" |
    sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' |
    awk '{print $1, $NF}' | awk '$2 + 0 > 0.05 || $1 ~ /^(sm__|lts__|gpu__|l1tex__)/'
done
