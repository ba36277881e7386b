#!/usr/bin/env bash
# On the GPU machine: GLM-4-9B's layer GEMMs at decode and mixed-step row counts. Two probes,
# chosen with GLMSERVE_GEMM_PROBE:
#   cutlass (default): cuBLAS against CUTLASS 3 Hopper kernels (bench/gemm_probe/cutlass_vs_cublas.cu).
#     Needs the CUTLASS headers of PyPI's nvidia-cutlass wheel, fetched on a machine with PyPI and
#     carried with the tree:  pip download --no-deps nvidia-cutlass==4.2.0.0 -d .gpu/wheels
#   cublaslt: cuBLASLt's heuristic against a search over its algorithm configurations
#     (bench/gemm_probe/cublaslt_search.cu); GLMSERVE_GEMM_PROBE_ARGS: "rows projections limit",
#     e.g. "64,128 qkv,o,gate_up,down,lm_head 6000".
# The table goes to stdout and $OUT/gemm_probe.txt (or .gpu/out).
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
probe="${GLMSERVE_GEMM_PROBE:-cutlass}"
case "$probe" in
  cutlass)
    wheel="$(ls .gpu/wheels/nvidia_cutlass-*.whl 2>/dev/null | head -1)"
    [ -n "$wheel" ] || { echo "gpu-gemm-probe: no .gpu/wheels/nvidia_cutlass-*.whl (see the comment above)"; exit 1; }
    source=bench/gemm_probe/cutlass_vs_cublas.cu
    binary=.gpu/gemm_probe
    if [ ! -x "$binary" ] || [ "$source" -nt "$binary" ]; then
      mkdir -p .gpu/cutlass
      python3 -m zipfile -e "$wheel" .gpu/cutlass >/dev/null || { echo "gpu-gemm-probe: cannot unpack $wheel"; exit 1; }
      src=.gpu/cutlass/cutlass_library/source
      nvcc -std=c++17 -O3 -DNDEBUG -arch=sm_90a --expt-relaxed-constexpr -I"$src/include" -I"$src/tools/util/include" \
        "$source" -o "$binary" -lcublasLt -lcublas >"$out/gemm_probe_build.log" 2>&1 \
        || { echo "gpu-gemm-probe: nvcc failed"; tail -20 "$out/gemm_probe_build.log"; exit 1; }
    fi
    args=()
    ;;
  cublaslt)
    source=bench/gemm_probe/cublaslt_search.cu
    binary=.gpu/cublaslt_search
    mkdir -p .gpu
    if [ ! -x "$binary" ] || [ "$source" -nt "$binary" ]; then
      nvcc -std=c++17 -O3 -DNDEBUG -arch=sm_90a "$source" -o "$binary" -lcublasLt >"$out/gemm_probe_build.log" 2>&1 \
        || { echo "gpu-gemm-probe: nvcc failed"; tail -20 "$out/gemm_probe_build.log"; exit 1; }
    fi
    read -r -a args <<<"${GLMSERVE_GEMM_PROBE_ARGS:-}"
    ;;
  *)
    echo "gpu-gemm-probe: GLMSERVE_GEMM_PROBE=$probe: expected cutlass or cublaslt"
    exit 2
    ;;
esac
# GLMSERVE_GEMM_PROBE_RUN=0 compiles only (e.g. beside a build, so that the timing runs alone later).
[ "${GLMSERVE_GEMM_PROBE_RUN:-1}" = 1 ] || exit 0
timeout 600 "$binary" "${args[@]}" | tee "$out/gemm_probe_$probe.txt"
