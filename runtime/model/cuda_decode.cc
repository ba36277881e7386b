// CUDA decode fast path: an all-decode batch (one new token per sequence) runs through the
// paged-attention kernel and the fused layer kernels (kernels/decode_ops.h, kernels/rms_norm.h),
// and each batch-size bucket's whole forward is captured once as a CUDA graph and replayed, so
// per-step CPU launch overhead stops dominating. Prefill stays eager but uses the same fused
// kernels. Any other batch (prefill, or decodes sharing the step with prefill chunks) runs as one
// eager forward with the same fused kernels, decode rows attending through the paged-attention
// kernel in one launch and prefill chunks through flash attention over variable lengths (RunMixed).
// Mixed steps of up to 512 rows with few prompt chunks replay one CUDA graph for the whole step,
// attention included (WholeMixedGraph; with few prompt rows the paged kernel takes them too, no
// flash attention); the others replay the layers between attentions as graphs.
// Compiled only against a CUDA LibTorch (GLMSERVE_TORCH_CUDA).
//
// Diagnosis switches (read once): GLMSERVE_CUDA_GRAPHS=0 runs decode steps eagerly;
// GLMSERVE_CUDA_GRAPHS_VERIFY=1 re-runs every replayed step eagerly and reports differences;
// GLMSERVE_CUDA_DISABLE=<comma list of norm,rotary,swiglu,gemv,gemm,wgmma,split_attention,
// mma_attention,warp_attention,mixed_step,whole_mixed,cublaslt,tma_gemm,gemm_tuning,fused_norm> turns single kernels
// off (their ATen ops or cuBLAS, the skinny GEMM on mma.sync, the one-pass attention kernel, the CUDA-core split
// attention, the shared-memory tile attention kernel, or per-sequence ATen attention for prefill and mixed steps run
// instead; whole_mixed: mixed steps replay graphs between their eager attentions; cublaslt: bf16 / fp16 GEMMs on
// cublasGemmEx's heuristic instead of cuBLASLt's; tma_gemm: the skinny GEMM's wgmma fed by cp.async instead of TMA;
// gemm_tuning: every projection on ATen's call, none on a cuBLASLt candidate timed faster at start; fused_norm: one-row
// steps' add+RMSNorm in its own kernel, not inside the GEMV after it); GLMSERVE_CUDA_GEMV_MAX_ROWS,
// GLMSERVE_CUDA_GEMM_MAX_ROWS and GLMSERVE_CUDA_GEMM_MIN_WEIGHT move the bounds where the GEMV and the skinny GEMM
// replace cuBLAS.
#include "runtime/model/cuda_decode.h"

#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <ATen/ops/_scaled_dot_product_cudnn_attention.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/decode_ops.h"
#include "kernels/launch.h"
#include "kernels/paged_attention.h"
#include "kernels/rms_norm.h"
#include "kernels/tuned_gemm.h"
#include "runtime/model/env_switches.h"
#include "runtime/model/glm_model.h"

namespace glmserve {

namespace {

// An exception's message for a log line: LibTorch's errors without the C++ backtrace their what()
// carries (a capture that ran out of memory printed a dozen stack frames into the server's log).
std::string MessageOf(const std::exception& e) {
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) return torch_error->what_without_backtrace();
  return e.what();
}

kernels::ElementType ElementTypeOf(at::ScalarType dtype) {
  if (dtype == at::kBFloat16) return kernels::ElementType::kBFloat16;
  if (dtype == at::kHalf) return kernels::ElementType::kFloat16;
  return kernels::ElementType::kFloat32;
}

// The process's cuBLASLt tuner (the runtime drives one GPU), made on first use and never
// destroyed (a cuBLASLt handle torn down after the CUDA runtime at exit can fail); null where
// cuBLASLt cannot be set up.
kernels::TunedGemm* SharedTunedGemm() {
  static kernels::TunedGemm* const tuner = kernels::TunedGemm::Create().release();
  return tuner;
}

bool FlashTakesHeadDim(const ModelConfig& config) { return config.head_dim % 8 == 0 && config.head_dim <= 256; }

// One tiny call of an attention kernel the prefill and mixed steps use, over variable lengths with
// the model's heads (GQA: fewer K/V heads): a LibTorch built without it, or a GPU it does not
// support, leaves those steps to the fallback `unavailable` names instead of failing them.
template <typename Attend>
bool AttentionKernelRuns(const GlmModel& model, const char* unavailable, const Attend& attend) {
  try {
    c10::cuda::CUDAGuard guard(model.device());
    const ModelConfig& c = model.config();
    const auto options = at::TensorOptions().dtype(model.dtype()).device(model.device());
    const auto lengths = at::tensor({0, 2}, at::TensorOptions().dtype(at::kInt)).to(model.device());
    at::Tensor q = at::zeros({2, c.num_attention_heads, c.head_dim}, options);
    at::Tensor kv = at::zeros({2, c.num_key_value_heads, c.head_dim}, options);
    attend(q, kv, lengths);
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s (%s)\n", unavailable, MessageOf(e).c_str());
    return false;
  }
}

bool FlashAttentionRuns(const GlmModel& model) {
  return AttentionKernelRuns(model, "flash attention unavailable; prefill and mixed steps attend per sequence",
                             [](const at::Tensor& q, const at::Tensor& kv, const at::Tensor& lengths) {
                               at::_flash_attention_forward(q, kv, kv, lengths, lengths, 2, 2, 0.0, true, false, 1.0);
                             });
}

// cuDNN's attention on [batch, heads, tokens, head_dim] views, causal. With fewer K/V heads
// than query heads it either takes them as they are (GQA) or, where this cuDNN/LibTorch refuses
// that, each K/V head repeated for its query group (`expand_kv`).
at::Tensor CudnnCausalAttention(const at::Tensor& q, at::Tensor k, at::Tensor v, double scale, bool expand_kv) {
  if (expand_kv && k.size(1) != q.size(1)) {
    k = k.repeat_interleave(q.size(1) / k.size(1), 1);
    v = v.repeat_interleave(q.size(1) / v.size(1), 1);
  }
  return std::get<0>(at::_scaled_dot_product_cudnn_attention(q, k, v, std::nullopt, /*compute_log_sumexp=*/false,
                                                             /*dropout_p=*/0.0, /*is_causal=*/true,
                                                             /*return_debug_mask=*/false, scale));
}

// Fresh prompts' kernel (AttendMixed): 1 = GQA as is, 2 = with K/V heads repeated, 0 = unavailable.
int CudnnAttentionMode(const GlmModel& model) {
  for (const bool expand : {false, true}) {
    const bool runs =
        AttentionKernelRuns(model,
                            expand ? "cuDNN attention unavailable; long prompts attend through flash attention"
                                   : "cuDNN attention refuses K/V heads fewer than query heads; repeating them",
                            [&](const at::Tensor& q, const at::Tensor& kv, const at::Tensor&) {
                              CudnnCausalAttention(q.unsqueeze(0).transpose(1, 2), kv.unsqueeze(0).transpose(1, 2),
                                                   kv.unsqueeze(0).transpose(1, 2), 1.0, expand);
                            });
    if (runs) return expand ? 2 : 1;
  }
  return 0;
}

void* CurrentStream() { return at::cuda::getCurrentCUDAStream().stream(); }

int64_t RoundUp(int64_t value, int64_t step) { return (value + step - 1) / step * step; }

// The KV pool a captured graph read: the graph holds raw addresses of every layer's KV slice, and
// a pool of another size can start at the same address (the allocator reuses memory) yet place its
// layers elsewhere; K and V are separate allocations, so a new pool can reuse K's old address
// while V moves.
struct KvPoolKey {
  void* k = nullptr;
  void* v = nullptr;
  int32_t block_size = 0;
  int32_t blocks = 0;
  static KvPoolKey Of(const KvPool& kv) { return {kv.k.data_ptr(), kv.v.data_ptr(), kv.block_size, kv.num_blocks}; }
  bool operator==(const KvPoolKey& o) const {
    return k == o.k && v == o.v && block_size == o.block_size && blocks == o.blocks;
  }
};

// Copies `rows` block-table rows of `width` entries each (the rest of each row is never read)
// from pinned host memory to the device, both with a row stride of `stride` entries: a step
// copies the entries its contexts use, not rows x the longest context's blocks.
void CopyTableRows(const int32_t* host, int32_t* device, int64_t rows, int64_t width, int64_t stride) {
  if (rows == 0 || width == 0) return;
  const size_t pitch = static_cast<size_t>(stride) * sizeof(int32_t);
  const cudaError_t error =
      cudaMemcpy2DAsync(device, pitch, host, pitch, static_cast<size_t>(width) * sizeof(int32_t),
                        static_cast<size_t>(rows), cudaMemcpyHostToDevice, at::cuda::getCurrentCUDAStream().stream());
  if (error != cudaSuccess) {
    throw std::runtime_error(std::string("block tables to the device: ") + cudaGetErrorString(error));
  }
}

void Check(bool launched, const char* what) {
  if (!launched) throw std::runtime_error(std::string(what) + " kernel launch failed");
}

// residual += delta (RMSNorm(delta) * delta_weight when that is defined; delta may be
// undefined); returns RMSNorm(residual) * weight: the text layers' and the vision blocks' norm.
at::Tensor LaunchAddRmsNorm(kernels::ElementType type, float eps, const at::Tensor& delta,
                            const at::Tensor& delta_weight, at::Tensor& residual, const at::Tensor& weight,
                            const char* what) {
  at::Tensor out = at::empty_like(residual);
  Check(kernels::FusedNormAddRmsNormCudaTyped(delta.defined() ? delta.data_ptr() : nullptr,
                                              delta_weight.defined() ? delta_weight.data_ptr() : nullptr,
                                              residual.data_ptr(), weight.data_ptr(), out.data_ptr(), residual.size(0),
                                              residual.size(1), eps, static_cast<int>(type), CurrentStream()),
        what);
  return out;
}

// Sets ATen's preferred BLAS library without the "experimental feature" warning the setter
// prints once (it is meant for Python users; the choice here is measured, not experimental). A
// LibTorch that refuses it (built without cuBLASLt) keeps its own choice: slower, not wrong.
void SetBlasBackend(at::BlasBackend backend) {
  struct Silent : c10::WarningHandler {
    void process(const c10::Warning&) override {}
  } silent;
  c10::WarningUtils::WarningHandlerGuard guard(&silent);
  try {
    at::globalContext().setBlasPreferredBackend(backend);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "cuda decode: LibTorch refused BLAS library %s and keeps its default: %s\n",
                 at::BlasBackendToString(backend).c_str(), e.what_without_backtrace());
  }
}

}  // namespace

class CudaDecodeRunner {
 public:
  explicit CudaDecodeRunner(const GlmModel& model) : model_(model), type_(ElementTypeOf(model.dtype())) {
    graphs_ = !EnvIs("GLMSERVE_CUDA_GRAPHS", "0");
    verify_ = EnvIs("GLMSERVE_CUDA_GRAPHS_VERIFY", "1");
    if (const char* off = std::getenv("GLMSERVE_CUDA_DISABLE")) {
      for (absl::string_view name : absl::StrSplit(off, ',', absl::SkipEmpty())) {
        if (std::find(std::begin(kSwitchableKernels), std::end(kSwitchableKernels), name) ==
            std::end(kSwitchableKernels)) {
          std::fprintf(stderr, "GLMSERVE_CUDA_DISABLE: '%.*s' is not a kernel name; expected some of %s\n",
                       static_cast<int>(name.size()), name.data(), absl::StrJoin(kSwitchableKernels, ",").c_str());
        }
        disabled_.emplace(name);
      }
    }
    // Process-wide (the kernels library's launches): the last runner made decides.
    kernels::SetDependentLaunch(Enabled("pdl"));
    // bf16 / fp16 GEMMs through cuBLASLt's heuristic instead of cublasGemmEx's: on an H200 a
    // 64-row decode step's projections get faster kernels (decode_bench batch 64 +4%, 128 / 256
    // rows within 1%; bench/results/gpu.md, sixth session). fp32, the exact reference dtype, stays
    // on cublasGemmEx: there cuBLASLt's kernel choice depends on the row count, so a row's result
    // depends on the batch around it (a prefix-cached OOM storm in engine_model_test changed a
    // greedy request's ids), which cublasGemmEx's does not at those shapes. Process-wide, like the
    // above.
    SetBlasBackend(Enabled("cublaslt") && type_ != kernels::ElementType::kFloat32 ? at::BlasBackend::Cublaslt
                                                                                  : at::BlasBackend::Cublas);
    max_context_ = std::min<int32_t>(model.config().max_position_embeddings, kernels::PagedAttentionMaxContext());
    if (Enabled("gemm") && type_ != kernels::ElementType::kFloat32) {
      c10::cuda::CUDAGuard guard(model.device());
      gemm_workspace_bytes_ = static_cast<int64_t>(kernels::SkinnyGemmWorkspaceBytes());
    }
    if (Enabled("gemm_tuning") && type_ != kernels::ElementType::kFloat32) {
      c10::cuda::CUDAGuard guard(model.device());
      tuned_gemm_ = SharedTunedGemm();
    }
    kernels_ = MakeLayerKernels();
    vision_kernels_ = MakeVisionKernels();
    // Flash attention takes bf16 / fp16 and head sizes up to 256 in multiples of 8.
    mixed_ = Enabled("mixed_step") && type_ != kernels::ElementType::kFloat32 && FlashTakesHeadDim(model.config()) &&
             FlashAttentionRuns(model);
    mixed_graph_max_tokens_ = EnvInt("GLMSERVE_CUDA_MIXED_GRAPH_MAX_TOKENS", kMixedGraphDefaultMaxTokens, 0, 1 << 16);
    whole_ = mixed_ && graphs_ && Enabled("whole_mixed");
    paged_prompt_rows_ = EnvInt("GLMSERVE_CUDA_PAGED_PROMPT_ROWS", kPagedPromptDefaultRows, 0, kWholeMaxRows);
    cudnn_prefill_min_tokens_ =
        EnvInt("GLMSERVE_CUDA_CUDNN_PREFILL_MIN_TOKENS", kCudnnPrefillDefaultMinTokens, 1, int64_t{1} << 30);
    cudnn_prefill_mode_ = mixed_ && Enabled("cudnn_prefill") ? CudnnAttentionMode(model) : 0;
  }

  const GlmModel::LayerKernels& layer_kernels() const { return kernels_; }

  const VisionKernels& vision_kernels() const { return vision_kernels_; }

  // Buckets 1, 2, 4, ... up to the one holding max_sequences, every row padding (reads and writes
  // only the pool's scratch block): their graphs are then ready for the first step of each size.
  void CaptureBuckets(int32_t max_sequences, KvPool& kv, std::vector<int32_t>* captured, std::string* note) {
    std::lock_guard<std::mutex> lock(mu_);
    TuneGemms(max_sequences, note);
    if (!graphs_) return;
    const int32_t max_blocks = (max_context_ + kv.block_size - 1) / kv.block_size;
    for (int32_t size = 1; size <= kMaxBucket; size *= 2) {
      Bucket& bucket = buckets_[size];
      Prepare(bucket, size, max_blocks, kv);
      Stage(bucket, {}, kv);
      Capture(bucket, kv);
      captured->push_back(size);
      if (size >= max_sequences) break;
    }
    if (!mixed_) return;
    for (int32_t tokens = kMixedGraphStep; tokens <= mixed_graph_max_tokens_; tokens += kMixedGraphStep) {
      CaptureMixed(mixed_graphs_[tokens], tokens, kv);
    }
    // Whole-step graphs for the common steps (short contexts); longer contexts capture on first use.
    for (int32_t rows = kMixedGraphStep; whole_ && rows <= mixed_graph_max_tokens_; rows += kMixedGraphStep) {
      const bool contexts = EnsureWholeGraph(rows, kWholeContextCapacities[0], kv);
      const bool paged = paged_prompt_rows_ > 0 && EnsureWholeGraph(rows, kPagedPrompts, kv);
      if (!contexts && !paged) break;  // more rows need more memory: they would fail too
    }
  }

  // cuBLASLt's candidates for each projection at each row count the decode buckets (up to
  // max_sequences) and the mixed-step graphs run (tuned_gemm.h), timed on the model's own weights
  // before anything is captured; each shape once in the process, the fastest run where it beats
  // the heuristic's first by kTunedGemmMinGain. What it found goes to `note`.
  void TuneGemms(int32_t max_sequences, std::string* note) {
    if (tuned_gemm_ == nullptr) return;
    std::set<int32_t> decode_rows, rows;
    for (int32_t size = 2; size <= kMaxBucket; size *= 2) {
      decode_rows.insert(size);
      if (size >= max_sequences) break;
    }
    rows = decode_rows;
    for (int32_t t = kMixedGraphStep; mixed_ && t <= std::min(mixed_graph_max_tokens_, kMaxTunedRows);
         t += kMixedGraphStep) {
      rows.insert(t);
    }
    const std::vector<GlmModel::Projection> projections = model_.Projections();
    int64_t max_n = 0, max_k = 0;
    for (const GlmModel::Projection& p : projections) {
      max_n = std::max(max_n, p.weights.front().size(0));
      max_k = std::max(max_k, p.weights.front().size(1));
    }
    const auto start = std::chrono::steady_clock::now();
    // Scratch (~0.2 GB for GLM-4-9B) only once some shape is untimed: an engine the watchdog
    // rebuilds, perhaps after an OOM, finds every shape timed and allocates none.
    at::Tensor x, y, workspace;
    auto scratch = [&] {
      if (workspace.defined()) return;
      const at::TensorOptions options = at::TensorOptions().dtype(model_.dtype()).device(model_.device());
      const int32_t most_rows = *rows.rbegin();
      x = at::zeros({most_rows, max_k}, options);
      y = at::empty({most_rows, max_n}, options);
      workspace = at::empty({static_cast<int64_t>(kernels::kTunedGemmWorkspaceBytes)}, options.dtype(at::kByte));
    };
    // A layer's four projections at each row count: the heuristic's first and the fastest, us.
    std::map<int32_t, std::pair<double, double>> layer_us;
    int tuned = 0, used = 0;
    for (const GlmModel::Projection& p : projections) {
      const bool lm_head = std::string(p.role) == "lm_head";
      // A role whose weights the tuned call cannot take alike (one strided, shapes or biases that
      // differ between layers) stays on ATen's call; the other roles are still tuned.
      std::vector<const void*> weights, biases;
      bool alike = true;
      for (size_t i = 0; i < p.weights.size() && alike; ++i) {
        alike = p.weights[i].is_contiguous() && p.weights[i].sizes() == p.weights.front().sizes();
        weights.push_back(p.weights[i].data_ptr());
        if (p.biases[i].defined()) biases.push_back(p.biases[i].data_ptr());
      }
      const bool bias = !biases.empty();
      if (!alike || (bias && biases.size() != weights.size())) continue;
      for (int32_t r : lm_head ? decode_rows : rows) {
        // The lm_head up to the skinny GEMM's rows takes the skinny GEMM (MakeLayerKernels).
        if (lm_head && r <= kSkinnyGemmFasterUpToRows && gemm_workspace_bytes_ > 0) continue;
        const kernels::GemmKey key{r, p.weights.front().size(0), p.weights.front().size(1), type_, bias};
        if (tuned_gemm_->Tuned(key)) continue;
        scratch();
        kernels::GemmTuning tuning;
        if (!tuned_gemm_->Tune(key, weights, biases, x.data_ptr(), y.data_ptr(), workspace.data_ptr(),
                               kTunedGemmCandidates, kTunedGemmMinGain, CurrentStream(), &tuning)) {
          continue;
        }
        ++tuned;
        used += tuning.used;
        if (!lm_head && tuning.first_us > 0) {
          layer_us[r].first += tuning.first_us;
          layer_us[r].second += tuning.used ? tuning.chosen_us : tuning.first_us;
        }
      }
    }
    if (tuned == 0 || note == nullptr) return;
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::vector<std::string> per_rows;
    for (const auto& [r, us] : layer_us) {
      per_rows.push_back(absl::StrFormat("%d rows %.1f -> %.1f", r, us.first, us.second));
    }
    *note = absl::StrFormat(
        "cuBLASLt algorithms timed for %d GEMM shapes in %.0f ms (%d run on another algorithm than the "
        "heuristic's first, %.0f%% faster or more); a layer's projections, the first -> what runs, us: %s",
        tuned, ms, used, 100 * kTunedGemmMinGain, absl::StrJoin(per_rows, ", "));
  }

  at::Tensor Run(const std::vector<SequenceStep>& batch, KvPool& kv, const PreviousStepIds* previous) {
    // One model may be driven from two threads (the engine, and Generate from a CLI or a test):
    // buckets, staging buffers and captures are shared state.
    std::lock_guard<std::mutex> lock(mu_);
    const FeedingPrevious feeding(this, previous);
    const int32_t n = static_cast<int32_t>(batch.size());
    int32_t size = 1;
    while (size < n) size *= 2;
    if (size > kMaxBucket) return at::Tensor();
    for (const SequenceStep& s : batch) {
      if (s.start_position + 1 > max_context_) return at::Tensor();
    }
    const int32_t max_blocks = (max_context_ + kv.block_size - 1) / kv.block_size;
    Bucket& bucket = buckets_[size];
    const bool same_pool = bucket.pool == KvPoolKey::Of(kv);
    if (!same_pool) Prepare(bucket, size, max_blocks, kv);
    Stage(bucket, batch, kv);
    if (!graphs_) return Step(bucket, kv).narrow(0, 0, n);
    if (!same_pool || !bucket.graph) Capture(bucket, kv);
    bucket.graph->replay();
    if (verify_) Verify(bucket, kv, n);
    return bucket.logits.narrow(0, 0, n);
  }

  // A batch the decode graphs do not take: prefill chunks, alone or beside decode rows. One
  // forward over every row with the fused kernels; decode rows (one token) attend through the
  // paged-attention kernel in one launch, prefill chunks through flash attention over variable
  // lengths, their whole context (earlier chunks included) gathered from the paged cache. Before
  // this, each sequence attended alone through ATen ops, so a step with 64 decodes and one prompt
  // launched ~40 small kernels per sequence per layer. Steps of up to mixed_graph_max_tokens_
  // tokens replay the layers between attentions as CUDA graphs (MixedGraph): eager, the ~700
  // launches of such a step took longer on the host than the step on the GPU. Returns fp32 logits
  // of the sampled rows in batch order, or an undefined tensor when it cannot take the batch (the
  // per-sequence path runs).
  at::Tensor RunMixed(const std::vector<SequenceStep>& batch, KvPool& kv, const GlmModel::EmbeddingOverride* images,
                      const PreviousStepIds* previous) {
    if (!mixed_ || batch.empty()) return at::Tensor();
    std::lock_guard<std::mutex> lock(mu_);
    const FeedingPrevious feeding(this, previous);
    // LibTorch caches cuDNN's attention graphs per thread: built on the thread that runs the
    // steps, at its first step (the server's warm-up request, before it reports serving).
    if (cudnn_prefill_mode_ > 0 && cudnn_warm_thread_ != std::this_thread::get_id()) {
      PrewarmCudnnPrefill();
      cudnn_warm_thread_ = std::this_thread::get_id();
    }
    const ModelConfig& c = model_.config();
    // Rows: decode sequences first (the kernel reads them as one dense block of queries), then
    // the prefill chunks, each sequence's tokens contiguous.
    std::vector<const SequenceStep*> decodes, prefills;
    for (const SequenceStep& s : batch) {
      if (s.tokens.empty()) return at::Tensor();
      (s.tokens.size() == 1 ? decodes : prefills).push_back(&s);
    }
    MixedAttention m;
    m.num_decodes = static_cast<int32_t>(decodes.size());
    int32_t decode_blocks = 1;  // the block table's row stride: the longest decode context's blocks
    for (const SequenceStep* s : decodes) {
      if (s->start_position + 1 > max_context_) return at::Tensor();
      decode_blocks = std::max(decode_blocks, s->start_position / kv.block_size + 1);
    }
    int64_t context_tokens = 0;
    for (const SequenceStep& s : batch) m.total_tokens += static_cast<int64_t>(s.tokens.size());
    for (const SequenceStep* s : prefills) {
      const int64_t n = static_cast<int64_t>(s->tokens.size());
      context_tokens += s->start_position + n;
      m.max_q = std::max(m.max_q, n);
      m.max_k = std::max<int64_t>(m.max_k, s->start_position + n);
    }
    m.num_prefills = static_cast<int64_t>(prefills.size());
    m.fresh_prefills =
        std::all_of(prefills.begin(), prefills.end(), [](const SequenceStep* s) { return s->start_position == 0; });
    const bool mrope = std::any_of(batch.begin(), batch.end(), StepNeedsMultimodal);
    if (whole_ && images == nullptr && !mrope && m.num_prefills <= kWholePrefillSlots) {
      const int32_t rows = static_cast<int32_t>(RoundUp(m.total_tokens, kMixedGraphStep));
      int64_t capacity = -1;
      if (m.total_tokens - m.num_decodes <= paged_prompt_rows_ && m.max_k <= kPagedPromptMaxContext) {
        capacity = kPagedPrompts;
      } else {
        for (int64_t c : kWholeContextCapacities) {
          if (context_tokens <= c) {
            capacity = c;
            break;
          }
        }
      }
      if (rows <= mixed_graph_max_tokens_ && capacity >= 0 && EnsureWholeGraph(rows, capacity, kv)) {
        return RunWhole(batch, decodes, prefills, whole_graphs_[{rows, capacity}], context_tokens, kv);
      }
    }
    // A graph bucket holds a fixed number of rows; rows past the batch are padding that reads and
    // writes only the pool's scratch block.
    int32_t bucket = 0;
    if (graphs_ && m.total_tokens <= mixed_graph_max_tokens_ && images == nullptr && !mrope) {
      bucket = static_cast<int32_t>(RoundUp(m.total_tokens, kMixedGraphStep));
    }
    const int64_t rows = bucket > 0 ? bucket : m.total_tokens;
    // Every index this step needs, in one pinned buffer and one copy to the device:
    // ids, positions, slots [rows] | sampled rows [S] | prefill context slots [K] | decode context
    // lengths [D] | prefill cumulative query and key lengths [P + 1] each | decode block tables
    // [D, decode_blocks].
    int64_t num_samples = 0;
    for (const SequenceStep& s : batch) num_samples += s.sample ? 1 : 0;
    const int64_t table_elements = int64_t{m.num_decodes} * decode_blocks;
    const int64_t total =
        3 * rows + num_samples + context_tokens + m.num_decodes + 2 * (m.num_prefills + 1) + table_elements;
    at::Tensor host = at::empty({total}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* ids = host.data_ptr<int64_t>();
    int64_t* positions = ids + rows;
    int64_t* slots = positions + rows;
    int64_t* sampled_rows = slots + rows;
    int64_t* context_slots = sampled_rows + num_samples;
    int64_t* decode_lens = context_slots + context_tokens;
    int64_t* cu_q = decode_lens + m.num_decodes;
    int64_t* cu_k = cu_q + m.num_prefills + 1;
    int64_t* tables = cu_k + m.num_prefills + 1;
    // Each batch entry's last row, by its index in the batch (a std::map here cost a node a row).
    std::vector<int64_t> last_row(batch.size());
    auto entry = [&batch](const SequenceStep& s) { return static_cast<size_t>(&s - batch.data()); };
    int64_t row = 0;
    for (int32_t d = 0; d < m.num_decodes; ++d) {
      const SequenceStep& s = *decodes[d];
      ids[row] = StagedId(s, row);
      positions[row] = RotaryPosition(s, s.start_position);
      slots[row] = kv.slot(s.block_table, s.start_position);
      decode_lens[d] = s.start_position + 1;
      const int32_t used = s.start_position / kv.block_size + 1;
      int64_t* table = tables + int64_t{d} * decode_blocks;
      for (int32_t b = 0; b < decode_blocks; ++b) table[b] = b < used ? s.block_table.at(b) : s.block_table.at(0);
      last_row[entry(s)] = row++;
    }
    int64_t context = 0;
    cu_q[0] = 0;
    cu_k[0] = 0;
    for (int64_t p = 0; p < m.num_prefills; ++p) {
      const SequenceStep& s = *prefills[p];
      const int64_t n = static_cast<int64_t>(s.tokens.size());
      for (int64_t i = 0; i < n; ++i) {
        ids[row + i] = s.tokens[i];
        positions[row + i] = RotaryPosition(s, s.start_position + i);
        slots[row + i] = kv.slot(s.block_table, s.start_position + i);
      }
      for (int64_t pos = 0; pos < s.start_position + n; ++pos) context_slots[context++] = kv.slot(s.block_table, pos);
      cu_q[p + 1] = cu_q[p] + n;
      cu_k[p + 1] = cu_k[p] + s.start_position + n;
      row += n;
      last_row[entry(s)] = row - 1;
    }
    for (; row < rows; ++row) {  // graph padding
      ids[row] = 0;
      positions[row] = 0;
      slots[row] = int64_t{kv.scratch_block()} * kv.block_size;
    }
    int64_t sample = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].sample) sampled_rows[sample++] = last_row[i];
    }
    const at::Tensor device_indices = host.to(model_.device(), /*non_blocking=*/true);
    auto part = [&](const int64_t* begin, int64_t count) { return device_indices.narrow(0, begin - ids, count); };
    at::Tensor d_ids = part(ids, rows);
    const at::Tensor d_positions = part(positions, rows), d_slots = part(slots, rows);
    ApplyPreviousIds(d_ids);
    m.context_slots = part(context_slots, context_tokens);
    m.lens = part(decode_lens, m.num_decodes).to(at::kInt);
    m.cu_q = part(cu_q, m.num_prefills + 1).to(at::kInt);
    m.cu_k = part(cu_k, m.num_prefills + 1).to(at::kInt);
    m.tables = part(tables, table_elements).to(at::kInt);

    // 3-D rotary positions ([3, rows], rows in this order) when a chunk holds image tokens.
    at::Tensor positions_3d;
    if (mrope) {
      at::Tensor host_3d = at::empty({3, rows}, at::TensorOptions().dtype(at::kLong));
      int64_t* p3 = host_3d.data_ptr<int64_t>();
      int64_t r = 0;
      auto fill = [&](const SequenceStep& s) {
        for (size_t i = 0; i < s.tokens.size(); ++i, ++r) {
          const int64_t index = s.start_position + static_cast<int64_t>(i);
          for (int c = 0; c < 3; ++c) {
            p3[c * rows + r] = s.multimodal == nullptr ? index : s.multimodal->Position(c, index);
          }
        }
      };
      for (const SequenceStep* s : decodes) fill(*s);
      for (const SequenceStep* s : prefills) fill(*s);
      positions_3d = host_3d.to(model_.device());
    }

    m.shape = AttentionShape(m.num_decodes, decode_blocks, kv);
    if (m.num_decodes > 0) m.workspace = AttentionWorkspace(m.shape);
    at::Tensor hidden;
    if (bucket > 0 && !mixed_graphs_[bucket].Matches(kv)) {
      try {
        CaptureMixed(mixed_graphs_[bucket], bucket, kv);
      } catch (const c10::OutOfMemoryError&) {
        throw;  // the engine shrinks the batch and retries
      } catch (const std::exception& e) {
        std::fprintf(stderr, "mixed-step CUDA graphs off: capturing %d rows failed: %s\n", bucket,
                     MessageOf(e).c_str());
        mixed_graph_max_tokens_ = 0;
        mixed_graphs_.clear();
        bucket = 0;  // this step runs eagerly (its padding rows included)
      }
    }
    if (bucket > 0) {
      MixedGraph& g = mixed_graphs_[bucket];
      g.ids.copy_(d_ids, /*non_blocking=*/true);
      g.positions.copy_(d_positions, true);
      g.slots.copy_(d_slots, true);
      const size_t layers = g.queries.size();
      for (size_t l = 0; l < layers; ++l) {
        g.segments[l]->replay();
        AttendMixed(m, g.queries[l], g.k_caches[l], g.v_caches[l], g.outputs[l]);
      }
      g.segments[layers]->replay();
      hidden = g.hidden;
    } else {
      auto attend = [&](const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
        at::Tensor out = at::empty({q.size(0), q.size(1) * q.size(2)}, q.options());
        if (q.size(0) > m.total_tokens) out.narrow(0, m.total_tokens, q.size(0) - m.total_tokens).zero_();
        AttendMixed(m, q, k_cache, v_cache, out);
        return out;
      };
      hidden = model_.RunLayers(d_ids, mrope ? positions_3d : d_positions, d_slots, kv, attend, kernels_, images);
    }
    if (num_samples == 0) return at::empty({0, c.vocab_size}, hidden.options().dtype(at::kFloat));
    return model_.Logits(hidden.index_select(0, part(sampled_rows, num_samples)), kernels_);
  }

 private:
  // One mixed step's attention inputs (RunMixed): rows [0, num_decodes) are decode rows, the
  // next ones prefill chunks; padding rows past total_tokens are not attended.
  struct MixedAttention {
    int32_t num_decodes = 0;
    int64_t num_prefills = 0;
    int64_t total_tokens = 0;
    int64_t max_q = 0, max_k = 0;          // longest prefill chunk, longest prefill context
    bool fresh_prefills = false;           // every prefill chunk is its sequence's whole context
    at::Tensor lens, tables;               // decode rows: int32 [D], [D, max_blocks_per_seq]
    at::Tensor context_slots, cu_q, cu_k;  // prefill: int64 [K], int32 [P + 1] each
    kernels::PagedAttentionShape shape;    // the decode rows'
    at::Tensor workspace;                  // split attention's (counters zeroed)
  };

  // cuDNN builds a graph for each new prompt length the first time it sees one: ~70 ms on an H200
  // (and ~1.2 s for its first real one), a request's TTFT unless built here, at the thread's
  // first prompt step (the server's two-token warm-up request), for every padded length up to
  // kCudnnPrefillPrewarmTokens (~2 s for 29 lengths).
  void PrewarmCudnnPrefill() {
    if (cudnn_prefill_mode_ == 0) return;
    const ModelConfig& c = model_.config();
    const auto options = at::TensorOptions().dtype(model_.dtype()).device(model_.device());
    const int64_t first = (cudnn_prefill_min_tokens_ + kCudnnPrefillPad - 1) / kCudnnPrefillPad * kCudnnPrefillPad;
    try {
      c10::cuda::CUDAGuard guard(model_.device());
      const int64_t last = std::min<int64_t>(kCudnnPrefillPrewarmTokens, max_context_);
      // The scale AttendMixed passes, should cuDNN key its graphs by it.
      const double scale = AttentionScale();
      for (int64_t t = first; t <= last; t += kCudnnPrefillPad) {
        // AttendMixed's layout (token-major rows seen as [1, heads, t, d]): graphs are cached by strides too.
        at::Tensor q = at::zeros({1, t, c.num_attention_heads, c.head_dim}, options).transpose(1, 2);
        at::Tensor kv = at::zeros({1, t, c.num_key_value_heads, c.head_dim}, options).transpose(1, 2);
        CudnnCausalAttention(q, kv, kv, scale, cudnn_prefill_mode_ == 2);
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr,
                   "cuDNN attention: building its graphs failed (%s); fresh prompts attend "
                   "through flash attention\n",
                   MessageOf(e).c_str());
      cudnn_prefill_mode_ = 0;
    }
  }

  // Writes the attention of q's first total_tokens rows into out's ([rows, heads * head_dim]).
  void AttendMixed(const MixedAttention& m, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                   const at::Tensor& out) const {
    const int64_t width = q.size(1) * q.size(2);
    if (m.num_decodes > 0) {
      at::Tensor query = q.narrow(0, 0, m.num_decodes);
      if (query.stride(2) != 1 || query.stride(1) != query.size(2)) query = query.contiguous();
      kernels::PagedAttentionShape s = m.shape;
      s.q_row_stride = query.stride(0);
      Check(out.is_contiguous() && out.size(1) == width, "paged-attention decode (mixed step): output layout");
      Check(kernels::PagedAttentionDecodeCuda(query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                              m.tables.data_ptr<int32_t>(), m.lens.data_ptr<int32_t>(), out.data_ptr(),
                                              s, type_, CurrentStream(),
                                              m.workspace.defined() ? m.workspace.data_ptr() : nullptr),
            "paged-attention decode (mixed step)");
    }
    if (m.num_prefills > 0) {
      const int64_t prefill_rows = m.total_tokens - m.num_decodes;
      at::Tensor query = q.narrow(0, m.num_decodes, prefill_rows).contiguous();
      at::Tensor keys = k_cache.index_select(0, m.context_slots);
      at::Tensor values = v_cache.index_select(0, m.context_slots);
      // A long prompt that starts in this step alone takes cuDNN's kernel (on an H200 twice
      // flash's speed at 2-8k tokens: bench/results/gpu.md). Its length is padded to a multiple of
      // kCudnnPrefillPad with zero rows after the prompt (causal: no real row sees them, their own
      // rows are dropped), so a few cached cuDNN graphs serve every length.
      if (cudnn_prefill_mode_ > 0 && m.fresh_prefills && m.num_prefills == 1 &&
          prefill_rows >= cudnn_prefill_min_tokens_) {
        const int64_t t = prefill_rows, padded = (t + kCudnnPrefillPad - 1) / kCudnnPrefillPad * kCudnnPrefillPad;
        auto pad = [&](const at::Tensor& x) {  // [t, heads, d] -> [1, heads, padded, d]
          if (padded == t) return x.unsqueeze(0).transpose(1, 2);
          at::Tensor p = at::zeros({padded, x.size(1), x.size(2)}, x.options());
          p.narrow(0, 0, t).copy_(x);
          return p.unsqueeze(0).transpose(1, 2);
        };
        at::Tensor o = CudnnCausalAttention(pad(query), pad(keys), pad(values), static_cast<double>(m.shape.scale),
                                            cudnn_prefill_mode_ == 2);  // [1, heads, padded, d]
        out.narrow(0, m.num_decodes, t).view({t, q.size(1), q.size(2)}).copy_(o[0].transpose(0, 1).narrow(0, 0, t));
        return;
      }
      // Causal within each sequence, aligned to the bottom right (flash attention's convention
      // when a chunk's queries are fewer than its keys): query i of a chunk starting at position
      // p sees keys 0..p+i. GQA is native (fewer K/V heads than query heads).
      auto result = at::_flash_attention_forward(query, keys, values, m.cu_q, m.cu_k, m.max_q, m.max_k,
                                                 /*dropout_p=*/0.0, /*is_causal=*/true,
                                                 /*return_debug_mask=*/false, static_cast<double>(m.shape.scale));
      out.narrow(0, m.num_decodes, prefill_rows).copy_(std::get<0>(result).view({prefill_rows, width}));
    }
  }

  // A mixed step of up to `tokens` rows as CUDA graphs: segment l runs from after layer l-1's
  // attention to layer l's attention input (norm, qkv projection, rotary + KV write), the last
  // from layer L-1's attention output to the hidden states; RunMixed replays them in order with
  // the eager attention between, reading queries[l] and writing outputs[l] (fixed addresses).
  // The segments share one memory pool and are always replayed in capture order.
  struct MixedGraph {
    int32_t tokens = 0;
    KvPoolKey pool;                                                // the pool the graphs were captured with
    at::Tensor ids, positions, slots;                              // [tokens] int64, the graphs' inputs
    std::vector<std::unique_ptr<at::cuda::CUDAGraph>> segments;    // layers + 1
    std::vector<at::Tensor> queries, k_caches, v_caches, outputs;  // per layer
    at::Tensor hidden;                                             // [tokens, hidden], the last segment's output
    bool Matches(const KvPool& kv) const { return !segments.empty() && pool == KvPoolKey::Of(kv); }
  };

  void CaptureMixed(MixedGraph& g, int32_t tokens, KvPool& kv) {
    g = MixedGraph();
    const ModelConfig& c = model_.config();
    const at::Device device = model_.device();
    const auto long_options = at::TensorOptions().dtype(at::kLong).device(device);
    c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    current.synchronize();
    c10::cuda::CUDAStreamGuard guard(side);
    g.ids = at::zeros({tokens}, long_options);
    g.positions = at::zeros({tokens}, long_options);
    g.slots = at::full({tokens}, int64_t{kv.scratch_block()} * kv.block_size, long_options);
    for (int32_t l = 0; l < c.num_layers; ++l) {
      g.outputs.push_back(at::zeros({tokens, int64_t{c.num_attention_heads} * c.head_dim},
                                    at::TensorOptions().dtype(model_.dtype()).device(device)));
    }
    // Warm-up outside the graphs (allocator, cuBLAS handles, kernel attributes).
    size_t layer = 0;
    model_.RunLayers(
        g.ids, g.positions, g.slots, kv,
        [&](const at::Tensor&, const at::Tensor&, const at::Tensor&) { return g.outputs[layer++]; }, kernels_);
    side.synchronize();
    const at::cuda::MempoolId_t pool = at::cuda::graph_pool_handle();
    bool capturing = false;
    auto begin_segment = [&] {
      g.segments.push_back(std::make_unique<at::cuda::CUDAGraph>());
      g.segments.back()->capture_begin(pool, cudaStreamCaptureModeThreadLocal);
      capturing = true;
    };
    auto end_segment = [&] {
      capturing = false;
      g.segments.back()->capture_end();
    };
    try {
      layer = 0;
      begin_segment();
      g.hidden = model_.RunLayers(
          g.ids, g.positions, g.slots, kv,
          [&](const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
            g.queries.push_back(q);
            g.k_caches.push_back(k_cache);
            g.v_caches.push_back(v_cache);
            end_segment();
            begin_segment();
            return g.outputs[layer++];
          },
          kernels_);
      end_segment();
    } catch (...) {
      // Never leave the stream capturing (out of memory mid-capture, say); the next step of this
      // size captures again.
      if (capturing) {
        try {
          g.segments.back()->capture_end();
        } catch (...) {
        }
      }
      g = MixedGraph();
      throw;
    }
    side.synchronize();
    g.tokens = tokens;
    g.pool = KvPoolKey::Of(kv);
  }

  // A mixed step of `rows` rows as one CUDA graph, attention included: decode rows first (the
  // paged-attention kernel runs over every row and skips those of context 0), then up to
  // kWholePrefillSlots prompt chunks (flash attention over variable lengths; its cumulative query
  // lengths start at the first prompt row, and slots past the step's chunks are empty
  // sequences), whose contexts are gathered from the paged cache into `context_capacity` rows
  // (the step's context slots, then the scratch slot). Everything a step changes is data in
  // whole_staging_, so one graph per (rows, capacity) serves every mix of decodes and chunks.
  // Flash attention's grid depends only on the number of sequence slots and max_seqlen_q (the
  // rows); at dropout 0 it draws no random numbers and never synchronizes.
  // A graph of capacity kPagedPrompts has no flash attention and no gather: the paged kernel
  // takes the prompt rows too, each as a query of its own over its causal context (its block
  // table row, context = position + 1). Its cost grows with the rows and their contexts, but it
  // has no fixed part: flash attention and the two gathers cost ~18 us a layer on an H200 however
  // few the prompt rows (bench/results/gpu.md), which made a step carrying a few prompt rows
  // beside the decodes cost nearly as much as one carrying hundreds.
  struct WholeMixedGraph {
    KvPoolKey pool;
    bool paged_prompts = false;  // captured with capacity kPagedPrompts
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    at::Tensor hidden;  // [rows, hidden], the graph's output
  };

  // What every whole-step graph reads, at fixed addresses: int64 [ids | positions | slots |
  // sampled rows] (kWholeMaxRows each) then context slots (the largest capacity); int32 [decode
  // context lengths (kWholeMaxRows) | cumulative query lengths | cumulative key lengths
  // (kWholePrefillSlots + 1 each) | block tables (kWholeMaxRows x max_blocks)]. Pinned copies on
  // the host; the graphs run one step at a time, so they share it.
  struct WholeStaging {
    KvPoolKey pool;
    int32_t max_blocks = 0;
    at::Tensor host_longs, host_ints, longs, ints;
    at::Tensor workspace;  // the paged-attention kernel's, sized for the largest graph
    at::cuda::MempoolId_t graph_pool{0, 0};
    // Recorded after a step's copies: the next step waits for it before it rewrites the pinned
    // buffers (a step that samples nothing is not waited for by anyone else).
    std::unique_ptr<at::cuda::CUDAEvent> copied = std::make_unique<at::cuda::CUDAEvent>();
  };

  static constexpr int64_t kWholeMaxRows = 512;
  static constexpr int64_t kWholePrefillSlots = 8;
  // Context rows a step's prompt chunks may gather: a graph per capacity, the smallest that holds
  // the step's contexts (gathering costs ~1 KB a row and layer on GLM-4-9B).
  static constexpr int64_t kWholeContextCapacities[] = {1024, 4096, 16384};
  // The graph key's capacity for a step whose prompt rows all attend through the paged kernel
  // (WholeMixedGraph): steps of at most paged_prompt_rows_ prompt rows, contexts up to
  // kPagedPromptMaxContext (each row reads its whole context, ~1 KB a position and layer on
  // GLM-4-9B, where flash attention reads a chunk's keys once per 128 rows).
  static constexpr int64_t kPagedPrompts = 0;
  static constexpr int64_t kPagedPromptMaxContext = 1024;
  static constexpr int64_t kPagedPromptDefaultRows = 64;
  static constexpr int64_t kLongSampled = 3 * kWholeMaxRows, kLongContext = 4 * kWholeMaxRows;
  static constexpr int64_t kIntCuQ = kWholeMaxRows, kIntCuK = kIntCuQ + kWholePrefillSlots + 1,
                           kIntTables = kIntCuK + kWholePrefillSlots + 1;

  void PrepareWholeStaging(const KvPool& kv) {
    if (whole_staging_.pool == KvPoolKey::Of(kv)) return;
    whole_graphs_.clear();       // they read the old buffers
    whole_failed_rows_.clear();  // another pool leaves another amount of memory to capture in
    whole_staging_ = WholeStaging();
    WholeStaging st;  // assigned once complete: an allocation that fails leaves none
    st.max_blocks = (max_context_ + kv.block_size - 1) / kv.block_size;
    const int64_t longs = kLongContext + kWholeContextCapacities[std::size(kWholeContextCapacities) - 1];
    const int64_t ints = kIntTables + kWholeMaxRows * st.max_blocks;
    st.host_longs = at::zeros({longs}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    st.host_ints = at::zeros({ints}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    // A graph reads the device buffers only after CaptureWhole set them to neutral values or a
    // step wrote every row the graph reads.
    const at::Device device = model_.device();
    st.longs = at::empty({longs}, at::TensorOptions().dtype(at::kLong).device(device));
    st.ints = at::empty({ints}, at::TensorOptions().dtype(at::kInt).device(device));
    size_t workspace_bytes = 0;
    for (int64_t rows = kMixedGraphStep; rows <= kWholeMaxRows; rows += kMixedGraphStep) {
      const kernels::PagedAttentionShape shape = AttentionShape(static_cast<int32_t>(rows), st.max_blocks, kv);
      workspace_bytes = std::max(workspace_bytes, kernels::PagedAttentionWorkspaceBytes(shape));
    }
    if (Enabled("split_attention") && workspace_bytes > 0) {
      st.workspace =
          at::zeros({static_cast<int64_t>(workspace_bytes)}, at::TensorOptions().dtype(at::kByte).device(device));
    }
    st.graph_pool = at::cuda::graph_pool_handle();
    at::cuda::getCurrentCUDAStream().synchronize();
    st.pool = KvPoolKey::Of(kv);
    whole_staging_ = std::move(st);
  }

  // The graph for (rows, capacity), captured now when it is missing or read another KV pool;
  // false when whole-step graphs are off (then or before). Out of memory propagates: the engine
  // shrinks the step and retries.
  bool EnsureWholeGraph(int32_t rows, int64_t capacity, KvPool& kv) {
    if (!whole_ || rows > kWholeMaxRows) return false;
    const auto failed = whole_failed_rows_.find(capacity);
    if (failed != whole_failed_rows_.end() && rows >= failed->second) return false;
    try {
      PrepareWholeStaging(kv);
      WholeMixedGraph& g = whole_graphs_[{rows, capacity}];
      if (g.graph && g.pool == KvPoolKey::Of(kv)) return true;
      CaptureWhole(g, rows, capacity, kv);
      return true;
    } catch (const c10::OutOfMemoryError&) {
      whole_graphs_.erase({rows, capacity});
      throw;
    } catch (const std::exception& e) {
      // A capture that fails for want of memory at many rows (a 10.3B model on an 80 GB card
      // failed at 512) still leaves the smaller steps their graphs: only this capacity's steps of
      // these rows or more run without one from now on.
      whole_graphs_.erase({rows, capacity});
      int32_t& limit = whole_failed_rows_.try_emplace(capacity, rows).first->second;
      limit = std::min(limit, rows);
      std::fprintf(stderr,
                   "whole mixed-step CUDA graphs off for steps of %d rows or more (context capacity %lld): "
                   "capturing failed: %s\n",
                   rows, static_cast<long long>(capacity), MessageOf(e).c_str());
      return false;
    }
  }

  void CaptureWhole(WholeMixedGraph& g, int32_t rows, int64_t capacity, KvPool& kv) {
    g = WholeMixedGraph();
    const WholeStaging& st = whole_staging_;
    const ModelConfig& c = model_.config();
    const at::Tensor ids = st.longs.narrow(0, 0, rows);
    const at::Tensor positions = st.longs.narrow(0, kWholeMaxRows, rows);
    const at::Tensor slots = st.longs.narrow(0, 2 * kWholeMaxRows, rows);
    const at::Tensor context_slots = st.longs.narrow(0, kLongContext, capacity);
    const at::Tensor lens = st.ints.narrow(0, 0, rows);
    const at::Tensor cu_q = st.ints.narrow(0, kIntCuQ, kWholePrefillSlots + 1);
    const at::Tensor cu_k = st.ints.narrow(0, kIntCuK, kWholePrefillSlots + 1);
    const int32_t* tables = st.ints.data_ptr<int32_t>() + kIntTables;
    const kernels::PagedAttentionShape shape = AttentionShape(rows, st.max_blocks, kv);
    void* workspace = st.workspace.defined() ? st.workspace.data_ptr() : nullptr;
    const int64_t width = int64_t{c.num_attention_heads} * c.head_dim;
    const double scale = AttentionScale();
    // The warm-up below runs the kernels for real: over neutral inputs (no decode context, empty
    // sequences, every write to the scratch block), never over a previous step's staging, whose
    // cumulative lengths may reach past this graph's rows (a graph captured on first use).
    const int64_t scratch = int64_t{kv.scratch_block()} * kv.block_size;
    st.longs.narrow(0, 0, 2 * kWholeMaxRows).zero_();
    st.longs.narrow(0, 2 * kWholeMaxRows, kWholeMaxRows).fill_(scratch);
    st.longs.narrow(0, kLongContext, st.longs.size(0) - kLongContext).fill_(scratch);
    st.ints.narrow(0, 0, kIntTables).zero_();
    const bool paged_prompts = capacity == kPagedPrompts;
    auto attend = [&](const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
      at::Tensor query = q;
      if (query.stride(2) != 1 || query.stride(1) != query.size(2)) query = query.contiguous();
      at::Tensor out;
      if (paged_prompts) {  // every row through the paged kernel; padding rows (context 0) stay unset
        out = at::empty({rows, c.num_attention_heads, c.head_dim}, query.options());
      } else {  // prompt rows through flash attention; the paged kernel below fills the decode rows
        const at::Tensor keys = k_cache.index_select(0, context_slots);
        const at::Tensor values = v_cache.index_select(0, context_slots);
        out = std::get<0>(at::_flash_attention_forward(query, keys, values, cu_q, cu_k, rows, capacity,
                                                       /*dropout_p=*/0.0, /*is_causal=*/true,
                                                       /*return_debug_mask=*/false, scale));
        if (!out.is_contiguous()) out = out.contiguous();
      }
      kernels::PagedAttentionShape s = shape;
      s.q_row_stride = query.stride(0);
      Check(kernels::PagedAttentionDecodeCuda(query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables,
                                              lens.data_ptr<int32_t>(), out.data_ptr(), s, type_, CurrentStream(),
                                              workspace),
            "paged-attention decode (whole mixed step)");
      return out.view({rows, width});
    };
    c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
    c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
    current.synchronize();
    {
      c10::cuda::CUDAStreamGuard guard(side);
      model_.RunLayers(ids, positions, slots, kv, attend, kernels_);  // warm-up outside the graph
      side.synchronize();
      g.graph = std::make_unique<at::cuda::CUDAGraph>();
      g.graph->capture_begin(st.graph_pool, cudaStreamCaptureModeThreadLocal);
      try {
        g.hidden = model_.RunLayers(ids, positions, slots, kv, attend, kernels_);
      } catch (...) {
        try {
          g.graph->capture_end();
        } catch (...) {
        }
        g = WholeMixedGraph();
        throw;
      }
      g.graph->capture_end();
    }
    side.synchronize();
    g.pool = KvPoolKey::Of(kv);
    g.paged_prompts = paged_prompts;
  }

  // One mixed step through its whole-step graph (RunMixed's row order); returns the sampled rows'
  // fp32 logits in batch order.
  at::Tensor RunWhole(const std::vector<SequenceStep>& batch, const std::vector<const SequenceStep*>& decodes,
                      const std::vector<const SequenceStep*>& prefills, WholeMixedGraph& g, int64_t context_tokens,
                      const KvPool& kv) {
    WholeStaging& st = whole_staging_;
    const int64_t rows = g.hidden.size(0);
    st.copied->synchronize();
    int64_t* ids = st.host_longs.data_ptr<int64_t>();
    int64_t* positions = ids + kWholeMaxRows;
    int64_t* slots = positions + kWholeMaxRows;
    int64_t* sampled_rows = ids + kLongSampled;
    int64_t* context_slots = ids + kLongContext;
    int32_t* lens = st.host_ints.data_ptr<int32_t>();
    int32_t* cu_q = lens + kIntCuQ;
    int32_t* cu_k = lens + kIntCuK;
    int32_t* tables = lens + kIntTables;
    std::vector<int64_t> last_row(batch.size());  // by the entry's index in the batch
    auto entry = [&batch](const SequenceStep& s) { return static_cast<size_t>(&s - batch.data()); };
    int64_t row = 0, table_width = 0;
    for (const SequenceStep* s : decodes) {
      ids[row] = StagedId(*s, row);
      positions[row] = RotaryPosition(*s, s->start_position);
      slots[row] = kv.slot(s->block_table, s->start_position);
      lens[row] = s->start_position + 1;
      const int64_t used = s->start_position / kv.block_size + 1;
      std::copy(s->block_table.begin(), s->block_table.begin() + used, tables + row * st.max_blocks);
      table_width = std::max(table_width, used);
      last_row[entry(*s)] = row++;
    }
    const int64_t num_decodes = row;
    int64_t context = 0;
    cu_q[0] = static_cast<int32_t>(num_decodes);
    cu_k[0] = 0;
    for (size_t p = 0; p < prefills.size(); ++p) {
      const SequenceStep& s = *prefills[p];
      const int64_t n = static_cast<int64_t>(s.tokens.size());
      for (int64_t i = 0; i < n; ++i, ++row) {
        const int64_t position = s.start_position + i;
        ids[row] = s.tokens[i];
        positions[row] = RotaryPosition(s, position);
        slots[row] = kv.slot(s.block_table, position);
        lens[row] = g.paged_prompts ? static_cast<int32_t>(position + 1) : 0;
        if (g.paged_prompts) {
          const int64_t used = position / kv.block_size + 1;
          std::copy(s.block_table.begin(), s.block_table.begin() + used, tables + row * st.max_blocks);
          table_width = std::max(table_width, used);
        }
      }
      if (!g.paged_prompts) {
        for (int64_t pos = 0; pos < s.start_position + n; ++pos) context_slots[context++] = kv.slot(s.block_table, pos);
      }
      cu_q[p + 1] = static_cast<int32_t>(cu_q[p] + n);
      cu_k[p + 1] = static_cast<int32_t>(cu_k[p] + s.start_position + n);
      last_row[entry(s)] = row - 1;
    }
    for (int64_t p = static_cast<int64_t>(prefills.size()); p < kWholePrefillSlots; ++p) {
      cu_q[p + 1] = cu_q[p];  // empty sequences
      cu_k[p + 1] = cu_k[p];
    }
    const int64_t table_rows = g.paged_prompts ? row : num_decodes;
    for (; row < rows; ++row) {  // padding: reads and writes only the scratch block
      ids[row] = 0;
      positions[row] = 0;
      slots[row] = int64_t{kv.scratch_block()} * kv.block_size;
      lens[row] = 0;
    }
    int64_t num_samples = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i].sample) sampled_rows[num_samples++] = last_row[i];
    }
    // Context slots past this step's keep earlier values: valid slots, gathered but never read.
    const int64_t longs = kLongContext + (g.paged_prompts ? 0 : context_tokens);
    st.longs.narrow(0, 0, longs).copy_(st.host_longs.narrow(0, 0, longs), /*non_blocking=*/true);
    st.ints.narrow(0, 0, kIntTables).copy_(st.host_ints.narrow(0, 0, kIntTables), /*non_blocking=*/true);
    ApplyPreviousIds(st.longs.narrow(0, 0, rows));
    CopyTableRows(tables, st.ints.data_ptr<int32_t>() + kIntTables, table_rows, table_width, st.max_blocks);
    st.copied->record();
    g.graph->replay();
    if (num_samples == 0) return at::empty({0, model_.config().vocab_size}, g.hidden.options().dtype(at::kFloat));
    return model_.Logits(g.hidden.index_select(0, st.longs.narrow(0, kLongSampled, num_samples)), kernels_);
  }

  // Mixed-step graph buckets: multiples of this many rows.
  static constexpr int32_t kMixedGraphStep = 64;
  static constexpr int32_t kMixedGraphDefaultMaxTokens = 512;

  static constexpr int32_t kMaxBucket = 256;
  // Names GLMSERVE_CUDA_DISABLE accepts.
  static constexpr const char* kSwitchableKernels[] = {
      "norm",          "rotary",         "swiglu",     "gemv",          "gemm", "wgmma",       "split_attention",
      "mma_attention", "warp_attention", "mixed_step", "cudnn_prefill", "pdl",  "whole_mixed", "cublaslt",
      "tma_gemm",      "gemm_tuning",    "fused_norm"};
  // A fresh prompt of at least this many tokens alone in a step attends through cuDNN, its length
  // padded to a multiple of kCudnnPrefillPad.
  static constexpr int64_t kCudnnPrefillDefaultMinTokens = 1024;
  static constexpr int64_t kCudnnPrefillPad = 256;
  static constexpr int64_t kCudnnPrefillPrewarmTokens = 8192;  // the GPU's default --max-batch-tokens
  static constexpr int64_t kDefaultGemvMaxRows = 1;
  // Where the skinny GEMM replaces cuBLAS (see the linear kernel below): the lm_head at every
  // decode batch it takes. On an H200 its TMA form streams the lm_head faster than cuBLAS at 8, 32
  // and 64 rows (bench/gemm_bench: 294 / 293 / 299 us against 300 / 306 / 311; decode_bench, two
  // pairs each: batch 32 5,489 / 5,505 against 5,449 / 5,439 tok/s, batch 64 10,430 / 10,497
  // against 10,466 / 10,380). Its cp.async form lost from 32 rows on (350 vs 306 us at 32).
  static constexpr int64_t kSkinnyGemmFasterUpToRows = kernels::kSkinnyGemmMaxRows;
  static constexpr int64_t kSkinnyGemmMinWeightElements = int64_t{1} << 29;
  // cuBLASLt candidates timed a shape (the third session's probe found the best within 8), and
  // the most rows tuned (the default mixed-graph bound is 512).
  static constexpr int kTunedGemmCandidates = 8;
  static constexpr int64_t kMaxTunedRows = 1024;
  // A candidate replaces ATen's call only when this much faster alone than the heuristic's first:
  // on an H200 candidates 2-8% faster alone lost 1-2% in a 64-row decode step (decode_bench 10,525
  // / 10,395 against 10,644 / 10,670 tok/s), while the heuristic's misses at 192 and 384 rows
  // (down at 192: 59.4 against 42.8 us) are far past it (bench/results/gpu.md, fifteenth session).
  static constexpr double kTunedGemmMinGain = 0.10;

  struct Bucket {
    int32_t size = 0;
    int32_t max_blocks = 0;
    KvPoolKey pool;                                                           // the pool the graph was captured with
    at::Tensor host_ids, host_positions, host_slots, host_tables, host_lens;  // pinned staging
    at::Tensor ids, positions, slots, tables, lens;                           // device, fixed addresses
    at::Tensor logits;                                                        // graph output
    std::unique_ptr<at::cuda::CUDAGraph> graph;
    // Recorded after the staging copies: the pinned buffers are free again once it has passed.
    std::unique_ptr<at::cuda::CUDAEvent> copied = std::make_unique<at::cuda::CUDAEvent>();
  };

  void Prepare(Bucket& b, int32_t size, int32_t max_blocks, KvPool& kv) {
    b = Bucket();
    b.size = size;
    b.max_blocks = max_blocks;
    b.pool = KvPoolKey::Of(kv);
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
    // The step before may still be copying from these pinned buffers: with overlapped steps it was
    // launched, not finished, when this one stages.
    b.copied->synchronize();
    int64_t* ids = b.host_ids.data_ptr<int64_t>();
    int64_t* positions = b.host_positions.data_ptr<int64_t>();
    int64_t* slots = b.host_slots.data_ptr<int64_t>();
    int32_t* tables = b.host_tables.data_ptr<int32_t>();
    int32_t* lens = b.host_lens.data_ptr<int32_t>();
    const int32_t scratch = kv.scratch_block();
    int32_t table_width = 1;
    for (int32_t row = 0; row < b.size; ++row) {
      int32_t* table = tables + static_cast<int64_t>(row) * b.max_blocks;
      if (row < static_cast<int32_t>(batch.size())) {
        const SequenceStep& s = batch[row];
        const int32_t pos = s.start_position;
        ids[row] = StagedId(s, row);
        positions[row] = RotaryPosition(s, pos);
        slots[row] = kv.slot(s.block_table, pos);
        // The kernel reads only the entries covering the context; the rest may hold stale ids.
        const int32_t used = std::min<int32_t>(pos / kv.block_size + 1, b.max_blocks);
        std::copy(s.block_table.begin(), s.block_table.begin() + used, table);
        table_width = std::max(table_width, used);
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
    CopyTableRows(tables, b.tables.data_ptr<int32_t>(), b.size, table_width, b.max_blocks);
    b.lens.copy_(b.host_lens, true);
    b.copied->record();
    ApplyPreviousIds(b.ids);
  }

  // Overlapped steps: while a Run or RunMixed call stages, the previous step's ids it may feed.
  struct FeedingPrevious {
    FeedingPrevious(CudaDecodeRunner* runner, const PreviousStepIds* previous) : runner(runner) {
      runner->previous_ = previous;
      runner->previous_rows_.clear();
    }
    ~FeedingPrevious() {
      runner->previous_ = nullptr;
      runner->previous_rows_.clear();
    }
    CudaDecodeRunner* runner;
  };

  // The id staged at `row` for `s`'s first token. A kTokenFromPreviousStep takes previous_'s id:
  // its host id where the previous step's ids are on the host, else 0 here and the device's id
  // once the staged ids are on the device (ApplyPreviousIds): no wait for the step before.
  int64_t StagedId(const SequenceStep& s, int64_t row) {
    const int32_t token = s.tokens[0];
    if (token != kTokenFromPreviousStep) return token;
    auto missing = [&s]() {
      return std::runtime_error(
          absl::StrCat("sequence ", s.sequence_id, " feeds the previous step's id, which that step did not sample"));
    };
    if (previous_ == nullptr) throw missing();
    if (!previous_->device_ids.defined()) {
      const int32_t id = previous_->host_id(s.sequence_id);
      if (id < 0) throw missing();
      return id;
    }
    auto it = previous_->row_of_sequence->find(s.sequence_id);
    if (it == previous_->row_of_sequence->end()) throw missing();
    previous_rows_.emplace_back(row, it->second);
    return 0;
  }

  // `device_ids` (int64, the staged ids on the device): the rows StagedId left to the device take
  // the previous step's ids, on the stream (one small upload, a gather and a scatter).
  void ApplyPreviousIds(const at::Tensor& device_ids) {
    if (previous_rows_.empty()) return;
    const int64_t n = static_cast<int64_t>(previous_rows_.size());
    at::Tensor host = at::empty({2 * n}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* packed = host.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      packed[i] = previous_rows_[i].first;
      packed[n + i] = previous_rows_[i].second;
    }
    const at::Tensor indices = host.to(device_ids.device(), /*non_blocking=*/true);
    at::Tensor target = device_ids;
    target.index_copy_(0, indices.narrow(0, 0, n),
                       previous_->device_ids.index_select(0, indices.narrow(0, n, n)).to(at::kLong));
    previous_rows_.clear();
  }

  bool Enabled(const char* kernel) const { return disabled_.count(kernel) == 0; }

  // The vision tower's fused kernels (glm4v): the add+RMSNorm at the vision config's epsilon, the
  // fp32 rotary of q and k, SwiGLU.
  VisionKernels MakeVisionKernels() const {
    VisionKernels v;
    const ModelConfig& c = model_.config();
    if (!c.vision.has_value()) return v;
    const kernels::ElementType type = type_;
    if (Enabled("norm")) {
      const float eps = static_cast<float>(c.vision->rms_norm_eps);
      v.add_rms_norm = [type, eps](const at::Tensor& delta, at::Tensor& residual, const at::Tensor& weight) {
        Check(residual.is_contiguous() && (!delta.defined() || delta.is_contiguous()), "vision add+RMSNorm (layout)");
        return LaunchAddRmsNorm(type, eps, delta, at::Tensor(), residual, weight, "vision add+RMSNorm");
      };
    }
    if (Enabled("rotary")) {
      v.rotate_qk = [type](const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin) {
        const int64_t n = qkv.size(0), heads = qkv.size(2), head_dim = qkv.size(3);
        Check(qkv.is_contiguous() && cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat,
              "vision rotary (layout)");
        at::Tensor out = at::empty({n, 2, heads, head_dim}, qkv.options());
        Check(kernels::RotateHalfCuda(qkv.data_ptr(), qkv.stride(0), cos.data_ptr<float>(), sin.data_ptr<float>(),
                                      out.data_ptr(), n, static_cast<int32_t>(2 * heads),
                                      static_cast<int32_t>(head_dim), type, CurrentStream()),
              "vision rotary");
        return out;
      };
    }
    v.swiglu = kernels_.swiglu;
    return v;
  }

  // The rotary + KV write's arguments for one token of this model, less the token's positions,
  // slot and caches.
  kernels::GemvRotaryKvArgs OneTokenRotary() const {
    const ModelConfig& c = model_.config();
    kernels::GemvRotaryKvArgs rotary;
    rotary.inv_freq = model_.inv_freq().defined() ? model_.inv_freq().data_ptr<float>() : nullptr;
    rotary.shape.tokens = 1;
    rotary.shape.num_heads = c.num_attention_heads;
    rotary.shape.num_kv_heads = c.num_key_value_heads;
    rotary.shape.head_dim = c.head_dim;
    rotary.shape.rotary_dim = c.rotary_dim;
    return rotary;
  }

  // The fused kernels, each called on the current stream (a capture runs on a side stream).
  GlmModel::LayerKernels MakeLayerKernels() const {
    const ModelConfig& c = model_.config();
    const kernels::ElementType type = type_;
    GlmModel::LayerKernels k;
    if (Enabled("norm")) {
      const float eps = static_cast<float>(c.rms_norm_eps);
      k.add_rms_norm = [type, eps](const at::Tensor& delta, const at::Tensor& delta_weight, at::Tensor& residual,
                                   const at::Tensor& weight) {
        return LaunchAddRmsNorm(type, eps, delta, delta_weight, residual, weight, "fused add+RMSNorm");
      };
    }
    if (Enabled("rotary")) {
      kernels::RotaryKvShape shape;
      shape.num_heads = c.num_attention_heads;
      shape.num_kv_heads = c.num_key_value_heads;
      shape.head_dim = c.head_dim;
      shape.rotary_dim = c.rotary_dim;
      const float* inv_freq = model_.inv_freq().defined() ? model_.inv_freq().data_ptr<float>() : nullptr;
      const at::Tensor& components = model_.mrope_components();
      const int64_t* frequency_component = components.defined() ? components.data_ptr<int64_t>() : nullptr;
      k.rotary_kv = [type, shape, inv_freq, frequency_component](at::Tensor& qkv, const at::Tensor& positions,
                                                                 const at::Tensor& slots, at::Tensor& k_cache,
                                                                 at::Tensor& v_cache) mutable {
        shape.tokens = static_cast<int32_t>(qkv.size(0));
        shape.qkv_row_stride = qkv.stride(0);
        const bool three_d = positions.dim() == 2;
        shape.frequency_component = three_d ? frequency_component : nullptr;
        Check(qkv.stride(1) == 1 && positions.scalar_type() == at::kLong && slots.scalar_type() == at::kLong &&
                  positions.is_contiguous() && (!three_d || (frequency_component != nullptr && positions.size(0) == 3)),
              "rotary+KV write (layout)");
        Check(kernels::RotaryKvWriteCuda(qkv.data_ptr(), positions.data_ptr<int64_t>(), inv_freq,
                                         slots.data_ptr<int64_t>(), k_cache.data_ptr(), v_cache.data_ptr(), shape, type,
                                         CurrentStream()),
              "rotary+KV write");
      };
      k.rotary_kv_takes_3d = frequency_component != nullptr;
    }
    if (Enabled("swiglu")) {
      k.swiglu = [type](const at::Tensor& gate_up) {
        const int64_t width = gate_up.size(1) / 2;
        at::Tensor input = gate_up.contiguous();
        at::Tensor out = at::empty({input.size(0), width}, input.options());
        Check(kernels::SwiGluCuda(input.data_ptr(), out.data_ptr(), input.size(0), width, type, CurrentStream()),
              "SwiGLU");
        return out;
      };
    }
    // Measurement switches, off by default: GLMSERVE_CUDA_L2_PREFETCH_<ROLE>_MB asks L2 for up to
    // that many MB of the role's weight before the short kernels that precede its projection, in
    // steps of at most GLMSERVE_CUDA_L2_PREFETCH_MAX_ROWS rows (HBM idles there at batch 1).
    {
      const char* const roles[] = {"qkv", "o", "gate_up", "down", "lm_head"};
      const char* const variables[] = {"GLMSERVE_CUDA_L2_PREFETCH_QKV_MB", "GLMSERVE_CUDA_L2_PREFETCH_O_MB",
                                       "GLMSERVE_CUDA_L2_PREFETCH_GATE_UP_MB", "GLMSERVE_CUDA_L2_PREFETCH_DOWN_MB",
                                       "GLMSERVE_CUDA_L2_PREFETCH_LM_HEAD_MB"};
      std::map<std::string, int64_t> prefetch_bytes;
      for (size_t i = 0; i < std::size(roles); ++i) {
        const int64_t mb = EnvInt(variables[i], 0, 0, 1024);
        if (mb > 0) prefetch_bytes[roles[i]] = mb << 20;
      }
      const int64_t prefetch_max_rows = EnvInt("GLMSERVE_CUDA_L2_PREFETCH_MAX_ROWS", 8, 1, 1 << 20);
      // =1: asked for as soon as the prefetch kernel starts, into the tail of the projection before.
      const bool prefetch_early = EnvIs("GLMSERVE_CUDA_L2_PREFETCH_EARLY", "1");
      if (!prefetch_bytes.empty()) {
        k.prefetch_weight = [prefetch_bytes, prefetch_max_rows, prefetch_early](
                                const char* role, const at::Tensor& weight, int64_t rows) {
          const auto it = prefetch_bytes.find(role);
          if (it == prefetch_bytes.end() || rows > prefetch_max_rows || !weight.is_contiguous()) return;
          const int64_t bytes = std::min<int64_t>(it->second, weight.numel() * weight.element_size());
          Check(kernels::L2PrefetchCuda(weight.data_ptr(), bytes, prefetch_early, CurrentStream()), "L2 prefetch");
        };
      }
    }
    // Measurement switch, off by default: GLMSERVE_CUDA_FUSED_SWIGLU=1 runs one-row steps' gate_up
    // projection and SwiGLU as one GEMV launch (the same bits; one launch a layer fewer).
    if (Enabled("gemv") && Enabled("swiglu") && EnvIs("GLMSERVE_CUDA_FUSED_SWIGLU", "1")) {
      k.gate_up_swiglu = [type](const at::Tensor& x, const at::Tensor& weight) {
        const int64_t rows = x.size(0), in = x.size(1), out_features = weight.size(0);
        if (rows != 1 || !x.is_contiguous() || !weight.is_contiguous() || x.scalar_type() != weight.scalar_type() ||
            !kernels::GemvCudaTakes(1, in, type, x.data_ptr(), weight.data_ptr()) || out_features % 2 != 0) {
          return at::Tensor();
        }
        at::Tensor y = at::empty({rows, out_features / 2}, x.options());
        Check(kernels::GemvSwiGluCuda(x.data_ptr(), weight.data_ptr(), nullptr, y.data_ptr(), 1, out_features, in, type,
                                      CurrentStream()),
              "GEMV + SwiGLU");
        return y;
      };
    }
    // One-row steps run each add+RMSNorm inside the GEMV after it (each block normalises the row
    // while its first weight loads are in flight; the same bits): batch 1 +3.5% on an H100
    // (bench/results/gpu.md, eighteenth session). Off: GLMSERVE_CUDA_DISABLE=fused_norm.
    // Measurement switches, off by default, measured no faster: with GLMSERVE_CUDA_FUSED_SWIGLU=1
    // the MLP's SwiGLU too, with GLMSERVE_CUDA_FUSED_ROTARY=1 the rotary + KV write after qkv.
    if (Enabled("gemv") && Enabled("norm") && Enabled("fused_norm")) {
      const float eps = static_cast<float>(c.rms_norm_eps);
      const bool fuse_swiglu = Enabled("swiglu") && EnvIs("GLMSERVE_CUDA_FUSED_SWIGLU", "1");
      const kernels::GemvRotaryKvArgs rotary_template = OneTokenRotary();
      const at::Tensor& components = model_.mrope_components();
      const int64_t* frequency_component = components.defined() ? components.data_ptr<int64_t>() : nullptr;
      // The model's qkv width, where its heads fit the rotary epilogue (else 0: the rotary kernel after).
      const int64_t qkv_width = int64_t{c.num_attention_heads + 2 * c.num_key_value_heads} * c.head_dim;
      const int64_t rotary_qkv_width =
          Enabled("rotary") && EnvIs("GLMSERVE_CUDA_FUSED_ROTARY", "1") &&
                  kernels::GemvRotaryKvShapeFits(rotary_template.shape, rotary_template.inv_freq != nullptr, qkv_width)
              ? qkv_width
              : 0;
      k.norm_linear = [type, eps, fuse_swiglu, rotary_qkv_width, rotary_template, frequency_component](
                          const GlmModel::NormLinear& a, at::Tensor& residual) -> GlmModel::FusedProjection {
        const int64_t hidden = residual.dim() == 2 ? residual.size(1) : -1, out_features = a.weight.size(0);
        const int64_t per_chunk = 16 / static_cast<int64_t>(residual.element_size());
        auto fits = [&](const at::Tensor& t, int64_t elements) {
          return !t.defined() || (t.is_contiguous() && t.scalar_type() == residual.scalar_type() &&
                                  t.numel() == elements && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0);
        };
        if (hidden <= 0 || residual.size(0) != 1 || hidden % per_chunk != 0 ||
            hidden / per_chunk > kernels::kGemvAddRmsNormMaxChunks || a.weight.size(1) != hidden ||
            !fits(residual, hidden) || !fits(a.delta, hidden) || !fits(a.delta_weight, hidden) ||
            !fits(a.norm_weight, hidden) || !fits(a.weight, out_features * hidden) || !fits(a.bias, out_features) ||
            (a.delta_weight.defined() && !a.delta.defined())) {
          return {};
        }
        const bool with_swiglu = a.swiglu && fuse_swiglu && out_features % 2 == 0;
        // The rotary epilogue: one token's positions ([1], or [3, 1] with mrope), its slot, caches
        // of the element type; otherwise the rotary kernel runs after.
        kernels::GemvRotaryKvArgs rotary = rotary_template;
        const bool three_d = a.positions.defined() && a.positions.dim() == 2;
        const bool with_rotary =
            out_features == rotary_qkv_width && a.positions.defined() && a.slots.defined() && a.k_cache.defined() &&
            a.v_cache.defined() && a.positions.scalar_type() == at::kLong && a.positions.is_contiguous() &&
            a.positions.size(-1) == 1 && (!three_d || (frequency_component != nullptr && a.positions.size(0) == 3)) &&
            a.slots.scalar_type() == at::kLong && a.slots.numel() == 1 && a.k_cache.is_contiguous() &&
            a.v_cache.is_contiguous() && a.k_cache.scalar_type() == residual.scalar_type() &&
            a.v_cache.scalar_type() == residual.scalar_type();
        if (with_rotary) {
          rotary.positions = a.positions.data_ptr<int64_t>();
          rotary.slot = a.slots.data_ptr<int64_t>();
          rotary.k_cache = a.k_cache.data_ptr();
          rotary.v_cache = a.v_cache.data_ptr();
          rotary.shape.qkv_row_stride = out_features;
          rotary.shape.frequency_component = three_d ? frequency_component : nullptr;
        }
        at::Tensor residual_out = a.delta.defined() ? at::empty_like(residual) : at::Tensor();
        at::Tensor y = at::empty({1, with_swiglu ? out_features / 2 : out_features}, residual.options());
        auto ptr = [](const at::Tensor& t) -> const void* { return t.defined() ? t.data_ptr() : nullptr; };
        Check(kernels::GemvAddRmsNormCuda(ptr(a.delta), ptr(a.delta_weight), residual.data_ptr(),
                                          residual_out.defined() ? residual_out.data_ptr() : nullptr,
                                          a.norm_weight.data_ptr(), eps, a.weight.data_ptr(), ptr(a.bias), y.data_ptr(),
                                          out_features, hidden, with_swiglu, with_rotary ? &rotary : nullptr, type,
                                          CurrentStream()),
              "add+RMSNorm + GEMV");
        if (residual_out.defined()) residual = residual_out;
        return {y, with_swiglu, with_rotary};
      };
    }
    // Up to this many rows the GEMV streams the weights faster than cuBLAS: on an H200 one row
    // (decode_bench 5.57 vs 5.81 ms a step), not two (6.15 vs 5.75; bench/results/gpu.md).
    // GLMSERVE_CUDA_GEMV_MAX_ROWS overrides it for measurements.
    int64_t max_rows = EnvInt("GLMSERVE_CUDA_GEMV_MAX_ROWS", kDefaultGemvMaxRows, 0, kernels::kGemvMaxRows);
    if (!Enabled("gemv")) max_rows = 0;
    const int64_t gemm_workspace_bytes = gemm_workspace_bytes_;
    // Where the skinny GEMM replaces cuBLAS; the switches move the bounds for measurements.
    const int64_t gemm_max_rows =
        EnvInt("GLMSERVE_CUDA_GEMM_MAX_ROWS", kSkinnyGemmFasterUpToRows, 0, kernels::kSkinnyGemmMaxRows);
    const int64_t gemm_min_weight =
        EnvInt("GLMSERVE_CUDA_GEMM_MIN_WEIGHT", kSkinnyGemmMinWeightElements, 0, int64_t{1} << 40);
    // Weights up to this many elements take the skinny GEMM too (0: none). For measuring its
    // whole-tile form on the projections whose 64-feature tiles fit one wave (qkv, o, down).
    const int64_t gemm_max_small_weight = EnvInt("GLMSERVE_CUDA_GEMM_SMALL_WEIGHT", 0, 0, int64_t{1} << 40);
    const kernels::SkinnyGemmMath gemm_math = !Enabled("wgmma")     ? kernels::SkinnyGemmMath::kWarp
                                              : Enabled("tma_gemm") ? kernels::SkinnyGemmMath::kTma
                                                                    : kernels::SkinnyGemmMath::kWarpgroup;
    const int64_t max_custom_rows = std::max(max_rows, gemm_workspace_bytes > 0 ? gemm_max_rows : 0);
    const kernels::TunedGemm* tuned = tuned_gemm_;
    if (max_custom_rows > 0 || tuned != nullptr) {
      k.linear = [type, max_rows, gemm_workspace_bytes, gemm_max_rows, gemm_min_weight, gemm_max_small_weight,
                  gemm_math, max_custom_rows,
                  tuned](const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
        const int64_t rows = x.size(0), in = x.size(1), out_features = weight.size(0);
        if (!x.is_contiguous() || !weight.is_contiguous() || (bias.defined() && !bias.is_contiguous()) ||
            rows > std::numeric_limits<int32_t>::max()) {
          return at::linear(x, weight, bias);
        }
        const auto rows32 = static_cast<int32_t>(rows);
        const void* bias_data = bias.defined() ? bias.data_ptr() : nullptr;
        // The row counts the graphs and decode buckets use, tuned at capture (TuneGemms); prefill
        // and other counts: ATen's cuBLAS(Lt) call.
        auto tuned_or_aten = [&]() {
          const kernels::GemmKey key{rows32, out_features, in, type, bias.defined()};
          if (tuned == nullptr || x.scalar_type() != weight.scalar_type() ||
              !tuned->Takes(key, x.data_ptr(), weight.data_ptr(), bias_data, nullptr)) {
            return at::linear(x, weight, bias);
          }
          at::Tensor y = at::empty({rows, out_features}, x.options());
          // Per call from the caching allocator, as the skinny GEMM's below.
          at::Tensor workspace =
              at::empty({static_cast<int64_t>(kernels::kTunedGemmWorkspaceBytes)}, x.options().dtype(at::kByte));
          Check(tuned->Run(key, x.data_ptr(), weight.data_ptr(), bias_data, y.data_ptr(), workspace.data_ptr(),
                           CurrentStream()),
                "tuned GEMM");
          return y;
        };
        if (rows > max_custom_rows) return tuned_or_aten();
        if (rows <= max_rows && kernels::GemvCudaTakes(rows32, in, type, x.data_ptr(), weight.data_ptr())) {
          at::Tensor y = at::empty({rows, out_features}, x.options());
          Check(kernels::GemvCuda(x.data_ptr(), weight.data_ptr(), bias_data, y.data_ptr(), rows32, out_features, in,
                                  type, CurrentStream()),
                "GEMV");
          return y;
        }
        // The skinny GEMM streams a weight faster than cuBLAS only where the weight is large
        // enough to amortise its ramp-up: the lm_head (TMA form on an H200: 4.22 / 4.24 / 4.15
        // TB/s at 8 / 32 / 64 rows against cuBLAS's 4.14 / 4.06 / 3.99); every per-layer
        // projection is slower on it at 32-64 rows (bench/gemm_bench, bench/results/gpu.md).
        const int64_t weight_elements = out_features * in;
        if (gemm_workspace_bytes > 0 && rows <= gemm_max_rows &&
            (weight_elements >= gemm_min_weight || weight_elements <= gemm_max_small_weight) &&
            kernels::SkinnyGemmCudaTakes(rows32, out_features, in, type, x.data_ptr(), weight.data_ptr())) {
          at::Tensor y = at::empty({rows, out_features}, x.options());
          // From the caching allocator, per call: stream-ordered, so a capture's warm-up on a side
          // stream and another thread's eager step never share one.
          at::Tensor workspace = at::empty({gemm_workspace_bytes}, x.options().dtype(at::kByte));
          Check(kernels::SkinnyGemmCuda(x.data_ptr(), weight.data_ptr(), bias_data, y.data_ptr(), rows32, out_features,
                                        in, type, workspace.data_ptr(), CurrentStream(), gemm_math),
                "skinny GEMM");
          return y;
        }
        return tuned_or_aten();
      };
    }
    return k;
  }

  // Softmax scale of every attention kernel here (1 / sqrt(head_dim), rounded to float as the
  // kernels take it).
  float AttentionScale() const {
    return static_cast<float>(1.0 / std::sqrt(static_cast<double>(model_.config().head_dim)));
  }

  // The paged-attention kernel's shape for `batch` decode rows whose block tables have
  // `max_blocks` entries each.
  kernels::PagedAttentionShape AttentionShape(int32_t batch, int32_t max_blocks, const KvPool& kv) const {
    const ModelConfig& c = model_.config();
    kernels::PagedAttentionShape shape;
    shape.batch = batch;
    shape.num_heads = c.num_attention_heads;
    shape.num_kv_heads = c.num_key_value_heads;
    shape.head_dim = c.head_dim;
    shape.block_size = kv.block_size;
    shape.max_blocks_per_seq = max_blocks;
    shape.max_context = max_context_;
    shape.scale = AttentionScale();
    shape.allow_tensor_cores = Enabled("mma_attention");
    shape.allow_warp_tiles = Enabled("warp_attention");
    return shape;
  }

  // One workspace for every layer's split attention of a step (the layers run one after
  // another); undefined when the split attention is off. The kernels' counters start at zero and
  // each call leaves them so for the next layer.
  at::Tensor AttentionWorkspace(const kernels::PagedAttentionShape& shape) const {
    const size_t workspace_bytes = Enabled("split_attention") ? kernels::PagedAttentionWorkspaceBytes(shape) : 0;
    if (workspace_bytes == 0) return at::Tensor();
    at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)},
                                     at::TensorOptions().dtype(at::kByte).device(model_.device()));
    workspace.narrow(0, 0, int64_t{4} * shape.batch * shape.num_kv_heads).zero_();
    return workspace;
  }

  at::Tensor Step(Bucket& b, KvPool& kv) {
    const kernels::PagedAttentionShape shape = AttentionShape(b.size, b.max_blocks, kv);
    const at::Tensor workspace = AttentionWorkspace(shape);
    auto attend = [&](const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
      kernels::PagedAttentionShape s = shape;
      at::Tensor query = q;
      if (query.stride(2) != 1 || query.stride(1) != query.size(2)) query = query.contiguous();
      s.q_row_stride = query.stride(0);
      at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
      Check(kernels::PagedAttentionDecodeCuda(query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                                              b.tables.data_ptr<int32_t>(), b.lens.data_ptr<int32_t>(), out.data_ptr(),
                                              s, type_, CurrentStream(),
                                              workspace.defined() ? workspace.data_ptr() : nullptr),
            "paged-attention decode");
      return out.view({q.size(0), q.size(1) * q.size(2)});
    };
    return model_.Logits(model_.RunLayers(b.ids, b.positions, b.slots, kv, attend, kernels_), kernels_,
                         /*fp32=*/false);
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
      std::fprintf(stderr,
                   "cuda graph verify: bucket %d rows %d max|graph-eager| %.3g argmax differs in %lld rows "
                   "(steps %lld, worst %.3g)\n",
                   b.size, n, max_diff, static_cast<long long>(argmax_differs), static_cast<long long>(verified_steps_),
                   max_diff_seen_);
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
      try {
        b.logits = Step(b, kv);
      } catch (...) {
        // An allocation or launch that failed mid-capture (out of memory, say) must not leave the
        // stream capturing: end the capture, drop the graph, and let the caller see the error;
        // the next step of this bucket captures again.
        try {
          b.graph->capture_end();
        } catch (...) {
        }
        b.graph.reset();
        b.logits = at::Tensor();
        throw;
      }
      b.graph->capture_end();
    }
    side.synchronize();
  }

  const GlmModel& model_;
  const kernels::ElementType type_;
  std::mutex mu_;
  // While a Run / RunMixed call stages (FeedingPrevious): where kTokenFromPreviousStep ids come
  // from, and the (row, index into previous_->device_ids) pairs StagedId left to the device.
  const PreviousStepIds* previous_ = nullptr;
  std::vector<std::pair<int64_t, int64_t>> previous_rows_;
  bool graphs_ = true;
  bool verify_ = false;
  bool mixed_ = false;          // RunMixed takes prefill and mixed batches
  int cudnn_prefill_mode_ = 0;  // CudnnAttentionMode: a long fresh prompt may attend through cuDNN
  int64_t cudnn_prefill_min_tokens_ = 0;
  std::thread::id cudnn_warm_thread_;  // the thread whose cuDNN graph cache PrewarmCudnnPrefill filled
  std::set<std::string> disabled_;     // GLMSERVE_CUDA_DISABLE
  int64_t gemm_workspace_bytes_ = 0;   // kernels::SkinnyGemmCuda's; 0 when the "gemm" kernel is off
  // cuBLASLt with timed algorithms (process-wide: tunings outlive an engine rebuilt by the
  // watchdog); null for fp32 or with "gemm_tuning" off.
  kernels::TunedGemm* tuned_gemm_ = nullptr;
  GlmModel::LayerKernels kernels_;
  VisionKernels vision_kernels_;  // empty members for a model without a vision tower
  int64_t verified_steps_ = 0;
  double max_diff_seen_ = 0;
  int32_t max_context_ = 0;
  std::map<int32_t, Bucket> buckets_;
  std::map<int32_t, MixedGraph> mixed_graphs_;  // by row count
  int64_t mixed_graph_max_tokens_ = 0;          // largest mixed step replayed as graphs; 0 = none
  bool whole_ = false;                          // mixed steps may replay one graph (WholeMixedGraph)
  int64_t paged_prompt_rows_ = 0;  // steps with up to this many prompt rows attend all rows paged; 0 = never
  WholeStaging whole_staging_;
  std::map<std::pair<int32_t, int64_t>, WholeMixedGraph> whole_graphs_;  // by (rows, context capacity)
  std::map<int64_t, int32_t> whole_failed_rows_;  // by context capacity: the fewest rows whose capture failed
};

CudaDecodeRunner* CreateCudaDecodeRunner(const GlmModel& model) {
  if (kernels::PagedAttentionMaxContext() <= 0 || model.config().head_dim > 256) return nullptr;
  return new CudaDecodeRunner(model);
}

at::Tensor CudaDecodeForward(CudaDecodeRunner& runner, const std::vector<SequenceStep>& batch, KvPool& kv,
                             const PreviousStepIds* previous) {
  return runner.Run(batch, kv, previous);
}

at::Tensor CudaMixedForward(CudaDecodeRunner& runner, const std::vector<SequenceStep>& batch, KvPool& kv,
                            const GlmModel::EmbeddingOverride* images, const PreviousStepIds* previous) {
  return runner.RunMixed(batch, kv, images, previous);
}

void CaptureCudaDecodeGraphs(CudaDecodeRunner& runner, int32_t max_sequences, KvPool& kv,
                             std::vector<int32_t>* captured, std::string* note) {
  runner.CaptureBuckets(max_sequences, kv, captured, note);
}

const GlmModel::LayerKernels& CudaLayerKernels(const CudaDecodeRunner& runner) { return runner.layer_kernels(); }
const VisionKernels& CudaVisionKernels(const CudaDecodeRunner& runner) { return runner.vision_kernels(); }

void DestroyCudaDecodeRunner(CudaDecodeRunner* runner) { delete runner; }

}  // namespace glmserve
