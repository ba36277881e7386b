// Loading a GLM checkpoint and running it, behind plain C++ types (no LibTorch in this header).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/generation.h"
#include "runtime/step_executor.h"

namespace glmserve {

struct LoadOptions {
  std::string device = "cpu";  // "cpu" or "cuda" / "cuda:N"
  // Compute dtype: "float32" (CPU default, bit-comparable with transformers' fp32), "bfloat16",
  // "float16". Empty picks float32 on CPU and bfloat16 on CUDA.
  std::string dtype;
  // Benchmarks: build the model from `directory`/config.json alone with random weights (no
  // weight files read or needed).
  bool random_weights = false;
  uint64_t random_seed = 0;
};

struct ExecutorOptions {
  int32_t block_size = 16;  // tokens per KV block. Must be >= 1.
  // KV pool size in blocks. > 0: exactly this many. 0: sized from memory, on CUDA
  // kv_memory_fraction x the device's free memory (after the weights are loaded and the
  // allocator's cache is emptied), on CPU kv_cpu_budget_bytes. The chosen count is logged.
  int32_t num_blocks = 0;
  double kv_memory_fraction = 0.9;                   // CUDA only; must be in (0, 1]
  int64_t kv_cpu_budget_bytes = int64_t{256} << 20;  // CPU pool size in bytes when num_blocks == 0
  // Test hook, off (0) by default: a step whose batch has more than this many sequences runs
  // the forward pass (writing KV) and then throws c10::OutOfMemoryError, so the executor's real
  // out-of-memory path (cache emptied, RESOURCE_EXHAUSTED, nothing committed) is exercised on
  // machines without a GPU. Production never sets it.
  int32_t inject_oom_above_sequences = 0;
  // CUDA: > 0 captures the decode CUDA graphs of every batch bucket (1, 2, 4, ...) up to this
  // many sequences while the executor is created, so no step waits for a capture (~30 ms for
  // GLM-4-9B) the first time the batch grows into a new bucket. Best effort: a capture that fails
  // (out of memory) is logged, and that bucket and the larger ones capture on first use. 0: every
  // bucket on first use. Must be >= 0.
  int32_t capture_decode_batch = 0;
  // Receives log lines (the chosen KV pool size). Null = stderr.
  std::function<void(const std::string&)> log;
  // Null = off. Called on the engine thread with the fp32 logits of every sampled row: the
  // sequence, how many ids it had generated before this row's, and the row of `vocab` values
  // (valid only during the call). For callers that report logits (`generate --json`'s
  // first_logits). While set, every sampled row's logits come to the host and are sampled
  // there (same ids as on the device, one copy per step more).
  std::function<void(int64_t sequence_id, int32_t num_generated, const float* logits, int32_t vocab)> on_sampled_logits;
};

class ModelRunner {
 public:
  // Loads and strictly validates `directory`. Codes survive from where they arise: NOT_FOUND for
  // a missing directory or no weight files at all, FAILED_PRECONDITION for any other checkpoint
  // problem (both with the full report as the message, one problem per line), INVALID_ARGUMENT for
  // bad options, RESOURCE_EXHAUSTED when the weights do not fit, INTERNAL for the rest.
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Load(const std::string& directory, const LoadOptions& options);
  virtual ~ModelRunner() = default;
  virtual const ModelInfo& info() const = 0;

  // A paged-KV executor over this model for the engine. The runner must outlive it.
  virtual absl::StatusOr<std::unique_ptr<StepExecutor>> CreateExecutor(const ExecutorOptions& options) = 0;
};

}  // namespace glmserve
