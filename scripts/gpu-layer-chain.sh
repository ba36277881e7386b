#!/usr/bin/env bash
# On the GPU machine, one device call: the one-row layer chain (kernels/layer_chain.cu,
# GLMSERVE_CUDA_LAYER_CHAIN=1) checked and measured. Builds (scripts/gpu-build.sh, every part
# off), then kernels_test (GLMSERVE_CHAIN_KERNEL_TESTS, a gtest filter: the chain against the
# kernels it replaces, bit for bit), layer_chain_bench (the chain alone, its timeline),
# decode_bench at batch 1 under each of GLMSERVE_CHAIN_VARIANTS (0 1 tagged spare tagged_spare;
# also relaxed, fenced, prefetch, coresident) for GLMSERVE_CHAIN_ROUNDS rounds, Kineto profiles
# of GLMSERVE_CHAIN_PROFILES (1 tagged_spare; bench/summarize_trace.py), `glmserve serve` at 1
# stream under each of GLMSERVE_CHAIN_SERVE_VARIANTS (none by default), and last fixture parity
# on CUDA and the engine's parity / invariance tests under GLMSERVE_CHAIN_MODEL_VARIANT
# (GLMSERVE_CHAIN_MODEL_TESTS=0 skips them). Every result is printed (the device tool returns
# stdout's tail and $OUT). A short call: GLMSERVE_GPU_TARGETS="kernels_test decode_bench
# layer_chain_bench" GLMSERVE_CHAIN_KERNEL_TESTS='*LayerChain*' GLMSERVE_CHAIN_MODEL_TESTS=0
# GLMSERVE_CHAIN_ROUNDS=1.
set -uo pipefail
# shellcheck source=scripts/gpu-call-prologue.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu-call-prologue.sh"

targets="${GLMSERVE_GPU_TARGETS:-kernels_test runtime_test engine_model_test decode_bench layer_chain_bench}"
[ -n "${GLMSERVE_CHAIN_SERVE_VARIANTS:-}" ] && targets="$targets glmserve glmload"
GLMSERVE_GPU_TARGETS="$targets" GLMSERVE_GPU_TESTS=0 GLMSERVE_GPU_TABLE=0 GLMSERVE_GPU_HF=0 GLMSERVE_GPU_SERVE=0 \
  GLMSERVE_GPU_VISION=0 timeout 300 bash scripts/gpu-build.sh >"$out/gpubuild.log" 2>&1
rc=$?
echo "gpu-build: rc=$rc at $(elapsed) s"
[ "$rc" = 0 ] || { tail -30 "$out/gpubuild.log"; exit 1; }

# GLMSERVE_CHAIN_KERNEL_TESTS: a gtest filter (default all; '*LayerChain*' for the chain's alone).
timeout 120 .gpu/build/tests/kernels_test --gtest_filter="${GLMSERVE_CHAIN_KERNEL_TESTS:-*}" >"$out/kernels_test.log" 2>&1
summary kernels_test $? "$out/kernels_test.log"

echo "== layer_chain_bench (the chain alone, 40 layers, no attention between them)"
# GLMSERVE_CHAIN_BENCH_ARGS: its flags (the ring sizes it times).
# shellcheck disable=SC2086  # flags, one a word
timeout 150 .gpu/build/bench/layer_chain_bench ${GLMSERVE_CHAIN_BENCH_ARGS:---ring-slots 0,12} |
  tee "$out/layer_chain_bench.md"

gbps=3350
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && gbps=4800
bench() { .gpu/build/bench/decode_bench --model bench/configs/glm-4-9b-chat-hf --random-weights --device cuda \
  --dtype bfloat16 --hbm-gbps "$gbps" "$@"; }
# The switches of each variant: 0 (chain off), 1 (on), prefetch (on, with the next o rows to L2).
variant() {
  case "$1" in
    0) echo GLMSERVE_CUDA_LAYER_CHAIN=0 ;;
    1) echo GLMSERVE_CUDA_LAYER_CHAIN=1 ;;
    prefetch) echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_PREFETCH=1 ;;
    # The meetings' other forms (kernels::ChainMeeting; the default's acquire polls are 1's).
    relaxed) echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_MEETING=0 ;;
    fenced) echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_MEETING=2 ;;
    tagged) echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_MEETING=3 ;;
    # The chain's grid leaves GLMSERVE_CHAIN_SPARE_SMS (2) SMs to the attention's blocks, so that
    # it can start beside them.
    spare) echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_SPARE_SMS="${GLMSERVE_CHAIN_SPARE_SMS:-2}" ;;
    tagged_spare)
      echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_MEETING=3 \
        GLMSERVE_CUDA_CHAIN_SPARE_SMS="${GLMSERVE_CHAIN_SPARE_SMS:-2}"
      ;;
    # A 12-slot ring and 4-warp attention blocks: an SM holds a chain's block and an attention
    # block at once (registers: 9 warps x 128 + 4 x 224 = 64 K), so the next chain streams
    # while the attention runs.
    coresident)
      echo GLMSERVE_CUDA_LAYER_CHAIN=1 GLMSERVE_CUDA_CHAIN_PREFETCH=1 GLMSERVE_CUDA_CHAIN_RING_SLOTS=12 \
        GLMSERVE_CUDA_ATTENTION_WARPS=4
      ;;
  esac
}
bench_as() {  # variant, then decode_bench's flags
  local name="$1"
  shift
  # shellcheck disable=SC2046  # one assignment a word
  (export $(variant "$name") && bench "$@")
}
echo "== decode_bench GLM-4-9B bf16, the variants in turn"
for round in $(seq "${GLMSERVE_CHAIN_ROUNDS:-2}"); do
  for chain in ${GLMSERVE_CHAIN_VARIANTS:-0 1 tagged spare tagged_spare}; do
    bench_as "$chain" --batch-sizes "${GLMSERVE_CHAIN_BATCHES:-1}" 2>>"$out/chain_decode_stderr.log" | tail -n +3 |
      sed "s/^/round $round chain $chain /" | tee -a "$out/chain_decode.md"
  done
done
# What the chain said on stderr (a refused launch form, a stuck wait), once each.
grep -h "layer chain" "$out/chain_decode_stderr.log" 2>/dev/null | sort | uniq -c | head -10
if [ "${GLMSERVE_CHAIN_PROFILE:-1}" = 1 ]; then
  mkdir -p .gpu/trace
  for chain in ${GLMSERVE_CHAIN_PROFILES:-1 tagged_spare}; do
    bench_as "$chain" --batch-sizes 1 --profile-trace ".gpu/trace/chain$chain" >/dev/null 2>&1
    echo "== profile, batch 1, chain $chain"
    python3 bench/summarize_trace.py ".gpu/trace/chain$chain-b1.json" --steps 8 --top 5 | tee "$out/chain_profile_$chain.md"
  done
fi
# The product at batch 1 (GLMSERVE_CHAIN_SERVE_VARIANTS, e.g. "0 tagged_spare"; none by
# default): `glmserve serve` under each variant driven by glmload at 1 stream, EOS ignored
# (scripts/gpu-serve-bench.sh; the build then adds glmserve and glmload).
for chain in ${GLMSERVE_CHAIN_SERVE_VARIANTS:-}; do
  (
    # shellcheck disable=SC2046  # one assignment a word
    export $(variant "$chain")
    GLMSERVE_SERVE_LEVELS=1 GLMSERVE_SERVE_MIXES=eos_ignored GLMSERVE_SERVE_DURATION="${GLMSERVE_CHAIN_SERVE_DURATION:-8s}" \
      GLMSERVE_SERVE_PROFILE=0 GLMSERVE_SERVE_OOM=0 GLMSERVE_SERVE_HTTP=0 GLMSERVE_SERVE_DECODE_BENCH=0 \
      OUT="$out/serve_$chain" timeout 240 bash scripts/gpu-serve-bench.sh >"$out/serve_$chain.log" 2>&1
    echo "== glmserve serve, 1 stream, eos ignored, chain $chain: rc=$? at $(elapsed) s"
    grep -E "^\|" "$out/serve_$chain/serve_table.md" 2>/dev/null | sed -n '1p;$p'
  )
done
# The engine's tests with the chain on, last (the measurements come back even where they run out
# of time), as variant GLMSERVE_CHAIN_MODEL_VARIANT (tagged_spare) sets it.
model_variant="${GLMSERVE_CHAIN_MODEL_VARIANT:-tagged_spare}"
if [ "${GLMSERVE_CHAIN_MODEL_TESTS:-1}" = 1 ]; then  # 0: the kernel tests only
  # shellcheck disable=SC2046  # one assignment a word
  export $(variant "$model_variant")
  GLMSERVE_TEST_DEVICE=cuda timeout 120 .gpu/build/tests/runtime/runtime_test \
    --gtest_filter='MixedStep*:*Parity*' >"$out/runtime_test_chain.log" 2>&1
  summary "runtime_test (CUDA parity, chain $model_variant)" $? "$out/runtime_test_chain.log"
  GLMSERVE_TEST_DEVICE=cuda timeout 200 .gpu/build/tests/engine_model/engine_model_test \
    --gtest_filter='*Parity*:*Invariance*:*Identical*' >"$out/engine_model_chain.log" 2>&1
  summary "engine_model_test (CUDA, chain $model_variant)" $? "$out/engine_model_chain.log"
  GLMSERVE_CUDA_GRAPHS_VERIFY=1 GLMSERVE_TEST_DEVICE=cuda timeout 200 \
    .gpu/build/tests/engine_model/engine_model_test --gtest_filter='*Invariance*:*Parity*' \
    >"$out/engine_model_chain_verify.log" 2>&1
  echo "graph-vs-eager steps with differing argmax (chain $model_variant): $(grep -c 'differs in [1-9]' "$out/engine_model_chain_verify.log")"
fi
echo "done at $(elapsed) s, status $status"
exit "$status"
