// Probe: GLM-4-9B's layer GEMMs at the row counts of mixed steps (64..512), cuBLAS (cublasGemmEx,
// as ATen's linear calls it) against CUTLASS 3 Hopper kernels (TMA, warp-specialized, persistent
// and stream-K tile schedulers). Why: a 256-row mixed step spends ~7.7 ms in GEMMs on an H200 at
// ~560 TFLOP/s, where the card's peak would take ~4.5 ms (bench/results/gpu.md, fifth session).
// Not part of the build: scripts/gpu-gemm-probe.sh compiles and runs it on the GPU machine.
// Weights rotate over copies so L2 never holds them (as in a real step); every CUTLASS variant's
// output is checked against cuBLAS's before it is timed.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

namespace probe {

// y[M,N] = x[M,K] W[N,K]^T: A = x (K-major), B = W (K-major), D row-major; bf16 in and out, fp32
// accumulation, as the model's linear layers.
template <class TileShape, class ClusterShape, class MainloopSchedule, class EpilogueSchedule, class Scheduler>
struct Variant {
  using Element = cutlass::bfloat16_t;
  static constexpr int kAlign = 8;
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, Element, cutlass::layout::RowMajor, kAlign,
      Element, cutlass::layout::RowMajor, kAlign, EpilogueSchedule>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, cutlass::layout::RowMajor, kAlign, Element,
      cutlass::layout::ColumnMajor, kAlign, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      MainloopSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  // Runs y = x W^T once on `stream`; false when CUTLASS cannot take the shape.
  static bool Run(int m, int n, int k, const void* x, const void* w, void* y, void* workspace, size_t workspace_bytes,
                  cudaStream_t stream) {
    auto stride_a = cutlass::make_cute_packed_stride(typename Kernel::StrideA{}, {m, k, 1});
    auto stride_b = cutlass::make_cute_packed_stride(typename Kernel::StrideB{}, {n, k, 1});
    auto stride_d = cutlass::make_cute_packed_stride(typename Kernel::StrideD{}, {m, n, 1});
    static cutlass::KernelHardwareInfo hw = cutlass::KernelHardwareInfo::make_kernel_hardware_info<Kernel>(0);
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, 1},
        {static_cast<const Element*>(x), stride_a, static_cast<const Element*>(w), stride_b},
        {{1.0f, 0.0f}, static_cast<const Element*>(y), stride_d, static_cast<Element*>(y), stride_d},
        hw};
    Gemm gemm;
    if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
    if (Gemm::get_workspace_size(args) > workspace_bytes) return false;
    if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return false;
    return gemm.run(stream) == cutlass::Status::kSuccess;
  }
};

using Coop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using CoopEpi = cutlass::epilogue::TmaWarpSpecializedCooperative;
using Ping = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using PingEpi = cutlass::epilogue::TmaWarpSpecialized;
using Persistent = cutlass::gemm::PersistentScheduler;
using StreamK = cutlass::gemm::StreamKScheduler;

using RunFn = bool (*)(int, int, int, const void*, const void*, void*, void*, size_t, cudaStream_t);
struct Named {
  const char* name;
  RunFn run;
};
const Named kVariants[] = {
    {"coop 128x256 1x1 persistent",
     &Variant<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, CoopEpi, Persistent>::Run},
    {"coop 128x256 1x1 stream-K", &Variant<Shape<_128, _256, _64>, Shape<_1, _1, _1>, Coop, CoopEpi, StreamK>::Run},
    {"coop 128x256 2x1 persistent",
     &Variant<Shape<_128, _256, _64>, Shape<_2, _1, _1>, Coop, CoopEpi, Persistent>::Run},
    {"coop 128x128 1x1 stream-K", &Variant<Shape<_128, _128, _64>, Shape<_1, _1, _1>, Coop, CoopEpi, StreamK>::Run},
    {"coop 256x128 1x1 stream-K", &Variant<Shape<_256, _128, _64>, Shape<_1, _1, _1>, Coop, CoopEpi, StreamK>::Run},
    {"ping 64x256 1x1 persistent", &Variant<Shape<_64, _256, _64>, Shape<_1, _1, _1>, Ping, PingEpi, Persistent>::Run},
    {"ping 64x128 1x1 persistent", &Variant<Shape<_64, _128, _64>, Shape<_1, _1, _1>, Ping, PingEpi, Persistent>::Run},
};

#define CK(x)                                                                      \
  do {                                                                             \
    auto e = (x);                                                                  \
    if (e != 0) {                                                                  \
      std::printf("error %d at %s:%d\n", static_cast<int>(e), __FILE__, __LINE__); \
      return 1;                                                                    \
    }                                                                              \
  } while (0)

__global__ void Fill(__nv_bfloat16* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += size_t{gridDim.x} * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xffff) / 65535.0f - 0.5f) * 0.05f);
  }
}

// The fastest of cuBLASLt's first `max_candidates` heuristic algorithms for y = x w^T (what the
// engine's TunedGemm picks at start, kernels/tuned_gemm.h), timed by `time_it`; negative when none
// runs. `rank`: the winner's place in the heuristic's order.
template <class TimeIt>
double BestLtCandidate(cublasLtHandle_t lt, int m, int n, int k, const void* x, void* y, void* workspace,
                       size_t workspace_bytes, cudaStream_t stream, int max_candidates, TimeIt&& time_it, int* rank) {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  const cublasOperation_t transpose = CUBLAS_OP_T, plain = CUBLAS_OP_N;
  std::vector<cublasLtMatmulHeuristicResult_t> found(max_candidates);
  int returned = 0;
  bool ok =
      cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)) ==
          CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutCreate(&a, CUDA_R_16BF, k, n, k) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutCreate(&b, CUDA_R_16BF, k, m, k) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatrixLayoutCreate(&c, CUDA_R_16BF, n, m, n) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                           sizeof(workspace_bytes)) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulAlgoGetHeuristic(lt, op, a, b, c, c, preference, max_candidates, found.data(), &returned) ==
          CUBLAS_STATUS_SUCCESS;
  double best = -1;
  const float one = 1.0f, zero = 0.0f;
  for (int i = 0; ok && i < returned; ++i) {
    const double t = time_it([&](const void* wp) {
      return cublasLtMatmul(lt, op, &one, wp, a, x, b, &zero, y, c, y, c, &found[i].algo, workspace, workspace_bytes,
                            stream) == CUBLAS_STATUS_SUCCESS;
    });
    if (t > 0 && (best < 0 || t < best)) {
      best = t;
      *rank = i;
    }
  }
  if (preference != nullptr) cublasLtMatmulPreferenceDestroy(preference);
  if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
  if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
  if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
  if (op != nullptr) cublasLtMatmulDescDestroy(op);
  return best;
}

}  // namespace probe

using probe::kVariants;

int main() {
  struct Shape {
    const char* name;
    int n, k;
  } shapes[] = {{"qkv", 4608, 4096}, {"o", 4096, 4096}, {"gate_up", 27392, 4096}, {"down", 4096, 13696}};
  const int rows_list[] = {64, 128, 192, 256, 320, 384, 512};
  cublasHandle_t cublas;
  CK(cublasCreate(&cublas));
  cublasLtHandle_t lt;
  CK(cublasLtCreate(&lt));
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  CK(cublasSetStream(cublas, stream));
  const size_t workspace_bytes = size_t{64} << 20;
  void* workspace;
  CK(cudaMalloc(&workspace, workspace_bytes));
  CK(cublasSetWorkspace(cublas, workspace, size_t{32} << 20));
  void* kernel_workspace = static_cast<char*>(workspace) + (size_t{32} << 20);
  cudaEvent_t start, stop;
  CK(cudaEventCreate(&start));
  CK(cudaEventCreate(&stop));
  const int num_variants = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));
  std::vector<std::vector<double>> layer_us(num_variants + 1, std::vector<double>(std::size(rows_list), 0.0));
  std::vector<double> best_per_shape_us(std::size(rows_list), 0.0);  // each projection's fastest variant
  std::vector<double> lt_best_us(std::size(rows_list), 0.0);         // cuBLASLt's best tuned candidate a layer
  for (const Shape& sh : shapes) {
    const size_t w_elems = size_t{static_cast<size_t>(sh.n)} * sh.k, w_bytes = w_elems * 2;
    const int copies = std::min(16, std::max(2, static_cast<int>((size_t{400} << 20) / w_bytes) + 1));
    std::vector<void*> w(copies);
    for (int c = 0; c < copies; ++c) {
      CK(cudaMalloc(&w[c], w_bytes));
      probe::Fill<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(w[c]), w_elems, 17u + c);
    }
    void *x, *y, *want;
    CK(cudaMalloc(&x, size_t{512} * sh.k * 2));
    CK(cudaMalloc(&y, size_t{512} * sh.n * 2));
    CK(cudaMalloc(&want, size_t{512} * sh.n * 2));
    probe::Fill<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(x), size_t{512} * sh.k, 5u);
    for (size_t r = 0; r < std::size(rows_list); ++r) {
      const int m = rows_list[r];
      const float alpha = 1.0f, beta = 0.0f;
      auto cublas_run = [&](const void* wp, void* out) {
        return cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, sh.n, m, sh.k, &alpha, wp, CUDA_R_16BF, sh.k, x,
                            CUDA_R_16BF, sh.k, &beta, out, CUDA_R_16BF, sh.n, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS;
      };
      // Microseconds a call, weights rotating over the copies; negative when a call failed.
      auto time_it = [&](auto&& fn) {
        const int iterations = 40;
        for (int i = 0; i < 4; ++i) {
          if (!fn(w[i % copies])) return -1.0;
        }
        cudaEventRecord(start, stream);
        for (int i = 0; i < iterations; ++i) fn(w[i % copies]);
        cudaEventRecord(stop, stream);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        return 1000.0 * ms / iterations;
      };
      if (!cublas_run(w[0], want)) {
        std::printf("cublasGemmEx failed at %s m=%d\n", sh.name, m);
        return 1;
      }
      std::vector<__nv_bfloat16> want_host(size_t{static_cast<size_t>(m)} * sh.n), got_host(want_host.size());
      CK(cudaMemcpyAsync(want_host.data(), want, want_host.size() * 2, cudaMemcpyDeviceToHost, stream));
      CK(cudaStreamSynchronize(stream));
      const double t_cublas = time_it([&](const void* wp) { return cublas_run(wp, y); });
      layer_us[0][r] += t_cublas;
      int lt_rank = -1;
      double t_lt =
          probe::BestLtCandidate(lt, m, sh.n, sh.k, x, y, workspace, size_t{32} << 20, stream, 32, time_it, &lt_rank);
      if (t_lt <= 0) t_lt = t_cublas;
      lt_best_us[r] += t_lt;
      std::printf("%-8s m=%4d  cublasGemmEx %8.2f us (%.0f TFLOP/s) | cuBLASLt best of 32 %.2f (#%d)", sh.name, m,
                  t_cublas, 2.0 * m * sh.n * sh.k / t_cublas / 1e6, t_lt, lt_rank);
      double fastest = 1e9;
      for (int v = 0; v < num_variants; ++v) {
        auto run = [&](const void* wp) {
          return kVariants[v].run(m, sh.n, sh.k, x, wp, y, kernel_workspace, workspace_bytes - (size_t{32} << 20),
                                  stream);
        };
        double t = -1;
        if (run(w[0])) {
          CK(cudaMemcpyAsync(got_host.data(), y, got_host.size() * 2, cudaMemcpyDeviceToHost, stream));
          CK(cudaStreamSynchronize(stream));
          double worst = 0;
          for (size_t i = 0; i < got_host.size(); ++i) {
            const double g = __bfloat162float(got_host[i]), e = __bfloat162float(want_host[i]);
            worst = std::max(worst, std::fabs(g - e) / (std::fabs(e) + 1e-2));
          }
          t = worst < 0.05 ? time_it(run) : -2;
        }
        layer_us[v + 1][r] += t > 0 ? t : 1e9;
        if (t > 0) fastest = std::min(fastest, t);
        if (t > 0) {
          std::printf(" | %s %.2f", kVariants[v].name, t);
        } else {
          std::printf(" | %s %s", kVariants[v].name, t == -2 ? "WRONG" : "n/a");
        }
      }
      best_per_shape_us[r] += std::min(fastest, std::min(t_cublas, t_lt));
      std::printf("\n");
      std::fflush(stdout);
    }
    for (void* p : w) cudaFree(p);
    cudaFree(x);
    cudaFree(y);
    cudaFree(want);
  }
  std::printf(
      "\nSum of a layer's four projections, us: cuBLAS; cuBLASLt's best candidate each (the engine's tuning); "
      "the one CUTLASS variant best for all four; each projection's fastest of all\n| rows | cuBLAS | cuBLASLt "
      "tuned | best single CUTLASS | variant | fastest per projection |\n|---:|---:|---:|---:|---|---:|\n");
  for (size_t r = 0; r < std::size(rows_list); ++r) {
    int best = -1;
    for (int v = 0; v < num_variants; ++v) {
      if (best < 0 || layer_us[v + 1][r] < layer_us[best + 1][r]) best = v;
    }
    std::printf("| %d | %.1f | %.1f | %.1f | %s | %.1f |\n", rows_list[r], layer_us[0][r], lt_best_us[r],
                layer_us[best + 1][r], kVariants[best].name, best_per_shape_us[r]);
  }
  return 0;
}
