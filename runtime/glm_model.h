// The GLM decoder in LibTorch (ATen ops only). Internal to runtime/: include only from
// LibTorch TUs. One forward serves every layout (chatglm, glm, glm4): weights arrive canonical.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model_config.h"
#include "runtime/step_executor.h"
#include "runtime/weight_map.h"

namespace glmserve {

// Paged KV storage: [num_layers, num_blocks * block_size, kv_heads, head_dim] for K and V.
struct KvPool {
  at::Tensor k;
  at::Tensor v;
  int32_t block_size = 0;
  int32_t num_blocks = 0;
};

class GlmModel {
 public:
  // Builds the model from the stored tensors named by `plan` (consumed: entries are released as
  // they are converted, so peak memory stays near one copy).
  static absl::StatusOr<std::unique_ptr<GlmModel>> Build(
      const ModelConfig& config, const WeightPlan& plan,
      std::unordered_map<std::string, at::Tensor>* stored, at::ScalarType dtype, at::Device device);

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  at::Device device() const { return device_; }
  int64_t kv_bytes_per_token() const;

  KvPool AllocateKv(int32_t num_blocks, int32_t block_size) const;

  // One forward pass over a batch. Writes each sequence's new K/V into its blocks and returns
  // fp32 logits [n, vocab] for the last fed token of every sequence with sample == true, in
  // batch order. Throws c10::Error on failure (callers turn it into a status).
  at::Tensor Forward(const std::vector<SequenceStep>& batch, KvPool& kv) const;

 private:
  struct Layer {
    at::Tensor input_norm, qkv_weight, qkv_bias, o_weight, post_attn_norm;
    at::Tensor mlp_norm, gate_up_weight, down_weight, post_mlp_norm;
  };
  GlmModel(const ModelConfig& config, at::ScalarType dtype, at::Device device)
      : config_(config), dtype_(dtype), device_(device) {}
  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const;
  at::Tensor ApplyRotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  ModelConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  at::Tensor embed_, lm_head_, final_norm_, inv_freq_;
  std::vector<Layer> layers_;
};

}  // namespace glmserve
