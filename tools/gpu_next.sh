#!/usr/bin/env bash
# The GPU run that decides the ninth session's branches (docs/perf-log.md v20), from a checkout of
# wip/next-gpu (the weight-gradient reductions, wider tiles, B-sharing pairs and BF16 operands, the TMA L2
# hint, the BF16 B-sharing rule), two device calls on one machine. Logs under $OUT; a short table prints last.
#   here, once (main's kernel sources, the A/B base): mkdir -p .ab_base/main &&
#     git archive main dg_moe/csrc | tar -x -C .ab_base/main --strip-components=2
#   call 1 (fresh machine; carry .whl .peer .ab_base):  PHASE=1 bash tools/gpu_next.sh
#       DeepGEMM's build beside the whole GPU suite of this tree (every kernel change ends with it).
#   call 2 (same machine, warm; carry nothing new):     PHASE=2 bash tools/gpu_next.sh
#       weight gradients beside DeepGEMM (the cost model's tiles, 152 wide, 144 sharing B), the L2-hint A/B against
#       main's kernel tree on the dense and contiguous cases with Nsight's L2 request count at M = 128,
#       N = 4096, K = 7168, and the BF16 benchmark's contiguous cases.
set -uo pipefail
deadline=$((SECONDS + ${DEADLINE_S:-570}))
left() { local s=$((deadline - SECONDS - $2)); ((s > $1)) && s=$1; ((s < 1)) && s=1; echo "$s"; }
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"
PEER=$PWD/.peer/deepgemm

if [[ ${PHASE:-1} == 1 ]]; then
  bash "$PEER/build.sh" >"$OUT/peer_build.log" 2>&1 &
  building=$!
  step tests "$(left 420 60)" python3 -m pytest -q -m gpu -n 6 -p no:cacheprovider --timeout 240 \
    --timeout-method thread -rf tests
  wait "$building"
  tail -n 2 "$OUT/peer_build.log"
  grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 12
  printf '%s\n' "${summary[@]}"
  exit 0
fi

export PYTHONPATH=$PEER/src:$PYTHONPATH CUDA_HOME=/usr/local/cuda DG_JIT_CACHE_DIR=/tmp/dg_jit_cache
export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
step wgrad "$(left 150 300)" env DG_PRINT_CONFIGS=1 python3 tools/bench_wgrad.py
step wgrad152 "$(left 100 260)" python3 tools/bench_wgrad.py --block-n 152
step wgrad144b "$(left 100 200)" python3 tools/bench_wgrad.py --block-n 144 --share-b
step hint_ab "$(left 150 90)" python3 tools/ab_variants.py --family dense,contiguous --base .ab_base/main \
  --json "$OUT/hint_ab.json"
step hint_ncu "$(left 60 30)" bash tools/ncu_case.sh "M=128 N=4096 K=7168"
step bf16 "$(left 90 1)" python3 tools/bench_bf16.py --match contiguous
for log in wgrad wgrad152 wgrad144b hint_ab hint_ncu bf16; do
  echo "== $log"
  tail -n 30 "$OUT/$log.log"
done
printf '%s\n' "${summary[@]}"
