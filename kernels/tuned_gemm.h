// A linear layer's product through cuBLASLt, y = x w^T (+ bias), with the algorithm for each
// (rows, shape) chosen by timing cuBLASLt's own candidates instead of taking its heuristic's first.
// The heuristic misses on some of GLM-4-9B's shapes on an H200 (bench/results/gpu.md, third
// session: the down projection at 192 rows 59.4 us against 42.8 for the best candidate, o at 320
// rows 37.3 against 19.4, gate_up at 64 rows 62.9 against 58.2).
//
// Layout as ATen's linear: x [rows, k], w [n, k] and y [rows, n] row-major, bias [n] or null, all
// of the element type (bf16 or fp16; fp32 is not taken), fp32 accumulation. Device pointers;
// `stream` is a cudaStream_t. Tune times on the caller's weights (every layer's copy of a shape in
// turn, so the L2 cache holds none of them, as in a step); it must not run while a stream
// captures a graph. Run may be captured.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/element_type.h"

namespace glmserve::kernels {

struct GemmKey {
  int32_t rows = 0;  // x's rows (M of the layer's product)
  int64_t n = 0;     // output features (w's rows)
  int64_t k = 0;     // input features
  ElementType type = ElementType::kBFloat16;
  bool bias = false;
  friend bool operator<(const GemmKey& a, const GemmKey& b) {
    if (a.rows != b.rows) return a.rows < b.rows;
    if (a.n != b.n) return a.n < b.n;
    if (a.k != b.k) return a.k < b.k;
    if (a.type != b.type) return a.type < b.type;
    return a.bias < b.bias;
  }
};

// What Tune measured (microseconds a call, averaged over the weights).
struct GemmTuning {
  int candidates = 0;    // algorithms cuBLASLt offered that ran
  int chosen = -1;       // the fastest one's rank in the heuristic's order (0: its first)
  double chosen_us = 0;  // the fastest one's time
  double first_us = 0;   // the heuristic's first's time
  bool used = false;     // Run takes the shape: the fastest beat the first by min_gain
};

// Workspace every call may use (split-K partial sums); the caller passes at least this much.
constexpr size_t kTunedGemmWorkspaceBytes = size_t{32} << 20;

class TunedGemm {
 public:
  // Null where cuBLASLt cannot be set up (no CUDA build, no device).
  static std::unique_ptr<TunedGemm> Create();
  virtual ~TunedGemm() = default;

  // Times up to `max_candidates` of cuBLASLt's algorithms for `key` on each of `weights` in turn
  // (`biases`: one a weight, or empty when !key.bias), with x [rows, k] and y [rows, n] as scratch
  // (contents unused), and keeps the fastest for Run where it is faster than the heuristic's first
  // by at least `min_gain` (a fraction of the first's time); otherwise Takes refuses the shape and
  // the caller keeps its own call (alone, a GEMM's time says little about its time between a
  // step's other kernels: an H200's 64-row decode step lost 1-2% on candidates 2-8% faster
  // alone). False where none runs or the stream is capturing; `tuning` (optional) says what was
  // measured.
  virtual bool Tune(const GemmKey& key, const std::vector<const void*>& weights, const std::vector<const void*>& biases,
                    void* x, void* y, void* workspace, int max_candidates, double min_gain, void* stream,
                    GemmTuning* tuning) = 0;
  // True when Tune has measured `key` (whether or not Run takes it).
  virtual bool Tuned(const GemmKey& key) const = 0;
  // True when Tune chose an algorithm for `key` to run and the pointers have the alignment it was tuned
  // for (16 bytes).
  virtual bool Takes(const GemmKey& key, const void* x, const void* w, const void* bias, const void* y) const = 0;
  // y = x w^T (+ bias) with the algorithm chosen for `key`; false if cuBLASLt refuses it.
  virtual bool Run(const GemmKey& key, const void* x, const void* w, const void* bias, void* y, void* workspace,
                   void* stream) const = 0;
};

}  // namespace glmserve::kernels
