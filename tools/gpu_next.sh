#!/usr/bin/env bash
# A GPU run of this tree in two device calls on one machine (or one, on a short budget): the whole GPU suite
# beside DeepGEMM's build, then benchmarks beside DeepGEMM and an A/B against a base kernel tree.
# Logs under $OUT; a short table prints last. docs/perf-log.md v21 came from it.
#   here, once (a base tree's kernel sources, e.g. main's, for the A/B): mkdir -p .ab_base/main &&
#     git archive main dg_moe/csrc | tar -x -C .ab_base/main --strip-components=2
#   call 1 (fresh machine; carry .whl .peer .ab_base):  PHASE=1 bash tools/gpu_next.sh
#       DeepGEMM's build beside the whole GPU suite of this tree (every kernel change ends with it).
#   call 2 (same machine, warm; carry .whl again, or its install step fails): PHASE=2 bash tools/gpu_next.sh
#       by default the BF16 benchmark with its forced tiles (bf16), transformers against grouped_mm (tf) and
#       NVRTC against nvcc run times (jit); STEPS may name others: the A/B against the base tree on the dense
#       and contiguous cases (hint_ab), weight gradients beside DeepGEMM (wgrad), wgrad tiles 152 wide, 144
#       and 128 (pipelined) sharing B (wgrad152, wgrad144b, wgrad128b); steps gemm (`dg-moe bench gemm` beside DeepGEMM, its kernels warmed
#       first) and moe (`dg-moe bench moe`); Nsight Compute on both libraries' kernels of issue 15's worst
#       cases (ncu: summary metrics and stall reasons; ncusrc: per-instruction stall samples as CSV); ab:
#       tools/ab_variants.py with the arguments in AB_ARGS (e.g. several --base kernel trees beside DeepGEMM);
#       ncuwgrad: Nsight Compute (details and per-instruction stall samples) of both libraries' weight-gradient
#       kernels on dense 4096 x 7168 x 4096 (WGRAD_BASE: dg_moe's kernel from that source tree); wgradab: the
#       weight-gradient benchmark beside DeepGEMM once per kernel tree in WGRAD_TREES (the first the baseline),
#       then one table of them all (tools/wgrad_ab_table.py).
set -uo pipefail
deadline=$((SECONDS + ${DEADLINE_S:-570}))
left() { local s=$((deadline - SECONDS - $2)); ((s > $1)) && s=$1; ((s < 1)) && s=1; echo "$s"; }
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"
PEER=$PWD/.peer/deepgemm

# BUILD_PEER=0: no DeepGEMM build beside the suite (its compiles compete with the suite's for the CPUs), for a
# run whose device time leaves no second call with peers; STEPS: the second call's steps, in order.
if [[ ${PHASE:-1} == 1 ]]; then
  building=
  if [[ ${BUILD_PEER:-1} == 1 ]]; then
    bash "$PEER/build.sh" >"$OUT/peer_build.log" 2>&1 &
    building=$!
  fi
  # -v: one line per finished test, so a suite cut off by the time limit still says what passed.
  step tests "$(left 480 40)" python3 -m pytest -v -m gpu -n 6 -p no:cacheprovider --timeout 240 \
    --timeout-method thread -rf tests
  if [[ -n $building ]]; then
    wait "$building"
    tail -n 2 "$OUT/peer_build.log"
  fi
  echo "PASSED $(grep -c ' PASSED' "$OUT/tests.log") FAILED $(grep -c ' FAILED' "$OUT/tests.log")" \
    "ERROR $(grep -c ' ERROR' "$OUT/tests.log") SKIPPED $(grep -c ' SKIPPED' "$OUT/tests.log")"
  grep -E "^(FAILED|ERROR) |passed|failed" "$OUT/tests.log" | tail -n 25
  # THEN_STEPS=1: go on to the STEPS in the same call while the deadline leaves room.
  if [[ ${THEN_STEPS:-0} != 1 ]] || ((deadline - SECONDS < 120)); then
    printf '%s\n' "${summary[@]}"
    pack_out
    exit 0
  fi
fi

export PYTHONPATH=$PEER/src:$PYTHONPATH CUDA_HOME=/usr/local/cuda DG_JIT_CACHE_DIR=/tmp/dg_jit_cache
export LD_PRELOAD=/lib/x86_64-linux-gnu/libstdc++.so.6
# A call that carries .peer replaces the copy the first call built (v22 lost its DeepGEMM that way): build
# it again where it does not import (about 60 s).
if ! python3 -c "import deep_gemm" >/dev/null 2>&1; then
  bash "$PEER/build.sh" >"$OUT/peer_build.log" 2>&1
  tail -n 1 "$OUT/peer_build.log"
fi
steps=${STEPS:-bf16 tf jit}
for name in $steps; do
  case $name in
    hint_ab) step hint_ab "$(left 150 30)" python3 tools/ab_variants.py --family dense,contiguous \
      --base .ab_base/main --json "$OUT/hint_ab.json" ;;
    wgrad) step wgrad "$(left 150 30)" env DG_PRINT_CONFIGS=1 python3 tools/bench_wgrad.py ;;
    bf16) step bf16 "$(left 160 30)" python3 tools/bench_bf16.py --tile 128x192x2B --tile 256x128x2 ;;
    wgrad152) step wgrad152 "$(left 80 30)" python3 tools/bench_wgrad.py --block-n 152 ;;
    wgrad144b) step wgrad144b "$(left 70 1)" python3 tools/bench_wgrad.py --block-n 144 --share-b ;;
    wgrad128b) step wgrad128b "$(left 80 20)" python3 tools/bench_wgrad.py --block-n 128 --share-b ;;
    wgradab)
      # Every tree's variants compile in parallel first; each tree then runs in a process of its own.
      for tree in $WGRAD_TREES; do
        python3 tools/bench_wgrad.py --compile-only --base "$tree" >"$OUT/wgradab-compile-${tree##*/}.log" 2>&1 &
      done
      wait
      for tree in $WGRAD_TREES; do
        step "wgradab-${tree##*/}" "$(left 100 20)" python3 tools/bench_wgrad.py --base "$tree"
      done
      # shellcheck disable=SC2046 # one log per tree
      python3 tools/wgrad_ab_table.py $(for tree in $WGRAD_TREES; do echo "$OUT/wgradab-${tree##*/}.log"; done) \
        >"$OUT/wgradab.log" 2>&1 ;;
    gemm) step gemm "$(left 330 20)" sh -c "python3 -m dg_moe.cli bench gemm --warmup >'$OUT/gemm_warmup.log' 2>&1; \
      python3 -m dg_moe.cli bench gemm --json '$OUT/bench_gemm.json'" ;;
    moe) step moe "$(left 240 20)" python3 -m dg_moe.cli bench moe --json "$OUT/bench_moe.json" ;;
    jit) step jit "$(left 120 20)" python3 tools/jit_backend_compare.py --run ;;
    tf) step tf "$(left 300 20)" python3 tools/bench_transformers.py --graph --json "$OUT/bench_transformers.json" ;;
    ab) step ab "$(left 420 20)" sh -c "python3 tools/ab_variants.py $AB_ARGS --json '$OUT/ab.json'" ;;
    ncuwgrad) step ncuwgrad "$(left 200 20)" env WGRAD=1 bash tools/ncu_source.sh wgrad "dense M=4096 N=7168 K=4096" \
      ${WGRAD_BASE:+--base "$WGRAD_BASE"} ;;
    ncu) step ncu "$(left 300 20)" sh -c 'for c in "M=4096 N=4096 K=7168" "M=4096 N=7168 K=16384" \
      "G=32 rows/g=256 N=7168 K=2048" "M=128 N=4096 K=7168"; do echo "#### $c"; bash tools/ncu_case.sh "$c"; done' ;;
    ncusrc) step ncusrc "$(left 200 20)" sh -c 'bash tools/ncu_source.sh src_dense4096 "M=4096 N=4096 K=7168"; \
      bash tools/ncu_source.sh src_m128 "M=128 N=4096 K=7168"' ;;
  esac
done
for log in $steps; do
  echo "== $log"
  tail -n 30 "$OUT/$log.log"
done
printf '%s\n' "${summary[@]}"
pack_out
