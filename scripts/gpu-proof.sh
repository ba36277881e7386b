#!/usr/bin/env bash
# On the GPU machine, in one device call of at most 10 minutes: issue 17's end-to-end table with
# its proofs beside it. Builds (scripts/gpu-build.sh with every part off), then the tests
# (kernels_test, runtime_test's mixed-step and CUDA parity tests, the live check against
# transformers in bf16, engine_model_test on CUDA with its real CUDA OOM storm), then
# scripts/gpu-serve-bench.sh (decode_bench, the three mixes at 1..256 streams, HTTP, the OOM storm
# through the server) in the time left. The device tool brings back only a few files, so every
# result is also printed to stdout. GLMSERVE_PROOF_DURATION (6s) sets the serve bench's levels;
# GLMSERVE_PROOF_DEADLINE_S (585) the second, counted from the start, by which it must end.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root" || exit 1
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
start=$(date +%s)
elapsed() { echo "$(($(date +%s) - start))"; }
deadline="${GLMSERVE_PROOF_DEADLINE_S:-585}"
status=0
summary() {  # label rc log: the gtest verdict lines and failures
  echo "$1: rc=$2 at $(elapsed) s"
  grep -E "^\[  (PASSED|FAILED) " "$3" | head -5
  grep -E "FAILED|OOM storm" "$3" | head -8
  [ "$2" = 0 ] || status=1
}

GLMSERVE_GPU_TESTS=0 GLMSERVE_GPU_TABLE=0 GLMSERVE_GPU_HF=0 GLMSERVE_GPU_SERVE=0 GLMSERVE_GPU_VISION=0 \
  timeout 200 bash scripts/gpu-build.sh >"$out/gpubuild.log" 2>&1
rc=$?
echo "gpu-build: rc=$rc at $(elapsed) s"
[ "$rc" = 0 ] || { tail -20 "$out/gpubuild.log"; exit 1; }

timeout 90 .gpu/build/tests/kernels_test >"$out/kernels_test.log" 2>&1
summary kernels_test $? "$out/kernels_test.log"
GLMSERVE_TEST_DEVICE=cuda timeout 90 .gpu/build/tests/runtime/runtime_test --gtest_filter='MixedStep*:*Parity*' \
  >"$out/runtime_test.log" 2>&1
summary "runtime_test (mixed steps, CUDA parity)" $? "$out/runtime_test.log"
timeout 150 python3 tests/reference/live_check.py .gpu/build/glmserve tests/fixtures/models --device cuda \
  --dtype bfloat16 >"$out/live_check.log" 2>&1
rc=$?
echo "live_check bf16 against transformers: rc=$rc at $(elapsed) s"
tail -2 "$out/live_check.log"
[ "$rc" = 0 ] || status=1
GLMSERVE_TEST_DEVICE=cuda timeout 150 .gpu/build/tests/engine_model/engine_model_test >"$out/engine_model.log" 2>&1
summary "engine_model_test on CUDA" $? "$out/engine_model.log"

left=$((deadline - $(elapsed)))
echo "serve bench with $left s left"
GLMSERVE_SERVE_DURATION="${GLMSERVE_PROOF_DURATION:-6s}" GLMSERVE_SERVE_PROFILE=0 timeout "$left" \
  bash scripts/gpu-serve-bench.sh >"$out/serve_bench.log" 2>&1
rc=$?
echo "gpu-serve-bench: rc=$rc at $(elapsed) s"
[ "$rc" = 0 ] || status=1
cat "$out/serve_decode_bench.md" "$out/serve_table.md" "$out/serve_oom.md" 2>/dev/null
grep -E "^glmserve_(prefix|oom|requests)" "$out/serve_bench.log" | head -20
echo "OOM lines in the storm's server log: $(grep -c -i 'out of memory' "$out/serve_oom.log" 2>/dev/null)"
rm -f "$out"/*.json "$out"/serve_*.log
exit $status
