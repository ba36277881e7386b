#!/usr/bin/env bash
# On the GPU machine, after scripts/gpu-build.sh built .gpu/build: the server at a few load levels
# under several sets of serve flags, one server each, in the order given (repeat a set to see the
# drift between the first and the last), so settings compare within one call and one card.
#   bash scripts/gpu-serve-ab.sh "" "--mixed-step-rows 128 --max-prefill-tokens-with-decodes 64" ""
# Each set runs scripts/gpu-serve-bench.sh with GLMSERVE_SERVE_FLAGS=<set>, no decode_bench, no
# profile, no HTTP level, no OOM storm; GLMSERVE_SERVE_LEVELS (32,64), GLMSERVE_SERVE_MIXES
# ("eos_ignored open_autoglm"), GLMSERVE_SERVE_DURATION (8s), GLMSERVE_SERVE_WARMUP (1s) and
# GLMSERVE_SERVE_RATES (open loop, none) pass through. Prints serve_table.md's row per set, mix
# and level, and serve_open.md's per rate (tok/s over the level, steady tok/s,
# TTFT and ITL p50 / p99, errors), and serve_phases.md's line (ms a step by phase, the GPU's busy ms
# a step and idle share); the device tool returns few files, so stdout carries everything.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1
out="${OUT:-$repo_root/.gpu/out}"
[ "$#" -gt 0 ] || { echo "usage: gpu-serve-ab.sh FLAGS [FLAGS ...] (\"\" = the defaults)"; exit 2; }
status=0
i=0
for flags in "$@"; do
  i=$((i + 1))
  dir="$out/ab$i"
  mkdir -p "$dir"
  OUT="$dir" GLMSERVE_SERVE_FLAGS="$flags" GLMSERVE_SERVE_LEVELS="${GLMSERVE_SERVE_LEVELS:-32,64}" \
    GLMSERVE_SERVE_MIXES="${GLMSERVE_SERVE_MIXES-eos_ignored open_autoglm}" \
    GLMSERVE_SERVE_DURATION="${GLMSERVE_SERVE_DURATION:-8s}" GLMSERVE_SERVE_DECODE_BENCH=0 GLMSERVE_SERVE_PROFILE=0 \
    GLMSERVE_SERVE_HTTP=0 GLMSERVE_SERVE_OOM=0 bash scripts/gpu-serve-bench.sh >"$dir/ab.log" 2>&1 || status=1
  # gpu-serve-bench.sh's own table rows (ratios are "-": no decode_bench here), tagged with the set.
  cat "$dir/serve_table.md" "$dir/serve_open.md" 2>/dev/null | grep -E '^\| (gRPC|HTTP)' | sed "s/^/ab$i [${flags:-defaults}] /"
  # The whole run's step phases and the GPU's busy / idle split (glmload_report.py phases).
  tail -1 "$dir/serve_phases.md" 2>/dev/null | sed "s/^/ab$i [${flags:-defaults}] phases /"
  ls "$dir"/serve_*.json >/dev/null 2>&1 || { echo "ab$i [$flags]: no result"; tail -5 "$dir/ab.log"; }
done
exit $status
