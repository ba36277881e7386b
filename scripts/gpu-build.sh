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
cmake --build .gpu/build -j 16 --target runtime_test cli_test engine_test engine_model_test kernels_test glmserve \
  generate_bench decode_bench \
  >"$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }

status=0
run() { echo "== $*"; "$@" || status=1; }
run .gpu/build/tests/kernels_test 2>&1 | tail -4
run .gpu/build/tests/engine/engine_test 2>&1 | tail -2
run .gpu/build/tests/runtime/runtime_test 2>&1 | tail -2
GLMSERVE_TEST_DEVICE=cuda run .gpu/build/tests/runtime/runtime_test --gtest_filter='*Parity*' >"$out/parity_cuda.log" 2>&1
tail -3 "$out/parity_cuda.log"
# The engine on the real model on CUDA: batch invariance, OOM storm, preemption (CUDA graphs,
# the default; then eager, and graphs checked step by step against eager).
GLMSERVE_TEST_DEVICE=cuda run .gpu/build/tests/engine_model/engine_model_test >"$out/engine_model_cuda.log" 2>&1
tail -3 "$out/engine_model_cuda.log"
GLMSERVE_TEST_DEVICE=cuda GLMSERVE_CUDA_GRAPHS=0 run .gpu/build/tests/engine_model/engine_model_test \
  >"$out/engine_model_cuda_eager.log" 2>&1; tail -1 "$out/engine_model_cuda_eager.log"
GLMSERVE_TEST_DEVICE=cuda GLMSERVE_CUDA_GRAPHS_VERIFY=1 .gpu/build/tests/engine_model/engine_model_test \
  >"$out/engine_model_cuda_verify.log" 2>&1
echo "graph-vs-eager steps with differing argmax: $(grep -c 'differs in [1-9]' "$out/engine_model_cuda_verify.log")"
run .gpu/build/glmserve generate --model models/glm4-tiny --device cuda --dtype bfloat16 --input-ids 1,2,3 --max-new-tokens 8

# The GPU issue's table: GLM-4-9B config, random bf16 weights, 128 prompt / 128 new tokens.
if [ "${GLMSERVE_GPU_TABLE:-1}" = 1 ]; then
  gbps="${GLMSERVE_HBM_GBPS:-3350}"
  echo "== glmserve decode_bench GLM-4-9B bf16 (HBM ${gbps} GB/s)"
  .gpu/build/bench/decode_bench --model bench/configs/glm-4-9b-chat-hf --random-weights --device cuda \
    --dtype bfloat16 --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" --hbm-gbps "$gbps" | tee "$out/glmserve_9b.md"
  GLMSERVE_CUDA_GRAPHS=0 .gpu/build/bench/decode_bench --model bench/configs/glm-4-9b-chat-hf --random-weights \
    --device cuda --dtype bfloat16 --batch-sizes 1,64 --hbm-gbps "$gbps" | tee "$out/glmserve_9b_nographs.md"
  echo "== transformers generate GLM-4-9B bf16"
  python3 bench/hf_decode_bench.py --config bench/configs/glm-4-9b-chat-hf --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" \
    2>/dev/null | tee "$out/hf_9b.md"
fi

if [ "${GLMSERVE_GPU_BENCH:-0}" = 1 ]; then
  [ -f .gpu/benchmodel/config.json ] || python3 bench/make_bench_model.py .gpu/benchmodel --layers 4 >"$out/benchmodel.log" 2>&1
  for n in 128; do
    echo "== glmserve bf16 cuda, prompt 128, new $n"
    .gpu/build/bench/generate_bench --model .gpu/benchmodel --device cuda --dtype bfloat16 --new-tokens "$n" | tee -a "$out/bench.jsonl"
    echo "== transformers bf16 cuda, prompt 128, new $n"
    python3 bench/hf_generate_bench.py --model .gpu/benchmodel --device cuda --dtype bfloat16 --new-tokens "$n" 2>/dev/null | tee -a "$out/bench.jsonl"
  done
fi
exit $status
