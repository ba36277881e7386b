#!/usr/bin/env bash
# On the GPU machine: GLM-4-9B's layer GEMMs at mixed-step row counts, cuBLAS against CUTLASS 3
# Hopper kernels (bench/gemm_probe/cutlass_vs_cublas.cu). Needs nvcc and the CUTLASS headers of
# PyPI's nvidia-cutlass wheel, fetched on a machine with PyPI and carried with the tree:
#   pip download --no-deps nvidia-cutlass==4.2.0.0 -d .gpu/wheels
# The table goes to stdout and $OUT/gemm_probe.txt (or .gpu/out).
set -uo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out" .gpu/cutlass
wheel="$(ls .gpu/wheels/nvidia_cutlass-*.whl 2>/dev/null | head -1)"
[ -n "$wheel" ] || { echo "gpu-gemm-probe: no .gpu/wheels/nvidia_cutlass-*.whl (see the comment above)"; exit 1; }
if [ ! -x .gpu/gemm_probe ] || [ bench/gemm_probe/cutlass_vs_cublas.cu -nt .gpu/gemm_probe ]; then
  python3 -m zipfile -e "$wheel" .gpu/cutlass >/dev/null || { echo "gpu-gemm-probe: cannot unpack $wheel"; exit 1; }
  src=.gpu/cutlass/cutlass_library/source
  nvcc -std=c++17 -O3 -DNDEBUG -arch=sm_90a --expt-relaxed-constexpr -I"$src/include" -I"$src/tools/util/include" \
    bench/gemm_probe/cutlass_vs_cublas.cu -o .gpu/gemm_probe -lcublasLt -lcublas >"$out/gemm_probe_build.log" 2>&1 \
    || { echo "gpu-gemm-probe: nvcc failed"; tail -20 "$out/gemm_probe_build.log"; exit 1; }
fi
# GLMSERVE_GEMM_PROBE_RUN=0 compiles only (e.g. beside a build, so that the timing runs alone later).
[ "${GLMSERVE_GEMM_PROBE_RUN:-1}" = 1 ] || exit 0
timeout 600 .gpu/gemm_probe | tee "$out/gemm_probe.txt"
