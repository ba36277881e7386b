// The GLM decoder in LibTorch (ATen ops only). Internal to runtime/: include only from
// LibTorch TUs. One forward serves every layout (chatglm, glm, glm4): weights arrive canonical.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/checkpoint/model_config.h"
#include "runtime/checkpoint/weight_map.h"
#include "runtime/step_executor.h"

namespace glmserve {

// Paged KV storage: [num_layers, (num_blocks + 1) * block_size, kv_heads, head_dim] for K and V.
// Block `num_blocks` is scratch: padding rows of a fixed-size (CUDA graph) batch write there.
struct KvPool {
  at::Tensor k;
  at::Tensor v;
  int32_t block_size = 0;
  int32_t num_blocks = 0;  // usable blocks (ids 0 .. num_blocks - 1)
  int32_t scratch_block() const { return num_blocks; }
  // The pool row holding position `pos` of the sequence whose blocks are `block_table`.
  int64_t slot(const std::vector<int32_t>& block_table, int64_t pos) const {
    return int64_t{block_table.at(pos / block_size)} * block_size + pos % block_size;
  }
};

// GLM-4.1V's vision tower weights (glm4v checkpoints), validated and loaded in the model's
// dtype on its device, in transformers' layouts: patch_embed [hidden, channels, temporal, patch,
// patch] (Conv3d), downsample [out_hidden, hidden, merge, merge] (Conv2d), qkv fused [3 hidden,
// hidden]; vision_tower.h computes with them. Undefined tensors where the config has no such tensor
// (qkv_bias without vision_config.attention_bias).
struct VisionWeights {
  struct Block {
    // gate_up: the MLP's gate and up projections stacked [2 intermediate, hidden] (one GEMM).
    at::Tensor norm1, norm2, qkv_weight, qkv_bias, proj_weight, gate_up_weight, down_weight;
  };
  at::Tensor patch_embed_weight, patch_embed_bias, post_conv_norm, position_embedding;
  std::vector<Block> blocks;
  at::Tensor post_norm, downsample_weight, downsample_bias;
  // The patch merger: proj, LayerNorm (weight and bias), then a SwiGLU MLP.
  at::Tensor merger_proj, merger_norm_weight, merger_norm_bias, merger_gate, merger_up, merger_down;
};

// What LayerKernels::norm_linear takes: add_rms_norm's arguments, the projection's, and what
// may be fused after it.
struct NormLinear {
  at::Tensor delta, delta_weight, norm_weight;  // as add_rms_norm takes them
  at::Tensor weight, bias;                      // the projection (bias may be undefined)
  bool swiglu = false;                          // weight is gate_up's: the SwiGLU too where it can
  // Defined when weight is qkv's and the rotary + KV write may be fused too (as rotary_kv takes
  // them).
  at::Tensor positions, slots, k_cache, v_cache;
};

// What LayerKernels::norm_linear gave back.
struct FusedProjection {
  at::Tensor y;            // undefined: not taken (add_rms_norm, linear, swiglu / rotary_kv run)
  bool swiglu = false;     // y is up * silu(gate) of the projection, not the projection
  bool rotary_kv = false;  // q and k in y are rotated and k, v written to the caches
};

// Optional fused kernels for parts of a layer (the CUDA fast path passes its own down). Each one
// left empty runs the same arithmetic as ATen ops.
struct LayerKernels {
  // residual += delta, or RMSNorm(delta) * delta_weight when delta_weight is defined (the
  // sandwich norms of GLM-4-0414 / GLM-4.1V); delta may be undefined (norm only). Returns
  // RMSNorm(residual) * weight.
  std::function<at::Tensor(const at::Tensor& delta, const at::Tensor& delta_weight, at::Tensor& residual,
                           const at::Tensor& weight)>
      add_rms_norm;
  // Rotates q and k inside qkv [T, q + 2 kv] in place and writes k and v to the caches' rows
  // `slots`. Positions as RunLayers takes them; [3, T] only when rotary_kv_takes_3d.
  std::function<void(at::Tensor& qkv, const at::Tensor& positions, const at::Tensor& slots, at::Tensor& k_cache,
                     at::Tensor& v_cache)>
      rotary_kv;
  bool rotary_kv_takes_3d = false;
  // gate_up [T, 2 I] -> up * silu(gate), [T, I].
  std::function<at::Tensor(const at::Tensor& gate_up)> swiglu;
  // x [T, H] -> up * silu(gate) of x's gate_up projection in one step, [T, I]; an undefined
  // tensor where it does not take the shape (then linear and swiglu run). Optional.
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& gate_up_weight)> gate_up_swiglu;
  // at::linear(x, weight, bias); bias may be undefined.
  std::function<at::Tensor(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias)> linear;
  // add_rms_norm(delta, delta_weight, residual, norm_weight) and the projection of its result in
  // one step, residual rebound to a new tensor holding the updated stream (the one passed in is
  // left as it was); the SwiGLU or the rotary + KV write after it too where asked and it can
  // (FusedProjection says). Optional; the same results as the hooks one by one.
  std::function<FusedProjection(const NormLinear& args, at::Tensor& residual)> norm_linear;
  // Told, between two projections, of the weight the layers read next by its role (as
  // Projections() names them) and the step's rows: may ask L2 for it while the short kernels
  // between run. Optional; changes no result.
  std::function<void(const char* role, const at::Tensor& weight, int64_t rows)> prefetch_weight;
};

class GlmModel {
 public:
  // Builds the model from the stored tensors named by `plan` (consumed: entries are released as
  // they are converted, so peak memory stays near one copy).
  static absl::StatusOr<std::unique_ptr<GlmModel>> Build(const ModelConfig& config, const WeightPlan& plan,
                                                         std::unordered_map<std::string, at::Tensor>* stored,
                                                         at::ScalarType dtype, at::Device device);

  // A model of `config`'s shapes with random weights (N(0, 0.02), norms 1), made on the device:
  // benchmarks of real model sizes without a download.
  static absl::StatusOr<std::unique_ptr<GlmModel>> BuildRandom(const ModelConfig& config, at::ScalarType dtype,
                                                               at::Device device, uint64_t seed);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }
  int64_t kv_bytes_per_token() const;

  KvPool AllocateKv(int32_t num_blocks, int32_t block_size) const;

  // Attention of one layer over the paged cache: q [T, heads, head_dim] (rows may be strided:
  // a view into the qkv projection) -> [T, heads * head_dim].
  using AttendFn = std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache)>;
  // Fused kernels for parts of a layer (defined at namespace scope above).
  using LayerKernels = ::glmserve::LayerKernels;
  using FusedProjection = ::glmserve::FusedProjection;
  using NormLinear = ::glmserve::NormLinear;
  // Rows of the input embeddings replaced by other vectors: a glm4v prompt's image features at
  // its image tokens. rows [R] int64 and values [R, hidden] on the model's device.
  struct EmbeddingOverride {
    at::Tensor rows;
    at::Tensor values;
  };
  // The decoder layers on device tensors only (no host sync: CUDA-graph capturable): ids and KV
  // slots are [T] int64; positions are [T] int64, or [3, T] (temporal, height, width) for glm4v's
  // 3-D rotary (mrope_section splits the frequencies among the three; rotated by kernels.rotary_kv
  // when it takes 3-D positions, else with ATen ops). Returns the hidden states [T, hidden] after the last layer
  // (before the final norm).
  at::Tensor RunLayers(const at::Tensor& ids, const at::Tensor& positions, const at::Tensor& slots, KvPool& kv,
                       const AttendFn& attend, const LayerKernels& kernels = {},
                       const EmbeddingOverride* embeddings = nullptr) const;
  // Final norm + lm_head for the given hidden rows, in fp32; `fp32` false leaves the logits in
  // the model's dtype (the lm_head's own rounding, as transformers' bf16 logits).
  at::Tensor Logits(const at::Tensor& hidden_rows, const LayerKernels& kernels = {}, bool fp32 = true) const;
  // Forward without the CUDA decode graphs: per-sequence ATen attention for any batch (prefill,
  // mixed, decode), `kernels` for the rest of each layer. ModelForward (model_forward.h) calls it
  // with the GPU's fused kernels, or none on the CPU; tests call it with the kernels' CPU
  // references. Returns fp32 logits of the sampled rows; throws c10::Error on failure.
  // Multimodal steps (StepNeedsMultimodal) take 3-D positions from their prompts and `embeddings`
  // (rows counted over the batch's tokens in order) for their image tokens; decode rows of a
  // multimodal sequence rotate at index + rope_delta.
  at::Tensor EagerForward(const std::vector<SequenceStep>& batch, KvPool& kv, const LayerKernels& kernels,
                          const EmbeddingOverride* embeddings = nullptr) const;
  // fp32 rotary inverse frequencies [rotary_dim / 2] on the device (undefined without rotary).
  const at::Tensor& inv_freq() const { return inv_freq_; }
  // glm4v: for each rotary frequency, which position component (0, 1, 2) drives it (mrope_section
  // expanded), int64 on the device; undefined for the text architectures.
  const at::Tensor& mrope_components() const { return mrope_components_; }
  // The decoder's linear projections by role (qkv, o, gate_up, down; the lm_head alone), each with
  // every layer's weight (and bias, undefined where the role has none) in layer order: what tuning
  // a GEMM per shape times, one layer's weight after another as a step reads them.
  struct Projection {
    const char* role;
    std::vector<at::Tensor> weights, biases;
  };
  std::vector<Projection> Projections() const;
  // The vision tower's weights; null for the text architectures.
  const VisionWeights* vision() const { return vision_.get(); }

 private:
  struct Layer {
    at::Tensor input_norm, qkv_weight, qkv_bias, o_weight, post_attn_norm;
    at::Tensor mlp_norm, gate_up_weight, down_weight, post_mlp_norm;
  };
  GlmModel(const ModelConfig& config, at::ScalarType dtype, at::Device device)
      : config_(config), dtype_(dtype), device_(device) {}
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const;
  // x W^T + b through kernels.linear when given, else at::linear.
  at::Tensor Linear(const LayerKernels& kernels, const at::Tensor& x, const at::Tensor& weight,
                    const at::Tensor& bias) const;
  // residual += delta (when defined; first RMSNorm(delta) * delta_weight when that is defined);
  // RMSNorm(residual) * weight, fused when kernels has it.
  at::Tensor AddRmsNorm(const LayerKernels& kernels, const at::Tensor& delta, const at::Tensor& delta_weight,
                        at::Tensor& residual, const at::Tensor& weight) const;
  at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  ModelConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  at::Tensor embed_, lm_head_, final_norm_, inv_freq_, mrope_components_;
  std::vector<Layer> layers_;
  std::unique_ptr<VisionWeights> vision_;
};

}  // namespace glmserve
