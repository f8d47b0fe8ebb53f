#!/usr/bin/env bash
# One self-contained GPU session: install carried wheels, report the toolchain, run the GPU
# tests, measure the warm kernel load time, run the demo and the GEMM benchmark. Logs go to
# $OUT (the device tool brings them back); a short summary prints last.
#   usage (on the device machine, repo root): bash tools/gpu_check.sh [pytest -k expression]
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
export DG_MOE_CACHE_DIR=/tmp/dg_moe_cache PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true

summary=()
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, record the exit code
  local name=$1; shift
  local start=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$(printf '%-10s rc=%-3s %4ss  %s' "$name" "$rc" $((SECONDS - start)) "$(tail -n 1 "$OUT/$name.log")")")
}

step info python3 -m dg_moe.cli info
step tests python3 -m pytest -q -m gpu -n 8 -p no:cacheprovider --timeout 240 --timeout-method thread -rf ${1:+-k "$1"} tests
step loadtime python3 -m dg_moe.jit.loadtime
step demo python3 -m dg_moe.cli demo
step bench timeout 300 python3 -c "import sys; from dg_moe.bench.gemm import main; sys.exit(main('$OUT'))"

cat "$OUT/info.log"
grep -E "passed|failed|error" "$OUT/tests.log" | tail -n 5
cat "$OUT/loadtime.log" "$OUT/demo.log"
tail -n 45 "$OUT/bench.log"
printf '%s\n' "${summary[@]}"
