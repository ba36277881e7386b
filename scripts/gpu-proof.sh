#!/usr/bin/env bash
# On the GPU machine, in one device call of at most 10 minutes: issue 17's end-to-end table with
# its proofs beside it. Builds (scripts/gpu-build.sh with every part off), then the tests
# (kernels_test, runtime_test's mixed-step and CUDA parity tests, the live check against
# transformers in bf16, engine_model_test on CUDA with its real CUDA OOM storm), then
# scripts/gpu-serve-bench.sh (decode_bench, the three mixes at 1..256 streams, HTTP, the OOM storm
# through the server, open-loop levels at GLMSERVE_PROOF_RATES requests/s: "36 66", about the
# closed loop's 32 and 64 streams; "" for none) in the time left, then scripts/gpu-vision-bench.sh
# (the phone agent) when at least 150 s are left. The device tool brings back only a few files, so
# every result is also printed to stdout. GLMSERVE_PROOF_DURATION (6s) sets the serve bench's levels;
# GLMSERVE_PROOF_DEADLINE_S (585) the second, counted from the start, by which it must end.
set -uo pipefail
# out: where results go ($OUT, which the device tool returns, else .gpu/out); status: 0 until a
# summary sees a non-zero exit code.
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
deadline="${GLMSERVE_PROOF_DEADLINE_S:-585}"

GLMSERVE_GPU_TESTS=0 GLMSERVE_GPU_TABLE=0 GLMSERVE_GPU_HF=0 GLMSERVE_GPU_SERVE=0 GLMSERVE_GPU_VISION=0 \
  timeout 200 bash scripts/gpu-build.sh >"$out/gpubuild.log" 2>&1
rc=$?
echo "gpu-build: rc=$rc at $(elapsed) s"
[ "$rc" = 0 ] || { tail -20 "$out/gpubuild.log"; exit 1; }
# The CUTLASS-against-cuBLAS GEMM probe (scripts/gpu-gemm-probe.sh) compiles on the CPU while the
# tests run and is timed after the serve bench, where .gpu/wheels holds the CUTLASS wheel.
probe_pid=""
if ls .gpu/wheels/nvidia_cutlass-*.whl >/dev/null 2>&1; then
  GLMSERVE_GEMM_PROBE_RUN=0 bash scripts/gpu-gemm-probe.sh >"$out/gemm_probe_compile.log" 2>&1 &
  probe_pid=$!
fi

timeout 90 .gpu/build/tests/kernels_test >"$out/kernels_test.log" 2>&1
summary kernels_test $? "$out/kernels_test.log" "FAILED|OOM storm"
GLMSERVE_TEST_DEVICE=cuda timeout 90 .gpu/build/tests/runtime/runtime_test --gtest_filter='MixedStep*:*Parity*' \
  >"$out/runtime_test.log" 2>&1
summary "runtime_test (mixed steps, CUDA parity)" $? "$out/runtime_test.log" "FAILED|OOM storm"
timeout 150 python3 tests/reference/live_check.py .gpu/build/glmserve tests/fixtures/models --device cuda \
  --dtype bfloat16 >"$out/live_check.log" 2>&1
rc=$?
echo "live_check bf16 against transformers: rc=$rc at $(elapsed) s"
tail -2 "$out/live_check.log"
[ "$rc" = 0 ] || status=1
GLMSERVE_TEST_DEVICE=cuda timeout 150 .gpu/build/tests/engine_model/engine_model_test >"$out/engine_model.log" 2>&1
summary "engine_model_test on CUDA" $? "$out/engine_model.log" "FAILED|OOM storm"

left=$((deadline - $(elapsed)))
echo "serve bench with $left s left"
# SM clock, power and throttle reasons every 0.5 s while it runs: machines of one kind differ by
# 5-10% in these tables, and a card at its power cap runs compute-bound steps at lower clocks.
smi_pid=""
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv,noheader,nounits \
    -lms 500 >"$out/clocks.csv" 2>/dev/null &
  smi_pid=$!
fi
GLMSERVE_SERVE_DURATION="${GLMSERVE_PROOF_DURATION:-6s}" GLMSERVE_SERVE_PROFILE=0 \
  GLMSERVE_SERVE_RATES="${GLMSERVE_PROOF_RATES-36 66}" timeout "$left" \
  bash scripts/gpu-serve-bench.sh >"$out/serve_bench.log" 2>&1
rc=$?
[ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null
echo "gpu-serve-bench: rc=$rc at $(elapsed) s"
if [ -s "$out/clocks.csv" ]; then
  python3 - "$out/clocks.csv" <<'EOF2'
import statistics, sys
busy = []  # (SM MHz, W, power-capped) while drawing over 250 W
for line in open(sys.argv[1]):
    fields = [f.strip() for f in line.split(",")]
    try:
        mhz, watts, reasons = float(fields[0]), float(fields[1]), int(fields[2], 16)
    except (ValueError, IndexError):
        continue
    if watts > 250:
        busy.append((mhz, watts, reasons & 0x4 != 0))  # 0x4: software power cap
if busy:
    print(f"GPU while busy ({len(busy)} samples over 250 W): SM clock median {statistics.median(b[0] for b in busy):.0f} MHz, "
          f"min {min(b[0] for b in busy):.0f}; power median {statistics.median(b[1] for b in busy):.0f} W; "
          f"power-capped in {sum(b[2] for b in busy)} samples")
EOF2
fi
[ "$rc" = 0 ] || status=1
cat "$out/serve_decode_bench.md" "$out/serve_table.md" "$out/serve_open.md" "$out/serve_oom.md" 2>/dev/null
grep -E "^glmserve_(prefix|oom|requests)" "$out/serve_bench.log" | head -20
echo "OOM lines in the storm's server log: $(grep -c -i 'out of memory' "$out/serve_oom.log" 2>/dev/null)"
grep -iE "memory capped|out of memory|graphs off" "$out/serve_oom.log" 2>/dev/null | cut -c1-300 | head -4

if [ -n "$probe_pid" ]; then
  wait "$probe_pid"  # compiled (or failed: the log says)
  left=$((deadline - $(elapsed)))
  if [ "$left" -ge 60 ]; then
    timeout $((left - 5)) bash scripts/gpu-gemm-probe.sh >"$out/gemm_probe.log" 2>&1
    echo "gemm probe: rc=$? at $(elapsed) s"
    tail -9 "$out/gemm_probe.log"
  else
    echo "gemm probe: skipped, $left s left"
  fi
fi

# The first customer's workload (Open-AutoGLM's phone agent over the OpenAI HTTP API, one
# screenshot a step) in the time left, when there is enough for its server and 16 agents.
left=$((deadline - $(elapsed)))
if [ "$left" -ge 150 ]; then
  timeout $((left - 5)) bash scripts/gpu-vision-bench.sh >"$out/vision.log" 2>&1
  rc=$?
  echo "gpu-vision-bench: rc=$rc at $(elapsed) s"
  tail -25 "$out/vision.log"
  [ "$rc" = 0 ] || status=1
else
  echo "gpu-vision-bench: skipped, $left s left"
fi
rm -f "$out"/*.json "$out"/serve_*.log "$out"/vision_*.txt
exit $status
