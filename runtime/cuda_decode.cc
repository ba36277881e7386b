// CUDA decode fast path: an all-decode batch (one new token per sequence) runs through the
// paged-attention kernel, and each batch-size bucket's whole forward is captured once as a CUDA
// graph and replayed, so per-step CPU launch overhead stops dominating. Prefill stays eager.
// Compiled only against a CUDA LibTorch (GLMSERVE_TORCH_CUDA).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "kernels/paged_attention.h"
#include "kernels/rms_norm.h"
#include "runtime/glm_model.h"

namespace glmserve {

class CudaDecodeRunner {
 public:
  explicit CudaDecodeRunner(const GlmModel& model) : model_(model) {
    // GLMSERVE_CUDA_GRAPHS=0 runs the same kernels eagerly (diagnosis, timing comparisons).
    const char* env = std::getenv("GLMSERVE_CUDA_GRAPHS");
    graphs_ = env == nullptr || std::strcmp(env, "0") != 0;
    const char* fused = std::getenv("GLMSERVE_CUDA_FUSED_NORM");
    fused_norm_ = fused == nullptr || std::strcmp(fused, "0") != 0;
    const char* verify = std::getenv("GLMSERVE_CUDA_GRAPHS_VERIFY");
    verify_ = verify != nullptr && std::strcmp(verify, "1") == 0;
    max_context_ = std::min<int32_t>(model.config().max_position_embeddings, kernels::PagedAttentionMaxContext());
  }

  at::Tensor Run(const std::vector<SequenceStep>& batch, KvPool& kv) {
    // One model may be driven from two threads (the engine, and Generate from a CLI or a test):
    // buckets, staging buffers and captures are shared state.
    std::lock_guard<std::mutex> lock(mu_);
    const int32_t n = static_cast<int32_t>(batch.size());
    int32_t size = 1;
    while (size < n) size *= 2;
    if (size > kMaxBucket) return at::Tensor();
    for (const SequenceStep& s : batch) {
      if (s.start_position + 1 > max_context_) return at::Tensor();
    }
    const int32_t max_blocks = (max_context_ + kv.block_size - 1) / kv.block_size;
    Bucket& bucket = buckets_[size];
    // A graph holds raw addresses of every layer's KV slice: a pool of another size can start at
    // the same address (the allocator reuses memory) yet place its layers elsewhere.
    // K and V are separate allocations: a new pool can reuse K's old address while V moves.
    const bool same_pool = bucket.pool_key == kv.k.data_ptr() && bucket.pool_v_key == kv.v.data_ptr() &&
                           bucket.block_size == kv.block_size && bucket.pool_blocks == kv.num_blocks;
    if (!same_pool) Prepare(bucket, size, max_blocks, kv);
    Stage(bucket, batch, kv);
    if (!graphs_) return Step(bucket, kv).narrow(0, 0, n);
    if (!same_pool || !bucket.graph) Capture(bucket, kv);
    bucket.graph->replay();
    if (verify_) Verify(bucket, kv, n);
    return bucket.logits.narrow(0, 0, n);
  }

 private:
  static constexpr int32_t kMaxBucket = 256;

  struct Bucket {
    int32_t size = 0;
    int32_t max_blocks = 0;
    int32_t block_size = 0;
    int32_t pool_blocks = 0;
    void* pool_key = nullptr;    // K pool address the graph was captured with
    void* pool_v_key = nullptr;  // V pool address
    at::Tensor host_ids, host_positions, host_slots, host_tables, host_lens;  // pinned staging
    at::Tensor ids, positions, slots, tables, lens;                           // device, fixed addresses
    at::Tensor logits;                                                        // graph output
    std::unique_ptr<at::cuda::CUDAGraph> graph;
  };

  void Prepare(Bucket& b, int32_t size, int32_t max_blocks, KvPool& kv) {
    b = Bucket();
    b.size = size;
    b.max_blocks = max_blocks;
    b.block_size = kv.block_size;
    b.pool_blocks = kv.num_blocks;
    b.pool_key = kv.k.data_ptr();
    b.pool_v_key = kv.v.data_ptr();
    const auto pinned_long = at::TensorOptions().dtype(at::kLong).pinned_memory(true);
    const auto pinned_int = at::TensorOptions().dtype(at::kInt).pinned_memory(true);
    b.host_ids = at::empty({size}, pinned_long);
    b.host_positions = at::empty({size}, pinned_long);
    b.host_slots = at::empty({size}, pinned_long);
    b.host_tables = at::empty({size, max_blocks}, pinned_int);
    b.host_lens = at::empty({size}, pinned_int);
    const at::Device device = model_.device();
    b.ids = at::empty({size}, b.host_ids.options().pinned_memory(false).device(device));
    b.positions = at::empty({size}, b.host_positions.options().pinned_memory(false).device(device));
    b.slots = at::empty({size}, b.host_slots.options().pinned_memory(false).device(device));
    b.tables = at::empty({size, max_blocks}, b.host_tables.options().pinned_memory(false).device(device));
    b.lens = at::empty({size}, b.host_lens.options().pinned_memory(false).device(device));
  }

  // Copies this step's inputs into the bucket's fixed device buffers; rows past the batch are
  // padding that reads and writes only the pool's scratch block.
  void Stage(Bucket& b, const std::vector<SequenceStep>& batch, const KvPool& kv) {
    int64_t* ids = b.host_ids.data_ptr<int64_t>();
    int64_t* positions = b.host_positions.data_ptr<int64_t>();
    int64_t* slots = b.host_slots.data_ptr<int64_t>();
    int32_t* tables = b.host_tables.data_ptr<int32_t>();
    int32_t* lens = b.host_lens.data_ptr<int32_t>();
    const int32_t scratch = kv.scratch_block();
    for (int32_t row = 0; row < b.size; ++row) {
      int32_t* table = tables + static_cast<int64_t>(row) * b.max_blocks;
      if (row < static_cast<int32_t>(batch.size())) {
        const SequenceStep& s = batch[row];
        const int32_t pos = s.start_position;
        ids[row] = s.tokens[0];
        positions[row] = pos;
        slots[row] = int64_t{s.block_table.at(pos / kv.block_size)} * kv.block_size + pos % kv.block_size;
        // The kernel reads only the entries covering the context; the rest may hold stale ids.
        const int32_t used = std::min<int32_t>(pos / kv.block_size + 1, b.max_blocks);
        std::copy(s.block_table.begin(), s.block_table.begin() + used, table);
        lens[row] = pos + 1;
      } else {
        ids[row] = 0;
        positions[row] = 0;
        slots[row] = int64_t{scratch} * kv.block_size;
        table[0] = scratch;
        lens[row] = 1;
      }
    }
    b.ids.copy_(b.host_ids, /*non_blocking=*/true);
    b.positions.copy_(b.host_positions, true);
    b.slots.copy_(b.host_slots, true);
    b.tables.copy_(b.host_tables, true);
    b.lens.copy_(b.host_lens, true);
  }

  at::Tensor Step(Bucket& b, KvPool& kv) {
    const ModelConfig& c = model_.config();
    kernels::PagedAttentionShape shape;
    shape.batch = b.size;
    shape.num_heads = c.num_attention_heads;
    shape.num_kv_heads = c.num_key_value_heads;
    shape.head_dim = c.head_dim;
    shape.block_size = kv.block_size;
    shape.max_blocks_per_seq = b.max_blocks;
    shape.max_context = max_context_;
    shape.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
    kernels::ElementType type = kernels::ElementType::kFloat32;
    if (model_.dtype() == at::kBFloat16) type = kernels::ElementType::kBFloat16;
    if (model_.dtype() == at::kHalf) type = kernels::ElementType::kFloat16;
    auto attend = [&](const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
      at::Tensor out = at::empty_like(q);
      if (!kernels::PagedAttentionDecodeCuda(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                             b.tables.data_ptr<int32_t>(), b.lens.data_ptr<int32_t>(), out.data_ptr(),
                                             shape, type, at::cuda::getCurrentCUDAStream().stream())) {
        throw std::runtime_error("paged-attention decode kernel launch failed");
      }
      return out.view({q.size(0), q.size(1) * q.size(2)});
    };
    const float eps = static_cast<float>(c.rms_norm_eps);
    auto add_rms_norm = [&](const at::Tensor& delta, at::Tensor& residual, const at::Tensor& weight) {
      at::Tensor out = at::empty_like(residual);
      if (!kernels::FusedAddRmsNormCudaTyped(delta.defined() ? delta.data_ptr() : nullptr, residual.data_ptr(),
                                             weight.data_ptr(), out.data_ptr(), residual.size(0), residual.size(1),
                                             eps, static_cast<int>(type), at::cuda::getCurrentCUDAStream().stream())) {
        throw std::runtime_error("fused add+RMSNorm kernel launch failed");
      }
      return out;
    };
    return model_.Logits(model_.RunLayers(b.ids, b.positions, b.slots, kv, attend,
                                          fused_norm_ ? GlmModel::AddRmsNormFn(add_rms_norm) : nullptr));
  }

  // GLMSERVE_CUDA_GRAPHS_VERIFY=1 (diagnosis only): re-runs each replayed step eagerly and reports
  // where the graph's logits differ from the eager ones (max |diff|, rows whose argmax differs).
  void Verify(Bucket& b, KvPool& kv, int32_t n) {
    at::Tensor graph_logits = b.logits.narrow(0, 0, n).clone();
    at::Tensor eager_logits = Step(b, kv).narrow(0, 0, n);
    const double max_diff = (graph_logits - eager_logits).abs().max().item<double>();
    const int64_t argmax_differs = (graph_logits.argmax(-1) != eager_logits.argmax(-1)).sum().item<int64_t>();
    ++verified_steps_;
    max_diff_seen_ = std::max(max_diff_seen_, max_diff);
    if (argmax_differs > 0 || verified_steps_ % 200 == 0) {
      std::fprintf(stderr, "cuda graph verify: bucket %d rows %d max|graph-eager| %.3g argmax differs in %lld rows "
                   "(steps %lld, worst %.3g)\n", b.size, n, max_diff, static_cast<long long>(argmax_differs),
                   static_cast<long long>(verified_steps_), max_diff_seen_);
    }
  }

  void Capture(Bucket& b, KvPool& kv) {
    c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    current.synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      Step(b, kv);  // warm-up outside the graph: allocator pools, kernel attributes, cuBLAS handles
      side.synchronize();
      b.graph = std::make_unique<at::cuda::CUDAGraph>();
      // Thread-local capture: another thread's eager CUDA work must not invalidate the capture.
      b.graph->capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      b.logits = Step(b, kv);
      b.graph->capture_end();
    }
    side.synchronize();
  }

  const GlmModel& model_;
  std::mutex mu_;
  bool graphs_ = true;
  bool verify_ = false;
  bool fused_norm_ = true;  // GLMSERVE_CUDA_FUSED_NORM=0: ATen ops instead of the fused kernel
  int64_t verified_steps_ = 0;
  double max_diff_seen_ = 0;
  int32_t max_context_ = 0;
  std::map<int32_t, Bucket> buckets_;
};

CudaDecodeRunner* CreateCudaDecodeRunner(const GlmModel& model) {
  if (kernels::PagedAttentionMaxContext() <= 0 || model.config().head_dim > 256) return nullptr;
  return new CudaDecodeRunner(model);
}

at::Tensor CudaDecodeForward(CudaDecodeRunner& runner, const std::vector<SequenceStep>& batch, KvPool& kv) {
  return runner.Run(batch, kv);
}

void DestroyCudaDecodeRunner(CudaDecodeRunner* runner) { delete runner; }

}  // namespace glmserve
