# Sourced by tools/ncu_case.sh and tools/ncu_stalls.sh: the Nsight Compute binary ($ncu), the metric list
# ($metrics: duration, SM clock, SM / L2 / L1-shared / DRAM / tensor-pipe throughput, shared-memory bank
# traffic, L2 read sectors and hit rate, DRAM bytes read, instructions, the warp stall reasons) and `summarize`, which filters ncu's
# output down to kernel names, those metrics and the stall reasons above 0.05 warps per issue.
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
stalls="barrier long_scoreboard wait math_pipe_throttle membar short_scoreboard sleeping dispatch_stall misc
selected not_selected branch_resolving no_instruction imc_miss lg_throttle mio_throttle tex_throttle drain"
metrics="gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",lts__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_srcunit_tex_op_read.sum"
metrics+=",sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed"
metrics+=",sm__cycles_elapsed.avg.per_second,l1tex__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed"
metrics+=",l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed"
metrics+=",smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active"
metrics+=",dram__bytes_read.sum,lts__t_sector_hit_rate.pct"
for s in $stalls; do metrics+=",smsp__average_warps_issue_stalled_${s}_per_issue_active.ratio"; done

summarize() {
  grep -E "fp8_gemm_kernel|sm90_fp8_gemm_1d2d|^\s+(sm__|lts__|gpu__|smsp__|l1tex__|dram__)" |
    sed -E 's/smsp__average_warps_issue_stalled_//; s/_per_issue_active.ratio//' |
    awk '/fp8_gemm_kernel|sm90_fp8_gemm_1d2d/ {print "== " substr($0, 1, 150); next}
         $NF + 0 > 0.05 || $1 ~ /^(sm__|lts__|gpu__|l1tex__|dram__|smsp__inst)/ {print $1, $NF}'
}
