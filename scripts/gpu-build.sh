#!/usr/bin/env bash
# On the GPU machine (Ubuntu 24.04, CUDA 13, Python torch 2.11, no network, no gRPC): builds the
# whole server (gRPC, HTTP, metrics), glmload, the health probe, the engine and kernels against
# Python's CUDA LibTorch, runs the tests (kernels against their CPU references, fixture parity on
# CUDA, the engine with injected and real CUDA OOM), the GLM-4-9B decode table against
# transformers, and the server end to end (scripts/gpu-serve-bench.sh) in the same call. Build
# outputs stay in .gpu/build so later runs on a warm machine are incremental. Logs go to $OUT (or
# .gpu/out).
# Parts (0/1): GLMSERVE_GPU_TESTS=1 (=kernels: kernel tests only) GLMSERVE_GPU_VERIFY=1 (graph
# replay vs eager, step by step) GLMSERVE_GPU_TABLE=1 GLMSERVE_GPU_COMPARE="" (the table again
# under each listed VAR=value) GLMSERVE_GPU_GEMM=0 (bench/gemm_bench: linear layers alone;
# GLMSERVE_GEMM_ROWS list) GLMSERVE_GPU_HF=1 GLMSERVE_GPU_PROFILE=0 (Kineto, per kernel family)
# GLMSERVE_GPU_EXTRA=0 (attention block size, sampled decode) GLMSERVE_GPU_SWEEP=0 (GEMV rows,
# host sampler) GLMSERVE_GPU_NCU=0 (Nsight Compute on the attention kernel) GLMSERVE_GPU_SERVE=1
# (glmserve serve + glmload table: scripts/gpu-serve-bench.sh, its own switches there)
# GLMSERVE_GPU_VISION=0 (the AutoGLM-Phone-9B agent benchmark: scripts/gpu-vision-bench.sh)
# GLMSERVE_GPU_OVERLAP=0 (--overlap-steps: engine tests on CUDA, decode_bench and the server with
# and without; GLMSERVE_GPU_OVERLAP_GAPS=1 profiles batch 1 both ways for summarize_trace.py --gaps)
# GLMSERVE_GPU_GEMM_TUNING=0 (cuBLASLt's algorithms timed at start against its heuristic's first).
# GLMSERVE_GPU_WHOLE_TILES=0 (the skinny GEMM's whole-tile form: tests, gemm_bench, decode_bench).
# GLMSERVE_GPU_FEW_ROWS=0 (one-row add+RMSNorm fused into the GEMVs against its own kernel; L2
# prefetch of the next weight; SwiGLU and rotary fused into the GEMVs: tests, decode_bench).
# GLMSERVE_GPU_CONFIGURE_ONLY=1 stops after unpacking the prefix and configuring (no GPU needed:
# how the prefix handling is checked on a CPU machine). Where one call is limited to 10 minutes,
# build first with every part 0 (GLMSERVE_GPU_TESTS=0 GLMSERVE_GPU_TABLE=0 GLMSERVE_GPU_HF=0
# GLMSERVE_GPU_SERVE=0), then run the parts in later calls on the warm machine (incremental).
#   Needs .gpu/debs/*.deb from Debian 12, carried with the tree (apt-get download libabsl-dev
#   libabsl20220623 nlohmann-json3-dev libgtest-dev libgmock-dev libre2-dev libre2-9
#   libsentencepiece-dev libsentencepiece0 libgrpc++-dev libgrpc-dev libgrpc29 libgrpc++1.51
#   libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 protobuf-compiler
#   protobuf-compiler-grpc libc-ares-dev libc-ares2 libssl-dev libssl3 prometheus-cpp-dev
#   libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libprometheus-cpp-push1.0 libcivetweb-dev
#   libcivetweb1 civetweb libcurl4-openssl-dev libcurl4 libcpp-httplib-dev libcpp-httplib0.11
#   libbrotli-dev libbrotli1 libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 zlib1g-dev zlib1g;
#   for runtime/vision, not yet fetched there: libpng-dev libpng16-16 libjpeg62-turbo-dev
#   libjpeg62-turbo. Without them CMake leaves glmserve_vision and tests/vision out with a warning).
#   They are unpacked (dpkg -x) into .gpu/prefix and made relocatable there: .pc files name the
#   prefix instead of /usr, absolute .so links point into the prefix, protoc and grpc_cpp_plugin
#   run through wrappers that find their libraries. Our binaries find the prefix's libraries by
#   RPATH (DT_RPATH, so the libraries' own dependencies resolve too); nothing exports
#   LD_LIBRARY_PATH, so the machine's curl, python and the rest keep their own libraries.
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/.gpu/out}"
prefix="$repo_root/.gpu/prefix"
libdir="$prefix/usr/lib/x86_64-linux-gnu"
mkdir -p "$out"

# The prefix: unpacked again only when the set of .debs changed (stable mtimes keep the build
# incremental).
debs_id="$(cd .gpu/debs && ls ./*.deb | sort | md5sum | cut -c1-32)"
if [ "$(cat "$prefix/.debs-id" 2>/dev/null)" != "$debs_id" ]; then
  rm -rf "$prefix"
  mkdir -p "$prefix"
  for deb in .gpu/debs/*.deb; do dpkg -x "$deb" "$prefix" || { echo "dpkg -x $deb failed"; exit 1; }; done
  # pkg-config: prefix=/usr, libdir=/usr/lib/..., includedir=/usr/include..., -I/usr/...
  # (gRPC's .pc also says ${exec_prefix}/lib for a library in lib/x86_64-linux-gnu).
  for pc in "$libdir"/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc; do
    [ -f "$pc" ] || continue
    sed -i -E -e "s#^([A-Za-z_]+=)/usr(/|\$)#\1$prefix/usr\2#" -e "s#(-I|-L)/usr/#\1$prefix/usr/#g" \
      -e 's#^libdir=\$\{exec_prefix\}/lib$#libdir=${exec_prefix}/lib/x86_64-linux-gnu#' "$pc"
  done
  # Absolute symlinks (libz.so -> /lib/x86_64-linux-gnu/libz.so.1.2.13): relative, into the prefix.
  while IFS= read -r link; do
    target="$(readlink "$link")"
    case "$target" in /*) ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$prefix$target")" "$link" ;; esac
  done < <(find "$prefix" -type l)
  # prometheus-cpp's config finds civetweb's, whose targets file checks that bin/civetweb exists
  # (the civetweb .deb); never run, so a stub does if that .deb is missing.
  if [ ! -e "$prefix/usr/bin/civetweb" ]; then
    printf '#!/bin/sh\necho "civetweb stub (scripts/gpu-build.sh)" >&2; exit 1\n' >"$prefix/usr/bin/civetweb"
    chmod +x "$prefix/usr/bin/civetweb"
  fi
  # protoc and grpc_cpp_plugin (run by the build) need libprotoc32 & co from the prefix.
  mkdir -p "$prefix/wrap"
  for tool in protoc grpc_cpp_plugin; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
      "$libdir" "$prefix/usr/bin/$tool" >"$prefix/wrap/$tool"
    chmod +x "$prefix/wrap/$tool"
  done
  echo "$debs_id" >"$prefix/.debs-id"
fi
# Debian's libcurl needs Debian's LDAP, libssh2 and others, which this machine may lack; where the
# machine has a libcurl.so.4 of its own (the same ABI), glmserve uses that one; else it is built
# without http(s) image fetching (-DGLMSERVE_MEDIA_FETCH=OFF: serve refuses --allow-media-fetch).
media_fetch=OFF
system_curl="$(ldconfig -p | awk '/libcurl\.so\.4 .*x86-64/ {print $NF; exit}')"
if [ -n "$system_curl" ] && [ -e "$libdir/libcurl.so.4" ]; then
  for f in "$libdir"/libcurl.so.4*; do ln -sfn "$system_curl" "$f"; done
  media_fetch=ON
fi
# What is left pointing outside the prefix (an absolute /usr path in a .pc or CMake file, a link
# out of the prefix) would pick the machine's copy or nothing: say so before configuring.
leaks="$(grep -lE '(=|-I|-L)/usr/(lib|include)' "$libdir"/pkgconfig/*.pc "$prefix"/usr/share/pkgconfig/*.pc 2>/dev/null)"
for link in $(find "$prefix/usr/lib" "$prefix/lib" "$prefix/usr/bin" -type l 2>/dev/null); do
  [ -e "$link" ] || leaks="$leaks $link(dangling)"
done
[ -z "$leaks" ] || echo "warning: prefix still points outside itself: $leaks"
"$prefix/wrap/protoc" --version >/dev/null || { echo "protoc from the prefix does not run"; exit 1; }

torch_dir="$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
if [ "${GLMSERVE_GPU_CONFIGURE_ONLY:-0}" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
fi

# Prefix libraries by RPATH; --disable-new-dtags makes it DT_RPATH, which also serves the
# libraries' own dependencies (libgrpc++ -> libgrpc -> libabsl_*, libre2, libcares, libssl) and
# the dlopen of libsentencepiece.so.0; DT_RUNPATH would serve the executable's direct ones only.
# The arch include dir holds Debian's openssl/configuration.h (cpp-httplib includes OpenSSL).
link_flags="-Wl,--disable-new-dtags -Wl,-rpath,$libdir"
PKG_CONFIG_PATH="$libdir/pkgconfig:$prefix/usr/share/pkgconfig" \
cmake -S . -B .gpu/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGLMSERVE_WITH_GRPC=ON -DGLMSERVE_MEDIA_FETCH=$media_fetch \
  -DGLMSERVE_LIBTORCH_DIR="$torch_dir" -DCMAKE_PREFIX_PATH="$prefix/usr" \
  -DProtobuf_PROTOC_EXECUTABLE="$prefix/wrap/protoc" -DGLMSERVE_GRPC_CPP_PLUGIN="$prefix/wrap/grpc_cpp_plugin" \
  -DCMAKE_C_FLAGS="-isystem $prefix/usr/include/x86_64-linux-gnu" \
  -DCMAKE_CXX_FLAGS="-isystem $prefix/usr/include/x86_64-linux-gnu" \
  -DCMAKE_EXE_LINKER_FLAGS="$link_flags" -DCMAKE_SHARED_LINKER_FLAGS="$link_flags" \
  >"$out/cmake.log" 2>&1 || { tail -40 "$out/cmake.log"; exit 1; }
if [ "${GLMSERVE_GPU_CONFIGURE_ONLY:-0}" = 1 ]; then echo "configured .gpu/build (GLMSERVE_GPU_CONFIGURE_ONLY=1)"; exit 0; fi
# GLMSERVE_GPU_TARGETS names fewer (e.g. "kernels_test engine_model_test decode_bench gemm_bench"
# for kernel measurements): a cold build's minutes are device time.
targets="${GLMSERVE_GPU_TARGETS:-runtime_test engine_test engine_model_test kernels_test glmserve decode_bench gemm_bench glmload}"
if [ -z "${GLMSERVE_GPU_TARGETS:-}" ]; then
  # The gRPC health probe (deploy/docker/health_probe.cc) is defined with the deploy tests (Python).
  grep -q "glmserve_health_probe" .gpu/build/build.ninja && targets="$targets glmserve_health_probe"
  # The host side of an image request (decode, resize) on this machine's CPUs (with libpng/libjpeg).
  grep -q "build bench/image_bench:" .gpu/build/build.ninja && targets="$targets image_bench"
fi
# shellcheck disable=SC2086  # one word per target
cmake --build .gpu/build -j 16 --target $targets \
  >"$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
# Every library of the server resolves (RPATH into the prefix, the rest from the machine).
[ -x .gpu/build/glmserve ] && ldd .gpu/build/glmserve | grep "not found" &&
  echo "warning: glmserve: libraries not found (above)"

status=0
run() { echo "== $*"; "$@" || status=1; }
# Which parts run (each 0/1): tests, the GLM-4-9B table, transformers' side of it, a profile.
tests="${GLMSERVE_GPU_TESTS:-1}" table="${GLMSERVE_GPU_TABLE:-1}" hf="${GLMSERVE_GPU_HF:-1}"
profile="${GLMSERVE_GPU_PROFILE:-0}"
if [ "$tests" = 1 ] || [ "$tests" = kernels ]; then
  run timeout 300 .gpu/build/tests/kernels_test >"$out/kernels_test.log" 2>&1; tail -3 "$out/kernels_test.log"
  grep -E "FAILED|Failure" -A3 "$out/kernels_test.log" | head -40
fi
if [ "$tests" = 1 ]; then
  run timeout 120 .gpu/build/tests/engine/engine_test >"$out/engine_test.log" 2>&1; tail -1 "$out/engine_test.log"
  GLMSERVE_TEST_DEVICE=cuda run timeout 300 .gpu/build/tests/runtime/runtime_test --gtest_filter='*Parity*' \
    >"$out/parity_cuda.log" 2>&1
  tail -3 "$out/parity_cuda.log"
  # bf16 on the GPU against transformers in bf16 on the GPU (fresh prompts, dtype tolerance).
  run timeout 600 python3 tests/reference/live_check.py .gpu/build/glmserve tests/fixtures/models \
    --device cuda --dtype bfloat16 >"$out/live_check_cuda_bf16.log" 2>&1
  tail -1 "$out/live_check_cuda_bf16.log"
  run timeout 600 python3 tests/reference/live_check.py .gpu/build/glmserve tests/fixtures/models \
    --device cuda --dtype float16 >"$out/live_check_cuda_fp16.log" 2>&1
  tail -1 "$out/live_check_cuda_fp16.log"
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

if [ "${GLMSERVE_GPU_GEMM:-0}" = 1 ]; then
  echo "== linear layers alone: skinny GEMM / GEMV vs cuBLAS (GLM-4-9B shapes, bf16)"
  .gpu/build/bench/gemm_bench --rows "${GLMSERVE_GEMM_ROWS:-4,8,16,32,64}" | tee "$out/gemm.md"
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
# The table again under each listed setting, e.g. GLMSERVE_GPU_COMPARE="GLMSERVE_CUDA_DISABLE=gemm
# GLMSERVE_CUDA_ATTENTION_BLOCKS_PER_SM=8" (same build, same machine: the fair comparison); '+'
# joins variables of one setting (A=1+B=2).
for setting in ${GLMSERVE_GPU_COMPARE:-}; do
  echo "== the same with $setting"
  # shellcheck disable=SC2086  # one word per variable
  env ${setting//+/ } .gpu/build/bench/decode_bench --model bench/configs/glm-4-9b-chat-hf --random-weights --device cuda \
    --dtype bfloat16 --hbm-gbps "$gbps" --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" 2>/dev/null | tail -n +3
done
if [ "$hf" = 1 ]; then
  echo "== transformers generate GLM-4-9B bf16"
  python3 bench/hf_decode_bench.py --config bench/configs/glm-4-9b-chat-hf --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" \
    2>/dev/null | tee "$out/hf_9b.md"
fi
if [ "$profile" = 1 ]; then
  echo "== profile: 8 decode steps at batch 1 and 64 (Kineto), per kernel family"
  mkdir -p .gpu/trace
  bench --batch-sizes 1,64 --profile-trace .gpu/trace/decode >"$out/profile_run.md" 2>"$out/profile_run.log"
  cat "$out/profile_run.md"
  for b in 1 64; do python3 bench/summarize_trace.py .gpu/trace/decode-b$b.json --steps 8 | tee "$out/profile_b$b.md"; done
fi
if [ "$profile" = 1 ] && [ "${GLMSERVE_GPU_PROFILE_ATEN:-0}" = 1 ]; then
  echo "== the same steps with the fused kernels off (ATen ops, one-pass attention)"
  GLMSERVE_CUDA_DISABLE=norm,rotary,swiglu,gemv,split_attention bench --batch-sizes 1,64 \
    --profile-trace .gpu/trace/aten >"$out/profile_aten_run.md" 2>>"$out/profile_run.log"
  cat "$out/profile_aten_run.md"
  for b in 1 64; do python3 bench/summarize_trace.py .gpu/trace/aten-b$b.json --steps 8 --top 8 | tee "$out/profile_aten_b$b.md"; done
fi
if [ "${GLMSERVE_GPU_EXTRA:-0}" = 1 ]; then
  echo "== attention on CUDA cores (GLMSERVE_CUDA_DISABLE=mma_attention)"
  GLMSERVE_CUDA_DISABLE=mma_attention bench --batch-sizes "${GLMSERVE_BATCHES:-1,8,32,64}" 2>/dev/null | tee "$out/no_mma.md"
  echo "== sampled decode (temperature 0.8, top-k 50) with the device sampler"
  bench --batch-sizes 1,64 --temperature 0.8 --top-k 50 2>/dev/null | tee "$out/sampled.md"
fi
if [ "${GLMSERVE_GPU_SWEEP:-0}" = 1 ]; then
  # Where the GEMV stops beating cuBLAS (the default threshold in runtime/model/cuda_decode.cc).
  for rows in 1 2 4 8; do
    echo "== GEMV up to $rows rows"
    GLMSERVE_CUDA_GEMV_MAX_ROWS=$rows bench --batch-sizes 1,2,4,8 --new-tokens 64 2>/dev/null | tail -4 | tee -a "$out/gemv_rows.md"
  done
  echo "== sampled decode with the host sampler (GLMSERVE_CUDA_DEVICE_SAMPLING=0)"
  GLMSERVE_CUDA_DEVICE_SAMPLING=0 bench --batch-sizes 1,64 --temperature 0.8 --top-k 50 2>/dev/null | tee -a "$out/sampled.md"
fi
if [ "${GLMSERVE_GPU_NCU:-0}" = 1 ]; then
  # Nsight Compute on one steady-state launch of the split attention kernel (tensor-core or CUDA
  # core) at batch 1 and 64. Eager steps: ncu times single launches. Prefill runs ATen attention,
  # and decode_bench's warm-up decodes 16 steps at batch 1 (640 launches), so launch 700 is a
  # decode step of the table's batch size.
  for b in ${GLMSERVE_NCU_BATCHES:-1 64}; do
    GLMSERVE_CUDA_GRAPHS=0 timeout "${GLMSERVE_NCU_TIMEOUT:-240}" ncu --clock-control none \
      --kernel-name regex:'PagedAttention(Mma|Split|Warp)Kernel' \
      --launch-skip 700 --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section MemoryWorkloadAnalysis \
      .gpu/build/bench/decode_bench --model bench/configs/glm-4-9b-chat-hf --random-weights --device cuda \
      --dtype bfloat16 --batch-sizes $b --new-tokens 32 >"$out/ncu_attention_b$b.txt" 2>&1
    grep -E "Duration|Achieved Occupancy|Theoretical Occupancy|Registers Per|Shared Memory Config|Stall|Warp Cycles Per Issued|Memory Throughput|Block Limit" \
      "$out/ncu_attention_b$b.txt" | head -30
  done
fi
if [ "${GLMSERVE_GPU_VISION:-0}" = 1 ]; then
  # AutoGLM-Phone-9B (GLM-4.1V-9B sizes, random weights) behind the OpenAI HTTP API: one agent step
  # with a 1080x2400 screenshot under max_pixels 5,000,000 after ~2,000 tokens of history, then
  # GLMSERVE_VISION_AGENTS concurrent agents (scripts/gpu-vision-bench.sh). First glm4v with images
  # on CUDA against transformers on CUDA (fp32: exact ids; bf16: no less accurate than transformers).
  for dt in float32 bfloat16; do
    run timeout 600 python3 tests/reference/glm4v_live_check.py .gpu/build/glmserve tests/fixtures --device cuda \
      --dtype "$dt" >"$out/glm4v_live_cuda_$dt.log" 2>&1
    tail -1 "$out/glm4v_live_cuda_$dt.log"; grep FAIL "$out/glm4v_live_cuda_$dt.log" | head -5
  done
  run env OUT="$out" bash scripts/gpu-vision-bench.sh
fi
if [ "${GLMSERVE_GPU_GEMM_TUNING:-0}" = 1 ]; then
  # cuBLASLt's algorithms timed per shape and row count (kernels/tuned_gemm.h) against its
  # heuristic's first (GLMSERVE_CUDA_DISABLE=gemm_tuning): the kernel test, the engine on CUDA
  # (fp16 fixture: tuned), decode_bench on / off / on / off, the server both ways.
  echo "== tuned GEMMs"
  run timeout 120 .gpu/build/tests/kernels_test --gtest_filter='*TunedGemm*' >"$out/tuned_gemm_test.log" 2>&1
  tail -1 "$out/tuned_gemm_test.log"; grep -E "Failure|FAILED" -A4 "$out/tuned_gemm_test.log" | head -20
  GLMSERVE_TEST_DEVICE=cuda run timeout 300 .gpu/build/tests/engine_model/engine_model_test \
    --gtest_filter='*Invariance*:*Parity*:*Overlap*:*Identical*' >"$out/tuned_engine_model_cuda.log" 2>&1
  tail -1 "$out/tuned_engine_model_cuda.log"; grep -E "FAILED" "$out/tuned_engine_model_cuda.log" | head
  for setting in on off on off; do
    disable=""; [ "$setting" = off ] && disable="gemm_tuning"
    GLMSERVE_CUDA_DISABLE="$disable" bench --batch-sizes "${GLMSERVE_BATCHES:-8,64,128,256}" \
      2>"$out/tuned_decode_$setting.log" | tail -n +3 | sed "s/^/tuning $setting /" | tee -a "$out/tuned_decode.md"
  done
  grep -h "cuBLASLt algorithms" "$out/tuned_decode_on.log" | head -1
  for setting in on off; do
    disable=""; [ "$setting" = off ] && disable="gemm_tuning"
    GLMSERVE_CUDA_DISABLE="$disable" run env OUT="$out/tuned_serve_$setting" bash scripts/gpu-serve-ab.sh "" |
      sed "s/^/tuning $setting /"
  done
fi
if [ "${GLMSERVE_GPU_WHOLE_TILES:-0}" = 1 ]; then
  # The skinny GEMM's TMA form with a whole 64-feature tile a block where the tiles fit one wave
  # (qkv, o, down on GLM-4-9B): the kernel tests, the layer GEMMs alone against cuBLAS, and
  # decode_bench with those projections on it up to 64 rows (GLMSERVE_CUDA_GEMM_SMALL_WEIGHT)
  # against the defaults (ABAB).
  echo "== skinny GEMM, whole tiles"
  run timeout 300 .gpu/build/tests/kernels_test --gtest_filter='*Skinny*:*Gemv*' >"$out/whole_tiles_test.log" 2>&1
  tail -1 "$out/whole_tiles_test.log"; grep -E "Failure|FAILED" -A4 "$out/whole_tiles_test.log" | head -20
  timeout 300 .gpu/build/bench/gemm_bench --rows 8,32,64 --iterations 100 2>&1 | tee "$out/whole_tiles_gemm.md"
  for setting in whole default whole default; do
    small=0; [ "$setting" = whole ] && small=60000000
    GLMSERVE_CUDA_GEMM_SMALL_WEIGHT=$small bench --batch-sizes "${GLMSERVE_WHOLE_TILE_BATCHES:-8,32,64}" \
      2>/dev/null | tail -n +3 | sed "s/^/$setting /" | tee -a "$out/whole_tiles_decode.md"
  done
fi
if [ "${GLMSERVE_GPU_FEW_ROWS:-0}" = 1 ]; then
  # Few-row steps: the fused add+RMSNorm inside the GEMV (default) against its own kernel
  # (GLMSERVE_CUDA_DISABLE=fused_norm), and the measurement switches, all measured no faster on an
  # H100 (eighteenth session): weights asked of L2 before the short kernels that precede their
  # projection (GLMSERVE_CUDA_L2_PREFETCH_<ROLE>_MB), at one row gate_up + SwiGLU as one GEMV launch
  # (GLMSERVE_CUDA_FUSED_SWIGLU=1) and qkv's rotary + KV write as its epilogue
  # (GLMSERVE_CUDA_FUSED_ROTARY=1). The kernel tests, the engine on CUDA with all of them on,
  # decode_bench under each setting (a round of all, then a round again).
  echo "== few-row steps: fused add+RMSNorm, L2 prefetch, fused SwiGLU and rotary"
  run timeout 120 .gpu/build/tests/kernels_test --gtest_filter='DependentLaunch*:*GemvSwiGlu*:*GemvAddRmsNorm*' \
    >"$out/few_rows_test.log" 2>&1
  tail -1 "$out/few_rows_test.log"; grep -E "Failure|FAILED" -A4 "$out/few_rows_test.log" | head -20
  all="GLMSERVE_CUDA_L2_PREFETCH_O_MB=48 GLMSERVE_CUDA_L2_PREFETCH_QKV_MB=16 GLMSERVE_CUDA_L2_PREFETCH_GATE_UP_MB=16 GLMSERVE_CUDA_L2_PREFETCH_DOWN_MB=16 GLMSERVE_CUDA_L2_PREFETCH_LM_HEAD_MB=16"
  fused="GLMSERVE_CUDA_FUSED_SWIGLU=1 GLMSERVE_CUDA_FUSED_ROTARY=1"
  env $all $fused GLMSERVE_TEST_DEVICE=cuda timeout 300 \
    .gpu/build/tests/engine_model/engine_model_test --gtest_filter='*Parity*:*Invariance*:*Identical*' \
    >"$out/few_rows_engine_model_cuda.log" 2>&1
  tail -1 "$out/few_rows_engine_model_cuda.log"; grep -E "FAILED" "$out/few_rows_engine_model_cuda.log" | head
  # Setting 0 is the default; a neutral variable keeps export's word list non-empty.
  settings=("GLMSERVE_CUDA_L2_PREFETCH_O_MB=0" "GLMSERVE_CUDA_DISABLE=fused_norm" "$all"
            "GLMSERVE_CUDA_FUSED_SWIGLU=1" "$fused")
  few_rows_bench() {  # setting index, batch sizes, max prefetch rows
    # A setting is several VAR=value words, exported in a subshell (env would not run bench()).
    # shellcheck disable=SC2086
    (export ${settings[$1]} GLMSERVE_CUDA_L2_PREFETCH_MAX_ROWS="$3"; bench --batch-sizes "$2" 2>/dev/null) |
      tail -n +3 | sed "s/^/setting $1 /" | tee -a "$out/few_rows_decode.md"
  }
  for i in 0 1 2 3 4 0 1 3 4; do few_rows_bench $i "${GLMSERVE_FEW_ROWS_BATCHES:-1,8}" 8; done
  # Decode and mixed-step row counts too: attention there reads KV at a third of HBM's rate.
  for i in 0 2 0; do few_rows_bench $i 64,128 512; done
fi
if [ "${GLMSERVE_GPU_OVERLAP:-0}" = 1 ]; then
  # Overlapped steps (--overlap-steps): the engine on the real model on CUDA with them (same ids as
  # alone, OOM storm), decode_bench with and without (ABAB), the server without, with, and
  # without again (the drift).
  echo "== overlapped steps"
  GLMSERVE_TEST_DEVICE=cuda run timeout 300 .gpu/build/tests/engine_model/engine_model_test \
    --gtest_filter='*Overlap*:*Invariance*' >"$out/overlap_engine_model_cuda.log" 2>&1
  tail -1 "$out/overlap_engine_model_cuda.log"; grep -E "overlapped steps|FAILED" "$out/overlap_engine_model_cuda.log" | head
  for overlap in false true false true; do
    bench --batch-sizes "${GLMSERVE_BATCHES:-1,64}" --overlap-steps "$overlap" 2>/dev/null | tail -n +3 |
      sed "s/^/overlap $overlap /" | tee -a "$out/overlap_decode.md"
  done
  # Where a step's device time goes either way: the GPU's idle time between its own operations.
  if [ "${GLMSERVE_GPU_OVERLAP_GAPS:-1}" = 1 ]; then
    mkdir -p .gpu/trace
    for overlap in false true; do
      bench --batch-sizes 1 --overlap-steps "$overlap" --profile-trace ".gpu/trace/overlap-$overlap" >/dev/null 2>&1
      python3 bench/summarize_trace.py ".gpu/trace/overlap-$overlap-b1.json" --steps 8 --gaps 10 |
        sed "s/^/overlap $overlap /" | tee -a "$out/overlap_gaps.md"
    done
  fi
  run env OUT="$out/overlap_serve" bash scripts/gpu-serve-ab.sh "" "--overlap-steps true" ""
fi
if [ "${GLMSERVE_GPU_SERVE:-1}" = 1 ]; then
  # glmserve serve --device cuda driven by glmload through gRPC (and HTTP) beside decode_bench.
  run env OUT="$out" bash scripts/gpu-serve-bench.sh
fi
exit $status
