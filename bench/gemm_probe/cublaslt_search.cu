// Probe: how much faster than its heuristic cuBLASLt itself can run GLM-4-9B's projections at the
// row counts of decode and mixed steps, when its algorithm configurations are searched instead of
// taken from cublasLtMatmulAlgoGetHeuristic. Why: the engine times the heuristic's first 8
// candidates at start (kernels/tuned_gemm.h); at 64 rows a layer's four projections still stream
// their weights at ~3.5 TB/s (117 us against ~95 at 4.3 TB/s, bench/results/gpu.md, nineteenth
// session), and the heuristic never offers some split-K counts, tiles or cluster shapes.
// Not part of the build: scripts/gpu-gemm-probe.sh compiles and runs it on the GPU machine
// (GLMSERVE_GEMM_PROBE=cublaslt).
//
// For each (projection, rows): the heuristic's first, the fastest of its candidates (asked for
// 32), and the fastest configuration around them: each candidate with every tile its algorithm
// offers x split-K x reduction x swizzle x cluster shape that cublasLtMatmulAlgoCheck accepts,
// then the fastest four with every stage count and custom option (screened with a few calls, the
// fastest 12 and 8 timed again at length). Weights rotate over copies so L2 never holds them, as in a
// step. Every finalist's output is compared with the heuristic first's before it is reported.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace {

#define CHECK_CUDA(call)                                                                        \
  do {                                                                                          \
    cudaError_t e = (call);                                                                     \
    if (e != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // as the engine's kTunedGemmWorkspaceBytes
constexpr size_t kRotationBytes = size_t{400} << 20;  // more than the 50 MB L2, several times over

struct Shape {
  const char* name;
  int64_t n, k;
  bool bias;
};

struct Config {
  cublasLtMatmulAlgo_t algo;
  std::string text;
  double us = 0;
};

std::string Describe(const cublasLtMatmulAlgo_t& algo) {
  int id = 0, tile = 0, splitk = 0, reduction = 0, swizzle = 0, custom = 0, stages = 0, cluster = 0;
  size_t w = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof(id), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof(reduction), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, sizeof(swizzle), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof(custom), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof(stages), &w);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster), &w);
  char buf[160];
  std::snprintf(buf, sizeof(buf), "id %d tile %d stages %d splitk %d red %d swz %d custom %d cluster %d", id, tile,
                stages, splitk, reduction, swizzle, custom, cluster);
  return buf;
}

class Bench {
 public:
  Bench(cublasLtHandle_t handle, const Shape& shape, int rows) : handle_(handle), shape_(shape), rows_(rows) {
    const size_t weight_bytes = static_cast<size_t>(shape.n * shape.k) * 2;
    copies_ = static_cast<int>(std::max<size_t>(2, kRotationBytes / weight_bytes + 1));
    weights_.resize(copies_);
    for (auto& w : weights_) {
      CHECK_CUDA(cudaMalloc(&w, weight_bytes));
      Fill(w, shape.n * shape.k, 0.02f);
    }
    CHECK_CUDA(cudaMalloc(&x_, static_cast<size_t>(rows * shape.k) * 2));
    Fill(x_, rows * shape.k, 1.0f);
    CHECK_CUDA(cudaMalloc(&bias_, static_cast<size_t>(shape.n) * 2));
    Fill(bias_, shape.n, 0.1f);
    CHECK_CUDA(cudaMalloc(&y_, static_cast<size_t>(rows * shape.n) * 2));
    CHECK_CUDA(cudaMalloc(&reference_, static_cast<size_t>(rows * shape.n) * 2));
    CHECK_CUDA(cudaMalloc(&workspace_, kWorkspaceBytes));
    CHECK_CUDA(cudaStreamCreate(&stream_));
    CHECK_CUDA(cudaEventCreate(&start_));
    CHECK_CUDA(cudaEventCreate(&stop_));
    const cublasOperation_t transpose = CUBLAS_OP_T, plain = CUBLAS_OP_N;
    cublasLtMatmulDescCreate(&op_, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose));
    cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain));
    if (shape.bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue));
      cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_, sizeof(bias_));
    }
    cublasLtMatrixLayoutCreate(&a_, CUDA_R_16BF, shape.k, shape.n, shape.k);
    cublasLtMatrixLayoutCreate(&b_, CUDA_R_16BF, shape.k, rows, shape.k);
    cublasLtMatrixLayoutCreate(&c_, CUDA_R_16BF, shape.n, rows, shape.n);
  }
  ~Bench() {
    for (void* w : weights_) cudaFree(w);
    cudaFree(x_);
    cudaFree(bias_);
    cudaFree(y_);
    cudaFree(reference_);
    cudaFree(workspace_);
    cublasLtMatmulDescDestroy(op_);
    cublasLtMatrixLayoutDestroy(a_);
    cublasLtMatrixLayoutDestroy(b_);
    cublasLtMatrixLayoutDestroy(c_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(stream_);
  }

  std::vector<Config> Heuristic(int count) {
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulPreferenceCreate(&pref);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspaceBytes,
                                         sizeof(kWorkspaceBytes));
    std::vector<cublasLtMatmulHeuristicResult_t> results(count);
    int returned = 0;
    cublasLtMatmulAlgoGetHeuristic(handle_, op_, a_, b_, c_, c_, pref, count, results.data(), &returned);
    cublasLtMatmulPreferenceDestroy(pref);
    std::vector<Config> out;
    for (int i = 0; i < returned; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      out.push_back({results[i].algo, Describe(results[i].algo), 0});
    }
    return out;
  }

  // Each heuristic candidate with every tile, split-K count, reduction, swizzle and cluster shape
  // its algorithm takes, stages as the heuristic set them or left to cuBLASLt.
  std::vector<Config> Neighbours(const std::vector<Config>& bases, size_t limit) {
    std::vector<Config> out;
    std::set<std::string> described;  // the configurations in `out`, by Describe
    const int splits[] = {1, 2, 3, 4, 5, 6, 8, 12, 16};
    const int clusters[] = {-1, CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1, CUBLASLT_CLUSTER_SHAPE_2x1x1,
                            CUBLASLT_CLUSTER_SHAPE_1x2x1};
    for (const Config& base : bases) {
      std::vector<int> tiles = CapList(base.algo, CUBLASLT_ALGO_CAP_TILE_IDS);
      int base_tile = 0;
      size_t w = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&base.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &base_tile, sizeof(base_tile), &w);
      if (std::find(tiles.begin(), tiles.end(), base_tile) == tiles.end()) tiles.push_back(base_tile);
      int splitk_support = 0, reduction_mask = 0, swizzle_support = 0;
      cublasLtMatmulAlgoCapGetAttribute(&base.algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_support,
                                        sizeof(splitk_support), &w);
      cublasLtMatmulAlgoCapGetAttribute(&base.algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &reduction_mask,
                                        sizeof(reduction_mask), &w);
      cublasLtMatmulAlgoCapGetAttribute(&base.algo, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT, &swizzle_support,
                                        sizeof(swizzle_support), &w);
      for (int keep_stages = 1; keep_stages >= 0; --keep_stages) {
        for (int tile : tiles) {
          for (int splitk : splits) {
            if (splitk > 1 && !splitk_support) break;
            for (int reduction = 0; reduction <= CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
                 reduction = reduction ? reduction << 1 : 1) {
              if (splitk == 1 && reduction != 0) break;
              if (splitk > 1 && (reduction == 0 || !(reduction & reduction_mask))) continue;
              for (int swizzle = 0; swizzle <= (swizzle_support ? 1 : 0); ++swizzle) {
                for (int cluster : clusters) {
                  if (++checks_ > kMaxChecks) return out;
                  cublasLtMatmulAlgo_t candidate = base.algo;
                  Set(&candidate, CUBLASLT_ALGO_CONFIG_TILE_ID, tile);
                  if (!keep_stages) Set(&candidate, CUBLASLT_ALGO_CONFIG_STAGES_ID, 0);
                  Set(&candidate, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splitk);
                  Set(&candidate, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, reduction);
                  Set(&candidate, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, swizzle);
                  const bool accepted = cluster < 0
                                            ? Accept(&candidate, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splitk)
                                            : Accept(&candidate, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster);
                  if (!accepted) continue;
                  Config c{candidate, Describe(candidate), 0};
                  if (described.insert(c.text).second) out.push_back(c);
                  if (out.size() >= limit) return out;
                }
              }
            }
          }
        }
      }
    }
    return out;
  }

  // The same configuration with each of its algorithm's stage counts and custom options.
  std::vector<Config> Refine(const Config& base) {
    std::vector<Config> out;
    std::vector<int> stages = CapList(base.algo, CUBLASLT_ALGO_CAP_STAGES_IDS);
    int custom_max = 0;
    size_t w = 0;
    cublasLtMatmulAlgoCapGetAttribute(&base.algo, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &custom_max, sizeof(custom_max),
                                      &w);
    for (int stage : stages) {
      for (int custom = 0; custom <= std::min(custom_max, 7); ++custom) {
        cublasLtMatmulAlgo_t candidate = base.algo;
        Set(&candidate, CUBLASLT_ALGO_CONFIG_STAGES_ID, stage);
        if (Accept(&candidate, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, custom)) {
          out.push_back({candidate, Describe(candidate), 0});
        }
      }
    }
    return out;
  }

  size_t checks() const { return checks_; }

  // Mean microseconds a call over `calls` calls, each on the next weight copy; < 0 if it fails.
  double Time(const cublasLtMatmulAlgo_t& algo, int calls) {
    const float one = 1.0f, zero = 0.0f;
    for (int i = 0; i < 2; ++i) {
      if (Call(algo, weights_[(next_++) % copies_], y_, one, zero) != CUBLAS_STATUS_SUCCESS) return -1;
    }
    cudaEventRecord(start_, stream_);
    for (int i = 0; i < calls; ++i) Call(algo, weights_[(next_++) % copies_], y_, one, zero);
    cudaEventRecord(stop_, stream_);
    if (cudaEventSynchronize(stop_) != cudaSuccess) {
      cudaGetLastError();
      return -1;
    }
    float ms = 0;
    cudaEventElapsedTime(&ms, start_, stop_);
    return 1000.0 * ms / calls;
  }

  // Runs `algo` on the first weight copy into the reference (first) or y, then compares y with it:
  // the largest |difference| over the largest |reference|.
  void RunReference(const cublasLtMatmulAlgo_t& algo) {
    Call(algo, weights_[0], reference_, 1.0f, 0.0f);
    CHECK_CUDA(cudaStreamSynchronize(stream_));
  }
  double RelativeError(const cublasLtMatmulAlgo_t& algo) {
    CHECK_CUDA(cudaMemsetAsync(y_, 0, static_cast<size_t>(rows_ * shape_.n) * 2, stream_));
    if (Call(algo, weights_[0], y_, 1.0f, 0.0f) != CUBLAS_STATUS_SUCCESS) return 1e9;
    CHECK_CUDA(cudaStreamSynchronize(stream_));
    const size_t count = static_cast<size_t>(rows_ * shape_.n);
    std::vector<__nv_bfloat16> got(count), want(count);
    CHECK_CUDA(cudaMemcpy(got.data(), y_, count * 2, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(want.data(), reference_, count * 2, cudaMemcpyDeviceToHost));
    double worst = 0, scale = 1e-6;
    for (size_t i = 0; i < count; ++i) {
      const double g = __bfloat162float(got[i]), r = __bfloat162float(want[i]);
      worst = std::max(worst, std::fabs(g - r));
      scale = std::max(scale, std::fabs(r));
    }
    return worst / scale;
  }

 private:
  // Sets `attr` and asks cublasLtMatmulAlgoCheck whether the configuration runs within the workspace.
  bool Accept(cublasLtMatmulAlgo_t* algo, cublasLtMatmulAlgoConfigAttributes_t attr, int value) {
    if (cublasLtMatmulAlgoConfigSetAttribute(algo, attr, &value, sizeof(value)) != CUBLAS_STATUS_SUCCESS) return false;
    cublasLtMatmulHeuristicResult_t check;
    return cublasLtMatmulAlgoCheck(handle_, op_, a_, b_, c_, c_, algo, &check) == CUBLAS_STATUS_SUCCESS &&
           check.workspaceSize <= kWorkspaceBytes;
  }
  static void Set(cublasLtMatmulAlgo_t* algo, cublasLtMatmulAlgoConfigAttributes_t attr, int value) {
    cublasLtMatmulAlgoConfigSetAttribute(algo, attr, &value, sizeof(value));
  }
  static std::vector<int> CapList(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoCapAttributes_t attr) {
    size_t bytes = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&algo, attr, nullptr, 0, &bytes) != CUBLAS_STATUS_SUCCESS || bytes == 0) {
      return {};
    }
    std::vector<int> values(bytes / sizeof(int));
    cublasLtMatmulAlgoCapGetAttribute(&algo, attr, values.data(), bytes, &bytes);
    return values;
  }
  cublasStatus_t Call(const cublasLtMatmulAlgo_t& algo, const void* w, void* y, float alpha, float beta) {
    return cublasLtMatmul(handle_, op_, &alpha, w, a_, x_, b_, &beta, y, c_, y, c_, &algo, workspace_, kWorkspaceBytes,
                          stream_);
  }
  void Fill(void* p, int64_t count, float scale) {
    std::vector<__nv_bfloat16> host(static_cast<size_t>(count));
    uint32_t state = 12345u + static_cast<uint32_t>(count);
    for (auto& v : host) {
      state = state * 1664525u + 1013904223u;
      v = __float2bfloat16(scale * (static_cast<float>(state >> 8) / 16777216.0f - 0.5f));
    }
    CHECK_CUDA(cudaMemcpy(p, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  }

  cublasLtHandle_t handle_;
  Shape shape_;
  int rows_;
  int copies_ = 2;
  int next_ = 0;
  size_t checks_ = 0;
  static constexpr size_t kMaxChecks = 400000;
  std::vector<void*> weights_;
  void *x_ = nullptr, *bias_ = nullptr, *y_ = nullptr, *reference_ = nullptr, *workspace_ = nullptr;
  cudaStream_t stream_;
  cudaEvent_t start_, stop_;
  cublasLtMatmulDesc_t op_;
  cublasLtMatrixLayout_t a_, b_, c_;
};

std::vector<int> ParseList(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p;) {
    out.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // argv[1]: row counts (default 64,128,256); argv[2]: projections (default qkv,o,gate_up,down,lm_head);
  // argv[3]: most configurations screened per (projection, rows).
  const std::vector<int> rows_list = ParseList(argc > 1 ? argv[1] : "64,128,256");
  const std::string wanted = argc > 2 ? argv[2] : "qkv,o,gate_up,down,lm_head";
  const size_t limit = argc > 3 ? static_cast<size_t>(std::atol(argv[3])) : 6000;
  const Shape shapes[] = {{"qkv", 4608, 4096, true},
                          {"o", 4096, 4096, false},
                          {"gate_up", 27392, 4096, false},
                          {"down", 4096, 13696, false},
                          {"lm_head", 151552, 4096, false}};
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s, cuBLASLt %zu\n", prop.name, cublasLtGetVersion());
  cublasLtHandle_t handle;
  cublasLtCreate(&handle);
  std::printf(
      "| projection | rows | heuristic first us | best candidate us | configurations (of checked) | best us | TB/s | "
      "gain vs best candidate | rel err | best configuration |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (int rows : rows_list) {
    for (const Shape& shape : shapes) {
      if (("," + wanted + ",").find(std::string(",") + shape.name + ",") == std::string::npos) continue;
      const auto begin = std::chrono::steady_clock::now();
      Bench bench(handle, shape, rows);
      const int long_calls = shape.n * shape.k > 200'000'000 ? 20 : 60;
      std::vector<Config> heuristic = bench.Heuristic(32);
      if (heuristic.empty()) {
        std::printf("| %s | %d | no heuristic result |\n", shape.name, rows);
        continue;
      }
      bench.RunReference(heuristic[0].algo);
      for (auto& c : heuristic) c.us = bench.Time(c.algo, long_calls);
      const double first_us = heuristic[0].us;
      double best32 = 1e30;
      for (const auto& c : heuristic) {
        if (c.us > 0) best32 = std::min(best32, c.us);
      }
      std::vector<Config> all = bench.Neighbours(heuristic, limit);
      const size_t searched = all.size();
      std::fprintf(stderr, "%s %d: %zu heuristic, %zu configurations around them (%zu checks)\n", shape.name, rows,
                   heuristic.size(), searched, bench.checks());
      for (size_t i = 0; i < std::min<size_t>(heuristic.size(), 3); ++i) {
        std::fprintf(stderr, "  heuristic %zu: %.1f us %s\n", i, heuristic[i].us, heuristic[i].text.c_str());
      }
      for (auto& c : all) c.us = bench.Time(c.algo, 4);
      all.erase(std::remove_if(all.begin(), all.end(), [](const Config& c) { return c.us <= 0; }), all.end());
      std::sort(all.begin(), all.end(), [](const Config& a, const Config& b) { return a.us < b.us; });
      if (all.size() > 12) all.resize(12);
      std::vector<Config> refined;
      for (size_t i = 0; i < std::min<size_t>(all.size(), 4); ++i) {
        for (auto& c : bench.Refine(all[i])) {
          c.us = bench.Time(c.algo, 4);
          if (c.us > 0) refined.push_back(c);
        }
      }
      std::sort(refined.begin(), refined.end(), [](const Config& a, const Config& b) { return a.us < b.us; });
      if (refined.size() > 8) refined.resize(8);
      all.insert(all.end(), refined.begin(), refined.end());
      for (auto& c : all) c.us = bench.Time(c.algo, long_calls);
      std::sort(all.begin(), all.end(), [](const Config& a, const Config& b) { return a.us < b.us; });
      // The fastest finalist whose output matches the heuristic first's.
      const Config* best = nullptr;
      double error = 0;
      for (const auto& c : all) {
        error = bench.RelativeError(c.algo);
        if (error < 2e-2) {
          best = &c;
          break;
        }
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
      const double bytes = static_cast<double>(shape.n * shape.k) * 2;
      if (best == nullptr) {
        std::printf("| %s | %d | %.1f | %.1f | %zu | none matched | | | | (%.0f s) |\n", shape.name, rows, first_us,
                    best32, searched, seconds);
      } else {
        std::printf("| %s | %d | %.1f | %.1f | %zu of %zu | %.1f | %.2f | %+.1f%% | %.1e | %s (%.0f s) |\n", shape.name,
                    rows, first_us, best32, searched, bench.checks(), best->us, bytes / best->us / 1e6,
                    100.0 * (best32 - best->us) / best32, error, best->text.c_str(), seconds);
      }
      std::fflush(stdout);
    }
  }
  cublasLtDestroy(handle);
  return 0;
}
