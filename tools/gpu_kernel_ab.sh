#!/usr/bin/env bash
# One device call for kernel work: build the DeepGEMM peer (.peer/deepgemm) while the A/B variants
# compile, warm DeepGEMM's kernels on bench gemm's cases in parallel processes (its chosen configs go to
# warmup.log), run tools/ab_variants.py (every variant and DeepGEMM timed in one process), then Nsight
# Compute on one contiguous case (dg_moe's and DeepGEMM's kernels) and copy DeepGEMM's compiled kernels
# to $OUT for SASS reading. Logs under $OUT; the A/B table prints last.
#   usage (device machine, repo root; carry .whl and .peer):
#     AB_ARGS="--tile 128x192x2B ..." NCU_CASE="G=8 rows/g=4096 N=4096 K=7168" bash tools/gpu_kernel_ab.sh
set -uo pipefail
deadline=$((SECONDS + ${DEADLINE_S:-570}))
left() { local s=$((deadline - SECONDS - $2)); ((s > $1)) && s=$1; ((s < 1)) && s=1; echo "$s"; }
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"
read -r -a ab_args <<<"${AB_ARGS:-}"

PEER=$PWD/.peer/deepgemm
timeout "$(left 300 240)" python3 tools/ab_variants.py --compile-only "${ab_args[@]}" >"$OUT/ab_compile.log" 2>&1 &
compiling=$!
step peer_build "$(left 240 300)" bash "$PEER/build.sh"
wait "$compiling"
tail -n 3 "$OUT/ab_compile.log"
export PYTHONPATH=$PEER/src:$PYTHONPATH CUDA_HOME=/usr/local/cuda DG_JIT_CACHE_DIR=/tmp/dg_jit_cache
export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
step warmup "$(left 200 200)" env DG_PRINT_CONFIGS=1 DG_MOE_PRINT_CONFIGS=1 \
  python3 -m dg_moe.cli bench gemm --warmup --family "${AB_FAMILIES:-contiguous,masked,dense}"
grep -E "^\[warmup" "$OUT/warmup.log" | grep -v ', ok$' | head -5
step eager 60 python3 tools/profile_eager.py
step ab "$(left 300 100)" python3 tools/ab_variants.py --json "$OUT/ab.json" "${ab_args[@]}"
if [[ -n ${NCU_CASE:-} ]]; then
  step ncu "$(left 150 15)" bash tools/ncu_case.sh "$NCU_CASE" ${NCU_CALLS:-}
fi
find "$DG_JIT_CACHE_DIR" -name '*.cubin' -newer "$PEER/build.sh" -size -4M 2>/dev/null | head -40 |
  tar -czf "$OUT/deepgemm_cubins.tgz" -T - 2>/dev/null
grep -E "DeepGEMM|dg_moe\]" "$OUT/warmup.log" | sort -u | head -60 >"$OUT/configs.log"
head -n 12 "$OUT/eager.log"
cat "$OUT/ncu.log" 2>/dev/null | head -120
cat "$OUT/ab.log"
printf '%s\n' "${summary[@]}"
