#!/usr/bin/env bash
# On the GPU machine (Ubuntu 24.04, CUDA 13, Python torch 2.11, no network, no gRPC): builds the
# runtime, CLI, engine and kernels against Python's CUDA LibTorch, runs the tests (fixture parity
# on CUDA included) and the generation benchmark against transformers. Build outputs stay in
# .gpu/build so later runs are incremental. Logs go to $OUT (or .gpu/out).
#   Needs .gpu/debs/*.deb from Debian 12 (apt-get download libabsl-dev libabsl20220623
#   nlohmann-json3-dev libgtest-dev libgmock-dev libre2-dev libre2-9 libsentencepiece-dev
#   libsentencepiece0), carried with the tree. (re2 + sentencepiece: runtime/tokenizer.)
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out" .gpu/prefix
for deb in .gpu/debs/*.deb; do dpkg -x "$deb" .gpu/prefix; done
export LD_LIBRARY_PATH="$repo_root/.gpu/prefix/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
torch_dir="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

cmake -S . -B .gpu/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLMSERVE_WITH_GRPC=OFF \
  -DGLMSERVE_LIBTORCH_DIR="$torch_dir" -DCMAKE_PREFIX_PATH="$repo_root/.gpu/prefix/usr" \
  >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
cmake --build .gpu/build -j 16 --target runtime_test engine_test engine_model_test kernels_test glmserve \
  decode_bench \
  >"$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }

status=0
run() { echo "== $*"; "$@" || status=1; }
# Which parts run (each 0/1): tests, the GLM-4-9B table, transformers' side of it, a profile.
tests="${GLMSERVE_GPU_TESTS:-1}" table="${GLMSERVE_GPU_TABLE:-1}" hf="${GLMSERVE_GPU_HF:-1}"
profile="${GLMSERVE_GPU_PROFILE:-0}"
if [ "$tests" = 1 ]; then
  run timeout 300 .gpu/build/tests/kernels_test >"$out/kernels_test.log" 2>&1; tail -3 "$out/kernels_test.log"
  grep -E "FAILED|Failure" -A3 "$out/kernels_test.log" | head -40
  run timeout 120 .gpu/build/tests/engine/engine_test >"$out/engine_test.log" 2>&1; tail -1 "$out/engine_test.log"
  GLMSERVE_TEST_DEVICE=cuda run timeout 300 .gpu/build/tests/runtime/runtime_test --gtest_filter='*Parity*' \
    >"$out/parity_cuda.log" 2>&1
  tail -3 "$out/parity_cuda.log"
  # The engine on the real model on CUDA: batch invariance, OOM storms (injected and real CUDA
  # OOM), preemption (CUDA graphs, the default); then graphs checked step by step against eager.
  GLMSERVE_TEST_DEVICE=cuda run timeout 400 .gpu/build/tests/engine_model/engine_model_test \
    >"$out/engine_model_cuda.log" 2>&1
  tail -3 "$out/engine_model_cuda.log"; grep -E "OOM storm|FAILED" "$out/engine_model_cuda.log" | head -20
  if [ "${GLMSERVE_GPU_VERIFY:-1}" = 1 ]; then
    GLMSERVE_TEST_DEVICE=cuda GLMSERVE_CUDA_GRAPHS_VERIFY=1 timeout 400 .gpu/build/tests/engine_model/engine_model_test \
      --gtest_filter='*Invariance*:*Parity*' >"$out/engine_model_cuda_verify.log" 2>&1
    echo "graph-vs-eager steps with differing argmax: $(grep -c 'differs in [1-9]' "$out/engine_model_cuda_verify.log")"
  fi
  run .gpu/build/glmserve generate --model models/glm4-tiny --device cuda --dtype bfloat16 --input-ids 1,2,3 --max-new-tokens 8
fi

# The GPU issue's table: GLM-4-9B config, random bf16 weights, 128 prompt / 128 new tokens.
default_gbps=3350  # H100 SXM HBM3
grep -q H200 "$out/gpu.txt" && default_gbps=4800
gbps="${GLMSERVE_HBM_GBPS:-$default_gbps}"
bench() { .gpu/build/bench/decode_bench --model bench/configs/glm-4-9b-chat-hf --random-weights --device cuda \
  --dtype bfloat16 --hbm-gbps "$gbps" "$@"; }
if [ "$table" = 1 ]; then
  echo "== glmserve decode_bench GLM-4-9B bf16 (HBM ${gbps} GB/s)"
  bench --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" | tee "$out/glmserve_9b.md"
fi
if [ "$profile" = 1 ]; then
  echo "== profile: 8 decode steps at batch 1 and 64 (Kineto), per kernel family"
  mkdir -p .gpu/trace
  bench --batch-sizes 1,64 --profile-trace .gpu/trace/decode >"$out/profile_run.md" 2>"$out/profile_run.log"
  cat "$out/profile_run.md"
  for b in 1 64; do python3 bench/summarize_trace.py .gpu/trace/decode-b$b.json --steps 8 | tee "$out/profile_b$b.md"; done
  echo "== the same steps with the fused kernels off (ATen ops, one-pass attention)"
  GLMSERVE_CUDA_DISABLE=norm,rotary,swiglu,gemv,split_attention bench --batch-sizes 1,64 \
    --profile-trace .gpu/trace/aten >"$out/profile_aten_run.md" 2>>"$out/profile_run.log"
  cat "$out/profile_aten_run.md"
  for b in 1 64; do python3 bench/summarize_trace.py .gpu/trace/aten-b$b.json --steps 8 --top 8 | tee "$out/profile_aten_b$b.md"; done
fi
if [ "$hf" = 1 ]; then
  echo "== transformers generate GLM-4-9B bf16"
  python3 bench/hf_decode_bench.py --config bench/configs/glm-4-9b-chat-hf --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" \
    2>/dev/null | tee "$out/hf_9b.md"
fi
exit $status
