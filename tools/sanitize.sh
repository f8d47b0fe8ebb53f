#!/usr/bin/env bash
# compute-sanitizer over the curated small calls of tools/sanitize_cases.py (issue 19.1): memcheck, synccheck,
# racecheck and initcheck, one small process per (tool, case), each with an error exit code. The cases run
# once without a sanitizer first (JIT and Triton compiles stay outside the sanitizer). Logs under
# $OUT/sanitize/TOOL-CASE.log; a per-tool summary (cases run, errors) prints last. GPU machine, repo root,
# after tools/gpu_session.sh (or any setup where python3 imports dg_moe).
#   usage: bash tools/sanitize.sh [CASE...]           (default: every case of `sanitize_cases.py --list`)
#   env:   SANITIZE_TOOLS  tools in order (default "memcheck synccheck racecheck initcheck")
#          SANITIZE_BUDGET seconds for all sanitizer runs; runs not started by then are counted as skipped
#          SANITIZE_CASE_LIMIT seconds per run (default 240); SANITIZE_JOBS runs at once (default 4)
#          SANITIZE_WARM=0 skips the warm-up run
# Exit status: 0 when every run finished with 0 errors, 1 otherwise (errors, failures, timeouts or skips).
set -uo pipefail
OUT=${OUT:-/tmp/out}
here=$(cd "$(dirname "$0")" && pwd)
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
if [[ -z "$cs" ]]; then
  echo "sanitize: compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
  exit 1
fi
logs=$OUT/sanitize
mkdir -p "$logs"
tools=${SANITIZE_TOOLS:-memcheck synccheck racecheck initcheck}
budget=${SANITIZE_BUDGET:-1800}
limit=${SANITIZE_CASE_LIMIT:-240}
parallel=${SANITIZE_JOBS:-4}
if (($#)); then cases=("$@"); else mapfile -t cases < <(python3 "$here/sanitize_cases.py" --list); fi

# Flags: only those this compute-sanitizer's --help lists (names changed across releases); what was used is logged.
"$cs" --version >"$logs/version.txt" 2>&1
"$cs" --help >"$logs/help.txt" 2>&1
has() { grep -q -- "$1" "$logs/help.txt"; }
common=(--error-exitcode 86 --print-limit 50)
has --target-processes && common+=(--target-processes all)  # torch/Triton may start helper processes
declare -A extra
# memcheck: padding after each allocation, so a read just past a tensor's end is out of bounds (the cases turn
# torch's caching allocator off for the same reason); leaks are torch's business, not checked.
extra[memcheck]=""
has --padding && extra[memcheck]+=" --padding 512"
# racecheck: shared-memory hazards, reported at warning level too; the TMA / cp.async.bulk copies and the
# mbarrier waits that order them are tracked where this release can (without that, every TMA-fed tile would
# look like a race or be invisible to the tool).
extra[racecheck]=""
has --racecheck-report && extra[racecheck]+=" --racecheck-report all"
has --racecheck-detect-level && extra[racecheck]+=" --racecheck-detect-level warn"
has --racecheck-memcpy-async && extra[racecheck]+=" --racecheck-memcpy-async yes"
has --racecheck-indirect-barrier-dependency && extra[racecheck]+=" --racecheck-indirect-barrier-dependency yes"
# synccheck: barrier misuse (divergent bar.sync, named barriers with wrong counts, mbarrier misuse it knows).
extra[synccheck]=""
has --missing-barrier-init-is-fatal && extra[synccheck]+=" --missing-barrier-init-is-fatal yes"
# initcheck: reads of global memory no one wrote. Unused-allocation tracking stays off (torch over-allocates).
extra[initcheck]=""
{
  echo "compute-sanitizer: $cs"
  for t in $tools; do echo "$t: ${common[*]}${extra[$t]}"; done
} >"$logs/flags.txt"

if [[ "${SANITIZE_WARM:-1}" != 0 ]]; then
  printf '%s\n' "${cases[@]}" | xargs -P "$parallel" -n 1 python3 "$here/sanitize_cases.py" >"$logs/warm.log" 2>&1 ||
    echo "sanitize: the warm-up run failed (see $logs/warm.log); the sanitizer runs below will show where"
fi

start=$SECONDS
run_one() {  # run_one TOOL CASE: one sanitizer process; writes TOOL-CASE.log and TOOL-CASE.rc
  local tool=$1 name=$2 log="$logs/$1-$2.log"
  if ((SECONDS - start >= budget)); then echo skipped >"$logs/$tool-$name.rc"; return; fi
  # shellcheck disable=SC2086  # the extra flags are words
  timeout "$limit" "$cs" --tool "$tool" "${common[@]}" ${extra[$tool]} \
    python3 "$here/sanitize_cases.py" "$name" >"$log" 2>&1
  echo $? >"$logs/$tool-$name.rc"
}

for tool in $tools; do
  for name in "${cases[@]}"; do
    while (($(jobs -rp | wc -l) >= parallel)); do wait -n; done
    run_one "$tool" "$name" &
  done
done
wait

status=0
echo "sanitize summary ($(tr -d '\n' <"$logs/version.txt" | grep -o 'Version [^ ]*' | head -1); flags in $logs/flags.txt)"
for tool in $tools; do
  run=0 clean=0 errors=0 failed=() timed=() skipped=0 dirty=()
  for name in "${cases[@]}"; do
    rc=$(cat "$logs/$tool-$name.rc" 2>/dev/null || echo skipped)
    [[ "$rc" == skipped ]] && { skipped=$((skipped + 1)); continue; }
    run=$((run + 1))
    n=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$logs/$tool-$name.log" | tail -1 | grep -Eo '[0-9]+$')
    errors=$((errors + ${n:-0}))
    if [[ "$rc" == 124 ]]; then timed+=("$name")
    elif [[ "$rc" == 86 || ${n:-0} -gt 0 ]]; then dirty+=("$name")
    elif [[ "$rc" != 0 ]] || ! grep -q "^ok $name$" "$logs/$tool-$name.log"; then failed+=("$name")
    else clean=$((clean + 1)); fi
  done
  printf '%-9s cases run %2d/%d, errors %d, clean %d%s%s%s%s\n' "$tool" "$run" "${#cases[@]}" "$errors" "$clean" \
    "${dirty[*]:+; with errors: ${dirty[*]}}" "${failed[*]:+; case failed: ${failed[*]}}" \
    "${timed[*]:+; timed out: ${timed[*]}}" "$( ((skipped)) && echo "; skipped (budget): $skipped")"
  ((errors || ${#dirty[@]} || ${#failed[@]} || ${#timed[@]} || skipped)) && status=1
done
exit $status
