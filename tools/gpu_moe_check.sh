#!/usr/bin/env bash
# One self-contained GPU session for the MoE layer: the layout kernels' and fused MoE's GPU tests, the
# layout-op benchmark and the MoE benchmark, each under its own timeout. Logs go to $OUT; a summary last.
#   usage (device machine, repo root, .whl carried): bash tools/gpu_moe_check.sh [bench moe options]
set -uo pipefail
# shellcheck source=tools/gpu_session.sh
source "$(dirname "$0")/gpu_session.sh"

step tests 120 python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider --timeout 110 -rf \
  tests/test_layout_kernels.py tests/test_moe_gpu.py
step layout 45 python3 -m dg_moe.cli bench layout
step moe 100 python3 -m dg_moe.cli bench moe --json "$OUT/moe.json" "${@:---models=deepseek-v3}"

grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 8
cat "$OUT/layout.log" "$OUT/moe.log"
printf '%s\n' "${summary[@]}"
