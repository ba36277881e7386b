# Sourced (never run) by the scripts that make one device call (gpu-proof.sh, gpu-layer-chain.sh):
# goes to the checkout's root and sets what they share. out: where results go ($OUT, which the
# device tool returns, else .gpu/out); elapsed: seconds since the call began; status: 0 until a
# summary sees a non-zero exit code.
# shellcheck shell=bash disable=SC2034  # out, status: read by the scripts that source this
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start))"; }
status=0
# summary LABEL RC LOG [PATTERN]: RC and the time, the gtest verdict lines of LOG, then its lines
# matching PATTERN (failures and their next lines by default), cut short: the device returns only
# the last 12,000 characters of stdout.
summary() {
  echo "$1: rc=$2 at $(elapsed) s"
  grep -E "^\[  (PASSED|FAILED) " "$3" | head -5
  grep -E "${4:-FAILED|Failure}" -A6 "$3" | cut -c1-220 | head -30
  [ "$2" = 0 ] || status=1
}
