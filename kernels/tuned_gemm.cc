// cuBLASLt with the algorithm picked by timing (kernels/tuned_gemm.h).
#include "kernels/tuned_gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace glmserve::kernels {
namespace {

constexpr size_t kWorkspaceBytes = size_t{64} << 20;
// Timed calls per candidate; the median counts, so one preempted call does not decide.
constexpr int kTimedCalls = 5;

struct GemmKey {
  int device = 0;
  int type = 0;
  int64_t n = 0, k = 0;
  int32_t rows = 0;
  bool bias = false;
  uint32_t alignment = 0;  // bytes, the least of the four pointers' (at most 256)
  auto Tie() const { return std::tie(device, type, n, k, rows, bias, alignment); }
  bool operator<(const GemmKey& other) const { return Tie() < other.Tie(); }
};

uint32_t AlignmentOf(const void* pointer) {
  const auto address = reinterpret_cast<uintptr_t>(pointer);
  uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

bool IsPowerOfTwo(int32_t value) { return value > 0 && (value & (value - 1)) == 0; }

// The descriptors of one product, destroyed with this object. cuBLAS is column-major: it computes
// y^T [n, rows] = w [n, k] (stored as w^T, k x n, transposed) times x^T [k, rows].
class Problem {
 public:
  Problem(const GemmKey& key, const void* bias) {
    const cudaDataType_t data = key.type == static_cast<int>(ElementType::kFloat16) ? CUDA_R_16F : CUDA_R_16BF;
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    ok_ = cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)) ==
              CUBLAS_STATUS_SUCCESS &&
          cublasLtMatrixLayoutCreate(&a_, data, key.k, key.n, key.k) == CUBLAS_STATUS_SUCCESS &&
          cublasLtMatrixLayoutCreate(&b_, data, key.k, key.rows, key.k) == CUBLAS_STATUS_SUCCESS &&
          cublasLtMatrixLayoutCreate(&c_, data, key.n, key.rows, key.n) == CUBLAS_STATUS_SUCCESS;
    if (ok_ && bias != nullptr) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      ok_ = cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) ==
                CUBLAS_STATUS_SUCCESS;
    }
  }
  ~Problem() {
    if (c_ != nullptr) cublasLtMatrixLayoutDestroy(c_);
    if (b_ != nullptr) cublasLtMatrixLayoutDestroy(b_);
    if (a_ != nullptr) cublasLtMatrixLayoutDestroy(a_);
    if (desc_ != nullptr) cublasLtMatmulDescDestroy(desc_);
  }
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  bool ok() const { return ok_; }

  // cuBLASLt's candidates, best-first by its own estimate.
  std::vector<cublasLtMatmulAlgo_t> Candidates(cublasLtHandle_t handle, const GemmKey& key, size_t workspace_bytes,
                                               int count) const {
    std::vector<cublasLtMatmulAlgo_t> algos;
    cublasLtMatmulPreference_t preference = nullptr;
    if (cublasLtMatmulPreferenceCreate(&preference) != CUBLAS_STATUS_SUCCESS) return algos;
    const uint64_t workspace = workspace_bytes;
    bool ok = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                   sizeof(workspace)) == CUBLAS_STATUS_SUCCESS;
    for (cublasLtMatmulPreferenceAttributes_t attribute :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      ok = ok && cublasLtMatmulPreferenceSetAttribute(preference, attribute, &key.alignment,
                                                      sizeof(key.alignment)) == CUBLAS_STATUS_SUCCESS;
    }
    std::vector<cublasLtMatmulHeuristicResult_t> results(count);
    int returned = 0;
    if (ok && cublasLtMatmulAlgoGetHeuristic(handle, desc_, a_, b_, c_, c_, preference, count, results.data(),
                                             &returned) == CUBLAS_STATUS_SUCCESS) {
      for (int i = 0; i < returned; ++i) {
        if (results[i].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[i].algo);
      }
    }
    cublasLtMatmulPreferenceDestroy(preference);
    return algos;
  }

  bool Run(cublasLtHandle_t handle, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, void* y,
           void* workspace, size_t workspace_bytes, cudaStream_t stream) const {
    const float alpha = 1.0f, beta = 0.0f;
    return cublasLtMatmul(handle, desc_, &alpha, w, a_, x, b_, &beta, y, c_, y, c_, &algo, workspace,
                          workspace_bytes, stream) == CUBLAS_STATUS_SUCCESS;
  }

 private:
  bool ok_ = false;
  cublasLtMatmulDesc_t desc_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
};

// Median microseconds of kTimedCalls calls, each after the workspace (at least the L2's size in
// practice) is overwritten so the weight comes from HBM as it does in a decode step; negative
// when cuBLASLt refuses the algorithm.
double TimeCandidate(const Problem& problem, cublasLtHandle_t handle, const cublasLtMatmulAlgo_t& algo,
                     const void* x, const void* w, void* y, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  if (!problem.Run(handle, algo, x, w, y, workspace, workspace_bytes, stream)) return -1;
  cudaEvent_t events[2 * kTimedCalls] = {};
  bool ok = true;
  for (cudaEvent_t& event : events) ok = ok && cudaEventCreate(&event) == cudaSuccess;
  for (int i = 0; ok && i < kTimedCalls; ++i) {
    ok = cudaMemsetAsync(workspace, i, workspace_bytes, stream) == cudaSuccess &&
         cudaEventRecord(events[2 * i], stream) == cudaSuccess &&
         problem.Run(handle, algo, x, w, y, workspace, workspace_bytes, stream) &&
         cudaEventRecord(events[2 * i + 1], stream) == cudaSuccess;
  }
  std::vector<double> micros;
  if (ok && cudaEventSynchronize(events[2 * kTimedCalls - 1]) == cudaSuccess) {
    for (int i = 0; i < kTimedCalls; ++i) {
      float ms = 0;
      if (cudaEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]) == cudaSuccess) micros.push_back(1000.0 * ms);
    }
  }
  for (cudaEvent_t event : events) {
    if (event != nullptr) cudaEventDestroy(event);
  }
  if (micros.size() != kTimedCalls) return -1;
  std::nth_element(micros.begin(), micros.begin() + kTimedCalls / 2, micros.end());
  return micros[kTimedCalls / 2];
}

class Tuner {
 public:
  static Tuner& Get() {
    static Tuner* tuner = new Tuner();  // lives as long as the process: handles outlive static teardown
    return *tuner;
  }

  bool Run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y, void* workspace,
           size_t workspace_bytes, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    cublasLtHandle_t handle = Handle(key.device);
    if (handle == nullptr) return false;
    Problem problem(key, bias);
    if (!problem.ok()) return false;
    auto chosen = chosen_.find(key);
    if (chosen == chosen_.end()) {
      const std::vector<cublasLtMatmulAlgo_t> candidates =
          problem.Candidates(handle, key, workspace_bytes, kTunedGemmCandidates);
      if (candidates.empty()) return false;
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
        // Timing inside a capture is impossible; the first eager call of this shape tunes it.
        return problem.Run(handle, candidates.front(), x, w, y, workspace, workspace_bytes, stream);
      }
      cublasLtMatmulAlgo_t best = candidates.front();
      if (IsPowerOfTwo(key.rows) && candidates.size() > 1) {
        best = Tune(problem, handle, key, candidates, x, w, y, workspace, workspace_bytes, stream);
      }
      chosen = chosen_.emplace(key, best).first;
    }
    return problem.Run(handle, chosen->second, x, w, y, workspace, workspace_bytes, stream);
  }

 private:
  Tuner() {
    const char* log = std::getenv("GLMSERVE_TUNED_GEMM_LOG");
    log_ = log != nullptr && std::strcmp(log, "1") == 0;
  }

  cublasLtHandle_t Handle(int device) {
    auto it = handles_.find(device);
    if (it != handles_.end()) return it->second;
    cublasLtHandle_t handle = nullptr;
    if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) handle = nullptr;
    handles_.emplace(device, handle);
    return handle;
  }

  cublasLtMatmulAlgo_t Tune(const Problem& problem, cublasLtHandle_t handle, const GemmKey& key,
                            const std::vector<cublasLtMatmulAlgo_t>& candidates, const void* x, const void* w,
                            void* y, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    size_t best = 0;
    double best_us = -1, first_us = -1;
    for (size_t i = 0; i < candidates.size(); ++i) {
      const double us = TimeCandidate(problem, handle, candidates[i], x, w, y, workspace, workspace_bytes, stream);
      if (i == 0) first_us = us;
      if (us > 0 && (best_us < 0 || us < best_us)) {
        best = i;
        best_us = us;
      }
    }
    cudaGetLastError();  // a refused candidate must not surface in the caller's next launch check
    if (log_) {
      std::fprintf(stderr,
                   "tuned GEMM rows %d n %lld k %lld bias %d: heuristic's first %.1f us, chosen #%zu of %zu %.1f us\n",
                   key.rows, static_cast<long long>(key.n), static_cast<long long>(key.k), key.bias ? 1 : 0, first_us,
                   best, candidates.size(), best_us);
    }
    return candidates[best];
  }

  std::mutex mu_;
  bool log_ = false;
  std::map<int, cublasLtHandle_t> handles_;
  std::map<GemmKey, cublasLtMatmulAlgo_t> chosen_;
};

}  // namespace

size_t TunedGemmWorkspaceBytes() { return kWorkspaceBytes; }

bool TunedGemmCuda(const void* x, const void* w, const void* bias, void* y, int32_t rows, int64_t n, int64_t k,
                   ElementType type, void* workspace, size_t workspace_bytes, void* stream) {
  if (type == ElementType::kFloat32 || rows <= 0 || n <= 0 || k <= 0 || k % 8 != 0 || n % 8 != 0) return false;
  GemmKey key;
  if (cudaGetDevice(&key.device) != cudaSuccess) return false;
  key.type = static_cast<int>(type);
  key.n = n;
  key.k = k;
  key.rows = rows;
  key.bias = bias != nullptr;
  key.alignment = std::min({AlignmentOf(x), AlignmentOf(w), AlignmentOf(y), AlignmentOf(workspace),
                            bias != nullptr ? AlignmentOf(bias) : 256u});
  if (key.alignment < 16) return false;
  return Tuner::Get().Run(key, x, w, bias, y, workspace, workspace_bytes, static_cast<cudaStream_t>(stream));
}

}  // namespace glmserve::kernels
