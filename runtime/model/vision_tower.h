// GLM-4.1V's vision tower in ATen ops: pixel patches -> image features in the text model's hidden
// size, as transformers' Glm4vVisionModel computes them (patch embedding, learned positions
// interpolated to each image's grid, blocks with 2-D rotary attention over each image's own
// patches, spatial downsample, patch merger). Include only from LibTorch TUs.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <vector>

#include "runtime/checkpoint/model_config.h"
#include "runtime/generation.h"
#include "runtime/model/glm_model.h"

namespace glmserve {

// Fused kernels for the vision blocks (the GPU's, cuda_decode.h); an empty member means ATen ops.
struct VisionKernels {
  // residual += delta (delta may be undefined: norm only); returns RMSNorm(residual) * weight at
  // the vision config's epsilon.
  std::function<at::Tensor(const at::Tensor& delta, at::Tensor& residual, const at::Tensor& weight)> add_rms_norm;
  // qkv [N, 3, heads, head_dim] -> q and k rotated in fp32 by cos / sin [N, head_dim] (fp32),
  // [N, 2, heads, head_dim] in the model's dtype.
  std::function<at::Tensor(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin)> rotate_qk;
  // gate_up [N, 2 I] -> up * silu(gate), [N, I].
  std::function<at::Tensor(const at::Tensor& gate_up)> swiglu;
};

// [sum of images' num_tokens, out_hidden_size] in `dtype` on `device`, images in order. Throws
// c10::Error on failure (an out-of-memory included: the executor turns it into a status).
at::Tensor EncodeImages(const VisionWeights& weights, const VisionConfig& config,
                        const std::vector<const ImageInput*>& images, at::ScalarType dtype, at::Device device,
                        const VisionKernels& kernels = {});

}  // namespace glmserve
