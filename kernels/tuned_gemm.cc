#include "kernels/tuned_gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace glmserve::kernels {
namespace {

constexpr uint32_t kAlignmentBytes = 16;

bool Aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % kAlignmentBytes == 0; }

cudaDataType_t DataType(ElementType type) { return type == ElementType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF; }

// cuBLASLt is column-major: y^T [n, rows] = (w [n, k] row-major, i.e. [k, n] column-major, used
// transposed) x (x^T: [k, rows] column-major). One descriptor set per key; each holds the layouts
// and the epilogue, the bias pointer set per call.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool used = false;  // Run takes the key (the fastest beat the heuristic's first by the margin)
  void Destroy() {
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    op = nullptr;
    a = b = c = nullptr;
  }
};

bool MakePlan(const GemmKey& key, Plan* plan) {
  const cudaDataType_t type = DataType(key.type);
  const cublasOperation_t transpose = CUBLAS_OP_T, plain = CUBLAS_OP_N;
  bool ok = cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain)) ==
                CUBLAS_STATUS_SUCCESS &&
            cublasLtMatrixLayoutCreate(&plan->a, type, key.k, key.n, key.k) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatrixLayoutCreate(&plan->b, type, key.k, key.rows, key.k) == CUBLAS_STATUS_SUCCESS &&
            cublasLtMatrixLayoutCreate(&plan->c, type, key.n, key.rows, key.n) == CUBLAS_STATUS_SUCCESS;
  if (ok && key.bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    ok = cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)) ==
         CUBLAS_STATUS_SUCCESS;
  }
  if (!ok) plan->Destroy();
  return ok;
}

class CublasLtGemm final : public TunedGemm {
 public:
  explicit CublasLtGemm(cublasLtHandle_t handle) : handle_(handle) {}
  ~CublasLtGemm() override {
    for (auto& [key, plan] : plans_) plan.Destroy();
    cublasLtDestroy(handle_);
  }

  bool Tune(const GemmKey& key, const std::vector<const void*>& weights, const std::vector<const void*>& biases,
            void* x, void* y, void* workspace, int max_candidates, double min_gain, void* stream,
            GemmTuning* tuning) override {
    if (tuning != nullptr) *tuning = GemmTuning{};
    if (!ValidKey(key) || weights.empty() || (key.bias && biases.size() != weights.size()) || max_candidates < 1 ||
        !Aligned(x) || !Aligned(y) || !Aligned(workspace)) {
      return false;
    }
    const auto s = static_cast<cudaStream_t>(stream);
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &capturing) != cudaSuccess || capturing != cudaStreamCaptureStatusNone) return false;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (!Aligned(weights[i]) || (key.bias && !Aligned(biases[i]))) return false;
    }
    Plan plan;
    if (!MakePlan(key, &plan)) return false;
    std::vector<cublasLtMatmulHeuristicResult_t> found(static_cast<size_t>(max_candidates));
    int returned = 0;
    cublasLtMatmulPreference_t preference = nullptr;
    const uint64_t workspace_bytes = kTunedGemmWorkspaceBytes;
    bool ok = cublasLtMatmulPreferenceCreate(&preference) == CUBLAS_STATUS_SUCCESS &&
              cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &workspace_bytes, sizeof(workspace_bytes)) == CUBLAS_STATUS_SUCCESS;
    for (auto attribute : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                           CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
      ok = ok && cublasLtMatmulPreferenceSetAttribute(preference, attribute, &kAlignmentBytes,
                                                      sizeof(kAlignmentBytes)) == CUBLAS_STATUS_SUCCESS;
    }
    ok = ok && cublasLtMatmulAlgoGetHeuristic(handle_, plan.op, plan.a, plan.b, plan.c, plan.c, preference,
                                              max_candidates, found.data(), &returned) == CUBLAS_STATUS_SUCCESS;
    if (preference != nullptr) cublasLtMatmulPreferenceDestroy(preference);
    if (!ok || returned <= 0) {
      plan.Destroy();
      return false;
    }
    cudaEvent_t start = nullptr, stop = nullptr;
    if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
      if (start != nullptr) cudaEventDestroy(start);
      plan.Destroy();
      return false;
    }
    // One pass: every weight once. A warm-up pass (and the check that the candidate runs), then
    // kPasses timed.
    constexpr int kPasses = 2;
    auto pass = [&](const cublasLtMatmulAlgo_t& algo) {
      for (size_t i = 0; i < weights.size(); ++i) {
        if (!Matmul(plan, algo, x, weights[i], key.bias ? biases[i] : nullptr, y, workspace, s)) return false;
      }
      return true;
    };
    int best = -1, candidates = 0;
    float best_ms = 0, first_ms = -1;
    for (int i = 0; i < returned; ++i) {
      if (found[i].state != CUBLAS_STATUS_SUCCESS || !pass(found[i].algo)) {
        cudaGetLastError();
        continue;
      }
      cudaEventRecord(start, s);
      bool ran = true;
      for (int p = 0; p < kPasses && ran; ++p) ran = pass(found[i].algo);
      cudaEventRecord(stop, s);
      float ms = 0;
      if (!ran || cudaEventSynchronize(stop) != cudaSuccess || cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) {
        cudaGetLastError();
        continue;
      }
      ++candidates;
      if (i == 0) first_ms = ms;
      if (best < 0 || ms < best_ms) {
        best = i;
        best_ms = ms;
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    if (best < 0) {
      plan.Destroy();
      return false;
    }
    const double calls = static_cast<double>(kPasses) * static_cast<double>(weights.size());
    plan.algo = found[best].algo;
    plan.used = first_ms < 0 || best_ms <= (1.0 - min_gain) * first_ms;
    if (tuning != nullptr) {
      tuning->candidates = candidates;
      tuning->chosen = best;
      tuning->chosen_us = 1000.0 * best_ms / calls;
      tuning->first_us = first_ms >= 0 ? 1000.0 * first_ms / calls : -1;
      tuning->used = plan.used;
    }
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, inserted] = plans_.emplace(key, plan);
    if (!inserted) {
      it->second.Destroy();
      it->second = plan;
    }
    return true;
  }

  bool Tuned(const GemmKey& key) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return plans_.count(key) > 0;
  }

  bool Takes(const GemmKey& key, const void* x, const void* w, const void* bias, const void* y) const override {
    if (key.bias != (bias != nullptr) || !Aligned(x) || !Aligned(w) || !Aligned(bias) || !Aligned(y)) return false;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(key);
    return it != plans_.end() && it->second.used;
  }

  bool Run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y, void* workspace,
           void* stream) const override {
    // Held through the call: the plan's descriptor takes this call's bias pointer.
    std::lock_guard<std::mutex> lock(mu_);
    auto it = plans_.find(key);
    if (it == plans_.end() || !it->second.used) return false;
    return Matmul(it->second, it->second.algo, x, w, bias, y, workspace, static_cast<cudaStream_t>(stream));
  }

 private:
  static bool ValidKey(const GemmKey& key) {
    return key.type != ElementType::kFloat32 && key.rows > 0 && key.n > 0 && key.k > 0 &&
           key.n * 2 % kAlignmentBytes == 0 && key.k * 2 % kAlignmentBytes == 0;
  }

  // The bias pointer is a descriptor attribute, set per call: a plan in plans_ is shared between
  // callers, so Run holds mu_ around this; Tune's plan is its own until it is stored.
  bool Matmul(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const void* x, const void* w, const void* bias,
              void* y, void* workspace, cudaStream_t stream) const {
    const float one = 1.0f, zero = 0.0f;
    if (bias != nullptr && cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                          sizeof(bias)) != CUBLAS_STATUS_SUCCESS) {
      return false;
    }
    return cublasLtMatmul(handle_, plan.op, &one, w, plan.a, x, plan.b, &zero, y, plan.c, y, plan.c, &algo, workspace,
                          kTunedGemmWorkspaceBytes, stream) == CUBLAS_STATUS_SUCCESS;
  }

  cublasLtHandle_t handle_;
  mutable std::mutex mu_;  // plans_, and a stored plan's descriptor while Run sets its bias pointer
  std::map<GemmKey, Plan> plans_;
};

}  // namespace

std::unique_ptr<TunedGemm> TunedGemm::Create() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return nullptr;
  }
  cublasLtHandle_t handle = nullptr;
  if (cublasLtCreate(&handle) != CUBLAS_STATUS_SUCCESS) return nullptr;
  return std::make_unique<CublasLtGemm>(handle);
}

}  // namespace glmserve::kernels
