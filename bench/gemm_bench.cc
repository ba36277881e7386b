// The decode batches' linear layers alone, on GLM-4-9B's shapes in bf16: glmserve's kernels (the
// GEMV for a few rows, the skinny stream-K GEMM up to 64) against cuBLAS (cublasGemmEx, fp32
// accumulation, what at::linear calls). Each shape cycles through enough weight copies that no
// call finds its weight in L2. Prints one markdown row per (shape, rows): microseconds per call
// and the weight bytes streamed per second.
//   gemm_bench [--rows 4,8,16,32,64] [--iterations 40]
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "flags/flags.h"
#include "kernels/decode_ops.h"
#include "kernels/launch.h"
#include "kernels/rms_norm.h"

namespace {

using glmserve::kernels::ElementType;

struct Shape {
  const char* name;
  int64_t n, k;
};

// GLM-4-9B: hidden 4096, 32 query + 2 KV heads of 128, intermediate 13696, vocabulary 151552.
constexpr Shape kShapes[] = {
    {"qkv", 4608, 4096}, {"o", 4096, 4096}, {"gate_up", 27392, 4096}, {"down", 4096, 13696}, {"lm_head", 151552, 4096}};

bool Ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
  return e == cudaSuccess;
}

}  // namespace

int main(int argc, char** argv) {
  const int32_t max_rows = glmserve::kernels::kSkinnyGemmMaxRows;
  std::vector<int32_t> rows_list = {4, 8, 16, 32, 64};
  int32_t iterations = 40;
  glmserve::flags::FlagSet flags("gemm_bench", "[flags]",
                                 "Times the decode linear layers alone: cuBLAS, the GEMV, the skinny GEMM.");
  flags.IntList("rows", &rows_list, 1, max_rows, "row counts, one shape each");
  // The whole int range here, so that 0 and negatives get the message below.
  flags.Int("iterations", &iterations, INT32_MIN, INT32_MAX, "timed calls per kernel and shape (at least 1)");
  if (auto exit_code = flags.ParseCommandLine(argc, argv)) return *exit_code;
  if (iterations < 1) return flags.UsageError(absl::StrCat("--iterations: ", iterations, " is not a positive integer"));
  if (!glmserve::kernels::CudaKernelsAvailable()) {
    std::fprintf(stderr, "gemm_bench: no CUDA device with the kernels' architecture\n");
    return 1;
  }
  cublasHandle_t cublas;
  if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) return 1;
  cudaStream_t stream;
  cudaStreamCreate(&stream);
  cublasSetStream(cublas, stream);
  void* cublas_workspace = nullptr;
  const size_t cublas_workspace_bytes = 32u << 20;
  cudaMalloc(&cublas_workspace, cublas_workspace_bytes);
  cublasSetWorkspace(cublas, cublas_workspace, cublas_workspace_bytes);
  const size_t gemm_workspace_bytes = glmserve::kernels::SkinnyGemmWorkspaceBytes();
  void* gemm_workspace = nullptr;
  if (!Ok(cudaMalloc(&gemm_workspace, gemm_workspace_bytes), "workspace")) return 1;
  cudaMemset(gemm_workspace, 0, gemm_workspace_bytes);
  void* x = nullptr;
  void* y = nullptr;
  cudaMalloc(&x, size_t{2} * max_rows * 13696);
  cudaMalloc(&y, size_t{2} * max_rows * 151552);
  cudaMemset(x, 0, size_t{2} * max_rows * 13696);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);

  std::printf("| shape | n x k | rows | kernel | us/call | weight TB/s |\n|---|---|---:|---|---:|---:|\n");
  for (const Shape& shape : kShapes) {
    const size_t bytes = static_cast<size_t>(shape.n) * shape.k * 2;
    const int copies = static_cast<int>(std::max<size_t>(2, (size_t{400} << 20) / bytes + 1));
    std::vector<void*> weights(copies);
    for (void*& w : weights) {
      if (!Ok(cudaMalloc(&w, bytes), "weights")) return 1;
      cudaMemset(w, 0x3c, bytes);  // bf16 0x3c3c ~ 0.0115: finite, small
    }
    auto time_us = [&](const std::function<bool(const void* w)>& call) {
      for (int i = 0; i < copies; ++i) call(weights[i]);  // warm-up: attributes, handles
      cudaEventRecord(start, stream);
      for (int i = 0; i < iterations; ++i) {
        if (!call(weights[i % copies])) return -1.0;
      }
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      return 1000.0 * ms / iterations;
    };
    auto row = [&](int rows, const std::string& kernel, double us) {
      std::printf("| %s | %lld x %lld | %d | %s | %.1f | %.2f |\n", shape.name, static_cast<long long>(shape.n),
                  static_cast<long long>(shape.k), rows, kernel.c_str(), us, us > 0 ? bytes / us / 1e6 : 0.0);
      std::fflush(stdout);
    };
    for (int32_t rows : rows_list) {
      const float alpha = 1.0f, beta = 0.0f;
      row(rows, "cuBLAS", time_us([&](const void* w) {
            return cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(shape.n), rows,
                                static_cast<int>(shape.k), &alpha, w, CUDA_R_16BF, static_cast<int>(shape.k), x,
                                CUDA_R_16BF, static_cast<int>(shape.k), &beta, y, CUDA_R_16BF,
                                static_cast<int>(shape.n), CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
          }));
      // Back to back, each call may start while the one before it ends (kernels/launch.h), as in
      // a decode step; or only after it.
      for (bool dependent_launch : {true, false}) {
        glmserve::kernels::SetDependentLaunch(dependent_launch);
        const std::string how = dependent_launch ? ", dependent launch" : "";
        if (glmserve::kernels::GemvCudaTakes(rows, shape.k, ElementType::kBFloat16, x, weights[0])) {
          row(rows, "GEMV" + how, time_us([&](const void* w) {
                return glmserve::kernels::GemvCuda(x, w, nullptr, y, rows, shape.n, shape.k, ElementType::kBFloat16,
                                                   stream);
              }));
        }
        using glmserve::kernels::SkinnyGemmMath;
        for (auto math : {SkinnyGemmMath::kTma, SkinnyGemmMath::kWarpgroup, SkinnyGemmMath::kWarp}) {
          row(rows, std::string("skinny GEMM (") + glmserve::kernels::SkinnyGemmMathName(math) + how + ")",
              time_us([&](const void* w) {
                return glmserve::kernels::SkinnyGemmCuda(x, w, nullptr, y, rows, shape.n, shape.k,
                                                         ElementType::kBFloat16, gemm_workspace, stream, math);
              }));
        }
      }
      glmserve::kernels::SetDependentLaunch(true);
    }
    for (void* w : weights) cudaFree(w);
  }
  return Ok(cudaGetLastError(), "last error") ? 0 : 1;
}
