# Sourced by the GPU session scripts (tools/gpu_check.sh, tools/gpu_moe_check.sh): installs the carried
# wheels, puts them and the checkout on PYTHONPATH (dg_moe, adapters included, imports from the source tree),
# sets the environment, and defines `step`, which runs one command under a time limit with its log under $OUT,
# and `pack_out`, which packs what a call would return into one archive.
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
export DG_MOE_CACHE_DIR=/tmp/dg_moe_cache PYTHONUNBUFFERED=1

summary=()
step() {  # step NAME SECONDS COMMAND...: run under a timeout, log to $OUT/NAME.log, record the exit code
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STEP_RC=$rc  # for scripts that branch on a step's outcome
  summary+=("$(printf '%-10s rc=%-3s %4ss  %s' "$name" "$rc" $((SECONDS - start)) "$(tail -n 1 "$OUT/$name.log")")")
}

# A call returns at most 8 files from $OUT: pack the logs, CSVs, JSON and text reports into one archive (the
# Nsight reports, *.ncu-rep, stay behind: too large to return). v25 lost its Nsight CSVs to the limit.
pack_out() {
  local files
  mapfile -t files < <(cd "$OUT" && find . -maxdepth 2 -type f \( -name '*.log' -o -name '*.csv' \
    -o -name '*.json' -o -name '*.txt' \) | sort)
  ((${#files[@]})) || return 0
  (cd "$OUT" && tar -czf out.tar.gz "${files[@]}" && rm -f "${files[@]}")
  echo "packed ${#files[@]} files into \$OUT/out.tar.gz"
}
